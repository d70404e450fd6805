"""The `tfds` source: prepared array_record data read with `tfds.data_source` (no TensorFlow), and `prepare`, which
builds that data offline from official archives a user already has. tensorflow-datasets is an optional extra,
imported only here and only when used.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from resnet_jax.data import files
from resnet_jax.data.registry import DataError, DatasetInfo, SplitArrays, get_dataset_info

INSTALL_HINT = 'pip install -e ".[tfds]"'


def _tfds() -> Any:
    try:
        import tensorflow_datasets
    except ImportError as error:
        raise DataError(
            f"the tfds source needs tensorflow-datasets ({error}); install it with: {INSTALL_HINT}"
        ) from None
    return tensorflow_datasets


def host_reachable(url: str, timeout_s: float = 3.0) -> bool:
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def no_data_message(info: DatasetInfo, data_dir: str | None) -> str:
    where = data_dir or os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")
    official = ", ".join(info.official_files) or "its official files"
    return (
        f"{info.name}: no prepared tfds data in {where} and no network to download it. Provide the data one of "
        f"three ways: (1) prepare it from official archives you have: resnet-jax data prepare --dataset "
        f"{info.name} --manual-dir DIR_WITH_ARCHIVES [--data-dir D]; (2) read the official files directly from a "
        f"folder with {official} (training: --config.data.source=files --config.data.files_dir=DIR; resnet-jax data "
        "info: --source files --files-dir DIR); (3) use random data (training: --config.data.source=synthetic; "
        "resnet-jax data info: --dataset synthetic --source synthetic)"
    )


def _builder(info: DatasetInfo, data_dir: str | None) -> Any:
    if info.tfds_name is None:
        raise DataError(f"tfds has no {info.name!r} dataset; use source 'synthetic'")
    return _tfds().builder(info.tfds_name, data_dir=data_dir, file_format="array_record")


def prepared_size(info: DatasetInfo, split: str, data_dir: str | None) -> int | None:
    """The split's size in prepared tfds data; None when nothing is prepared yet."""
    builder = _builder(info, data_dir)
    return int(builder.info.splits[split].num_examples) if builder.is_prepared() else None


def load_tfds(info: DatasetInfo, split: str, data_dir: str | None, rows: slice | None) -> SplitArrays:
    """One split (only `rows` of it decoded, when given), prepared first when there is a network to fetch it."""
    builder = _builder(info, data_dir)
    if not builder.is_prepared():
        # tfds retries an offline download for minutes; probing the host first turns that into a clear error.
        if not host_reachable(info.download_url):
            raise DataError(no_data_message(info, data_dir))
        builder.download_and_prepare()
    if getattr(builder.info.file_format, "value", builder.info.file_format) != "array_record":
        raise DataError(
            f"{info.name} in {builder.data_dir} was prepared as {builder.info.file_format}, which needs TensorFlow "
            f"to read; prepare it again with: resnet-jax data prepare --dataset {info.name} --manual-dir DIR"
        )
    source = builder.as_data_source(split=split)
    indices = range(len(source))[rows] if rows is not None else range(len(source))
    if not len(indices):
        return SplitArrays(np.zeros((0, *info.image_shape), np.uint8), np.zeros((0,), np.int32))
    examples = [source[index] for index in indices]
    images = np.stack([np.asarray(example["image"], np.uint8) for example in examples])
    labels = np.asarray([example["label"] for example in examples], np.int32)
    return SplitArrays(images.reshape(len(images), *info.image_shape), labels)


def _check_manual_dir(info: DatasetInfo, manual_dir: Path) -> None:
    if not manual_dir.is_dir():
        raise DataError(f"--manual-dir {str(manual_dir)!r} does not exist")
    archive = Path(urlparse(info.download_url).path).name
    path = manual_dir / archive
    if not path.exists():
        raise DataError(f"{manual_dir} has no {archive}: put the official {info.name} archive there, unrenamed")
    if info.name.startswith("cifar"):
        files.check_tar_gz(path)
    else:
        files.read_idx(files.read_maybe_gzip(path), 3, str(path))


def prepare(dataset: str, manual_dir: str, data_dir: str | None = None) -> str:
    """Prepares tfds array_record data from official archives in `manual_dir`, with no network. Returns its path."""
    info = get_dataset_info(dataset)
    if info.tfds_name is None:
        raise DataError(f"{dataset!r} has nothing to prepare")
    manual = Path(manual_dir).expanduser()
    _check_manual_dir(info, manual)
    builder = _builder(info, data_dir)
    config = _tfds().download.DownloadConfig(manual_dir=str(manual))
    try:
        builder.download_and_prepare(download_config=config)
    except ModuleNotFoundError as error:
        raise DataError(
            f'preparing {dataset} with tfds needs {error.name}; install it with: pip install -e ".[prepare]"'
        ) from error
    except Exception as error:
        # tfds raises its own NonMatchingChecksumError; its name is stable where its module path is not.
        if "NonMatchingChecksum" in type(error).__name__:
            raise DataError(f"the archive in {manual_dir} is not the official {dataset} file ({error})") from error
        raise
    return str(builder.data_path)
