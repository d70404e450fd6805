"""Fetching the official dataset files: their hosts and sha256 sums, and a verified, resumable HTTP download.

A file takes its final name only once its checksum matches; one already in place is verified, never replaced; one
whose data the folder holds in another official form that the files source reads is not fetched.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import fcntl
import gzip
import hashlib
import http.client
import logging
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from urllib.parse import urlparse

from tqdm import tqdm

from resnet_jax import atomic
from resnet_jax.data.files import official_form
from resnet_jax.data.registry import DataError

logger = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
RETRIES = 5  # after a transfer has started; a host that never answered is not retried (offline fails fast)
TIMEOUT_S = 10.0  # per connect and per read: an unreachable host fails in seconds, a stalled transfer is retried
BACKOFF_S = 1.0  # doubled after each failed try


class DownloadError(DataError):
    """A file that could not be fetched, or is not the official one; the message is one line with the fix."""


class HostUnreachable(DownloadError):
    """No answer from the host at all (offline, unknown name, refused, timed out); nothing was retried."""


@dataclasses.dataclass(frozen=True)
class OfficialFiles:
    """A dataset's official files: each one is at `base_url + name` and has the sha256 given."""

    base_url: str
    sha256: Mapping[str, str]  # file name -> hex digest
    # file name -> hex digest of the DECOMPRESSED content of a .gz file: a copy gzipped again elsewhere (another
    # header, same data) is accepted when it is already in place.
    content_sha256: Mapping[str, str] = dataclasses.field(default_factory=dict)


class Fetched(enum.Enum):
    """What became of one file; the value is what the command prints."""

    DOWNLOADED = "downloaded and verified"
    VERIFIED = "already there, verified"
    SAME_CONTENT = "already there, verified (same content as the official file, another gzip header)"
    OTHER_FORM = "not fetched: the folder holds its data in another official form, which is read instead"


# Each sha256 is confirmed by two sources. [tfds]: tensorflow-datasets 4.9.10's url_checksums/<dataset>.txt.
OFFICIAL_FILES: dict[str, OfficialFiles] = {
    # [tfds] and gomlx/gomlx examples/cifar/cifar.go (also ankane/torchvision-ruby's cifar10.rb / cifar100.rb).
    "cifar10": OfficialFiles(
        "https://www.cs.toronto.edu/~kriz/",
        {"cifar-10-binary.tar.gz": "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd"},
    ),
    "cifar100": OfficialFiles(
        "https://www.cs.toronto.edu/~kriz/",
        {"cifar-100-binary.tar.gz": "58a81ae192c23a4be8b1804d68e518ed807d710a4eb253b1f2a199162a40d8ec"},
    ),
    # [tfds], and computed here from Debian's dataset-fashion-mnist files with their original gzip header restored
    # (tests/test_download.py rebuilds them so and checks them against [tfds]).
    "fashion_mnist": OfficialFiles(
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        {
            "train-images-idx3-ubyte.gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
            "train-labels-idx1-ubyte.gz": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
            "t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
            "t10k-labels-idx1-ubyte.gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
        },
        # Computed here from Debian's dataset-fashion-mnist 0.0~git20200523.55506a9-1 files (zcat | sha256sum):
        # the official content, since those files with their original header restored carry [tfds]'s sums above
        # (tests/test_download.py checks both).
        content_sha256={
            "train-images-idx3-ubyte.gz": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            "train-labels-idx1-ubyte.gz": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            "t10k-images-idx3-ubyte.gz": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            "t10k-labels-idx1-ubyte.gz": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        },
    ),
    # torchvision's host for LeCun's files (his own site now refuses downloads). [tfds] lists the same files, sizes
    # and sums at storage.googleapis.com/cvdf-datasets/mnist/; ankane/torchvision-ruby's mnist.rb lists them for
    # this host.
    "mnist": OfficialFiles(
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        {
            "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
            "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        },
    ),
}


class _BrokenTransfer(Exception):
    """A transfer that ended early or answered wrongly: worth another try from where it stopped."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def content_sha256_of(path: Path) -> str | None:
    """The sha256 of a gzip file's decompressed content; None when it is not a whole gzip file."""
    digest = hashlib.sha256()
    try:
        with gzip.open(path, "rb") as file:
            while chunk := file.read(CHUNK_BYTES):
                digest.update(chunk)
    except (OSError, EOFError, gzip.BadGzipFile):
        return None
    return digest.hexdigest()


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _copy_body(response: http.client.HTTPResponse, part: Path, offset: int, expected: int | None, bar: tqdm) -> None:
    """Writes the response body into `part` from byte `offset` on; raises `_BrokenTransfer` when it ends short."""
    received = 0
    try:
        file = open(part, "r+b" if offset else "wb")  # noqa: SIM115  (closed below; its errors are the disk's)
        file.truncate(offset)
        file.seek(offset)
    except OSError as error:
        raise DownloadError(f"cannot write {part}: {error.strerror}; choose a folder you can write") from None
    with file:
        while True:
            try:
                chunk = response.read(CHUNK_BYTES)
            except (OSError, http.client.HTTPException) as error:
                raise _BrokenTransfer(f"{error.__class__.__name__} after {offset + received:,} bytes") from error
            if not chunk:
                break
            try:
                file.write(chunk)
            except OSError as error:
                raise DownloadError(f"cannot write {part}: {error.strerror}; free some space, then run again") from None
            received += len(chunk)
            bar.update(len(chunk))
    if expected is not None and received < expected:
        # http.client returns a short body without an error when the connection closes early.
        raise _BrokenTransfer(f"the connection closed after {offset + received:,} bytes")


def _content_range_start(response: http.client.HTTPResponse) -> int | None:
    match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
    return int(match.group(1)) if match else None


def _transfer(url: str, part: Path, retries: int, timeout_s: float, backoff_s: float) -> None:
    """Downloads `url` into `part`, resuming what `part` holds with a Range request, with bounded retries."""
    host = urlparse(url).hostname
    answered = False  # a host that never answered is not retried: offline ends in seconds
    failure = ""
    name = Path(urlparse(url).path).name
    with tqdm(desc=name, unit="B", unit_scale=True, unit_divisor=1024, disable=None) as bar:
        for attempt in range(retries + 1):
            if attempt:
                time.sleep(backoff_s * 2 ** (attempt - 1))
            offset = _size(part)
            request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
            try:
                with urllib.request.urlopen(request, timeout=timeout_s) as response:
                    answered = True
                    length = response.headers.get("Content-Length")
                    if response.status == 206 and _content_range_start(response) != offset:
                        part.unlink()
                        raise _BrokenTransfer("the server resumed at the wrong byte")
                    if response.status != 206:
                        offset = 0  # the server sent the whole file
                    expected = int(length) if length is not None else None
                    bar.reset(total=offset + expected if expected is not None else None)
                    bar.update(offset)
                    _copy_body(response, part, offset, expected, bar)
                return
            except urllib.error.HTTPError as error:
                answered = True
                if error.code == 416 and offset:
                    return  # `part` is already whole (a run stopped before renaming it): the checksum decides
                if error.code < 500:
                    raise DownloadError(
                        f"{url}: HTTP {error.code} {error.reason}; check the address or mirror"
                    ) from None
                failure = f"HTTP {error.code} {error.reason}"
            except (OSError, http.client.HTTPException) as error:
                reason = getattr(error, "reason", error)
                if not answered:
                    raise HostUnreachable(f"cannot reach {host} ({reason})") from None
                failure = f"{reason.__class__.__name__}: {reason}"
            except _BrokenTransfer as error:
                failure = str(error)
    raise DownloadError(
        f"{url} broke off {retries + 1} times (last: {failure}); {_size(part):,} bytes are kept in {part}: "
        "run the same command again to resume"
    )


@contextlib.contextmanager
def _exclusive(target: Path) -> Iterator[None]:
    """Holds an advisory lock beside `target`, so that runs on one machine fetching the same file (two trainings, or
    a training and `data download`) take turns: the second finds the first one's verified file. The lock file is
    removed after each turn, so that nothing is left behind; a run that was waiting on the removed file then locks
    a new one."""
    path = target.with_name(target.name + ".lock")
    while True:
        try:
            lock = open(path, "a")  # noqa: SIM115  (closed below)
        except OSError as error:
            message = f"cannot write in {target.parent}: {error.strerror}; choose a folder you can write"
            raise DownloadError(message) from None
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if os.stat(path).st_ino == os.fstat(lock.fileno()).st_ino:
                break
        except FileNotFoundError:
            pass
        lock.close()
    try:
        yield
    finally:
        path.unlink(missing_ok=True)  # still holding the lock: no other run can be between its open and its flock
        lock.close()


def fetch_file(
    url: str,
    target: Path,
    sha256: str,
    *,
    content_sha256: str | None = None,
    part_suffix: str = ".part",
    retries: int = RETRIES,
    timeout_s: float = TIMEOUT_S,
    backoff_s: float = BACKOFF_S,
) -> Fetched:
    """Makes `target` the file at `url` whose sha256 is `sha256`, and says how.

    The transfer goes to `target + part_suffix` (one suffix per process when several share a folder) and is
    renamed only once verified, so `target` is either absent or the official file. A file already at `target` is
    kept when it is the official one, or (given `content_sha256`) a gzip file of the official content; any other is
    refused, never replaced.
    """
    if urlparse(url).scheme not in ("http", "https"):
        raise DownloadError(f"{url} is not an http(s) address; give a mirror as http://HOST/PATH/ or https://...")
    with _exclusive(target):
        return _fetch_unlocked(url, target, sha256, content_sha256, part_suffix, retries, timeout_s, backoff_s)


def _fetch_unlocked(
    url: str,
    target: Path,
    sha256: str,
    content_sha256: str | None,
    part_suffix: str,
    retries: int,
    timeout_s: float,
    backoff_s: float,
) -> Fetched:
    if target.exists():
        actual = sha256_of(target)
        if actual == sha256:
            return Fetched.VERIFIED
        if content_sha256 is not None and content_sha256_of(target) == content_sha256:
            return Fetched.SAME_CONTENT
        raise DownloadError(
            f"{target} is there but is not the official file (sha256 {actual}, expected {sha256}); "
            "move it away or delete it, then run again"
        )
    part = target.with_name(target.name + part_suffix)
    _transfer(url, part, retries, timeout_s, backoff_s)
    actual = sha256_of(part)
    if actual != sha256:
        part.unlink()
        raise DownloadError(
            f"{url} is not the official {target.name} (sha256 {actual}, expected {sha256}); nothing was kept: "
            "check the host or mirror, and run again"
        )
    atomic.commit(part, target)
    return Fetched.DOWNLOADED


def fetch_files(
    files: OfficialFiles,
    folder: str | os.PathLike,
    *,
    mirror: str | None = None,
    part_suffix: str = ".part",
    retries: int = RETRIES,
    timeout_s: float = TIMEOUT_S,
    backoff_s: float = BACKOFF_S,
) -> dict[str, Fetched]:
    """Fetches every file of `files` into `folder` (created when missing), from `mirror` when given (a base URL
    serving the same file names). Returns what became of each file, by name."""
    folder = Path(folder).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DownloadError(f"cannot create {folder}: {error.strerror}; choose a folder you can write") from None
    base_url = mirror.rstrip("/") + "/" if mirror else files.base_url
    return {
        name: fetch_file(
            base_url + name,
            folder / name,
            sha256,
            content_sha256=files.content_sha256.get(name),
            part_suffix=part_suffix,
            retries=retries,
            timeout_s=timeout_s,
            backoff_s=backoff_s,
        )
        for name, sha256 in files.sha256.items()
    }


def fetch_official_files(
    dataset: str, files_dir: str | os.PathLike, mirror: str | None = None, part_suffix: str = ".part"
) -> dict[str, Fetched]:
    """Fetches the official files of `dataset` that `files_dir` lacks (see `fetch_files`), but none whose data it
    holds in another official form that the files source reads first (CIFAR's python version or an extracted
    archive, an IDX file decompressed: `Fetched.OTHER_FORM`); every failure is a one-line DataError that says how to
    go on."""
    if dataset not in OFFICIAL_FILES:
        raise DataError(f"{dataset!r} has no official files to download; choose one of {', '.join(OFFICIAL_FILES)}")
    files = OFFICIAL_FILES[dataset]
    folder = Path(files_dir).expanduser()
    read_instead = {name: official_form(dataset, folder, name) for name in files.sha256}
    read_instead = {name: path for name, path in read_instead.items() if path not in (None, folder / name)}
    for name, path in read_instead.items():
        what = "the batches loose in it" if path == folder else path.name
        logger.info("%s: reading %s in place of %s, which is not fetched", folder, what, name)
    to_fetch = {name: digest for name, digest in files.sha256.items() if name not in read_instead}
    try:
        fetched = fetch_files(
            dataclasses.replace(files, sha256=to_fetch), folder, mirror=mirror, part_suffix=part_suffix
        )
        return {name: fetched.get(name, Fetched.OTHER_FORM) for name in files.sha256}
    except HostUnreachable as error:
        elsewhere = (
            f"check the mirror {mirror}"
            if mirror
            else "download them from a mirror (--mirror URL, or data.download_mirror)"
        )
        raise DataError(
            f"{dataset}: {error}, so its official files cannot be downloaded into {files_dir}. Copy "
            f"{', '.join(files.sha256)} there yourself, {elsewhere}, or train on random data: "
            "--config.data.source=synthetic"
        ) from error
