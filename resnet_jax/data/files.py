"""The `files` source: the official CIFAR archives (binary or python, packed or extracted) and the IDX files of
MNIST and Fashion-MNIST (gzipped or not), read with numpy; a damaged or foreign file gets an error that names it.
Which form of a dataset's files a folder holds is decided here once (`official_form`), for the reader and for the
download, which fetches only what no form present gives.
"""

from __future__ import annotations

import gzip
import logging
import os
import pickle
import tarfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from resnet_jax.data.registry import DataError, DatasetInfo, SplitArrays

logger = logging.getLogger(__name__)


def read_member(archive: Path, member_suffix: str) -> bytes:
    """Reads the member of a tar.gz whose name ends with `member_suffix`."""
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


def check_tar_gz(archive: Path) -> None:
    """Reads a tar.gz's table of contents, so that a damaged archive is named before anything else reads it."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            tar.getmembers()
    except (tarfile.TarError, OSError, EOFError, gzip.BadGzipFile) as error:
        raise DataError(f"{archive} is not a readable tar.gz archive ({error}); download it again") from error


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


def read_idx(raw: bytes, expected_dims: int, source: str) -> np.ndarray:
    """Parses an IDX file (the MNIST format): magic 0x0000 0x08 <dims>, big-endian sizes, uint8 data."""
    if len(raw) < 4 or raw[:3] != b"\x00\x00\x08" or raw[3] != expected_dims:
        raise DataError(f"{source} is not an IDX uint8 file with {expected_dims} dimensions (bad magic number)")
    shape = tuple(int(size) for size in np.frombuffer(raw[4 : 4 + 4 * expected_dims], ">u4"))
    body = raw[4 + 4 * expected_dims :]
    if len(body) != int(np.prod(shape)):
        raise DataError(f"{source}: header promises {shape} but the file holds {len(body)} bytes; it is truncated")
    return np.frombuffer(body, np.uint8).reshape(shape)


def read_maybe_gzip(path: Path) -> bytes:
    """A file's bytes, decompressed when its name ends in .gz."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as handle:
                return handle.read()
        return path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as error:
        raise DataError(f"{path} cannot be read ({error}); the file is damaged or truncated") from error


def _idx_path(folder: Path, official_name: str) -> Path | None:
    """The file an official IDX file (`train-images-idx3-ubyte.gz`) is read from: itself, or it decompressed, under
    its own name or with a dot (`train-images.idx3-ubyte`, as LeCun's page once named it)."""
    stem = official_name.removesuffix(".gz")
    return next(
        (folder / name for name in (official_name, stem, stem.replace("-idx", ".idx")) if (folder / name).exists()),
        None,
    )


def _idx_files(folder: Path, split: str) -> SplitArrays:
    prefix = "train" if split == "train" else "t10k"

    def find(kind: str) -> Path:
        found = _idx_path(folder, f"{prefix}-{kind}.gz")
        if found is None:
            raise DataError(f"{folder} has no {prefix}-{kind}.gz")
        return found

    images_path, labels_path = find("images-idx3-ubyte"), find("labels-idx1-ubyte")
    images = read_idx(read_maybe_gzip(images_path), 3, str(images_path))
    labels = read_idx(read_maybe_gzip(labels_path), 1, str(labels_path))
    if len(images) != len(labels):
        raise DataError(f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels")
    return SplitArrays(np.ascontiguousarray(images[..., None]), labels.astype(np.int32))


# Each CIFAR's official forms, in the order the source prefers them: (where it lies, the batch that marks an extracted
# one, whether its batches are pickled). An extracted form has its batches in their folder, or loose in the folder
# itself; the binary version first, as the download fetches it, and extracted before packed, cheaper to read.
_CIFAR_FORMS = {
    "cifar10": (
        ("cifar-10-batches-bin", "test_batch.bin", False),
        ("", "test_batch.bin", False),
        ("cifar-10-binary.tar.gz", "", False),
        ("cifar-10-batches-py", "test_batch", True),
        ("cifar-10-python.tar.gz", "", True),
    ),
    "cifar100": (
        ("cifar-100-binary", "test.bin", False),
        ("", "test.bin", False),
        ("cifar-100-binary.tar.gz", "", False),
        ("cifar-100-python", "test", True),
        ("cifar-100-python.tar.gz", "", True),
    ),
}


def _cifar_form(dataset: str, folder: Path) -> tuple[Path, bool] | None:
    """The CIFAR form the folder holds that the source reads (see `_CIFAR_FORMS`), and whether it is pickled."""
    for where, marker, pickled in _CIFAR_FORMS[dataset]:
        path = folder / where
        if (path / marker).is_file() if marker else path.is_file():
            return path, pickled
    return None


def official_form(dataset: str, folder: Path, official_name: str) -> Path | None:
    """What the files source reads in `folder` for the data of `official_name` (a file the download fetches): the
    file itself or another official form of the same data (CIFAR's python version, an extracted archive, an IDX file
    decompressed); None when the folder holds none."""
    if dataset in _CIFAR_FORMS:
        found = _cifar_form(dataset, folder)
        return found[0] if found else None
    return _idx_path(folder, official_name)


def _cifar_files(info: DatasetInfo, folder: Path, split: str) -> SplitArrays:
    found = _cifar_form(info.name, folder)
    if found is None:
        raise DataError(f"{folder} holds none of the official {info.name} files: {', '.join(info.official_files)}")
    path, pickled = found

    def read(name: str) -> bytes:
        return read_member(path, "/" + name) if path.is_file() else (path / name).read_bytes()

    if info.name == "cifar10":
        if not pickled:
            return _cifar10_binary(read, split)
        names = [f"data_batch_{index}" for index in range(1, 6)] if split == "train" else ["test_batch"]
        return _cifar_python(read, names, b"labels")
    if not pickled:
        name = "train.bin" if split == "train" else "test.bin"
        return _decode_cifar_binary(read(name), 2, 1, name)
    return _cifar_python(read, [split], b"fine_labels")


def load_files(info: DatasetInfo, split: str, files_dir: str | os.PathLike | None) -> SplitArrays:
    """One split, in the dataset's native shape, from the folder of its official files."""
    if not files_dir:
        raise DataError(f"no folder of files given; give one holding {', '.join(info.official_files)}")
    folder = Path(files_dir).expanduser()
    if not folder.is_dir():
        raise DataError(
            f"{str(folder)!r} does not exist; point the files source at the folder with the {info.name} files, or "
            f"download them there: resnet-jax data download --dataset {info.name} --files-dir {folder}"
        )
    if info.name in ("cifar10", "cifar100"):
        arrays = _cifar_files(info, folder, split)
    elif info.name in ("mnist", "fashion_mnist"):
        arrays = _idx_files(folder, split)
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
