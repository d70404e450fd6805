"""The `grain` loader (`data.loader=grain`): a listed folder, or a plain .tar, of class folders of JPEG/PNG files of
any size (data/listing.py), streamed by Grain. Each process reads its own shard; Grain's worker processes decode,
crop and flip (data/crops.py) into prefetched uint8 batches; the iterator's state is what a checkpoint keeps beside
the train state. Batch k of the train stream is a function of k alone, so a stream can also start at any batch (a
resume with another `data.workers`, whose saved state Grain cannot restore).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator

import grain
import numpy as np
from absl import flags

from resnet_jax import errors
from resnet_jax.data.crops import DECODE_ERRORS, eval_image, train_image
from resnet_jax.data.listing import Files, Listing, files_of
from resnet_jax.data.registry import DataError

logger = logging.getLogger(__name__)

# A training example that cannot be decoded takes the next file's place; this many in a row stop the run.
UNREADABLE_IN_A_ROW = 64
READ_THREADS = 2  # threads per worker (or in the training process, without workers), each decoding a batch
_warned: set[str] = set()  # evaluation splits whose unreadable files were reported in this process


class _TrainExample:
    """Stream position -> example. Each epoch takes the first `per_epoch` rows of a fresh shuffle of the files (so a
    batch never spans two epochs, and the epoch's remainder differs from epoch to epoch, as on the devices); a file
    that cannot be decoded is reported (`unreadable`: its row, else -1) and the next one decoded takes its place."""

    def __init__(self, files: Files, image_size: int, channels: int, per_epoch: int, seed: int):
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
            except DECODE_ERRORS:
                continue
            return {"image": image, "label": self.files.labels[index], "unreadable": np.int32(row if attempt else -1)}
        raise DataError(
            f"{self.files.source}: {UNREADABLE_IN_A_ROW} files in a row from {self.files.names[row]} on could not "
            "be decoded; check the folder's files"
        )


class _EvalExample:
    """Row of a process's part of a padded split -> example; padding and files that cannot be decoded are masked
    out (an unreadable file is reported by its row)."""

    def __init__(self, files: Files, image_size: int, channels: int):
        self.files, self.image_size, self.channels = files, image_size, channels

    def __call__(self, row: int) -> dict[str, np.ndarray]:
        image, unreadable = None, -1
        if row < len(self.files):
            try:
                image = eval_image(self.files.read(row), self.image_size, self.channels)
            except DECODE_ERRORS:
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

    def __init__(self, files: Files, dataset: grain.MapDataset, workers: int, buffer: int, start: int = 0):
        self.files = files
        self.start = start  # the run's batch the stream began at: Grain's iterator state counts from it
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

    def __init__(self, files: Files, dataset: grain.MapDataset, count: int, workers: int, buffer: int, name: str):
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
    start: int = 0,
) -> TrainStream:
    """This process's shard of the run's train split (the listed `split`'s `rows`, a multiple of the device count):
    a contiguous part, as the devices' shards are; each epoch `steps_per_epoch` batches of `local_batch`, from batch
    `start` on."""
    shard = _shard()
    per_process = len(rows) // shard.shard_count
    files = files_of(listing, split, rows[shard.shard_index * per_process : (shard.shard_index + 1) * per_process])
    # Each process shuffles and crops by its own seeds, drawn from the run's.
    shuffle_seed, crop_seed = np.random.SeedSequence([seed, shard.shard_index]).generate_state(2).tolist()
    example = _TrainExample(files, image_size, channels, steps_per_epoch * local_batch, shuffle_seed)
    dataset = grain.MapDataset.range(sys.maxsize).random_map(example, seed=crop_seed)
    return TrainStream(files, dataset.batch(local_batch, drop_remainder=True)[start:], workers, buffer, start)


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
