"""Downloads of the official files from a local HTTP server: verification, refusals, resume, offline, files
already in place (Debian's among them), the command, and the trainer."""

import dataclasses
import gzip
import hashlib
import http.server
import io
import shutil
import socket
import subprocess
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest

from resnet_jax import configuration, data, metrics, record
from resnet_jax.data import download
from resnet_jax.data.download import Fetched
from tests.conftest import (
    FASHION_DIR,
    HANG_LIMIT,
    PYTHON,
    load_config,
    needs_fashion_files,
    subprocess_env,
    train_command,
)

# The original Fashion-MNIST archives differ from Debian's only in the gzip header's file name and time.
FASHION_ARCHIVE_TIMES = {
    "train-images-idx3-ubyte.gz": 1504176606,
    "train-labels-idx1-ubyte.gz": 1504176606,
    "t10k-images-idx3-ubyte.gz": 1504176627,
    "t10k-labels-idx1-ubyte.gz": 1504176627,
}


def official_fashion_archives() -> dict[str, bytes]:
    """The official Fashion-MNIST archives, byte for byte, rebuilt from Debian's files."""
    archives = {}
    for name, mtime in FASHION_ARCHIVE_TIMES.items():
        debian = (FASHION_DIR / name).read_bytes()
        header = b"\x1f\x8b\x08\x08" + mtime.to_bytes(4, "little") + b"\x00\x03" + name[:-3].encode() + b"\x00"
        archives[name] = header + debian[10:]
    return archives


def sha256(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# A local server with Range requests (http.server's own handlers ignore them) that can cut a response short.


class FileServer:
    """Serves `files` (name -> bytes) by their name at any path; records each request's path and Range header."""

    def __init__(self, files: dict[str, bytes]):
        self.files = dict(files)
        self.requests: list[tuple[str, str | None]] = []
        self.cuts = 0  # how many of the next responses stop after `cut_after` bytes of body
        self.cut_after = 0
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                owner.requests.append((self.path, self.headers.get("Range")))
                payload = owner.files.get(self.path.rsplit("/", 1)[-1])
                if payload is None:
                    self.send_error(404)
                    return
                start = int(self.headers["Range"].split("=")[1].split("-")[0]) if self.headers["Range"] else 0
                if start >= len(payload):
                    self.send_error(416)
                    return
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(payload) - 1}/{len(payload)}")
                self.send_header("Content-Length", str(len(payload) - start))
                self.end_headers()
                body = payload[start:]
                if owner.cuts:
                    owner.cuts -= 1
                    body = body[: owner.cut_after]
                self.wfile.write(body)  # HTTP/1.0: the connection closes after each response

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/mirror/"

    def __enter__(self):
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


# ---------------------------------------------------------------------------------------------------------------
# Tiny archives in the official formats.


def cifar10_archive(seed: int = 0, per_batch: int = 6) -> tuple[bytes, data.SplitArrays, data.SplitArrays]:
    """A cifar-10-binary.tar.gz with the official member names, and its train and test splits."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (6 * per_batch, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, 6 * per_batch).astype(np.int32)
    names = [f"data_batch_{index}.bin" for index in range(1, 6)] + ["test_batch.bin"]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for index, name in enumerate(names):
            batch = slice(index * per_batch, (index + 1) * per_batch)
            planes = images[batch].transpose(0, 3, 1, 2).reshape(per_batch, -1)
            payload = np.concatenate([labels[batch, None].astype(np.uint8), planes], axis=1).tobytes()
            member = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            member.size = len(payload)
            tar.addfile(member, io.BytesIO(payload))
    train = data.SplitArrays(images[: 5 * per_batch], labels[: 5 * per_batch])
    test = data.SplitArrays(images[5 * per_batch :], labels[5 * per_batch :])
    return buffer.getvalue(), train, test


ARCHIVE = "cifar-10-binary.tar.gz"


@pytest.fixture(scope="module")
def cifar10():
    return cifar10_archive()


@pytest.fixture
def official_cifar10(monkeypatch, cifar10):
    """The registry's CIFAR-10 entry with the test archive's checksum, on a host that cannot be reached: a run
    that gets its files must have used the mirror."""
    official = download.OfficialFiles(closed_port_url(), {ARCHIVE: sha256(cifar10[0])})
    monkeypatch.setitem(download.OFFICIAL_FILES, "cifar10", official)
    return official


@pytest.fixture
def backoffs(monkeypatch) -> list[float]:
    """The waits before each retry, recorded instead of slept."""
    waits: list[float] = []
    monkeypatch.setattr(download.time, "sleep", waits.append)
    return waits


def data_files(folder: Path) -> list[Path]:
    """A folder's files; a download's lock file never outlives its turn, so none may be among them."""
    files = sorted(folder.iterdir())
    assert not [path for path in files if path.suffix == ".lock"], files
    return files


def assert_one_line(message: str, *named: str) -> None:
    assert "\n" not in message.strip(), message
    for part in named:
        assert part in message, (part, message)


# ---------------------------------------------------------------------------------------------------------------
# 1. A good archive: downloaded, verified, renamed, then read by the files source; a second call fetches nothing.


def test_good_archive_is_downloaded_verified_and_readable(tmp_path, cifar10, official_cifar10):
    archive, train, test = cifar10
    folder = tmp_path / "new" / "cifar10"  # created on the way
    with FileServer({ARCHIVE: archive}) as server:
        assert data.fetch_official_files("cifar10", folder, mirror=server.url) == {ARCHIVE: Fetched.DOWNLOADED}
        assert server.requests == [("/mirror/" + ARCHIVE, None)]
        assert sorted(path.name for path in data_files(folder)) == [ARCHIVE]  # no part file left

        # Valid files already there: verified on disk, no request at all.
        assert data.fetch_official_files("cifar10", folder, mirror=server.url) == {ARCHIVE: Fetched.VERIFIED}
        assert len(server.requests) == 1
    assert data.fetch_official_files("cifar10", folder, mirror=closed_port_url()) == {ARCHIVE: Fetched.VERIFIED}

    loaded_train = data.load_split("cifar10", "train", source="files", files_dir=str(folder))
    loaded_test = data.load_split("cifar10", "test", source="files", files_dir=str(folder))
    np.testing.assert_array_equal(loaded_train.images, train.images)
    np.testing.assert_array_equal(loaded_train.labels, train.labels)
    np.testing.assert_array_equal(loaded_test.images, test.images)
    np.testing.assert_array_equal(loaded_test.labels, test.labels)


# ---------------------------------------------------------------------------------------------------------------
# 2. Wrong checksums: refused in one line naming the file; nothing that looks complete is left; nothing is replaced.


def test_a_foreign_archive_is_refused_and_nothing_is_kept(tmp_path, official_cifar10):
    foreign, _, _ = cifar10_archive(seed=1)
    with FileServer({ARCHIVE: foreign}) as server, pytest.raises(data.DataError) as refused:
        data.fetch_official_files("cifar10", tmp_path, mirror=server.url)
    assert_one_line(str(refused.value), ARCHIVE, "not the official", official_cifar10.sha256[ARCHIVE])
    assert data_files(tmp_path) == []


@pytest.mark.parametrize("already_there", ["good", "foreign"])
def test_a_file_already_there_is_never_replaced(tmp_path, cifar10, official_cifar10, already_there):
    good, _, _ = cifar10
    foreign, _, _ = cifar10_archive(seed=2)
    kept = good if already_there == "good" else foreign
    (tmp_path / ARCHIVE).write_bytes(kept)
    with FileServer({ARCHIVE: foreign if already_there == "good" else good}) as server:
        if already_there == "good":
            assert data.fetch_official_files("cifar10", tmp_path, mirror=server.url) == {ARCHIVE: Fetched.VERIFIED}
        else:
            with pytest.raises(data.DataError) as refused:
                data.fetch_official_files("cifar10", tmp_path, mirror=server.url)
            assert_one_line(str(refused.value), str(tmp_path / ARCHIVE), "move it away or delete it")
        assert server.requests == []
    assert (tmp_path / ARCHIVE).read_bytes() == kept
    assert [path.name for path in data_files(tmp_path)] == [ARCHIVE]


def test_missing_file_on_the_mirror_is_named(tmp_path, official_cifar10):
    with FileServer({}) as server, pytest.raises(data.DataError) as refused:
        data.fetch_official_files("cifar10", tmp_path, mirror=server.url)
    assert_one_line(str(refused.value), f"{server.url}{ARCHIVE}", "HTTP 404")
    assert len(server.requests) == 1  # a missing file is not retried


# ---------------------------------------------------------------------------------------------------------------
# 3. A cut connection: retried with a Range request from where it stopped; when every try breaks, the part is kept
# and a later call resumes it.


def test_a_cut_transfer_is_resumed_with_a_range_request(tmp_path, cifar10, official_cifar10):
    archive = cifar10[0]
    with FileServer({ARCHIVE: archive}) as server:
        server.cuts, server.cut_after = 1, len(archive) // 2
        fetched = download.fetch_files(official_cifar10, tmp_path, mirror=server.url, backoff_s=0.01)
    assert fetched == {ARCHIVE: Fetched.DOWNLOADED}
    assert [ranges for _, ranges in server.requests] == [None, f"bytes={len(archive) // 2}-"]
    assert (tmp_path / ARCHIVE).read_bytes() == archive
    assert [path.name for path in data_files(tmp_path)] == [ARCHIVE]


def test_a_transfer_that_keeps_breaking_stops_keeps_its_part_and_resumes_later(tmp_path, cifar10, official_cifar10):
    archive = cifar10[0]
    part = tmp_path / (ARCHIVE + ".part")
    with FileServer({ARCHIVE: archive}) as server:
        server.cuts, server.cut_after = 3, 1000
        with pytest.raises(download.DownloadError) as broke:
            download.fetch_files(official_cifar10, tmp_path, mirror=server.url, retries=2, backoff_s=0.01)
        assert_one_line(str(broke.value), ARCHIVE, "broke off 3 times", str(part), "again to resume")
        assert part.stat().st_size == 3000
        assert not (tmp_path / ARCHIVE).exists()

        assert download.fetch_files(official_cifar10, tmp_path, mirror=server.url) == {ARCHIVE: Fetched.DOWNLOADED}
    assert [ranges for _, ranges in server.requests] == [None, "bytes=1000-", "bytes=2000-", "bytes=3000-"]
    assert (tmp_path / ARCHIVE).read_bytes() == archive
    assert not part.exists()


def test_a_whole_part_left_by_a_stopped_run_is_verified_and_renamed(tmp_path, cifar10, official_cifar10):
    archive = cifar10[0]
    (tmp_path / (ARCHIVE + ".part")).write_bytes(archive)
    with FileServer({ARCHIVE: archive}) as server:
        assert download.fetch_files(official_cifar10, tmp_path, mirror=server.url) == {ARCHIVE: Fetched.DOWNLOADED}
    assert server.requests == [("/mirror/" + ARCHIVE, f"bytes={len(archive)}-")]  # answered 416: nothing left
    assert [path.read_bytes() for path in data_files(tmp_path)] == [archive]


def test_two_runs_fetching_one_file_take_turns(tmp_path, cifar10, official_cifar10):
    # Two trainings (or a training and `data download`) on one machine use the same part file: the lock beside the
    # file makes the second wait and find the first one's verified copy. Threads hold separate open files, so
    # they contend for the lock as two processes would.
    archive = cifar10[0]
    with FileServer({ARCHIVE: archive}) as server:
        server.cuts, server.cut_after = 2, 1000  # the first transfer breaks and resumes while the other waits
        results = []
        fetchers = [
            threading.Thread(
                target=lambda: results.append(
                    download.fetch_files(official_cifar10, tmp_path, mirror=server.url, backoff_s=0.05)
                )
            )
            for _ in range(2)
        ]
        for fetcher in fetchers:
            fetcher.start()
        for fetcher in fetchers:
            fetcher.join()
    # One downloaded, the other found it there.
    assert sorted(result[ARCHIVE].name for result in results) == ["DOWNLOADED", "VERIFIED"]
    assert [path.read_bytes() for path in data_files(tmp_path)] == [archive]  # one verified file, no part left


def test_a_mirror_that_is_not_http_is_refused_in_one_line(tmp_path, official_cifar10):
    with pytest.raises(download.DownloadError) as refused:
        download.fetch_files(official_cifar10, tmp_path, mirror="mirror.example/cifar/")
    assert_one_line(str(refused.value), "mirror.example/cifar/", "http")


# ---------------------------------------------------------------------------------------------------------------
# 4. Offline: no answer from the host ends in one line within seconds, without retries.


def test_an_unreachable_host_fails_fast_in_one_line(tmp_path, official_cifar10, backoffs):
    with pytest.raises(data.DataError) as offline:
        data.fetch_official_files("cifar10", tmp_path)  # the registry's host here is a closed port
    assert backoffs == []  # no retry: each would wait 1, 2, 4, ... seconds first
    assert_one_line(str(offline.value), "cannot reach 127.0.0.1", str(tmp_path), "--mirror", "data.source=synthetic")
    assert data_files(tmp_path) == []


def test_a_host_that_never_answers_times_out(tmp_path, official_cifar10, backoffs):
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()  # connections complete in the kernel's backlog, and nothing ever answers
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/"
        with pytest.raises(download.HostUnreachable, match="cannot reach 127.0.0.1"):
            download.fetch_files(official_cifar10, tmp_path, mirror=url, timeout_s=0.5)
    assert backoffs == []


# ---------------------------------------------------------------------------------------------------------------
# 5. The command line, with the registry's own checksums: the official Fashion-MNIST files from a mirror.


def download_command(folder: Path, mirror: str, dataset: str = "fashion_mnist") -> subprocess.CompletedProcess:
    dead = closed_port_url()
    return subprocess.run(
        [PYTHON, "-m", "resnet_jax.tools.data", "download", "--dataset", dataset, "--files-dir", str(folder)]
        + ["--mirror", mirror],
        capture_output=True,
        text=True,
        # Any request that is not to the local mirror would go to a dead proxy: no test reaches a real host.
        env=subprocess_env(http_proxy=dead, https_proxy=dead, no_proxy="127.0.0.1"),
        timeout=HANG_LIMIT,
    )


@needs_fashion_files
def test_the_command_downloads_the_official_fashion_mnist_files(tmp_path):
    archives = official_fashion_archives()
    with FileServer(archives) as server:
        result = download_command(tmp_path, server.url)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("downloaded and verified") == 4
    for name, payload in archives.items():
        assert (tmp_path / name).read_bytes() == payload
    assert len(data.load_split("fashion_mnist", "test", source="files", files_dir=str(tmp_path))) == 10_000


@needs_fashion_files
def test_the_command_refuses_a_damaged_file_in_one_line_with_status_2(tmp_path):
    archives = official_fashion_archives()
    damaged = "t10k-labels-idx1-ubyte.gz"
    archives[damaged] = archives[damaged][:-100]
    with FileServer(archives) as server:
        result = download_command(tmp_path, server.url)
    assert result.returncode == 2
    assert_one_line(result.stderr, "error: ", damaged, "not the official")
    assert not (tmp_path / damaged).exists()
    assert not list(tmp_path.glob("*.part"))


def test_the_command_offline_fails_fast_with_status_2(tmp_path):
    mirror = closed_port_url()
    result = download_command(tmp_path, mirror, dataset="cifar10")
    assert result.returncode == 2
    assert_one_line(result.stderr, "error: cifar10: cannot reach 127.0.0.1", "cifar-10-binary.tar.gz")
    assert f"check the mirror {mirror}" in result.stderr and "--mirror URL" not in result.stderr  # it was given


# ---------------------------------------------------------------------------------------------------------------
# 6. Debian's Fashion-MNIST files: the official content under another gzip header, accepted where they lie.

SAME_CONTENT = "already there, verified (same content as the official file, another gzip header)"


@needs_fashion_files
def test_the_recorded_digests_are_the_official_files_and_their_content():
    official = download.OFFICIAL_FILES["fashion_mnist"]
    for name, payload in official_fashion_archives().items():
        assert sha256(payload) == official.sha256[name], name
        assert sha256(gzip.decompress(payload)) == official.content_sha256[name], name
        debian = FASHION_DIR / name
        assert download.sha256_of(debian) != official.sha256[name]  # another header: the plain digest differs
        assert download.content_sha256_of(debian) == official.content_sha256[name]


@needs_fashion_files
def test_debians_files_in_place_are_accepted_and_kept(tmp_path):
    for name in download.OFFICIAL_FILES["fashion_mnist"].sha256:
        shutil.copy(FASHION_DIR / name, tmp_path / name)
    before = {path.name: path.read_bytes() for path in data_files(tmp_path)}
    with FileServer({}) as server:  # nothing to serve: any request would be a 404
        result = download_command(tmp_path, server.url)
        assert server.requests == []
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(SAME_CONTENT) == 4, result.stdout
    assert {path.name: path.read_bytes() for path in data_files(tmp_path)} == before  # never replaced
    # What data.download=True runs before training.
    fetched = data.fetch_official_files("fashion_mnist", tmp_path, mirror=closed_port_url())
    assert set(fetched.values()) == {Fetched.SAME_CONTENT}


def test_a_gzip_file_of_other_content_is_still_refused(tmp_path):
    name = next(iter(download.OFFICIAL_FILES["fashion_mnist"].sha256))  # the first one fetched
    (tmp_path / name).write_bytes(gzip.compress(b"\x00\x00\x08\x03" + bytes(12) + b"not fashion"))
    with FileServer({}) as server, pytest.raises(data.DataError) as refused:
        data.fetch_official_files("fashion_mnist", tmp_path, mirror=server.url)
    assert_one_line(str(refused.value), str(tmp_path / name), "not the official file", "move it away or delete it")
    assert server.requests == []


# ---------------------------------------------------------------------------------------------------------------
# 7. The trainer: data.download fetches the missing files (from data.download_mirror) before it reads them.


@needs_fashion_files
def test_the_trainer_downloads_missing_files_then_trains(tmp_path, monkeypatch):
    from resnet_jax import trainer  # only this test trains

    official = download.OFFICIAL_FILES["fashion_mnist"]  # its real checksums, and a host that cannot be reached
    monkeypatch.setitem(
        download.OFFICIAL_FILES, "fashion_mnist", dataclasses.replace(official, base_url=closed_port_url())
    )
    archives = official_fashion_archives()
    files_dir = tmp_path / "files" / "fashion_mnist"  # missing: validation accepts it when downloading
    with FileServer(archives) as server:
        config = load_config(
            "fashion_mnist",
            **{
                "model.name": "resnet8_tiny",
                "data.files_dir": str(files_dir),
                "data.download": True,
                "data.download_mirror": server.url,
                "train.num_steps": 2,
                "train.num_epochs": 0,
                "train.batch_size": 64,
                "train.log_every_steps": 1,
                "schedule.warmup_steps": 1,
                "eval.batch_size": 1000,
            },
        )
        results = trainer.train_and_evaluate(config, tmp_path / "run")
    # Each file fetched once, although the train and test splits are read apart.
    assert sorted(path for path, _ in server.requests) == sorted("/mirror/" + name for name in archives)
    assert {path.name for path in data_files(files_dir)} == set(archives)
    assert results["step"] == 2
    evaluations = [r for r in metrics.read_metrics(tmp_path / "run") if "test_accuracy" in r]
    assert evaluations[-1]["test_examples"] == 10_000


def test_validation_wants_a_folder_to_download_into_not_an_existing_one(tmp_path):
    data.check_config(load_config("default", **{"data.files_dir": str(tmp_path / "missing")}).data)
    assert not (tmp_path / "missing").exists()  # validation creates nothing; the download does
    with pytest.raises(configuration.ConfigError, match="data.files_dir='' is empty"):
        data.check_config(load_config("default", **{"data.files_dir": ""}).data)
    with pytest.raises(configuration.ConfigError, match="data.download=True"):
        data.check_config(load_config("default", **{"data.files_dir": "", "data.download": False}).data)


def test_the_cifar_configs_download_the_official_files_into_the_cache():
    for name, dataset in [("default", "cifar10"), ("cifar10_resnet18", "cifar10"), ("cifar100_wrn28_10", "cifar100")]:
        config = load_config(name)
        assert (config.data.source, config.data.download) == ("files", True), name
        assert config.data.files_dir == f"~/.cache/resnet-jax/data/{dataset}", name


def test_where_the_files_come_from_is_not_part_of_a_runs_identity():
    before = load_config("default").to_dict()
    del before["data"]["download"], before["data"]["download_mirror"]  # a config.json from before these keys
    after = load_config("default", **{"data.files_dir": "/elsewhere", "data.download_mirror": "http://m/"})
    assert record.training_differences(before, after.to_dict()) == []
    tfds = load_config("default", **{"data.source": "tfds"})
    assert record.training_differences(before, tfds.to_dict()) == ["data.source"]


def test_the_default_config_offline_stops_in_one_line_with_status_2(tmp_path):
    dead = closed_port_url()
    overrides = (f"data.files_dir={tmp_path / 'cifar10'}", f"data.download_mirror={dead}")
    result = subprocess.run(
        train_command(tmp_path / "run", "default", *overrides),
        capture_output=True,
        text=True,
        env=subprocess_env(http_proxy=dead, https_proxy=dead, no_proxy="127.0.0.1"),
        timeout=120,
    )
    assert result.returncode == 2
    assert_one_line(result.stderr, "error: cifar10: cannot reach 127.0.0.1", str(tmp_path / "cifar10"))
    assert not (tmp_path / "run" / "checkpoints").exists()  # stopped before start-up
