"""What the config's `data` section reads: the dataset it names (a folder is recorded into the section as it is
first read, so that config.json says what the run read), the network's input shape and normalisation, and the run's
splits: their sizes, the rows of the source that make each (the validation and train_eval draws recorded and
checked), and their readers, arrays for the devices or Grain streams. The keys are checked in section.py.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ml_collections
import numpy as np

from resnet_jax import configuration
from resnet_jax.data import download, folder, holdout, listing, splits
from resnet_jax.data.registry import (
    FOLDER,
    RUN_SPLITS,
    SPLITS,
    TRAIN_EVAL,
    VALIDATION,
    DataError,
    DatasetInfo,
    SplitArrays,
    get_dataset_info,
)

if TYPE_CHECKING:
    from resnet_jax.data import stream


def check_normalization(data_config: ml_collections.ConfigDict, channels: tuple[int, ...]) -> None:
    """`data.mean` and `data.std`: empty (the dataset's own), or one value per input channel on the 0-1 scale
    (`channels`: the counts that can be, more than one for a folder not yet read)."""
    for key, allowed, inside in (("mean", "[0, 1]", lambda v: 0 <= v <= 1), ("std", "(0, 1]", lambda v: 0 < v <= 1)):
        values = data_config[key]
        numbers = isinstance(values, (tuple, list)) and all(map(configuration.is_number, values))
        if not numbers or len(values) not in (0, *channels):
            raise configuration.ConfigError(
                f"data.{key}={values!r} must give one number per input channel "
                f"({' or '.join(map(str, channels))}), or none for the dataset's own"
            )
        if not all(map(inside, values)):
            raise configuration.ConfigError(
                f"data.{key}={tuple(values)} must be in {allowed} for every channel, on the 0-1 scale of pixel / 255"
            )


def config_dataset_info(data_config: ml_collections.ConfigDict) -> DatasetInfo:
    """The section's dataset: the registry's entry, or what a folder holds. A folder is read (decoded once, into the
    cache) when the section has not recorded it yet, and recorded in it: `class_names`, `image_shape`,
    `split_sizes` (the run's: train less any holdout), `files_digest` (the files' names and sizes, either loader's),
    and `mean` / `std` (its train split's, the holdout included) unless given. config.json then carries them."""
    if data_config.dataset != FOLDER:
        return get_dataset_info(data_config.dataset)
    if not (folder_recorded(data_config) and data_config.mean and data_config.std):
        if data_config.loader == "grain":
            files = listing.open_listing(data_config.files_dir)  # its digest is checked below, after the classes
            statistics = not (data_config.mean and data_config.std)
            found = listing.folder_info(files, data_config.image_size, data_config.channels, statistics)
            digest = files.digest
        else:
            opened = folder.open_folder(data_config.files_dir, data_config.image_size, data_config.channels)
            found, digest = opened.info, opened.files_digest
        _check_folder_agrees(data_config, found, digest)
        data_config.files_digest = digest
        data_config.class_names = found.class_names
        data_config.image_shape = found.image_shape
        data_config.split_sizes.update(_run_split_sizes(data_config, found.split_sizes))
        data_config.mean, data_config.std = tuple(data_config.mean) or found.mean, tuple(data_config.std) or found.std
        check_normalization(data_config, (found.image_shape[-1],))
    return DatasetInfo(
        name=FOLDER,
        class_names=tuple(data_config.class_names),
        image_shape=tuple(data_config.image_shape),
        mean=tuple(data_config.mean),
        std=tuple(data_config.std),
        split_sizes=dict(data_config.split_sizes),
    )


def splits_recorded(data_config: ml_collections.ConfigDict) -> bool:
    """Whether the section recorded its run's splits, as a run does when it starts (a run's config.json)."""
    sizes = data_config.split_sizes
    return bool(sizes.train and sizes.test)


def folder_recorded(data_config: ml_collections.ConfigDict) -> bool:
    return bool(data_config.class_names and data_config.image_shape and splits_recorded(data_config))


def _check_folder_agrees(data_config: ml_collections.ConfigDict, found: DatasetInfo, digest: str) -> None:
    """What the section recorded of a folder must still hold, or the run would mix another dataset into its own:
    its classes, shape and sizes (named first, as they say what changed), then its files (`digest`)."""
    recorded = {
        "class_names": tuple(data_config.class_names),
        "image_shape": tuple(data_config.image_shape),
        **{f"split_sizes.{split}": data_config.split_sizes[split] for split in RUN_SPLITS},
    }
    now_sizes = _run_split_sizes(data_config, found.split_sizes)
    now = {
        "class_names": found.class_names,
        "image_shape": found.image_shape,
        **{f"split_sizes.{split}": now_sizes[split] for split in RUN_SPLITS},
    }
    for key, value in recorded.items():
        if value and value != now[key]:
            raise DataError(
                f"data.{key}={value!r} was recorded from {data_config.files_dir}, which now gives {now[key]!r}: the "
                "folder changed; put it back, or start a new run (--fresh, or another --workdir)"
            )
    folder.check_files_digest(Path(data_config.files_dir).expanduser().absolute(), data_config.files_digest, digest)


def config_input_shape(data_config: ml_collections.ConfigDict) -> tuple[int, int, int]:
    """The network's input shape for the section's dataset, `image_size` and `channels`."""
    if data_config.dataset == FOLDER and data_config.image_size and data_config.channels:
        return (data_config.image_size, data_config.image_size, data_config.channels)  # known before reading
    info = config_dataset_info(data_config)
    return splits.input_shape(info, data_config.image_size or None, data_config.channels or None)


def config_normalization(data_config: ml_collections.ConfigDict) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The per-channel mean and std of the network's input: `data.mean` / `data.std`, or the dataset's own."""
    info = config_dataset_info(data_config)
    try:
        return splits.normalization(info, config_input_shape(data_config)[-1], data_config.mean, data_config.std)
    except DataError as error:
        raise configuration.ConfigError(f"data.mean / data.std: {error}") from None


def _run_split_sizes(data_config: ml_collections.ConfigDict, source_sizes: Mapping[str, int]) -> dict[str, int]:
    """The run's splits from what the source holds: train less the holdout, which is the validation split (or a
    folder's own validation/), and test. A holdout the train split cannot give is a ConfigError."""
    size, train = data_config.validation_size, source_sizes["train"]
    sizes = {"train": train, VALIDATION: source_sizes.get(VALIDATION, 0), "test": source_sizes["test"]}
    if not size:
        return sizes
    if sizes[VALIDATION]:
        raise configuration.ConfigError(
            f"data.validation_size={size:g}: {data_config.files_dir} has a validation/ folder ({sizes[VALIDATION]:,} "
            "images), which is the run's validation split; give data.validation_size=0 to use it, or remove "
            "validation/ to hold one out of train/"
        )
    held = holdout.holdout_count(size, train)
    if held < 1:
        raise configuration.ConfigError(
            f"data.validation_size={size:g} of {train:,} train examples holds out none; give a larger fraction, or "
            "a count"
        )
    if held >= train:
        raise configuration.ConfigError(
            f"data.validation_size={size:g} holds out {held:,} of the {train:,} train examples, leaving none to "
            "train on; give fewer"
        )
    return sizes | {"train": train - held, VALIDATION: held}


def run_split_sizes(data_config: ml_collections.ConfigDict) -> dict[str, int]:
    """What each split of the run holds (`RUN_SPLITS`; validation 0 when there is none), known before reading."""
    if data_config.dataset == FOLDER:
        config_dataset_info(data_config)  # records them
        return {split: data_config.split_sizes[split] for split in RUN_SPLITS}
    source_sizes = {
        split: splits.split_size(
            data_config.dataset,
            split,
            source=data_config.source,
            data_dir=data_config.data_dir or None,
            synthetic_examples=data_config[f"synthetic_{split}_examples"],
        )
        for split in SPLITS
    }
    return _run_split_sizes(data_config, source_sizes)


def record_split_sizes(data_config: ml_collections.ConfigDict) -> dict[str, int]:
    """`run_split_sizes`, recorded in the section's `split_sizes` (so config.json says what the run read), as a run
    is built; a train_eval sample larger than the run's train split is a ConfigError."""
    sizes = run_split_sizes(data_config)
    sample, train = data_config.train_eval_size, sizes["train"]
    # Scoring fewer than asked would leave config.json saying a larger sample was scored than was.
    if sample > train:
        whole = train + sizes[VALIDATION]
        held = f", what data.validation_size leaves of {whole:,}" if data_config.validation_size else ""
        raise configuration.ConfigError(
            f"data.train_eval_size={sample} is more than the run's train split holds ({train:,} examples{held}); "
            f"give at most {train}: --config.data.train_eval_size={train} scores all of it"
        )
    data_config.split_sizes.update(sizes)
    return sizes


def saved_as_read_now(saved_data: dict[str, Any]) -> dict[str, Any]:
    """A saved config.json's `data` section as this version reads it: one written when a train_eval sample larger
    than the run's train split was cut to the split (refused now, by `record_split_sizes`) says the sample that was
    scored, so that the run's tools and a resume read what ran."""
    sample, sizes = saved_data.get("train_eval_size"), saved_data.get("split_sizes")
    train = sizes.get("train") if isinstance(sizes, dict) else None
    if configuration.is_number(sample) and configuration.is_number(train) and 0 < train < sample:
        return {**saved_data, "train_eval_size": train}
    return saved_data


def config_split_size(data_config: ml_collections.ConfigDict, split: str) -> int:
    """The number of examples the run's split holds (train, validation or test), known before it is read."""
    return run_split_sizes(data_config)[split]


def eval_split_size(data_config: ml_collections.ConfigDict, split: str) -> int:
    """The examples an evaluation split of a built run holds: a recorded split's size, or the train_eval sample's
    (`train_eval_size`, held to at most the run's train split as the run is built: `record_split_sizes`)."""
    if split == TRAIN_EVAL:
        return data_config.train_eval_size
    return data_config.split_sizes[split]


def _check_draw(data_config: ml_collections.ConfigDict, split: str, rows: np.ndarray) -> None:
    """Records what a split's rows were drawn by and their digest (`validation_seed 0, 5000 of 50000: 4128...`), or
    refuses a draw by the same recorded parameters whose rows differ (another numpy). A config copied and given
    other parameters records its own draw."""
    drawn_by = f"validation_seed {data_config.validation_seed}, {len(rows)} rows"
    stamp = f"{drawn_by}: {holdout.rows_digest(rows)}"
    recorded = data_config.split_digests[split]
    if recorded.rpartition(": ")[0] == drawn_by and recorded != stamp:
        raise DataError(
            f"the {split} rows drawn now ({stamp}) are not the ones this run recorded ({recorded}): numpy's "
            "generator or the data changed since it began; resume with the numpy it ran with, or start over with "
            "--fresh"
        )
    data_config.split_digests[split] = stamp


def config_loader(data_config: ml_collections.ConfigDict, split: str, seed: int) -> Callable[[slice], SplitArrays]:
    """Reads given rows of one of the run's splits (`RUN_SPLITS`) as the section says (`seed` draws the synthetic
    source's images). A holdout reads the whole train split (in every process) to draw its validation rows."""

    def read(source_split: str, rows: slice | None) -> SplitArrays:
        return splits.load_split(
            data_config.dataset,
            source_split,
            rows=rows,
            source=data_config.source,
            files_dir=data_config.files_dir or None,
            data_dir=data_config.data_dir or None,
            image_size=data_config.image_size or None,
            channels=data_config.channels or None,
            synthetic_examples=data_config[f"synthetic_{source_split}_examples"] if source_split in SPLITS else 0,
            seed=seed,
        )

    def load(rows: slice) -> SplitArrays:
        if data_config.dataset == FOLDER:  # the run's record of its folder against the folder as it is now
            found = folder.open_folder(data_config.files_dir, data_config.image_size, data_config.channels)
            _check_folder_agrees(data_config, found.info, found.files_digest)
        _check_has_split(data_config, split)
        if _source_split(data_config, split) != "train":
            return read(split, rows)
        whole = read("train", None)
        chosen = _train_rows(data_config, split, whole.labels)[slice(None) if rows is None else rows]
        return SplitArrays(whole.images[chosen], whole.labels[chosen])

    return load


def _source_split(data_config: ml_collections.ConfigDict, split: str) -> str:
    """The source's split a run's split is drawn from: train for the holdout and the train_eval sample."""
    if split == "test" or (split != TRAIN_EVAL and not data_config.validation_size):
        return split
    return "train"


def _train_rows(data_config: ml_collections.ConfigDict, split: str, labels: np.ndarray) -> np.ndarray:
    """The rows of the source's train split (of `labels`) that make the run's `split` (train, validation or
    train_eval), in the split's order; the draws recorded or checked (`_check_draw`)."""
    train_rows, validation_rows = np.arange(len(labels)), np.arange(len(labels))
    if data_config.validation_size:
        count = holdout.holdout_count(data_config.validation_size, len(labels))
        train_rows, validation_rows = holdout.holdout_rows(labels, count, data_config.validation_seed)
        _check_draw(data_config, VALIDATION, validation_rows)
    if split == TRAIN_EVAL:
        sample = holdout.subset_rows(
            labels[train_rows], eval_split_size(data_config, TRAIN_EVAL), data_config.validation_seed
        )
        _check_draw(data_config, TRAIN_EVAL, train_rows[sample])
        train_rows = train_rows[sample]
    return validation_rows if split == VALIDATION else train_rows


def _check_has_split(data_config: ml_collections.ConfigDict, split: str) -> None:
    if split == VALIDATION and not run_split_sizes(data_config)[VALIDATION]:
        raise DataError(
            "this run has no validation split; give data.validation_size (a fraction of train, or a count) or "
            "a folder's validation/"
        )


def config_listing(data_config: ml_collections.ConfigDict) -> listing.Listing:
    """The grain loader's listing of the run's folder, checked against its record (`files_digest`). Listing walks
    the whole folder (a million files at ImageNet's size): a run lists it once for all its streams."""
    return listing.open_listing(data_config.files_dir, data_config.files_digest)


def _streamed_rows(
    data_config: ml_collections.ConfigDict, files: listing.Listing, split: str
) -> tuple[str, np.ndarray]:
    """The listed split and rows that make the run's `split`."""
    _check_has_split(data_config, split)
    source = _source_split(data_config, split)
    if source != "train":
        return source, np.arange(len(files.names[source]))
    return source, _train_rows(data_config, split, files.labels["train"])


def config_train_stream(
    data_config: ml_collections.ConfigDict,
    files: listing.Listing,
    seed: int,
    examples: int,
    local_batch: int,
    steps_per_epoch: int,
    start: int = 0,
) -> stream.TrainStream:
    """The grain loader's `stream.TrainStream` of the run's train split (its first `examples`, a multiple of the
    device count) from the run's listing: this process's shard, `steps_per_epoch` batches of `local_batch` an epoch,
    shuffled and cropped by `seed`, from batch `start` on."""
    from resnet_jax.data import stream  # Grain is imported by runs that stream only

    source, rows = _streamed_rows(data_config, files, "train")
    return stream.train_stream(
        files,
        source,
        rows[:examples],
        local_batch,
        steps_per_epoch,
        data_config.image_size,
        data_config.channels,
        seed,
        data_config.workers,
        data_config.per_worker_buffer_size,
        start,
    )


def config_eval_stream(
    data_config: ml_collections.ConfigDict, files: listing.Listing, split: str, padded_rows: int, local_batch: int
) -> stream.EvalStream:
    """The grain loader's `stream.EvalStream` of one of the run's evaluation splits from the run's listing, padded
    to `padded_rows`: this process's part, in batches of `local_batch`."""
    from resnet_jax.data import stream

    source, rows = _streamed_rows(data_config, files, split)
    return stream.eval_stream(
        files,
        source,
        rows,
        padded_rows,
        local_batch,
        data_config.image_size,
        data_config.channels,
        data_config.workers,
        data_config.per_worker_buffer_size,
        split,
    )


def fetch_if_asked(data_config: ml_collections.ConfigDict, part_suffix: str = ".part") -> None:
    """Downloads the official files `files_dir` lacks when `download` is set (a no-op once they are there)."""
    if data_config.source == "files" and data_config.download:
        mirror = data_config.download_mirror or None
        download.fetch_official_files(data_config.dataset, data_config.files_dir, mirror, part_suffix)
