"""A folder's, or a plain .tar's, class folders of image files, listed without decoding them: their names and
labels by split, where a .tar's members lie, a digest of names and sizes that identifies the files, and what they hold
at the network's input. The grain loader streams from a listing; nothing here imports Grain.
"""

from __future__ import annotations

import dataclasses
import os
import tarfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath

import numpy as np

from resnet_jax.data import folder
from resnet_jax.data.crops import DECODE_ERRORS, eval_image
from resnet_jax.data.registry import FOLDER, DataError, DatasetInfo

STATISTICS_SAMPLE = 512  # train images, evenly spread over the listing, that give a folder's mean and std
_warned: set[str] = set()  # folders whose odd files were reported in this process


@dataclasses.dataclass(frozen=True)
class Listing:
    """A folder's or a .tar's image files by split, in the folder source's order (split, class, name), and what
    identifies them (`digest`: their names and sizes)."""

    source: Path
    class_names: tuple[str, ...]
    names: dict[str, list[str]]  # split -> relative paths
    labels: dict[str, np.ndarray]  # split -> int32 class indices
    spans: dict[str, tuple[int, int]]  # a .tar's member -> (offset, size); empty for a folder
    digest: str


@dataclasses.dataclass(frozen=True)
class Files:
    """Some files of a listing, readable in any process: what Grain's workers are sent (pickled)."""

    source: str
    names: tuple[str, ...]
    labels: np.ndarray
    spans: tuple[tuple[int, int], ...]  # per name, for a .tar; () for a folder

    def __len__(self) -> int:
        return len(self.names)

    def read(self, index: int) -> bytes:
        if not self.spans:
            return (Path(self.source) / self.names[index]).read_bytes()
        offset, size = self.spans[index]
        with open(self.source, "rb") as archive:
            archive.seek(offset)
            return archive.read(size)


def open_listing(files_dir: str, recorded_digest: str = "") -> Listing:
    """The image files of a folder or a .tar (not compressed: its members are read in place), checked as the folder
    source checks its layout; a folder whose files differ from `recorded_digest` (the run's) is refused."""
    source = Path(files_dir).expanduser().absolute()
    if not source.exists():
        raise DataError(f"{source} does not exist; give data.files_dir a folder (or a .tar) holding {folder.LAYOUT}")
    spans: dict[str, tuple[int, int]] = {}
    if source.is_file():
        spans, folders = _index_archive(source)
        sizes = {name: size for name, (_, size) in spans.items()}
        files = folder.sort_files(source, sizes, folders, _unused_reader)
    else:
        listing = folder.stat_tree(source)
        folders = [
            Path(path).relative_to(source).as_posix()
            for split in folder.FOLDER_SPLITS
            for path, _, _ in folder.walk(source / split)
        ]
        sizes = {name: size for name, size, _ in listing}
        files = folder.sort_files(source, sizes, folders, _unused_reader)
    if str(source) not in _warned:  # once a process: a run lists its folder for each of its streams
        _warned.add(str(source))
        folder.warn_files(source, "are not images in a class folder, and were ignored", files.ignored)
    class_names = tuple(files.classes["train"])
    label_of = {name: label for label, name in enumerate(class_names)}
    names = {split: [path for paths in classes.values() for path in paths] for split, classes in files.classes.items()}
    labels = {
        split: np.array([label_of[name] for name, paths in classes.items() for _ in paths], np.int32)
        for split, classes in files.classes.items()
    }
    folder.check_files_digest(source, recorded_digest, files.digest)
    return Listing(source, class_names, names, labels, spans, files.digest)


def _unused_reader(name: str) -> bytes:  # the listing reads files in the workers, by `Files.read`
    raise NotImplementedError(name)


def _index_archive(archive: Path) -> tuple[dict[str, tuple[int, int]], list[str]]:
    """Where each image's bytes lie in a .tar (no data is read), and its folders."""
    if not tarfile.is_tarfile(archive):
        raise DataError(f"{archive} is neither a folder nor a .tar archive of one holding {folder.LAYOUT}")
    spans, folders = {}, []
    try:
        with tarfile.open(archive, "r:") as tar:
            for member in tar:
                name = os.path.normpath(member.name).lstrip("/")
                if name == "." or ".." in PurePosixPath(name).parts:
                    continue
                if member.isdir():
                    folders.append(name)
                elif member.isfile():
                    spans[name] = (member.offset_data, member.size)
    except tarfile.ReadError as error:
        raise DataError(
            f"{archive} is not a plain .tar ({error}): the grain loader reads members in place, which a compressed "
            "archive cannot give; unpack it into a folder, or repack it with `tar -cf`"
        ) from None
    except (tarfile.TarError, OSError, EOFError) as error:
        raise DataError(f"{archive} cannot be read as a tar archive ({error}); it is damaged or not a tar") from None
    prefix = folder.archive_prefix([*spans, *folders])
    if prefix:
        spans = {name.removeprefix(prefix): span for name, span in spans.items() if name.startswith(prefix)}
        folders = [name.removeprefix(prefix) for name in folders if name.startswith(prefix)]
    return spans, folders


def files_of(listing: Listing, split: str, rows: np.ndarray) -> Files:
    """The files at `rows` of a listed split."""
    names = listing.names[split]
    spans = tuple(listing.spans[names[row]] for row in rows) if listing.spans else ()
    source = str(listing.source)
    return Files(source, tuple(names[row] for row in rows), listing.labels[split][rows], spans)


def folder_info(listing: Listing, image_size: int, channels: int, statistics: bool) -> DatasetInfo:
    """What a listed folder holds at the network's input: its classes, image shape and source split sizes, and with
    `statistics` the mean and std of a fixed sample of its train images as evaluation sees them."""
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    if statistics:
        mean, std = _sample_statistics(listing, image_size, channels)
    return DatasetInfo(
        name=FOLDER,
        class_names=listing.class_names,
        image_shape=(image_size, image_size, 1 if channels == 1 else 3),
        mean=mean,
        std=std,
        split_sizes={split: len(names) for split, names in listing.names.items()},
    )


def _sample_statistics(listing: Listing, image_size: int, channels: int) -> tuple[tuple[float, ...], ...]:
    train = len(listing.names["train"])
    rows = np.unique(np.linspace(0, train - 1, min(train, STATISTICS_SAMPLE)).astype(np.int64))
    files = files_of(listing, "train", rows)

    def decode(index: int) -> np.ndarray | None:
        try:
            return eval_image(files.read(index), image_size, channels)
        except DECODE_ERRORS:
            return None

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        images = [image for image in pool.map(decode, range(len(files))) if image is not None]
    if not images:
        raise DataError(f"{listing.source}: none of {len(files)} train images sampled could be decoded")
    # Summed image by image: the sample as one float64 array would take 8 bytes a pixel (1.2 GB at 224 px).
    pixels = [image.reshape(-1, image.shape[-1]) for image in images]
    count = sum(len(image) for image in pixels)
    mean = sum(image.sum(axis=0, dtype=np.float64) for image in pixels) / count / 255
    variance = sum(((image / 255 - mean) ** 2).sum(axis=0) for image in pixels) / count
    # A channel that never varies would divide by zero; one grey level of spread keeps the input finite.
    std = np.maximum(np.sqrt(variance), 1 / 255)
    return tuple(round(float(v), 6) for v in mean), tuple(round(float(v), 6) for v in std)
