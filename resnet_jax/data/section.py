"""The config's `data` section: its defaults and its checks, each key's form checked here, once, before anything is
read. What the section reads (the dataset, the run's splits and their readers) is in run_splits.py, which checks, as
it reads, what needs the data (a holdout and the train_eval sample against the train split's size, mean and std
against its channels).
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

import ml_collections

from resnet_jax import configuration
from resnet_jax.data import folder, run_splits
from resnet_jax.data.registry import (
    DATASETS,
    FOLDER,
    RUN_SPLITS,
    SOURCES,
    SPLITS,
    TRAIN_EVAL,
    VALIDATION,
    DatasetInfo,
    get_dataset_info,
)

DEFAULTS = {
    "dataset": "cifar10",
    "source": "tfds",
    "files_dir": "",  # the `files` source's folder; the `folder` source's folder or .tar/.tar.gz (~ is expanded)
    "download": False,  # True: download the official files files_dir lacks, verified by sha256
    "download_mirror": "",  # a base URL serving the official file names; empty: the official hosts
    "data_dir": "",
    "image_size": 32,  # grey 28x28 sets are zero-padded to this, a folder's images resized; 0 keeps the native size
    "channels": 0,  # 0: native (a folder: RGB if any image has colour); 3 repeats a grey channel, 1 greys a folder's
    "mean": (),  # empty: the dataset's own statistics (a folder's: its train split's, recorded as the run starts)
    "std": (),
    # A folder's DatasetInfo, recorded from it as a run starts, so that config.json names the classes to the run's
    # tools on a machine without the folder; when given, the folder must still agree.
    "class_names": (),
    "image_shape": (),  # (height, width, channels) as decoded
    # Held out from train as the validation split, stratified by class: 0 none, below 1 a fraction of train, else a
    # count. A folder with a validation/ folder has its own (then 0 here).
    "validation_size": 0.0,
    "validation_seed": 0,  # draws the held-out examples (and the train_eval sample); independent of the training seed
    # He et al.'s training error: this many of the run's train examples (a stratified draw by validation_seed, fixed
    # for the run), scored unaugmented in evaluation mode at every evaluation as the `train_eval` split; 0 none.
    "train_eval_size": 0,
    # What drew the validation and train_eval rows and their digest, recorded as a run starts; a resume whose draw
    # differs (another numpy) is refused. "": not yet.
    "split_digests": {VALIDATION: "", TRAIN_EVAL: ""},
    # What each split of the run holds (train: what the holdout leaves), recorded as a run starts; 0: not yet.
    "split_sizes": {"train": 0, VALIDATION: 0, "test": 0},
    "synthetic_train_examples": 0,  # 0: the registry's size
    "synthetic_test_examples": 0,
    # "device": every split decoded once, then held in the devices' memory (data/folder.py for a folder); "grain": a
    # folder (or plain .tar) of images of any size streamed from its files by Grain (data/stream.py), for data larger
    # than memory: decoding, random-resized crop and flip (data/crops.py) in worker processes, each its own shard.
    "loader": "device",
    "workers": 4,  # the grain loader's worker processes; 0 decodes in the training process
    "per_worker_buffer_size": 2,  # batches each grain worker keeps ready (Grain's MultiprocessingOptions)
    # A folder's record of its image files (their names and sizes), taken as a run starts by either loader; a resume
    # on files that differ is refused. "": not yet.
    "files_digest": "",
}
LOADERS = ("device", "grain")


def default_files_dir(dataset: str) -> str:
    """Where the official files of `dataset` are downloaded when no folder is given."""
    return f"~/.cache/resnet-jax/data/{dataset}"


def check_config(data_config: ml_collections.ConfigDict) -> None:
    """Raises a one-line ConfigError for the first `data` key that cannot work (no file is read)."""
    configuration.check_choice("data.dataset", data_config.dataset, (*DATASETS, FOLDER))
    configuration.check_choice("data.source", data_config.source, SOURCES)
    if (data_config.source == FOLDER) != (data_config.dataset == FOLDER):
        raise configuration.ConfigError(
            f"data.source={data_config.source!r} with data.dataset={data_config.dataset!r}: a folder of images is "
            "the dataset and its source; give data.source='folder' and data.dataset='folder' together"
        )
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
        # A section that recorded its splits (a run's config.json) reads the files only as a split is read, which
        # names a missing folder: a run's export or predict, which read none, work without them.
        recorded = run_splits.splits_recorded(data_config)
        if not (data_config.download or recorded) and (not files_dir or not Path(files_dir).expanduser().is_dir()):
            raise configuration.ConfigError(
                f"data.files_dir={files_dir!r} is not a folder; set it to the folder holding the official files, "
                "or add --config.data.download=True to download them there"
            )
    mirror = data_config.download_mirror
    if mirror and urlparse(mirror).scheme not in ("http", "https"):
        raise configuration.ConfigError(
            f"data.download_mirror={mirror!r} is not an http(s) address; give it as http://HOST/PATH/ or https://..."
        )
    _check_validation_config(data_config)
    configuration.check_choice("data.loader", data_config.loader, LOADERS)
    configuration.check_at_least("data.workers", data_config.workers, 0, "0 decodes in the training process")
    configuration.check_positive("data.per_worker_buffer_size", data_config.per_worker_buffer_size, integer=True)
    if not isinstance(data_config.files_digest, str):
        raise configuration.ConfigError(f"data.files_digest={data_config.files_digest!r} must be a string")
    if data_config.loader == "grain":
        _check_grain_config(data_config)
    if data_config.source == FOLDER:
        _check_folder_config(data_config)
        return
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
    run_splits.check_normalization(data_config, (run_splits.config_input_shape(data_config)[-1],))
    _check_memory(data_config, info)


def _check_validation_config(data_config: ml_collections.ConfigDict) -> None:
    """`data.validation_size`, `data.validation_seed` and `data.train_eval_size`; a size the train split cannot give
    is refused when the split sizes are known (`run_split_sizes`)."""
    size = data_config.validation_size
    if not configuration.is_number(size) or size < 0:
        raise configuration.ConfigError(
            f"data.validation_size={size!r} must be 0 (no validation split), a fraction of train below 1, or a "
            "count of at least 1"
        )
    if size >= 1 and size != int(size):
        raise configuration.ConfigError(
            f"data.validation_size={size!r}: a count of examples is a whole number, and a fraction of train is "
            "below 1; give e.g. 5000 or 0.1"
        )
    configuration.check_seed("data.validation_seed", data_config.validation_seed)
    configuration.check_at_least("data.train_eval_size", data_config.train_eval_size, 0, "0 scores no train sample")


def _check_grain_config(data_config: ml_collections.ConfigDict) -> None:
    """What the grain loader cannot serve, each refused in one line naming the fix."""
    if data_config.dataset != FOLDER:
        raise configuration.ConfigError(
            f"data.loader='grain' streams a folder of images, not data.dataset={data_config.dataset!r}; give "
            "data.dataset='folder', data.source='folder' and data.files_dir, or data.loader='device'"
        )
    if not data_config.image_size:
        raise configuration.ConfigError(
            "data.image_size=0: the grain loader crops and resizes images of any size to one; give it, e.g. 224"
        )
    if data_config.files_dir.endswith((".tar.gz", ".tgz")):
        raise configuration.ConfigError(
            f"data.files_dir={data_config.files_dir!r}: the grain loader reads archive members in place, which a "
            "compressed archive cannot give; unpack it into a folder (or a plain .tar), or use data.loader='device'"
        )


def _check_folder_config(data_config: ml_collections.ConfigDict) -> None:
    """The folder source's keys; its images are read (and any bad layout told) when the run is built. A section
    that recorded its folder needs none until a split is read (a run's tools on another machine)."""
    path = Path(data_config.files_dir).expanduser()
    if not (run_splits.folder_recorded(data_config) or (data_config.files_dir and path.exists())):
        raise configuration.ConfigError(
            f"data.files_dir={data_config.files_dir!r} does not exist; put a folder of images there (or a .tar/.tar.gz "
            f"of one) holding {folder.LAYOUT}, or point data.files_dir at yours"
        )
    configuration.check_at_least("data.image_size", data_config.image_size, 0, "0 keeps the images' own size")
    configuration.check_choice("data.channels", data_config.channels, (0, 1, 3))
    names = data_config.class_names
    if not isinstance(names, (tuple, list)) or not all(isinstance(name, str) and name for name in names):
        raise configuration.ConfigError(f"data.class_names={names!r} must be class names, or () to read the folder's")
    shape = data_config.image_shape
    if not isinstance(shape, (tuple, list)) or len(shape) not in (0, 3) or not all(isinstance(n, int) for n in shape):
        raise configuration.ConfigError(f"data.image_shape={shape!r} must be (height, width, channels), or ()")
    for split in RUN_SPLITS:
        configuration.check_at_least(f"data.split_sizes.{split}", data_config.split_sizes[split], 0, "0: not read")
    channels = shape[-1] if shape else data_config.channels
    run_splits.check_normalization(data_config, (channels,) if channels else (1, 3))


def _check_memory(data_config: ml_collections.ConfigDict, info: DatasetInfo) -> None:
    """The splits, at the network's input shape, must fit in this machine's memory: else numpy's allocation fails
    with a traceback, or the machine swaps."""
    memory = folder.physical_memory()
    if memory is None:
        return
    height, width, channels = run_splits.config_input_shape(data_config)
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


def use_folder(data_config: ml_collections.ConfigDict, path: str | os.PathLike) -> ml_collections.ConfigDict:
    """Reads the dataset from a folder (or a .tar/.tar.gz of one) of class folders of images."""
    data_config.dataset = data_config.source = FOLDER
    data_config.files_dir = str(path)
    return data_config
