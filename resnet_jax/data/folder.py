"""The `folder` source: class subfolders of JPEG and PNG images (`DIR/train/<class>/*`, `DIR/test/<class>/*`, and
optionally `DIR/validation/<class>/*`), in a folder or a .tar/.tar.gz of one read without unpacking. Decoded once,
in parallel, into uint8 arrays cached in the user's cache under a hash of the files' names, sizes and times, with the
classes, the train split's statistics and the files' digest (`Files.digest`, which both loaders record).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import os
import posixpath
import tarfile
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath

import numpy as np

from resnet_jax import atomic
from resnet_jax.data.pixels import to_eight_bits
from resnet_jax.data.registry import FOLDER, SPLITS, VALIDATION, DataError, DatasetInfo, SplitArrays

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
LAYOUT = "train/<class>/*.jpg|png and test/<class>/*.jpg|png (and validation/<class>/*, if you have one)"
FOLDER_SPLITS = ("train", VALIDATION, "test")  # validation/ is optional
# Bump when the cached arrays or info.json change meaning (3: 16-bit images scaled, not clipped; 4: the files' digest).
_CACHE_FORMAT = 4
_GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")
# What Pillow raises for a file it cannot decode (and Image.DecompressionBombError, once Pillow is imported).
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError)
_warned: set[str] = set()  # cache entries whose skipped files were reported in this process


def cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "resnet-jax" / "folders"


@dataclasses.dataclass(frozen=True)
class ImageFolder:
    """A decoded folder: what it holds (`info`, its mean/std those of the train split), its splits' arrays, and the
    digest of its image files' names and sizes (`Files.digest`)."""

    source: Path
    info: DatasetInfo
    arrays: dict[str, SplitArrays]
    files_digest: str

    def split(self, name: str) -> SplitArrays:
        if name not in self.arrays:
            raise DataError(f"{self.source} has no {name}/ folder of class folders of images")
        return self.arrays[name]


@dataclasses.dataclass
class Files:
    """A folder's or an archive's image files by split and class, a reader of one file's bytes, and what identifies
    the images (`digest`: their paths and sizes, in this order), so that a resume on other files can be refused."""

    classes: dict[str, dict[str, list[str]]]  # split -> class -> relative paths, sorted
    read: Callable[[str], bytes]
    ignored: list[str]  # files that are not images in a class folder
    digest: str
    image_bytes: int  # the images' files' sizes, summed: what an archive's reader holds


def open_folder(path: str | os.PathLike | None, image_size: int = 0, channels: int = 0) -> ImageFolder:
    """A folder (or a .tar/.tar.gz of one) decoded at `image_size` (0: the images' own size, which must be one) with
    `channels` (0: RGB when any image has colour, else grey); the first call decodes it, later ones read the cache."""
    if not path:
        raise DataError(f"no folder of images given; set data.files_dir to a folder holding {LAYOUT}")
    source = Path(path).expanduser().absolute()
    if not source.exists():
        raise DataError(f"{source} does not exist; give data.files_dir a folder (or a .tar/.tar.gz) holding {LAYOUT}")
    is_archive = source.is_file()
    if is_archive and not tarfile.is_tarfile(source):
        raise DataError(f"{source} is neither a folder nor a .tar/.tar.gz archive of one holding {LAYOUT}")
    listing = None if is_archive else stat_tree(source)
    stat = source.stat()
    identity = [_CACHE_FORMAT, str(source), image_size, channels, stat.st_size if is_archive else listing]
    if is_archive:
        identity.append(stat.st_mtime_ns)
    entry = cache_root() / hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:32]
    if not (entry / "info.json").is_file():

        def check_fits(files: Files, sample: bytes) -> None:
            _check_fits(source, files, sample, image_size, channels, is_archive)

        files = _read_archive(source, check_fits) if is_archive else _read_tree(source, listing, check_fits)
        _decode_into(entry, files, source, image_size, channels)
    meta = json.loads((entry / "info.json").read_text())
    if str(entry) not in _warned:
        _warned.add(str(entry))
        warn_files(source, "are not images in a class folder, and were ignored", meta["ignored"])
        warn_files(source, "could not be decoded, and were skipped", meta["skipped"])
    info = DatasetInfo(
        name=FOLDER,
        class_names=tuple(meta["class_names"]),
        image_shape=tuple(meta["image_shape"]),
        mean=tuple(meta["mean"]),
        std=tuple(meta["std"]),
        split_sizes=dict(meta["split_sizes"]),
    )
    arrays = {
        split: SplitArrays(
            np.load(entry / f"{split}_images.npy", mmap_mode="r"), np.load(entry / f"{split}_labels.npy")
        )
        for split in meta["split_sizes"]
    }
    return ImageFolder(source, info, arrays, meta["files_digest"])


def physical_memory() -> int | None:
    """This machine's memory in bytes (None where the system does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _check_fits(source: Path, files: Files, sample: bytes, image_size: int, channels: int, archive: bool) -> None:
    """What the device loader holds of a folder must fit in this machine's memory, or reading it ends in MemoryError's
    traceback, or the machine swaps or kills the run: its listed images decoded, at `image_size` (else `sample`'s
    size: one image's bytes, whose size they all must have) with `channels` (else 3 when `sample` has colour, as any
    colour makes the folder RGB), and an archive's image files, which are held while they decode."""
    memory = physical_memory()
    shape = None if memory is None else _decoded_shape(sample, image_size, channels)
    if shape is None:
        return
    count = sum(len(paths) for by_class in files.classes.values() for paths in by_class.values())
    decoded = count * int(np.prod(shape))
    needed = decoded + (files.image_bytes if archive else 0)
    if needed > memory:
        read = f" and their files' {files.image_bytes / 2**30:,.1f} GiB read from the archive" if archive else ""
        raise DataError(
            f"{source}: its {count:,} images take {decoded / 2**30:,.1f} GiB decoded at {'x'.join(map(str, shape))}"
            f"{read}, more than this machine's {memory / 2**30:,.1f} GiB of memory; stream them from their files with "
            "data.loader='grain' (docs/data.md, larger than memory)"
            + (", which reads a plain .tar or a folder" if archive else "")
            + (", or give a smaller data.image_size" if image_size else "")
        )


def _decoded_shape(sample: bytes, image_size: int, channels: int) -> tuple[int, int, int] | None:
    """The shape `_decode_one` gives the folder's images, judged from one image's header (none is decoded): None
    when neither `image_size` nor the sample says their size."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(sample)) as image:
            width, height = image.size
            colour = image.mode not in _GREY_MODES
    except (*DECODE_ERRORS, Image.DecompressionBombError):
        if not image_size:
            return None
        width = height = 0
        colour = False
    side = (image_size, image_size) if image_size else (height, width)
    return (*side, channels or (3 if colour else 1))


def check_files_digest(source: Path, recorded: str, digest: str) -> None:
    """Refuses the files of `source` when their digest is not the one a run recorded (`data.files_digest`; "": none
    yet), whichever loader reads them."""
    if recorded and digest != recorded:
        raise DataError(
            f"data.files_digest={recorded!r} was recorded from {source}, which now gives {digest!r}: the folder "
            "changed since the run began (files added, removed, renamed or resized); put it back, or start a new "
            "run (--fresh, or another --workdir)"
        )


def warn_files(source: Path, what: str, names: list[str]) -> None:
    if names:
        logger.warning("%s: %d files %s (the first: %s)", source, len(names), what, names[0])


def _is_hidden(relative: str) -> bool:
    return any(part.startswith(".") for part in PurePosixPath(relative).parts)


def walk(top: Path) -> Iterator[tuple[str, list[str], list[str]]]:
    """`os.walk` of `top` into linked folders too, as torchvision's ImageFolder reads them (a class folder linked from
    elsewhere), but not into a link to a folder it is inside, which would loop."""
    above: dict[str, frozenset[str]] = {}  # a folder still to walk -> the real paths of the folders it is inside
    for folder, dirs, names in os.walk(top, followlinks=True):
        inside = above.pop(folder, frozenset()) | {os.path.realpath(folder)}
        dirs[:] = [name for name in dirs if os.path.realpath(os.path.join(folder, name)) not in inside]
        above.update((os.path.join(folder, name), inside) for name in dirs)
        yield folder, dirs, names


def stat_tree(root: Path) -> list[tuple[str, int, int]]:
    """Every file under the splits' folders, with its size and time: the cache key of a plain folder."""
    found = []
    for split in FOLDER_SPLITS:
        for folder, dirs, names in walk(root / split):
            dirs.sort()
            for name in sorted(names):
                path = Path(folder) / name
                stat = path.stat()
                found.append((path.relative_to(root).as_posix(), stat.st_size, stat.st_mtime_ns))
    return found


def _read_tree(root: Path, listing: list[tuple[str, int, int]], check: Callable[[Files, bytes], None]) -> Files:
    """A folder's images, listed, and seen by `check` with the first one's bytes (a sample of what they decode to)
    before any other is read; decoding reads each from its file."""
    folders = [
        Path(folder).relative_to(root).as_posix() for split in FOLDER_SPLITS for folder, _, _ in walk(root / split)
    ]
    sizes = {name: size for name, size, _ in listing}
    files = sort_files(root, sizes, folders, lambda relative: (root / relative).read_bytes())
    check(files, files.read(next(iter(files.classes["train"].values()))[0]))
    return files


@contextlib.contextmanager
def _reading_archive(archive: Path) -> Iterator[tarfile.TarFile]:
    """The archive opened (plain or compressed), what it raises as it is read one DataError line."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            yield tar
    except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
        raise DataError(f"{archive} cannot be read as a tar archive ({error}); it is damaged or not a tar") from None


def _members(tar: tarfile.TarFile) -> Iterator[tuple[str, tarfile.TarInfo]]:
    """The archive's members in its order, by normalised name; none outside it."""
    for member in tar:
        name = posixpath.normpath(member.name).lstrip("/")
        if name != "." and ".." not in PurePosixPath(name).parts:
            yield name, member


def _read_archive(archive: Path, check: Callable[[Files, bytes], None]) -> Files:
    """An archive's images: listed in one pass over its members, holding only the first image's bytes (a sample of
    what they decode to); seen by `check`; then read in a second pass (a .tar.gz cannot seek back cheaply), their
    bytes kept in memory."""
    sizes, folders, sample = {}, [], b""
    with _reading_archive(archive) as tar:
        for name, member in _members(tar):
            if member.isdir():
                folders.append(name)
            elif member.isfile():
                sizes[name] = member.size
                if not sample and name.lower().endswith(IMAGE_SUFFIXES) and not _is_hidden(name):
                    sample = tar.extractfile(member).read()
    prefix = archive_prefix([*sizes, *folders])
    sizes = {name.removeprefix(prefix): size for name, size in sizes.items() if name.startswith(prefix)}
    folders = [name.removeprefix(prefix) for name in folders if name.startswith(prefix)]
    listed = sort_files(archive, sizes, folders, _unread)
    check(listed, sample)
    images = {prefix + path for by_class in listed.classes.values() for paths in by_class.values() for path in paths}
    contents = {}
    with _reading_archive(archive) as tar:
        for name, member in _members(tar):
            if name in images and member.isfile():
                contents[name.removeprefix(prefix)] = tar.extractfile(member).read()
    return dataclasses.replace(listed, read=contents.__getitem__)


def _unread(name: str) -> bytes:  # an archive's listing, before its images are read
    raise NotImplementedError(name)


def archive_prefix(names: Iterable[str]) -> str:
    """An archive of the folder itself (DIR/train/...) holds one top folder: the layout starts below it."""
    tops = {PurePosixPath(name).parts[0] for name in names}
    return tops.pop() + "/" if len(tops) == 1 and not tops & set(SPLITS) else ""


def sort_files(source: Path, sizes: Mapping[str, int], folders: Iterable[str], read: Callable[[str], bytes]) -> Files:
    """The images by split and class (`sizes`: every file's, by relative path), checked: each bad layout ends in one
    DataError naming it and the fix."""
    files = [name for name in sizes if not _is_hidden(name)]
    folders = [name for name in folders if not _is_hidden(name)]
    if not any(name.lower().endswith(IMAGE_SUFFIXES) for name in files):
        raise DataError(f"{source} holds no images ({', '.join(IMAGE_SUFFIXES)}); it should hold {LAYOUT}")
    present = {PurePosixPath(name).parts[0] for name in [*files, *folders]}
    for split in SPLITS:
        if split not in present:
            raise DataError(f"{source} has no {split}/ folder; it should hold {LAYOUT}")
    classes: dict[str, dict[str, list[str]]] = {split: {} for split in FOLDER_SPLITS if split in present}
    for name in folders:
        parts = PurePosixPath(name).parts
        if len(parts) >= 2 and parts[0] in classes:
            classes[parts[0]].setdefault(parts[1], [])
    ignored = []
    for name in sorted(files):
        parts = PurePosixPath(name).parts
        if parts[0] not in classes:
            continue  # beside the splits (a README): not the splits' files
        if len(parts) < 3 or not name.lower().endswith(IMAGE_SUFFIXES):
            ignored.append(name)
            continue
        classes[parts[0]].setdefault(parts[1], []).append(name)
    for split in classes:
        if not classes[split]:
            raise DataError(f"{source}: {split}/ holds no class folders; it should hold {LAYOUT}")
        for name, members in sorted(classes[split].items()):
            if not members:
                raise DataError(
                    f"{source}: {split}/{name}/ holds no images ({', '.join(IMAGE_SUFFIXES)}); add some or remove it"
                )
    if len(classes["train"]) < 2:
        raise DataError(
            f"{source}: train/ holds one class folder ({next(iter(classes['train']))}/); a classifier needs at least "
            "2 classes (one class trains to loss 0 and learns nothing): add a folder for each other class"
        )
    for split in set(classes) - {"train"}:
        unknown = sorted(classes[split].keys() - classes["train"].keys())
        if unknown:
            raise DataError(
                f"{source}: {split}/ has classes that train/ lacks ({', '.join(unknown)}); the classes are train/'s "
                f"folders ({', '.join(sorted(classes['train']))})"
            )
    classes = {split: dict(sorted(found.items())) for split, found in classes.items()}
    # Names and sizes, not contents: a million files are identified by one walk, without reading them.
    identity = [[path, sizes[path]] for by_class in classes.values() for paths in by_class.values() for path in paths]
    digest = hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:32]
    return Files(classes, read, ignored, digest, sum(size for _, size in identity))


def _decode_one(data: bytes, image_size: int, channels: int) -> np.ndarray | str:
    """An image as uint8 HxWxC (C: `channels`, or 1 or 3 as it is when 0), upright by its EXIF orientation, resized
    (bicubic, as `images.read_image` does) to `image_size` when given and not its size; else why it cannot be read."""
    from PIL import Image, ImageOps  # Pillow is needed by this source only

    mode = {1: "L", 3: "RGB"}.get(channels)
    try:
        with Image.open(io.BytesIO(data)) as image:
            mode = mode or ("L" if image.mode in _GREY_MODES else "RGB")
            if image_size:
                # A JPEG decodes straight at the smallest scale (1/2, 1/4, 1/8) still at least image_size.
                image.draft(mode, (image_size, image_size))
            image = ImageOps.exif_transpose(image)  # upright, as `images.read_image` reads a file to predict
            image = to_eight_bits(image)
            if image.mode == "P":  # a palette, perhaps with a transparent entry: through RGBA drops it cleanly
                image = image.convert("RGBA")
            image = image.convert(mode)
            if image_size and image.size != (image_size, image_size):
                image = image.resize((image_size, image_size), Image.Resampling.BICUBIC)
            array = np.asarray(image, dtype=np.uint8)
    except (*DECODE_ERRORS, Image.DecompressionBombError) as error:
        return str(error) or type(error).__name__
    return array[..., None] if array.ndim == 2 else array


def _decode_into(entry: Path, files: Files, source: Path, image_size: int, channels: int) -> None:
    """Decodes every image (threads: Pillow's decoders and resizes run without the GIL) and writes the cache entry."""
    started = time.perf_counter()
    class_names = list(files.classes["train"])
    jobs = [
        (split, class_names.index(name), path)
        for split in files.classes
        for name, paths in files.classes[split].items()
        for path in paths
    ]
    logger.info("decoding %d images from %s (once: they are cached in %s)", len(jobs), source, entry.parent)

    def decode(job: tuple[str, int, str]) -> np.ndarray | str:
        return _decode_one(files.read(job[2]), image_size, channels)

    with ThreadPoolExecutor(max_workers=min(32, os.cpu_count() or 1)) as pool:
        decoded = list(pool.map(decode, jobs))
    skipped = [
        f"{path} ({result})" for (_, _, path), result in zip(jobs, decoded, strict=True) if isinstance(result, str)
    ]
    kept = [(job, image) for job, image in zip(jobs, decoded, strict=True) if not isinstance(image, str)]
    images = [image for _, image in kept]
    if not images:
        raise DataError(f"{source}: none of its {len(jobs)} images could be decoded (the first: {skipped[0]})")
    _check_sizes(source, [path for (_, _, path), _ in kept], images, image_size)
    if (channels or max(image.shape[-1] for image in images)) == 3:
        images = [np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image for image in images]
    arrays = {}
    for split in files.classes:
        rows = [index for index, ((job_split, _, _), _) in enumerate(kept) if job_split == split]
        counts = np.bincount([kept[row][0][1] for row in rows], minlength=len(class_names))
        if split == "train" and not counts.all():
            empty = class_names[int(np.argmin(counts))]
            raise DataError(f"{source}: none of train/{empty}/'s images could be decoded (the first: {skipped[0]})")
        if not rows:
            raise DataError(f"{source}: none of {split}/'s images could be decoded (the first: {skipped[0]})")
        arrays[split] = SplitArrays(
            np.stack([images[row] for row in rows]), np.array([kept[row][0][1] for row in rows], np.int32)
        )
    mean, std = _statistics(arrays["train"].images)
    meta = {
        "source": str(source),
        "class_names": class_names,
        "image_shape": list(arrays["train"].images.shape[1:]),
        "split_sizes": {split: len(arrays[split]) for split in FOLDER_SPLITS if split in arrays},
        "mean": mean,
        "std": std,
        "ignored": files.ignored,
        "skipped": skipped,
        "files_digest": files.digest,
    }
    _write_entry(entry, arrays, meta)
    logger.info("decoded %d images in %.1f s", len(images), time.perf_counter() - started)


def _check_sizes(source: Path, paths: list[str], images: list[np.ndarray], image_size: int) -> None:
    if image_size:
        return
    shapes = [image.shape[:2] for image in images]
    other = next((index for index, shape in enumerate(shapes) if shape != shapes[0]), None)
    if other is not None:
        raise DataError(
            f"{source}: images of different sizes ({paths[0]} is {shapes[0][0]}x{shapes[0][1]}, {paths[other]} "
            f"{shapes[other][0]}x{shapes[other][1]}); give data.image_size to resize them all to one"
        )
    if shapes[0][0] != shapes[0][1]:
        raise DataError(
            f"{source}: the images are {shapes[0][0]}x{shapes[0][1]}, not square; give data.image_size to resize "
            "them to a square"
        )


def _statistics(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std on the 0-1 scale, summed in chunks so that no float copy of the split is made."""
    total = np.zeros(images.shape[-1])
    squares = np.zeros(images.shape[-1])
    rows = max(1, 2**22 // images[0].size)  # about 32 MiB of float64 at a time
    for start in range(0, len(images), rows):
        chunk = images[start : start + rows].reshape(-1, images.shape[-1]).astype(np.float64)
        total += chunk.sum(axis=0)
        squares += np.square(chunk).sum(axis=0)
    count = images.size // images.shape[-1]
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0))
    # A channel that never varies would divide by zero; one grey level of spread keeps the input finite.
    std = np.maximum(std, 1.0)
    return [round(float(value) / 255, 6) for value in mean], [round(float(value) / 255, 6) for value in std]


def _write_entry(entry: Path, arrays: dict[str, SplitArrays], meta: dict) -> None:
    """Written beside the entry and renamed into place, so that a run killed mid-write leaves no half entry."""
    try:
        with atomic.replacing_folder(entry) as partial:
            for split, split_arrays in arrays.items():
                np.save(partial / f"{split}_images.npy", split_arrays.images)
                np.save(partial / f"{split}_labels.npy", split_arrays.labels)
            (partial / "info.json").write_text(json.dumps(meta, indent=1))
    except OSError as error:
        if not (entry / "info.json").is_file():  # another process may have written the same entry first
            raise DataError(
                f"cannot write the decoded images to {entry} ({error.strerror or error}); free some space, or "
                "set XDG_CACHE_HOME to a folder you can write"
            ) from None
