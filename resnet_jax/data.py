"""Datasets as uint8 NHWC images and int32 labels: the registry, and the tfds, files and synthetic sources.

Also the tools: `python -m resnet_jax.data download` fetches the official files (with `resnet_jax.download`),
`prepare` builds tfds data from official archives a user already has, and `info` describes a split. tfds is imported
lazily.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import logging
import os
import pickle
import socket
import sys
import tarfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import ml_collections
import numpy as np

from resnet_jax import configuration, download

SOURCES = ("tfds", "files", "synthetic")
logger = logging.getLogger(__name__)
SPLITS = ("train", "test")


class DataError(RuntimeError):
    """Data that cannot be found or read; the message says how to fix it."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What the trainer needs to know of a dataset before reading it."""

    name: str
    class_names: tuple[str, ...]
    image_shape: tuple[int, int, int]  # as distributed: (height, width, channels)
    mean: tuple[float, ...]  # per channel, on a 0-1 scale
    std: tuple[float, ...]
    split_sizes: dict[str, int]
    tfds_name: str | None = None
    download_url: str | None = None  # the official archive; its host is probed before tfds tries to download
    official_files: tuple[str, ...] = ()  # what a `files` folder or a tfds manual dir should hold

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


_FASHION_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)

DATASETS: dict[str, DatasetInfo] = {
    "cifar10": DatasetInfo(
        name="cifar10",
        class_names=("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
        image_shape=(32, 32, 3),
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
        split_sizes={"train": 50_000, "test": 10_000},
        tfds_name="cifar10",
        download_url="https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
        official_files=("cifar-10-binary.tar.gz", "cifar-10-batches-bin/", "cifar-10-python.tar.gz"),
    ),
    "cifar100": DatasetInfo(
        name="cifar100",
        class_names=tuple(
            (  # noqa: SIM905  (a word list reads better than 100 lines)
                "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly "
                "camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile "
                "cup dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp "
                "lawn_mower leopard lion lizard lobster man maple_tree motorcycle mountain mouse mushroom "
                "oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree plain plate poppy porcupine "
                "possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk skyscraper snail snake "
                "spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger tractor "
                "train trout tulip turtle wardrobe whale willow_tree wolf woman worm"
            ).split()
        ),
        image_shape=(32, 32, 3),
        mean=(0.5071, 0.4865, 0.4409),
        std=(0.2673, 0.2564, 0.2762),
        split_sizes={"train": 50_000, "test": 10_000},
        tfds_name="cifar100",
        download_url="https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz",
        official_files=("cifar-100-binary.tar.gz", "cifar-100-binary/", "cifar-100-python.tar.gz"),
    ),
    "fashion_mnist": DatasetInfo(
        name="fashion_mnist",
        class_names=(
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
        image_shape=(28, 28, 1),
        mean=(0.2860,),
        std=(0.3530,),
        split_sizes={"train": 60_000, "test": 10_000},
        tfds_name="fashion_mnist",
        download_url="http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/train-images-idx3-ubyte.gz",
        official_files=_FASHION_FILES,
    ),
    "mnist": DatasetInfo(
        name="mnist",
        class_names=tuple(str(digit) for digit in range(10)),
        image_shape=(28, 28, 1),
        mean=(0.1307,),
        std=(0.3081,),
        split_sizes={"train": 60_000, "test": 10_000},
        tfds_name="mnist",
        download_url="https://storage.googleapis.com/cvdf-datasets/mnist/train-images-idx3-ubyte.gz",
        official_files=_FASHION_FILES,
    ),
    "synthetic": DatasetInfo(
        name="synthetic",
        class_names=tuple(f"class_{index}" for index in range(10)),
        image_shape=(32, 32, 3),
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        split_sizes={"train": 2_048, "test": 512},
    ),
}


def get_dataset_info(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return DATASETS[name]


@dataclasses.dataclass(frozen=True)
class SplitArrays:
    """One split in host memory."""

    images: np.ndarray  # uint8, (N, H, W, C)
    labels: np.ndarray  # int32, (N,)

    def __len__(self) -> int:
        return len(self.labels)


# ----------------------------------------------------------------------------------------------------------------
# The `files` source: official archives read with numpy.


def _read_member(archive: Path, member_suffix: str) -> bytes:
    """Reads one member of a tar.gz whose name ends with `member_suffix`, with errors a user can act on."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar.getmembers():
                if member.name.endswith(member_suffix):
                    extracted = tar.extractfile(member)
                    if extracted is None:
                        break
                    return extracted.read()
    except (tarfile.TarError, OSError, EOFError, gzip.BadGzipFile) as error:
        raise DataError(f"{archive} is not a readable tar.gz archive ({error}); download it again") from error
    raise DataError(f"{archive} has no member ending in {member_suffix!r}; is it the right archive?")


def _decode_cifar_binary(raw: bytes, label_bytes: int, label_index: int, source: str) -> SplitArrays:
    record = label_bytes + 3072
    if len(raw) == 0 or len(raw) % record:
        raise DataError(
            f"{source}: {len(raw)} bytes is not a whole number of {record}-byte CIFAR records; "
            "the file is truncated or not a CIFAR binary file"
        )
    table = np.frombuffer(raw, np.uint8).reshape(-1, record)
    images = table[:, label_bytes:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return SplitArrays(np.ascontiguousarray(images), table[:, label_index].astype(np.int32))


def _concat(parts: Sequence[SplitArrays]) -> SplitArrays:
    return SplitArrays(np.concatenate([p.images for p in parts]), np.concatenate([p.labels for p in parts]))


def _cifar10_binary(read: Callable[[str], bytes], split: str) -> SplitArrays:
    names = [f"data_batch_{index}.bin" for index in range(1, 6)] if split == "train" else ["test_batch.bin"]
    return _concat([_decode_cifar_binary(read(name), 1, 0, name) for name in names])


def _cifar_python(read: Callable[[str], bytes], names: Sequence[str], label_key: bytes) -> SplitArrays:
    parts = []
    for name in names:
        try:
            batch = pickle.loads(read(name), encoding="bytes")
            data, labels = np.asarray(batch[b"data"], np.uint8), np.asarray(batch[label_key], np.int32)
        except (pickle.UnpicklingError, KeyError, EOFError, ValueError, TypeError) as error:
            raise DataError(f"{name} is not a CIFAR python batch ({error!r}); download the archive again") from error
        if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
            raise DataError(f"{name}: unexpected array shapes {data.shape} / {labels.shape}; the file is damaged")
        parts.append(SplitArrays(np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)), labels))
    return _concat(parts)


def _read_idx(raw: bytes, expected_dims: int, source: str) -> np.ndarray:
    """Parses an IDX file (the MNIST format): magic 0x0000 0x08 <dims>, big-endian sizes, uint8 data."""
    if len(raw) < 4 or raw[:3] != b"\x00\x00\x08" or raw[3] != expected_dims:
        raise DataError(f"{source} is not an IDX uint8 file with {expected_dims} dimensions (bad magic number)")
    shape = tuple(int(size) for size in np.frombuffer(raw[4 : 4 + 4 * expected_dims], ">u4"))
    body = raw[4 + 4 * expected_dims :]
    if len(body) != int(np.prod(shape)):
        raise DataError(f"{source}: header promises {shape} but the file holds {len(body)} bytes; it is truncated")
    return np.frombuffer(body, np.uint8).reshape(shape)


def _open_maybe_gzip(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as handle:
                return handle.read()
        return path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as error:
        raise DataError(f"{path} cannot be read ({error}); the file is damaged or truncated") from error


def _mnist_files(folder: Path, split: str) -> SplitArrays:
    prefix = "train" if split == "train" else "t10k"

    def find(kind: str) -> Path:
        for name in (f"{prefix}-{kind}.gz", f"{prefix}-{kind}", f"{prefix}-{kind.replace('-idx', '.idx')}"):
            if (folder / name).exists():
                return folder / name
        raise DataError(f"{folder} has no {prefix}-{kind}.gz")

    images_path, labels_path = find("images-idx3-ubyte"), find("labels-idx1-ubyte")
    images = _read_idx(_open_maybe_gzip(images_path), 3, str(images_path))
    labels = _read_idx(_open_maybe_gzip(labels_path), 1, str(labels_path))
    if len(images) != len(labels):
        raise DataError(f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels")
    return SplitArrays(np.ascontiguousarray(images[..., None]), labels.astype(np.int32))


def _cifar_files(info: DatasetInfo, folder: Path, split: str) -> SplitArrays:
    if info.name == "cifar10":
        extracted = next(
            (d for d in (folder / "cifar-10-batches-bin", folder) if (d / "test_batch.bin").exists()), None
        )
        if extracted is not None:
            return _cifar10_binary(lambda name: (extracted / name).read_bytes(), split)
        if (folder / "cifar-10-binary.tar.gz").exists():
            archive = folder / "cifar-10-binary.tar.gz"
            return _cifar10_binary(lambda name: _read_member(archive, "/" + name), split)
        if (folder / "cifar-10-python.tar.gz").exists():
            archive = folder / "cifar-10-python.tar.gz"
            names = [f"data_batch_{index}" for index in range(1, 6)] if split == "train" else ["test_batch"]
            return _cifar_python(lambda name: _read_member(archive, "/" + name), names, b"labels")
    else:
        name = "train.bin" if split == "train" else "test.bin"
        extracted = next((d for d in (folder / "cifar-100-binary", folder) if (d / name).exists()), None)
        if extracted is not None:
            return _decode_cifar_binary((extracted / name).read_bytes(), 2, 1, name)
        if (folder / "cifar-100-binary.tar.gz").exists():
            raw = _read_member(folder / "cifar-100-binary.tar.gz", "/" + name)
            return _decode_cifar_binary(raw, 2, 1, name)
        if (folder / "cifar-100-python.tar.gz").exists():
            archive = folder / "cifar-100-python.tar.gz"
            return _cifar_python(lambda n: _read_member(archive, "/" + n), [split], b"fine_labels")
    raise DataError(f"{folder} holds none of the official {info.name} files: {', '.join(info.official_files)}")


def default_files_dir(dataset: str) -> str:
    """Where the official files of `dataset` are downloaded when no folder is given."""
    return f"~/.cache/resnet-jax/data/{dataset}"


def fetch_official_files(
    dataset: str, files_dir: str | os.PathLike, mirror: str | None = None, part_suffix: str = ".part"
) -> dict[str, bool]:
    """Downloads the official files of `dataset` that `files_dir` lacks, verified against their sha256 (see
    `download.fetch_files`). Returns, per file name, whether it was downloaded."""
    if dataset not in download.OFFICIAL_FILES:
        raise DataError(
            f"{dataset!r} has no official files to download; choose one of {', '.join(download.OFFICIAL_FILES)}"
        )
    files = download.OFFICIAL_FILES[dataset]
    try:
        return download.fetch_files(files, files_dir, mirror=mirror, part_suffix=part_suffix)
    except download.HostUnreachable as error:
        raise DataError(
            f"{dataset}: {error}, so its official files cannot be downloaded into {files_dir}. Copy "
            f"{', '.join(files.sha256)} there yourself, download them from a mirror (--mirror URL, or "
            "data.download_mirror), or train on random data: --config.data.source=synthetic"
        ) from error
    except download.DownloadError as error:
        raise DataError(str(error)) from error


def _load_files(info: DatasetInfo, split: str, files_dir: str | os.PathLike | None) -> SplitArrays:
    if not files_dir:
        raise DataError(f"data.files_dir is empty; set it to a folder holding {', '.join(info.official_files)}")
    folder = Path(files_dir).expanduser()
    if not folder.is_dir():
        raise DataError(
            f"data.files_dir {str(folder)!r} does not exist; point it at the folder with the {info.name} files, or "
            f"download them there: python -m resnet_jax.data download --dataset {info.name} --files-dir {folder}"
        )
    if info.name in ("cifar10", "cifar100"):
        arrays = _cifar_files(info, folder, split)
    elif info.name in ("mnist", "fashion_mnist"):
        arrays = _mnist_files(folder, split)
    else:
        raise DataError(f"the files source does not serve {info.name!r}; use source 'synthetic'")
    expected = info.split_sizes[split]
    if len(arrays) != expected:
        logger.warning(
            "%s: the %s split has %d examples; the official %s has %d", folder, split, len(arrays), info.name, expected
        )
    if arrays.labels.min() < 0 or arrays.labels.max() >= info.num_classes:
        raise DataError(f"{folder}: labels outside 0..{info.num_classes - 1}; these are not {info.name} files")
    return arrays


# ----------------------------------------------------------------------------------------------------------------
# The `synthetic` source.


def synthetic_split(
    image_shape: Sequence[int], num_classes: int, num_examples: int, seed: int, split: str
) -> SplitArrays:
    """Seeded random images that are learnable: each class is a noisy copy of its own coarse random template.

    Templates are 4x4 blocks of colour, so random crops and flips keep them recognisable.
    """
    height, width, channels = image_shape
    coarse = np.random.default_rng(seed).integers(0, 256, (num_classes, 4, 4, channels), dtype=np.int16)
    templates = np.repeat(np.repeat(coarse, -(-height // 4), axis=1), -(-width // 4), axis=2)[:, :height, :width]
    rng = np.random.default_rng([seed, SPLITS.index(split) + 1])
    labels = rng.integers(0, num_classes, num_examples).astype(np.int32)
    noise = rng.integers(-64, 65, (num_examples, height, width, channels), dtype=np.int16)
    images = np.clip(templates[labels] + noise, 0, 255).astype(np.uint8)
    return SplitArrays(images, labels)


# ----------------------------------------------------------------------------------------------------------------
# The `tfds` source.


def _host_reachable(url: str, timeout_s: float = 3.0) -> bool:
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def no_data_message(info: DatasetInfo, data_dir: str | None) -> str:
    where = data_dir or os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")
    files = ", ".join(info.official_files) or "its official files"
    return (
        f"{info.name}: no prepared tfds data in {where} and no network to download it. Provide the data one of "
        f"three ways: (1) prepare it from official archives you have: python -m resnet_jax.data prepare --dataset "
        f"{info.name} --manual-dir DIR_WITH_ARCHIVES [--data-dir D]; (2) read the official files directly: "
        f"--config.data.source=files --config.data.files_dir=DIR (a folder with {files}); (3) train on random "
        f"data: --config.data.source=synthetic"
    )


def _tfds_builder(info: DatasetInfo, data_dir: str | None) -> Any:
    import tensorflow_datasets as tfds

    return tfds.builder(info.tfds_name, data_dir=data_dir, file_format="array_record")


def _load_tfds(info: DatasetInfo, split: str, data_dir: str | None, rows: slice | None) -> SplitArrays:
    if info.tfds_name is None:
        raise DataError(f"tfds has no {info.name!r} dataset; use source 'synthetic'")
    try:
        builder = _tfds_builder(info, data_dir)
    except ImportError as error:
        raise DataError(f"the tfds source needs tensorflow-datasets ({error}); pip install -e .") from error
    if not builder.is_prepared():
        # tfds retries an offline download for minutes; probing the host first turns that into a clear error.
        if not _host_reachable(info.download_url):
            raise DataError(no_data_message(info, data_dir))
        builder.download_and_prepare()
    if getattr(builder.info.file_format, "value", builder.info.file_format) != "array_record":
        raise DataError(
            f"{info.name} in {builder.data_dir} was prepared as {builder.info.file_format}, which needs TensorFlow "
            f"to read; prepare it again with: python -m resnet_jax.data prepare --dataset {info.name}"
        )
    source = builder.as_data_source(split=split)
    indices = range(len(source))[rows] if rows is not None else range(len(source))
    if not len(indices):
        return SplitArrays(np.zeros((0, *info.image_shape), np.uint8), np.zeros((0,), np.int32))
    examples = [source[index] for index in indices]
    images = np.stack([np.asarray(example["image"], np.uint8) for example in examples])
    labels = np.asarray([example["label"] for example in examples], np.int32)
    return SplitArrays(images.reshape(len(images), *info.image_shape), labels)


# ----------------------------------------------------------------------------------------------------------------
# The one entry point.


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
    info: DatasetInfo, channels: int | None = None, mean: Sequence[float] | None = None, std=None
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
    dataset: str, split: str, *, source: str = "tfds", data_dir: str | None = None, synthetic_examples: int = 0
) -> int:
    """Number of examples in a split, known before reading it (so that each process can load only its rows)."""
    info = get_dataset_info(dataset)
    if source == "synthetic":
        return synthetic_examples or info.split_sizes[split]
    if source == "tfds" and info.tfds_name is not None:
        builder = _tfds_builder(info, data_dir)
        if builder.is_prepared():
            return int(builder.info.splits[split].num_examples)
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
    those examples.
    """
    info = get_dataset_info(dataset)
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if source == "synthetic" or info.name == "synthetic":
        count = synthetic_examples or info.split_sizes[split]
        arrays = synthetic_split(info.image_shape, info.num_classes, count, seed, split)
    elif source == "files":
        arrays = _load_files(info, split, files_dir)
    elif source == "tfds":
        arrays = _load_tfds(info, split, data_dir, rows)
        rows = None
    else:
        raise DataError(f"unknown data source {source!r}; choose one of {', '.join(SOURCES)}")
    if rows is not None:
        arrays = SplitArrays(arrays.images[rows], arrays.labels[rows])
    height, _, native_channels = input_shape(info, image_size, channels)
    return SplitArrays(to_input_shape(arrays.images, height, channels or native_channels), arrays.labels)


# ----------------------------------------------------------------------------------------------------------------
# The config's `data` section: its defaults, its checks, and the reads it asks for.

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


def check_config(data_config: ml_collections.ConfigDict) -> None:
    """Raises a one-line ConfigError for the first `data` key that cannot work (no file is read)."""
    configuration.check_choice("data.dataset", data_config.dataset, DATASETS)
    configuration.check_choice("data.source", data_config.source, SOURCES)
    configuration.check_choice("data.download", data_config.download, (False, True))
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
    if data_config.image_size:
        native = get_dataset_info(data_config.dataset).image_shape[0]
        if data_config.image_size < native:
            raise configuration.ConfigError(
                f"data.image_size={data_config.image_size} is smaller than the images ({native})"
            )
    configuration.check_choice("data.channels", data_config.channels, (0, 1, 3))


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
    return input_shape(info, data_config.image_size or None, data_config.channels or None)


def config_normalization(data_config: ml_collections.ConfigDict) -> tuple[tuple[float, ...], tuple[float, ...]]:
    info = get_dataset_info(data_config.dataset)
    try:
        return normalization(info, config_input_shape(data_config)[-1], data_config.mean, data_config.std)
    except DataError as error:
        raise configuration.ConfigError(f"data.mean / data.std: {error}") from None


def config_split_size(data_config: ml_collections.ConfigDict, split: str) -> int:
    return split_size(
        data_config.dataset,
        split,
        source=data_config.source,
        data_dir=data_config.data_dir or None,
        synthetic_examples=data_config[f"synthetic_{split}_examples"],
    )


def config_loader(data_config: ml_collections.ConfigDict, split: str, seed: int) -> Callable[[slice], SplitArrays]:
    """Reads given rows of a split as the section says (`seed` draws the synthetic source's images)."""
    return lambda rows: load_split(
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
        fetch_official_files(data_config.dataset, data_config.files_dir, data_config.download_mirror or None, part_suffix)


# ----------------------------------------------------------------------------------------------------------------
# Offline preparation and inspection.


def _manual_dir_check(info: DatasetInfo, manual_dir: Path) -> None:
    if not manual_dir.is_dir():
        raise DataError(f"--manual-dir {str(manual_dir)!r} does not exist")
    archive = Path(urlparse(info.download_url).path).name
    path = manual_dir / archive
    if not path.exists():
        raise DataError(f"{manual_dir} has no {archive}: put the official {info.name} archive there, unrenamed")
    if info.name.startswith("cifar"):
        try:
            with tarfile.open(path, "r:gz") as tar:
                tar.getmembers()
        except (tarfile.TarError, OSError, EOFError) as error:
            raise DataError(f"{path} is not a readable tar.gz archive ({error}); download it again") from error
    else:
        _read_idx(_open_maybe_gzip(path), 3, str(path))


def prepare(dataset: str, manual_dir: str, data_dir: str | None = None) -> str:
    """Prepares tfds array_record data from official archives in `manual_dir`, with no network. Returns its path."""
    info = get_dataset_info(dataset)
    if info.tfds_name is None:
        raise DataError(f"{dataset!r} has nothing to prepare")
    _manual_dir_check(info, Path(manual_dir).expanduser())
    import tensorflow_datasets as tfds

    builder = _tfds_builder(info, data_dir)
    config = tfds.download.DownloadConfig(manual_dir=str(Path(manual_dir).expanduser()))
    try:
        builder.download_and_prepare(download_config=config)
    except ModuleNotFoundError as error:
        raise DataError(
            f"preparing {dataset} with tfds needs {error.name}; install it with: pip install -e '.[prepare]'"
        ) from error
    except Exception as error:
        if "NonMatchingChecksum" in type(error).__name__:
            raise DataError(f"the archive in {manual_dir} is not the official {dataset} file ({error})") from error
        raise
    return str(builder.data_path)


def describe(arrays: SplitArrays, info: DatasetInfo) -> str:
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


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m resnet_jax.data", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    info_parser = commands.add_parser("info", help="print splits, counts, class histogram and mean/std")
    prepare_parser = commands.add_parser("prepare", help="prepare tfds data from official archives, offline")
    download_parser = commands.add_parser("download", help="download the official files, verified by sha256")
    download_parser.add_argument("--dataset", default="cifar10", choices=list(download.OFFICIAL_FILES))
    download_parser.add_argument(
        "--files-dir", default=None, help=f"where to put them (default: {default_files_dir('DATASET')})"
    )
    download_parser.add_argument("--mirror", default=None, help="a base URL serving the same file names")
    for sub in (info_parser, prepare_parser):
        sub.add_argument("--dataset", default="cifar10", choices=list(DATASETS))
        sub.add_argument(
            "--data-dir", default=None, help="tfds data dir (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)"
        )
    prepare_parser.add_argument("--manual-dir", required=True, help="folder holding the official archive(s)")
    info_parser.add_argument("--source", default="tfds", choices=SOURCES)
    info_parser.add_argument("--files-dir", default=None)
    info_parser.add_argument("--image-size", type=int, default=None, help="pad images to this size (default: native)")
    args = parser.parse_args(argv)
    try:
        if args.command == "download":
            files_dir = args.files_dir or default_files_dir(args.dataset)
            for name, fetched in fetch_official_files(args.dataset, files_dir, args.mirror).items():
                print(f"{name}: {'downloaded and verified' if fetched else 'already there, verified'}")
            print(f"{args.dataset} files are in {Path(files_dir).expanduser()}")
            return
        if args.command == "prepare":
            print(f"prepared {args.dataset} in {prepare(args.dataset, args.manual_dir, args.data_dir)}")
            return
        info = get_dataset_info(args.dataset)
        print(f"{info.name}: {info.num_classes} classes, native image shape {info.image_shape}, source {args.source}")
        for split in SPLITS:
            start = time.perf_counter()
            arrays = load_split(
                args.dataset,
                split,
                source=args.source,
                files_dir=args.files_dir,
                data_dir=args.data_dir,
                image_size=args.image_size,
            )
            print(f"{split} (read in {time.perf_counter() - start:.2f} s):\n{describe(arrays, info)}")
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None  # bad input or data, as the trainer's command line


if __name__ == "__main__":
    main()
