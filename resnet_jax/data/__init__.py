"""Datasets as uint8 NHWC images and int32 labels: the registry, the sources (official files, tfds, synthetic, a
folder of images), the official files' download, and the config's `data` section: its keys (`section`) and what it
reads (`run_splits`). The names below are the package's public face; `holdout` draws the validation split out of
train.
"""

from resnet_jax.data.download import fetch_official_files
from resnet_jax.data.folder import open_folder
from resnet_jax.data.registry import (
    DATASETS,
    FOLDER,
    SOURCES,
    SPLITS,
    TRAIN_EVAL,
    VALIDATION,
    DataError,
    DatasetInfo,
    SplitArrays,
    get_dataset_info,
)
from resnet_jax.data.run_splits import (
    config_dataset_info,
    config_eval_stream,
    config_input_shape,
    config_listing,
    config_loader,
    config_normalization,
    config_split_size,
    config_train_stream,
    eval_split_size,
    fetch_if_asked,
    record_split_sizes,
    run_split_sizes,
    saved_as_read_now,
)
from resnet_jax.data.section import DEFAULTS, check_config, default_files_dir, use_folder, use_official_files
from resnet_jax.data.splits import describe, load_split, split_size, to_input_shape
from resnet_jax.data.synthetic import synthetic_split
from resnet_jax.data.tfds_source import prepare

__all__ = [
    "DATASETS",
    "DEFAULTS",
    "FOLDER",
    "SOURCES",
    "SPLITS",
    "TRAIN_EVAL",
    "VALIDATION",
    "DataError",
    "DatasetInfo",
    "SplitArrays",
    "check_config",
    "config_dataset_info",
    "config_eval_stream",
    "config_input_shape",
    "config_listing",
    "config_loader",
    "config_normalization",
    "config_split_size",
    "config_train_stream",
    "default_files_dir",
    "describe",
    "eval_split_size",
    "fetch_if_asked",
    "fetch_official_files",
    "get_dataset_info",
    "load_split",
    "open_folder",
    "prepare",
    "record_split_sizes",
    "run_split_sizes",
    "saved_as_read_now",
    "split_size",
    "synthetic_split",
    "to_input_shape",
    "use_folder",
    "use_official_files",
]
