"""The config's `data` section: its defaults, its checks, and the reads and downloads it asks for. The section goes
here whole; no other module reads its keys.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

import ml_collections

from resnet_jax import configuration
from resnet_jax.data import download, splits
from resnet_jax.data.registry import (
    DATASETS,
    SOURCES,
    SPLITS,
    DataError,
    DatasetInfo,
    SplitArrays,
    get_dataset_info,
)

DEFAULTS = {
    "dataset": "cifar10",
    "source": "tfds",
    "files_dir": "",  # the `files` source's folder (~ is expanded)
    "download": False,  # True: download the official files files_dir lacks, verified by sha256
    "download_mirror": "",  # a base URL serving the official file names; empty: the official hosts
    "data_dir": "",
    "image_size": 32,  # grey 28x28 sets are zero-padded to this; 0 keeps the native size
    "channels": 0,  # 0: native; 3 repeats a grey channel
    "mean": (),  # empty: the dataset's own statistics
    "std": (),
    "synthetic_train_examples": 0,  # 0: the registry's size
    "synthetic_test_examples": 0,
}


def default_files_dir(dataset: str) -> str:
    """Where the official files of `dataset` are downloaded when no folder is given."""
    return f"~/.cache/resnet-jax/data/{dataset}"


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # a system that does not say
        return None


def check_config(data_config: ml_collections.ConfigDict) -> None:
    """Raises a one-line ConfigError for the first `data` key that cannot work (no file is read)."""
    configuration.check_choice("data.dataset", data_config.dataset, DATASETS)
    configuration.check_choice("data.source", data_config.source, SOURCES)
    configuration.check_choice("data.download", data_config.download, (False, True))
    for key in ("files_dir", "data_dir", "download_mirror"):
        if not isinstance(data_config[key], str):
            raise configuration.ConfigError(f"data.{key}={data_config[key]!r} must be a string ('' for none)")
    if data_config.source == "files":
        files_dir = data_config.files_dir
        if data_config.download and not files_dir:
            raise configuration.ConfigError(
                "data.files_dir='' is empty; set it to the folder to download the official files into"
            )
        if not data_config.download and (not files_dir or not Path(files_dir).expanduser().is_dir()):
            raise configuration.ConfigError(
                f"data.files_dir={files_dir!r} is not a folder; set it to the folder holding the official files, "
                "or add --config.data.download=True to download them there"
            )
    mirror = data_config.download_mirror
    if mirror and urlparse(mirror).scheme not in ("http", "https"):
        raise configuration.ConfigError(
            f"data.download_mirror={mirror!r} is not an http(s) address; give it as http://HOST/PATH/ or https://..."
        )
    info = get_dataset_info(data_config.dataset)
    native_size, _, native_channels = info.image_shape
    configuration.check_at_least("data.image_size", data_config.image_size, 0, "0 keeps the native size")
    if data_config.image_size and data_config.image_size < native_size:
        raise configuration.ConfigError(
            f"data.image_size={data_config.image_size} is smaller than the images ({native_size}); give at least "
            f"{native_size}, or 0 to keep their size"
        )
    configuration.check_choice("data.channels", data_config.channels, (0, 1, 3))
    if data_config.channels not in (0, native_channels) and native_channels != 1:
        raise configuration.ConfigError(
            f"data.channels={data_config.channels}: {info.name} has {native_channels}-channel images, and only grey "
            f"ones are repeated to 3; give 0 or {native_channels}"
        )
    for split in SPLITS:
        key = f"synthetic_{split}_examples"
        configuration.check_at_least(f"data.{key}", data_config[key], 0, "0 keeps the dataset's size")
    _check_normalization(data_config, config_input_shape(data_config)[-1])
    _check_memory(data_config, info)


def _check_normalization(data_config: ml_collections.ConfigDict, channels: int) -> None:
    """`data.mean` and `data.std`: empty (the dataset's own), or one value per input channel on the 0-1 scale."""
    for key, allowed, inside in (("mean", "[0, 1]", lambda v: 0 <= v <= 1), ("std", "(0, 1]", lambda v: 0 < v <= 1)):
        values = data_config[key]
        numbers = isinstance(values, (tuple, list)) and all(
            isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) for value in values
        )
        if not numbers or len(values) not in (0, channels):
            raise configuration.ConfigError(
                f"data.{key}={values!r} must give one number per input channel ({channels}), or none for the "
                "dataset's own"
            )
        if not all(map(inside, values)):
            raise configuration.ConfigError(
                f"data.{key}={tuple(values)} must be in {allowed} for every channel, on the 0-1 scale of pixel / 255"
            )


def _check_memory(data_config: ml_collections.ConfigDict, info: DatasetInfo) -> None:
    """The splits, at the network's input shape, must fit in this machine's memory: else numpy's allocation fails
    with a traceback, or the machine swaps."""
    memory = _physical_memory()
    if memory is None:
        return
    height, width, channels = config_input_shape(data_config)
    counts = [data_config[f"synthetic_{split}_examples"] or info.split_sizes[split] for split in SPLITS]
    needed = sum(counts) * height * width * channels
    if needed > memory:
        native = info.image_shape[0]
        split = SPLITS[counts.index(max(counts))]
        key = (
            f"data.image_size={data_config.image_size}"
            if data_config.image_size > native
            else f"data.synthetic_{split}_examples={counts[SPLITS.index(split)]}"
        )
        raise configuration.ConfigError(
            f"{key}: the splits' {sum(counts):,} images of {height}x{width}x{channels} take {needed / 2**30:,.0f} GiB, "
            f"more than this machine's {memory / 2**30:,.0f} GiB of memory; give a smaller data.image_size (0 keeps "
            f"the native {native}) or fewer examples"
        )


def use_official_files(data_config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Reads the dataset from its official files, downloaded (and verified) into the user's cache when missing:
    what the CIFAR configs do, as preparing CIFAR with tfds needs TensorFlow."""
    data_config.source = "files"
    data_config.download = True
    data_config.files_dir = default_files_dir(data_config.dataset)
    return data_config


def config_input_shape(data_config: ml_collections.ConfigDict) -> tuple[int, int, int]:
    """The network's input shape for the section's dataset, `image_size` and `channels`."""
    info = get_dataset_info(data_config.dataset)
    return splits.input_shape(info, data_config.image_size or None, data_config.channels or None)


def config_normalization(data_config: ml_collections.ConfigDict) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The per-channel mean and std of the network's input: `data.mean` / `data.std`, or the dataset's own."""
    info = get_dataset_info(data_config.dataset)
    try:
        return splits.normalization(info, config_input_shape(data_config)[-1], data_config.mean, data_config.std)
    except DataError as error:
        raise configuration.ConfigError(f"data.mean / data.std: {error}") from None


def config_split_size(data_config: ml_collections.ConfigDict, split: str) -> int:
    """The number of examples the section's split holds, known before it is read."""
    return splits.split_size(
        data_config.dataset,
        split,
        source=data_config.source,
        data_dir=data_config.data_dir or None,
        synthetic_examples=data_config[f"synthetic_{split}_examples"],
    )


def config_loader(data_config: ml_collections.ConfigDict, split: str, seed: int) -> Callable[[slice], SplitArrays]:
    """Reads given rows of a split as the section says (`seed` draws the synthetic source's images)."""
    return lambda rows: splits.load_split(
        data_config.dataset,
        split,
        rows=rows,
        source=data_config.source,
        files_dir=data_config.files_dir or None,
        data_dir=data_config.data_dir or None,
        image_size=data_config.image_size or None,
        channels=data_config.channels or None,
        synthetic_examples=data_config[f"synthetic_{split}_examples"],
        seed=seed,
    )


def fetch_if_asked(data_config: ml_collections.ConfigDict, part_suffix: str = ".part") -> None:
    """Downloads the official files `files_dir` lacks when `download` is set (a no-op once they are there)."""
    if data_config.source == "files" and data_config.download:
        mirror = data_config.download_mirror or None
        download.fetch_official_files(data_config.dataset, data_config.files_dir, mirror, part_suffix)
