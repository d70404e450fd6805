"""The one entry point to a split, whatever its source (`load_split`), what is known of it before reading
(`split_size`, `input_shape`, `normalization`), how native images meet the network's input, and `describe`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from resnet_jax.data import files, folder, synthetic, tfds_source
from resnet_jax.data.registry import SOURCES, DataError, DatasetInfo, SplitArrays, check_split, get_dataset_info


def to_input_shape(images: np.ndarray, image_size: int, channels: int) -> np.ndarray:
    """Brings native images to the network's input: zero-pad (centred) to `image_size`, repeat grey to 3 channels."""
    height, width, native_channels = images.shape[1:]
    if height > image_size or width > image_size:
        raise DataError(f"images are {height}x{width}, larger than data.image_size={image_size}")
    top, left = (image_size - height) // 2, (image_size - width) // 2
    if (height, width) != (image_size, image_size):
        pads = ((0, 0), (top, image_size - height - top), (left, image_size - width - left), (0, 0))
        images = np.pad(images, pads)
    if channels != native_channels:
        if native_channels != 1:
            raise DataError(f"cannot turn {native_channels}-channel images into {channels} channels")
        images = np.repeat(images, channels, axis=-1)
    return images


def input_shape(info: DatasetInfo, image_size: int | None = None, channels: int | None = None) -> tuple[int, int, int]:
    """The network's input shape for a dataset and the config's `image_size` / `channels` (None: native)."""
    height, _, native_channels = info.image_shape
    return (image_size or height, image_size or height, channels or native_channels)


def normalization(
    info: DatasetInfo,
    channels: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std for the network's input channels (a grey dataset repeated to RGB repeats them)."""
    mean, std = tuple(mean or info.mean), tuple(std or info.std)
    channels = channels or info.image_shape[-1]
    if len(mean) == 1 and channels > 1:
        mean, std = mean * channels, std * channels
    if len(mean) != channels or len(std) != channels:
        raise DataError(f"mean {mean} / std {std} do not have one value per input channel ({channels})")
    return mean, std


def split_size(
    dataset: str,
    split: str,
    *,
    source: str = "tfds",
    data_dir: str | None = None,
    synthetic_examples: int = 0,
    files_dir: str | None = None,
    image_size: int | None = None,
    channels: int | None = None,
) -> int:
    """Number of examples in a split, known before reading it (so that each process can load only its rows); a
    folder's is known once it is decoded (the first time only: it is cached)."""
    if source == folder.FOLDER:
        return folder.open_folder(files_dir, image_size or 0, channels or 0).info.split_sizes.get(split, 0)
    info = get_dataset_info(dataset)
    if source == "synthetic" or info.name == "synthetic":
        return synthetic_examples or info.split_sizes[split]
    if source == "tfds":
        prepared = tfds_source.prepared_size(info, split, data_dir)
        if prepared is not None:
            return prepared
    return info.split_sizes[split]


def load_split(
    dataset: str,
    split: str,
    *,
    source: str = "tfds",
    files_dir: str | None = None,
    data_dir: str | None = None,
    image_size: int | None = None,
    channels: int | None = None,
    synthetic_examples: int = 0,
    seed: int = 0,
    rows: slice | None = None,
) -> SplitArrays:
    """Returns one split as uint8 NHWC images in the network's input shape and int32 labels.

    `rows` selects a contiguous slice (a process's share in a multi-host run); the tfds source then decodes only
    those examples. A folder's images are decoded at the input shape already (`dataset` is then ignored); a folder
    may also hold a `validation` split.
    """
    if source == folder.FOLDER:
        arrays = folder.open_folder(files_dir, image_size or 0, channels or 0).split(split)
        return arrays if rows is None else SplitArrays(arrays.images[rows], arrays.labels[rows])
    check_split(split)
    info = get_dataset_info(dataset)
    if source == "synthetic" or info.name == "synthetic":
        count = synthetic_examples or info.split_sizes[split]
        arrays = synthetic.synthetic_split(info.image_shape, info.num_classes, count, seed, split)
    elif source == "files":
        arrays = files.load_files(info, split, files_dir)
    elif source == "tfds":
        arrays = tfds_source.load_tfds(info, split, data_dir, rows)
        rows = None
    else:
        raise DataError(f"unknown data source {source!r}; choose one of {', '.join(SOURCES)}")
    if rows is not None:
        arrays = SplitArrays(arrays.images[rows], arrays.labels[rows])
    height, _, native_channels = input_shape(info, image_size, channels)
    return SplitArrays(to_input_shape(arrays.images, height, channels or native_channels), arrays.labels)


def describe(arrays: SplitArrays, info: DatasetInfo) -> str:
    """A split's size, image shape, per-channel mean/std and class histogram, as indented lines."""
    counts = np.bincount(arrays.labels, minlength=info.num_classes)
    pixels = arrays.images.reshape(-1, arrays.images.shape[-1])
    mean = pixels.mean(axis=0, dtype=np.float64) / 255
    std = pixels.std(axis=0, dtype=np.float64) / 255
    lines = [f"  examples: {len(arrays):,}  image shape: {arrays.images.shape[1:]}"]
    lines.append("  mean: " + ", ".join(f"{m:.4f}" for m in mean) + "  std: " + ", ".join(f"{s:.4f}" for s in std))
    lines.append("  class histogram:")
    width = max(len(name) for name in info.class_names)
    for name, count in zip(info.class_names, counts, strict=True):
        lines.append(f"    {name:<{width}} {count:>7,}")
    return "\n".join(lines)
