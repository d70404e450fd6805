"""Files (and folders of files) written whole or not at all, by the one helper every writer here uses: the content
goes to a temporary in the target's folder, reaches the disk and is renamed over the target, so that a kill, a full
disk or an error leaves the old file whole and no temporary behind; and the check that a path's names fit a file
system at all.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

# `temporary_path`'s names: .NAME.PID-HEX.tmpSUFFIX
_TEMPORARY = re.compile(r"\..*\.(?P<pid>\d+)-[0-9a-f]{8}\.tmp[^/]*")
NAME_MAX = 255  # bytes in one name on Linux's file systems (ext4, xfs, btrfs, tmpfs); macOS's APFS allows as many
_SUFFIX_MAX = 16  # a longer "suffix" is part of the name (a.b-long-text), not a format a writer reads
_DIGEST_CHARS = 16


class NameTooLongError(ValueError):
    """A path with a name longer than NAME_MAX bytes; the message names the flag, the name and the fix."""


def _size(name: str) -> int:
    return len(os.fsencode(name))


def check_names(path: str | os.PathLike, flag: str) -> None:
    """Raises NameTooLongError when a name in `path` is over NAME_MAX bytes (the system's ENAMETOOLONG, said
    before any work instead of after it)."""
    for part in Path(path).parts:
        if _size(part) > NAME_MAX:
            raise NameTooLongError(
                f"{flag} {path}: the name {part[:24]}... is {_size(part)} bytes, over the {NAME_MAX} a file name may "
                f"have; give a shorter name"
            )


def temporary_path(path: str | os.PathLike) -> Path:
    """A hidden sibling of `path`, unique to this call, within NAME_MAX bytes however long `path`'s name is. It
    keeps `path`'s suffix, so that writers that choose a format by it (matplotlib, numpy) write the same format."""
    path = Path(path)
    suffix = path.suffix if _size(path.suffix) <= _SUFFIX_MAX else ""
    tag = f".{os.getpid()}-{secrets.token_hex(4)}.tmp{suffix}"
    name = "." + path.name
    if _size(name) + _size(tag) > NAME_MAX:
        # Cut the name and add a digest of the whole of it: two long names that share their start stay apart.
        digest = "-" + hashlib.sha256(os.fsencode(path.name)).hexdigest()[:_DIGEST_CHARS]
        while _size(name) + _size(digest) + _size(tag) > NAME_MAX:
            name = name[:-1]
        name += digest
    return path.with_name(name + tag)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_abandoned(folder: str | os.PathLike) -> list[Path]:
    """Removes the temporaries under `folder` whose writer is no longer running on this host (one killed by SIGKILL
    mid-write leaves its temporary behind; the target itself is whole), and returns them. A live writer's are kept.
    Call it only where this host's processes are the folder's only writers: a pid names a process on its own host."""
    removed = []
    for path in sorted(Path(folder).rglob(".*.tmp*")):
        match = _TEMPORARY.fullmatch(path.name)
        if match and path.exists() and not _running(int(match["pid"])):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _sync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _sync_folder(path: Path) -> None:
    # Some file systems cannot sync a folder (EINVAL); the files' own content is on disk by then.
    with contextlib.suppress(OSError):
        folder = os.open(path, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


def commit(temporary: str | os.PathLike, path: str | os.PathLike) -> None:
    """Puts the finished file `temporary` in `path`'s place: synced first, so that a crash after the rename cannot
    leave an empty file under the new name, and the folder synced after, so that the rename itself survives one."""
    _sync(Path(temporary))
    os.replace(temporary, path)
    _sync_folder(Path(path).parent)


@contextlib.contextmanager
def replacing(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary path to write `path`'s new content to (by any writer that takes a file name); when the
    block ends, the file takes `path`'s place (`commit`). When the block raises, `path` is left as it was and the
    temporary is removed."""
    temporary = temporary_path(path)
    try:
        yield temporary
        commit(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


@contextlib.contextmanager
def replacing_folder(path: str | os.PathLike) -> Iterator[Path]:
    """`replacing` for a folder: yields a new temporary folder to fill; when the block ends, its files are synced and
    it is renamed to `path` whole. A non-empty folder already at `path` is kept, and the rename's OSError raised (the
    caller decides whether the folder there will do). When the block raises, the temporary folder is removed."""
    temporary = temporary_path(path)
    try:
        temporary.mkdir(parents=True)
        yield temporary
        for file in temporary.rglob("*"):
            if file.is_file():
                _sync(file)
        os.replace(temporary, path)
        _sync_folder(Path(path).parent)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Writes `data` to `path` atomically: a reader sees the old file or the whole new one, never a torn one."""
    with replacing(path) as temporary, open(temporary, "wb") as handle:
        handle.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Writes `text` (UTF-8) to `path` atomically, as `write_bytes` does."""
    write_bytes(path, text.encode())
