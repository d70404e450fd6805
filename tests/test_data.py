"""The data package and its command: official file formats written by the tests, tfds through mock_data (and
without tfds installed), fail-fast errors, real data."""

import gzip
import hashlib
import io
import pickle
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from resnet_jax import data
from resnet_jax.data import download, tfds_source
from resnet_jax.data.download import Fetched
from resnet_jax.tools import data as data_tool
from tests.conftest import FASHION_DIR, HANG_LIMIT, PYTHON, load_config, needs_fashion_files, subprocess_env
from tests.test_download import official_fashion_archives


def data_command(*args: str) -> subprocess.CompletedProcess:
    """`resnet-jax data ARGS...` in a child process, as a user runs it."""
    return subprocess.run(
        [PYTHON, "-m", "resnet_jax.tools.main", "data", *args],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=120,
    )


def random_split(count: int, shape=(32, 32, 3), classes: int = 10, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (count, *shape), dtype=np.uint8), rng.integers(0, classes, count).astype(np.int32)


def cifar_records(images, labels, coarse=None) -> bytes:
    planes = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    columns = [labels[:, None].astype(np.uint8), planes]
    if coarse is not None:
        columns.insert(0, coarse[:, None].astype(np.uint8))
    return np.concatenate(columns, axis=1).tobytes()


def add_member(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    member = tarfile.TarInfo(name)
    member.size = len(payload)
    tar.addfile(member, io.BytesIO(payload))


@pytest.fixture(scope="module")
def cifar10_parts():
    """Six small batches, as in the official layout (5 train, 1 test)."""
    return [random_split(7, seed=index) for index in range(6)]


def write_cifar10_binary(folder: Path, parts, extracted: bool = False) -> None:
    names = [f"data_batch_{index}.bin" for index in range(1, 6)] + ["test_batch.bin"]
    if extracted:
        (folder / "cifar-10-batches-bin").mkdir(parents=True)
        for name, (images, labels) in zip(names, parts, strict=True):
            (folder / "cifar-10-batches-bin" / name).write_bytes(cifar_records(images, labels))
        return
    with tarfile.open(folder / "cifar-10-binary.tar.gz", "w:gz") as tar:
        for name, (images, labels) in zip(names, parts, strict=True):
            add_member(tar, f"cifar-10-batches-bin/{name}", cifar_records(images, labels))


def write_cifar10_python(folder: Path, parts, extracted: bool = False) -> None:
    names = [f"data_batch_{index}" for index in range(1, 6)] + ["test_batch"]
    batches = {
        name: pickle.dumps({b"data": images.transpose(0, 3, 1, 2).reshape(len(images), -1), b"labels": labels.tolist()})
        for name, (images, labels) in zip(names, parts, strict=True)
    }
    if extracted:  # as torchvision and Keras leave it
        (folder / "cifar-10-batches-py").mkdir(parents=True)
        for name, payload in batches.items():
            (folder / "cifar-10-batches-py" / name).write_bytes(payload)
        return
    with tarfile.open(folder / "cifar-10-python.tar.gz", "w:gz") as tar:
        for name, payload in batches.items():
            add_member(tar, f"cifar-10-batches-py/{name}", payload)


def write_cifar10(folder: Path, parts, layout: str) -> None:
    if layout.startswith("python"):
        write_cifar10_python(folder, parts, extracted=layout == "python_extracted")
    else:
        write_cifar10_binary(folder, parts, extracted=layout == "extracted")


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


@pytest.mark.parametrize("layout", ["binary_archive", "extracted", "python_archive", "python_extracted"])
def test_cifar10_files_in_every_official_layout(tmp_path, cifar10_parts, layout):
    write_cifar10(tmp_path, cifar10_parts, layout)
    train = data.load_split("cifar10", "train", source="files", files_dir=str(tmp_path))
    test = data.load_split("cifar10", "test", source="files", files_dir=str(tmp_path))
    np.testing.assert_array_equal(train.images, np.concatenate([p[0] for p in cifar10_parts[:5]]))
    np.testing.assert_array_equal(train.labels, np.concatenate([p[1] for p in cifar10_parts[:5]]))
    np.testing.assert_array_equal(test.images, cifar10_parts[5][0])
    assert train.images.dtype == np.uint8 and train.labels.dtype == np.int32


@pytest.fixture
def no_network(monkeypatch):
    """A download that fails the test if it is ever attempted."""

    def transfer(url, *args):
        raise AssertionError(f"{url} was requested")

    monkeypatch.setattr(download, "_transfer", transfer)


@pytest.mark.parametrize("layout", ["extracted", "python_archive", "python_extracted"])
def test_download_uses_an_official_cifar10_form_already_there(tmp_path, cifar10_parts, layout, no_network):
    write_cifar10(tmp_path, cifar10_parts, layout)
    there = sorted(tmp_path.rglob("*"))
    config = load_config("default", **{"data.files_dir": str(tmp_path)})
    assert config.data.download
    data.fetch_if_asked(config.data)  # what data.download=True runs before a run reads its data
    fetched = data.fetch_official_files("cifar10", tmp_path)  # and `resnet-jax data download`
    assert fetched == {"cifar-10-binary.tar.gz": Fetched.OTHER_FORM}
    assert sorted(tmp_path.rglob("*")) == there  # nothing fetched, nothing left beside it
    test = data.load_split("cifar10", "test", source="files", files_dir=str(tmp_path))
    np.testing.assert_array_equal(test.images, cifar10_parts[5][0])


def test_download_fetches_when_no_official_form_is_there(tmp_path, cifar10_parts, no_network):
    (tmp_path / "cifar-10-batches-py").mkdir()  # an empty folder is no form of the data
    with pytest.raises(AssertionError, match="cifar-10-binary.tar.gz was requested"):
        data.fetch_official_files("cifar10", tmp_path)


def test_download_uses_decompressed_idx_files_already_there(tmp_path, no_network):
    images, labels = random_split(5, shape=(28, 28), seed=3)
    for prefix in ("train", "t10k"):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", labels)
    for packed in list(tmp_path.iterdir()):  # as `gunzip *.gz` leaves them
        packed.with_suffix("").write_bytes(gzip.decompress(packed.read_bytes()))
        packed.unlink()
    fetched = data.fetch_official_files("mnist", tmp_path)
    assert set(fetched.values()) == {Fetched.OTHER_FORM} and len(fetched) == 4
    assert not list(tmp_path.glob("*.gz"))
    np.testing.assert_array_equal(
        data.load_split("mnist", "test", source="files", files_dir=str(tmp_path)).labels, labels
    )


@pytest.mark.parametrize("layout", ["binary_archive", "python_extracted"])
def test_cifar100_files_give_fine_labels(tmp_path, layout):
    images, fine = random_split(9, classes=100)
    coarse = fine // 5
    if layout == "python_extracted":
        (tmp_path / "cifar-100-python").mkdir()
        planes = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
        batch = {b"data": planes, b"fine_labels": fine.tolist(), b"coarse_labels": coarse.tolist()}
        for name in ("train", "test"):
            (tmp_path / "cifar-100-python" / name).write_bytes(pickle.dumps(batch))
    else:
        with tarfile.open(tmp_path / "cifar-100-binary.tar.gz", "w:gz") as tar:
            for name in ("train.bin", "test.bin"):
                add_member(tar, f"cifar-100-binary/{name}", cifar_records(images, fine, coarse))
    split = data.load_split("cifar100", "test", source="files", files_dir=str(tmp_path))
    np.testing.assert_array_equal(split.labels, fine)
    np.testing.assert_array_equal(split.images, images)


@pytest.mark.parametrize("channels", [1, 3])
def test_idx_files_padded_to_32_and_channels_as_configured(tmp_path, channels):
    images, labels = random_split(5, shape=(28, 28), seed=3)
    for prefix in ("train", "t10k"):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", labels)
    split = data.load_split("mnist", "train", source="files", files_dir=str(tmp_path), image_size=32, channels=channels)
    assert split.images.shape == (5, 32, 32, channels)
    np.testing.assert_array_equal(split.images[:, 2:30, 2:30, 0], images)
    assert not split.images[:, :2].any() and not split.images[:, 30:].any()
    if channels == 3:
        np.testing.assert_array_equal(split.images[..., 0], split.images[..., 2])


def test_truncated_and_wrong_format_files_get_clear_errors(tmp_path, cifar10_parts):
    write_cifar10_binary(tmp_path, cifar10_parts)
    archive = tmp_path / "cifar-10-binary.tar.gz"
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(data.DataError, match="not a readable tar.gz"):
        data.load_split("cifar10", "train", source="files", files_dir=str(tmp_path))

    extracted = tmp_path / "x"
    write_cifar10_binary(extracted, cifar10_parts, extracted=True)
    batch = extracted / "cifar-10-batches-bin" / "test_batch.bin"
    batch.write_bytes(batch.read_bytes()[:-100])
    with pytest.raises(data.DataError, match="truncated or not a CIFAR binary"):
        data.load_split("cifar10", "test", source="files", files_dir=str(extracted))

    mnist = tmp_path / "mnist"
    mnist.mkdir()
    (mnist / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"<html>not found</html>"))
    write_idx(mnist / "train-labels-idx1-ubyte.gz", np.zeros(3))
    with pytest.raises(data.DataError, match="bad magic number"):
        data.load_split("mnist", "train", source="files", files_dir=str(mnist))


def test_missing_files_dir_names_what_it_needs(tmp_path):
    with pytest.raises(data.DataError, match="does not exist"):
        data.load_split("cifar10", "train", source="files", files_dir=str(tmp_path / "nope"))
    with pytest.raises(data.DataError, match="cifar-10-binary.tar.gz"):
        data.load_split("cifar10", "train", source="files", files_dir=str(tmp_path))


def test_synthetic_source_is_seeded_and_shaped():
    a = data.load_split("cifar100", "train", source="synthetic", synthetic_examples=20, seed=1)
    b = data.load_split("cifar100", "train", source="synthetic", synthetic_examples=20, seed=1)
    c = data.load_split("cifar100", "train", source="synthetic", synthetic_examples=20, seed=2)
    assert a.images.shape == (20, 32, 32, 3) and a.labels.max() < 100
    np.testing.assert_array_equal(a.images, b.images)
    assert not np.array_equal(a.images, c.images)
    rows = data.load_split("cifar100", "train", source="synthetic", synthetic_examples=20, seed=1, rows=slice(5, 9))
    np.testing.assert_array_equal(rows.images, a.images[5:9])


def test_tfds_source_through_mock_data(monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")
    # mock_data replaces preparation; the network probe is what would refuse first offline.
    monkeypatch.setattr(tfds_source, "host_reachable", lambda url: True)
    with tfds.testing.mock_data(num_examples=12):
        split = data.load_split("cifar10", "train", source="tfds")
        rows = data.load_split("cifar10", "train", source="tfds", rows=slice(4, 9))
        grey = data.load_split("fashion_mnist", "test", source="tfds", image_size=32, channels=3)
    assert split.images.shape == (12, 32, 32, 3) and split.images.dtype == np.uint8
    assert split.labels.dtype == np.int32 and split.labels.max() < 10
    np.testing.assert_array_equal(rows.images, split.images[4:9])
    assert grey.images.shape == (12, 32, 32, 3)


@pytest.mark.timeout(HANG_LIMIT + 30)
def test_offline_without_prepared_data_fails_fast_naming_three_ways(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    result = subprocess.run(
        [PYTHON, "-m", "resnet_jax.tools.data", "info", "--dataset", "cifar10", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=HANG_LIMIT,
    )
    assert result.returncode == 2
    message = result.stderr.strip().splitlines()[-1]  # tfds may log a warning first
    assert message.startswith("error: ")
    assert "no prepared tfds data" in message
    for way in ("resnet-jax data prepare", "data.source=files", "data.source=synthetic"):
        assert way in message


def test_without_tfds_installed_the_tfds_source_says_how_to_get_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # `import tensorflow_datasets` now fails
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", np.zeros((2, 28, 28)))  # a manual dir prepare accepts
    for read in (
        lambda: data.load_split("cifar10", "train", source="tfds"),
        lambda: data.split_size("cifar10", "train", source="tfds"),
        lambda: data.prepare("fashion_mnist", str(tmp_path)),
    ):
        with pytest.raises(data.DataError, match=r'needs tensorflow-datasets .*: pip install -e "\.\[tfds\]"'):
            read()
    with pytest.raises(SystemExit) as stopped:
        data_tool.main(["info", "--dataset", "cifar10"])
    assert stopped.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error: the tfds source needs tensorflow-datasets"), err
    assert err.endswith('pip install -e ".[tfds]"'), err
    # The other sources do not need it.
    assert len(data.load_split("cifar10", "test", source="synthetic", synthetic_examples=3)) == 3


def test_importing_the_data_package_imports_no_tfds():
    check = "import sys, resnet_jax.data, resnet_jax.tools.data; assert 'tensorflow_datasets' not in sys.modules"
    subprocess.run([PYTHON, "-c", check], env=subprocess_env(), check=True, timeout=HANG_LIMIT)


def test_the_command_describes_a_split_and_refuses_bad_flags_in_one_line():
    result = data_command("info", "--dataset", "synthetic", "--source", "synthetic")
    assert result.returncode == 0, result.stderr
    assert "synthetic: 10 classes" in result.stdout and "examples: 2,048" in result.stdout
    assert "examples: 512" in result.stdout
    for bad in (["info", "--dataset", "imagenet"], ["nonsense"], [], ["download", "--mirror"]):
        result = data_command(*bad)
        assert result.returncode == 2, bad
        assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, (bad, result.stderr)
    missing = data_command("info", "--dataset", "cifar10", "--source", "files", "--files-dir", "/nonexistent/x")
    assert missing.returncode == 2
    assert missing.stderr.count("\n") == 1 and "resnet-jax data download --dataset cifar10" in missing.stderr


@pytest.mark.timeout(HANG_LIMIT + 30)
def test_info_without_data_names_its_own_flags_as_the_ways_to_go_on(tmp_path):
    result = data_command("info", "--dataset", "cifar10", "--data-dir", str(tmp_path / "tfds"))
    assert result.returncode == 2
    line = result.stderr.strip().splitlines()[-1]
    assert "no prepared tfds data" in line
    assert "resnet-jax data info: --source files --files-dir DIR" in line
    assert "--dataset synthetic --source synthetic" in line


def test_prepare_checks_the_manual_dir_first(tmp_path):
    with pytest.raises(data.DataError, match="does not exist"):
        data.prepare("cifar10", str(tmp_path / "nope"), str(tmp_path / "tfds"))
    with pytest.raises(data.DataError, match="has no cifar-10-binary.tar.gz"):
        data.prepare("cifar10", str(tmp_path), str(tmp_path / "tfds"))
    (tmp_path / "cifar-10-binary.tar.gz").write_bytes(b"definitely not a tar.gz")
    with pytest.raises(data.DataError, match="not a readable tar.gz"):
        data.prepare("cifar10", str(tmp_path), str(tmp_path / "tfds"))


@needs_fashion_files
def test_real_fashion_mnist_files():
    result = data_command("info", "--dataset", "fashion_mnist", "--source", "files", "--files-dir", str(FASHION_DIR))
    assert result.returncode == 0, result.stderr
    assert "examples: 60,000" in result.stdout and "examples: 10,000" in result.stdout
    train = data.load_split("fashion_mnist", "train", source="files", files_dir=str(FASHION_DIR))
    test = data.load_split("fashion_mnist", "test", source="files", files_dir=str(FASHION_DIR))
    assert train.images.shape == (60_000, 28, 28, 1) and len(test) == 10_000
    np.testing.assert_array_equal(np.bincount(train.labels), np.full(10, 6_000))
    np.testing.assert_array_equal(np.bincount(test.labels), np.full(10, 1_000))
    pixels = train.images.astype(np.float64) / 255
    assert pixels.mean() == pytest.approx(0.286, abs=1e-3)
    assert pixels.std() == pytest.approx(0.353, abs=1e-3)


@needs_fashion_files
def test_the_rebuilt_archives_carry_tfds_checksums(tmp_path):
    # The official archives rebuilt from Debian's files (tests/test_download.py) are byte for byte the ones tfds
    # knows: the second source for the registry's sums.
    tfds = pytest.importorskip("tensorflow_datasets")
    archives = official_fashion_archives()
    checksums = Path(tfds.__file__).parent / "url_checksums" / "fashion_mnist.txt"
    for line in checksums.read_text().splitlines():
        _, _, sha256, name = line.split()
        assert hashlib.sha256(archives[name]).hexdigest() == sha256, name


@needs_fashion_files
def test_prepare_from_a_manual_dir_of_official_archives(tmp_path):
    pytest.importorskip("tensorflow", reason='preparing with tfds needs TensorFlow: pip install -e ".[prepare]"')
    manual = tmp_path / "manual"
    manual.mkdir()
    for name, payload in official_fashion_archives().items():
        (manual / name).write_bytes(payload)
    prepared = data.prepare("fashion_mnist", str(manual), str(tmp_path / "tfds"))
    assert Path(prepared).is_dir()
    # Read back through the tfds source (no TensorFlow needed for that) and compare with the files themselves;
    # tfds shuffles the examples, so compare them as a set.
    from_tfds = data.load_split("fashion_mnist", "test", source="tfds", data_dir=str(tmp_path / "tfds"))
    from_files = data.load_split("fashion_mnist", "test", source="files", files_dir=str(FASHION_DIR))
    assert examples_as_set(from_tfds) == examples_as_set(from_files)


def examples_as_set(split: data.SplitArrays) -> list[tuple[int, bytes]]:
    return sorted(zip(split.labels.tolist(), map(bytes, split.images.reshape(len(split), -1)), strict=True))
