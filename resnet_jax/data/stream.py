"""The `grain` loader (`data.loader=grain`): a folder, or a plain .tar, of class folders of JPEG/PNG files of any size,
streamed by Grain. Each process reads its own shard; Grain's worker processes decode, random-resized crop and flip
(train) or resize and centre crop (evaluation) into prefetched uint8 batches. Also the folder's listing and identity,
read without decoding it, and the iterator state a checkpoint keeps beside the train state.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import math
import os
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath

import grain
import numpy as np
from absl import flags
from PIL import Image, ImageOps

from resnet_jax import errors
from resnet_jax.data import folder
from resnet_jax.data.pixels import to_eight_bits
from resnet_jax.data.registry import FOLDER, DataError, DatasetInfo

logger = logging.getLogger(__name__)

# torchvision's RandomResizedCrop defaults (as flax's ImageNet example): a crop of 8% to all of the image's area, of
# aspect ratio 3/4 to 4/3, resized to the network's size.
CROP_AREA = (0.08, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
CROP_TRIES = 10
# Evaluation resizes the short side to image_size / 0.875 and takes the centre image_size (256 -> 224).
CENTRE_FRACTION = 0.875
STATISTICS_SAMPLE = 512  # train images, evenly spread over the listing, that give a folder's mean and std
# A training example that cannot be decoded takes the next file's place; this many in a row stop the run.
UNREADABLE_IN_A_ROW = 64
READ_THREADS = 2  # threads per worker (or in the training process, without workers), each decoding a batch
_DECODE_ERRORS = (*folder.DECODE_ERRORS, Image.DecompressionBombError)
_warned: set[str] = set()  # folders, and evaluation splits, whose odd files were reported in this process


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
class _Files:
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
        files = folder.sort_files(source, list(spans), folders, _unused_reader)
        sizes = {name: size for name, (_, size) in spans.items()}
    else:
        listing = folder.stat_tree(source)
        folders = [
            Path(path).relative_to(source).as_posix()
            for split in folder.FOLDER_SPLITS
            for path, _, _ in os.walk(source / split)
        ]
        files = folder.sort_files(source, [name for name, _, _ in listing], folders, _unused_reader)
        sizes = {name: size for name, size, _ in listing}
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
    identity = [[name, sizes[name]] for split in names for name in names[split]]
    digest = hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:32]
    if recorded_digest and digest != recorded_digest:
        raise DataError(
            f"data.files_digest={recorded_digest!r} was recorded from {source}, which now gives {digest!r}: the "
            "folder changed since the run began (files added, removed or resized); put it back, or start a new run "
            "(--fresh, or another --workdir)"
        )
    return Listing(source, class_names, names, labels, spans, digest)


def _unused_reader(name: str) -> bytes:  # the listing reads files in the workers, by `_Files.read`
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


def files_of(listing: Listing, split: str, rows: np.ndarray) -> _Files:
    """The files at `rows` of a listed split."""
    names = listing.names[split]
    spans = tuple(listing.spans[names[row]] for row in rows) if listing.spans else ()
    source = str(listing.source)
    return _Files(source, tuple(names[row] for row in rows), listing.labels[split][rows], spans)


def _mode(channels: int) -> str:
    """Grey with channels=1; else RGB (whether a folder has colour is not read ahead of streaming it)."""
    return "L" if channels == 1 else "RGB"


def _open(data: bytes, mode: str, draft: int = 0) -> Image.Image:
    """An image upright by its EXIF orientation, in 8 bits and `mode`; a JPEG decoded at the smallest scale (1/2,
    1/4, 1/8) still at least `draft` on both sides."""
    image = Image.open(io.BytesIO(data))
    if draft:
        image.draft(mode, (draft, draft))
    image = to_eight_bits(ImageOps.exif_transpose(image))
    if image.mode == "P":  # a palette, perhaps with a transparent entry: through RGBA drops it cleanly
        image = image.convert("RGBA")
    return image.convert(mode)


def _array(image: Image.Image) -> np.ndarray:
    array = np.asarray(image, dtype=np.uint8)
    return array[..., None] if array.ndim == 2 else array


def crop_box(width: int, height: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop box (left, top, right, bottom): a random area and aspect ratio, placed at
    random; after `CROP_TRIES` that do not fit, the centre crop of the nearest allowed ratio."""
    area = width * height
    low, high = math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])
    for _ in range(CROP_TRIES):
        target = area * rng.uniform(*CROP_AREA)
        ratio = math.exp(rng.uniform(low, high))
        crop_width, crop_height = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
        if 0 < crop_width <= width and 0 < crop_height <= height:
            top = int(rng.integers(0, height - crop_height + 1))
            left = int(rng.integers(0, width - crop_width + 1))
            return left, top, left + crop_width, top + crop_height
    ratio = width / height
    crop_width, crop_height = width, height
    if ratio < CROP_RATIO[0]:
        crop_height = round(width / CROP_RATIO[0])
    elif ratio > CROP_RATIO[1]:
        crop_width = round(height * CROP_RATIO[1])
    left, top = (width - crop_width) // 2, (height - crop_height) // 2
    return left, top, left + crop_width, top + crop_height


def train_image(data: bytes, image_size: int, channels: int, rng: np.random.Generator) -> np.ndarray:
    """A training example's pixels: a random-resized crop (bilinear) of `image_size`, flipped half the time."""
    image = _open(data, _mode(channels))
    box = crop_box(*image.size, rng)
    array = _array(image.resize((image_size, image_size), Image.Resampling.BILINEAR, box=box))
    return np.ascontiguousarray(array[:, ::-1]) if rng.random() < 0.5 else array


def eval_image(data: bytes, image_size: int, channels: int) -> np.ndarray:
    """An evaluation example's pixels: the short side resized to image_size / 0.875 (bilinear), the centre
    `image_size` square taken (in one resize, from the matching box of the image)."""
    resized = int(image_size / CENTRE_FRACTION)
    image = _open(data, _mode(channels), draft=resized)
    width, height = image.size
    side = image_size * min(width, height) / resized  # the crop's side in the image's own pixels
    left, top = (width - side) / 2, (height - side) / 2
    box = (left, top, left + side, top + side)
    return _array(image.resize((image_size, image_size), Image.Resampling.BILINEAR, box=box))


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
        except _DECODE_ERRORS:
            return None

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        images = [image for image in pool.map(decode, range(len(files))) if image is not None]
    if not images:
        raise DataError(f"{listing.source}: none of {len(files)} train images sampled could be decoded")
    pixels = np.stack(images).reshape(-1, images[0].shape[-1]).astype(np.float64) / 255
    # A channel that never varies would divide by zero; one grey level of spread keeps the input finite.
    std = np.maximum(pixels.std(axis=0), 1 / 255)
    return tuple(round(float(v), 6) for v in pixels.mean(axis=0)), tuple(round(float(v), 6) for v in std)


class _TrainExample:
    """Stream position -> example. Each epoch takes the first `per_epoch` rows of a fresh shuffle of the files (so a
    batch never spans two epochs, and the epoch's remainder differs from epoch to epoch, as on the devices); a file
    that cannot be decoded is reported (`unreadable`: its row, else -1) and the next one decoded takes its place."""

    def __init__(self, files: _Files, image_size: int, channels: int, per_epoch: int, seed: int):
        self.files, self.image_size, self.channels = files, image_size, channels
        self.per_epoch, self.seed = per_epoch, seed

    def __call__(self, position: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        epoch, offset = divmod(int(position), self.per_epoch)
        count = len(self.files)
        row = grain.experimental.index_shuffle(offset, max_index=count - 1, seed=(self.seed + epoch) % 2**32, rounds=4)
        for attempt in range(UNREADABLE_IN_A_ROW):
            index = (row + attempt) % count
            try:
                image = train_image(self.files.read(index), self.image_size, self.channels, rng)
            except _DECODE_ERRORS:
                continue
            return {"image": image, "label": self.files.labels[index], "unreadable": np.int32(row if attempt else -1)}
        raise DataError(
            f"{self.files.source}: {UNREADABLE_IN_A_ROW} files in a row from {self.files.names[row]} on could not "
            "be decoded; check the folder's files"
        )


class _EvalExample:
    """Row of a process's part of a padded split -> example; padding and files that cannot be decoded are masked
    out (an unreadable file is reported by its row)."""

    def __init__(self, files: _Files, image_size: int, channels: int):
        self.files, self.image_size, self.channels = files, image_size, channels

    def __call__(self, row: int) -> dict[str, np.ndarray]:
        image, unreadable = None, -1
        if row < len(self.files):
            try:
                image = eval_image(self.files.read(row), self.image_size, self.channels)
            except _DECODE_ERRORS:
                unreadable = row
        label = self.files.labels[row] if row < len(self.files) else np.int32(0)
        if image is None:
            image = np.zeros((self.image_size, self.image_size, 1 if self.channels == 1 else 3), np.uint8)
        mask = np.bool_(unreadable < 0 and row < len(self.files))
        return {"image": image, "label": label, "mask": mask, "unreadable": np.int32(unreadable)}


def checkpoint_handler() -> grain.checkpoint.CheckpointHandler:
    """The orbax handler of the train stream's item in a checkpoint (one JSON file per process)."""
    return grain.checkpoint.CheckpointHandler()


class _Saved:
    """An iterator state taken when the save was asked, for Grain's handler to write whenever orbax runs it."""

    def __init__(self, state: dict):
        self._state = json.dumps(state, indent=1).encode()

    def get_state(self) -> bytes:
        return self._state


def _end_with_the_trainer(worker_index: int, worker_count: int) -> None:
    """Each Grain worker's start: a thread that ends the worker once the training process is gone. Killed by
    SIGKILL, the training process cannot stop its workers, which would otherwise sleep on, orphaned, each holding its
    memory."""
    trainer = os.getppid()

    def watch() -> None:
        while os.getppid() == trainer:
            time.sleep(1)
        os._exit(1)

    threading.Thread(target=watch, name="resnet-jax-parent-watch", daemon=True).start()


def _iterate(dataset: grain.MapDataset, workers: int, buffer: int) -> grain.DatasetIterator:
    """`dataset`'s elements read by `workers` Grain processes (0: threads of this one), `buffer` ahead in each."""
    # Grain's workers read an absl flag, which fails where no absl app parsed the command line (this project's tools
    # parse theirs with argparse): absl's defaults are what this run means.
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
    read = grain.ReadOptions(num_threads=READ_THREADS, prefetch_buffer_size=max(buffer, READ_THREADS))
    options = grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=buffer)
    return iter(dataset.to_iter_dataset(read).mp_prefetch(options, worker_init_fn=_end_with_the_trainer))


def _next(iterator: grain.DatasetIterator) -> dict[str, np.ndarray]:
    """The next batch; a failed worker or decode is one DataError line (Grain re-raises a worker's error here, and
    tells a worker that died, rather than waiting on it)."""
    try:
        return next(iterator)
    except DataError:
        raise
    except Exception as error:  # whatever a worker raised, or its death
        raise DataError(
            f"the grain loader stopped: {errors.one_line(error)[:400]}; fix the cause, or give data.workers=0 to "
            "decode in the training process"
        ) from None


def _close(owner: TrainStream | EvalStream) -> None:
    """Closes a stream's iterator and lets it go now: left to the interpreter's exit, Grain's clean-up finds its
    modules gone and prints tracebacks."""
    iterator, owner._iterator = owner._iterator, None
    if iterator is not None:
        iterator.close()


class TrainStream:
    """This process's training batches, for ever, in the run's order: `take(n)` gives the next `n`, stacked. Its
    position is Grain's iterator state, which a checkpoint keeps (`save_args` / `restore_args`)."""

    def __init__(self, files: _Files, dataset: grain.MapDataset, workers: int, buffer: int):
        self.files = files
        self._iterator = _iterate(dataset, workers, buffer)
        self._unreadable: set[int] = set()

    def take(self, count: int) -> tuple[np.ndarray, np.ndarray]:
        """The next `count` batches: uint8 images (count, batch, H, W, C) and int32 labels (count, batch)."""
        batches = [_next(self._iterator) for _ in range(count)]
        for batch in batches:
            self._note_unreadable(batch["unreadable"])
        return np.stack([b["image"] for b in batches]), np.stack([b["label"] for b in batches])

    def _note_unreadable(self, rows: np.ndarray) -> None:
        """One warning for the first unreadable file, then the count as it doubles (a file is met every epoch)."""
        for row in rows[rows >= 0].tolist():
            if row in self._unreadable:
                continue
            self._unreadable.add(row)
            count = len(self._unreadable)
            if count == 1:
                logger.warning(
                    "%s: %s could not be decoded, and is skipped (the next file takes its place); further ones are "
                    "counted",
                    self.files.source,
                    self.files.names[row],
                )
            elif count & (count - 1) == 0:
                logger.warning(
                    "%s: %d train files could not be decoded so far, and were skipped", self.files.source, count
                )

    def save_args(self) -> grain.checkpoint.CheckpointSave:
        """The checkpoint item of the stream's position now (taken now: an asynchronous save writes it later)."""
        return grain.checkpoint.CheckpointSave(_Saved(self._iterator.get_state()))

    def restore_args(self) -> grain.checkpoint.CheckpointRestore:
        """The checkpoint item that, restored, sets the stream to the saved position."""
        return grain.checkpoint.CheckpointRestore(self._iterator)

    def close(self) -> None:
        """Stops the worker processes."""
        _close(self)


class EvalStream:
    """This process's part of an evaluation split, padded to whole batches: `batches()` gives every batch once, each
    call from the start (the workers stay up between evaluations)."""

    def __init__(self, files: _Files, dataset: grain.MapDataset, count: int, workers: int, buffer: int, name: str):
        self.files, self.count, self.name = files, count, name
        self._iterator = _iterate(dataset, workers, buffer)
        self._start = self._iterator.get_state()

    def batches(self) -> Iterator[dict[str, np.ndarray]]:
        """Dicts of uint8 `image`, int32 `label` and bool `mask` (False on padding and on unreadable files)."""
        self._iterator.set_state(self._start)
        for _ in range(self.count):
            batch = _next(self._iterator)
            unreadable = batch["unreadable"][batch["unreadable"] >= 0]
            reported = f"{self.files.source}: {self.name}"  # once a process for a folder's split, not each evaluation
            if len(unreadable) and reported not in _warned:
                _warned.add(reported)
                logger.warning(
                    "%s: files of the %s split could not be decoded, and are left out of its evaluation (the first: "
                    "%s)",
                    self.files.source,
                    self.name,
                    self.files.names[int(unreadable[0])],
                )
            yield batch

    def close(self) -> None:
        """Stops the worker processes."""
        _close(self)


def _shard() -> grain.sharding.ShardOptions:
    return grain.sharding.ShardByJaxProcess(drop_remainder=True)


def train_stream(
    listing: Listing,
    split: str,
    rows: np.ndarray,
    local_batch: int,
    steps_per_epoch: int,
    image_size: int,
    channels: int,
    seed: int,
    workers: int,
    buffer: int,
) -> TrainStream:
    """This process's shard of the run's train split (the listed `split`'s `rows`, a multiple of the device count):
    a contiguous part, as the devices' shards are; each epoch `steps_per_epoch` batches of `local_batch`."""
    shard = _shard()
    per_process = len(rows) // shard.shard_count
    files = files_of(listing, split, rows[shard.shard_index * per_process : (shard.shard_index + 1) * per_process])
    # Each process shuffles and crops by its own seeds, drawn from the run's.
    shuffle_seed, crop_seed = np.random.SeedSequence([seed, shard.shard_index]).generate_state(2).tolist()
    example = _TrainExample(files, image_size, channels, steps_per_epoch * local_batch, shuffle_seed)
    dataset = grain.MapDataset.range(sys.maxsize).random_map(example, seed=crop_seed)
    return TrainStream(files, dataset.batch(local_batch, drop_remainder=True), workers, buffer)


def eval_stream(
    listing: Listing,
    split: str,
    rows: np.ndarray,
    padded_rows: int,
    local_batch: int,
    image_size: int,
    channels: int,
    workers: int,
    buffer: int,
    name: str,
) -> EvalStream:
    """This process's contiguous part of an evaluation split (the listed `split`'s `rows`) padded to
    `padded_rows`, in batches of `local_batch`."""
    shard = _shard()
    per_process = padded_rows // shard.shard_count
    start = shard.shard_index * per_process
    files = files_of(listing, split, rows[start : min(start + per_process, len(rows))])
    dataset = grain.MapDataset.range(per_process).map(_EvalExample(files, image_size, channels))
    count = per_process // local_batch
    # Repeated, so that the workers never reach its end: Grain's workers that do leave their last batches' shared
    # memory to the resource tracker. Each evaluation takes `count` batches from the start.
    batches = dataset.batch(local_batch, drop_remainder=True).repeat()
    return EvalStream(files, batches, count, min(workers, count), buffer, name)
