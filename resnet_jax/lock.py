"""One writer per workdir: an OS lock (flock) on `DIR/.lock`, held alone while a training, a sweep or a conversion
writes there, and shared by the tools that write their own files into a run (an evaluation, features, an export, a
figure): they may run side by side, but never beside a training of the run, whose `--fresh` would archive the run
from under them. The kernel releases it when the holder ends, however it ends (kill -9 included), so a lock is
never stale; the file records who holds it (pid, host, start, command) for the message that refuses another. A new
sole holder removes the temporaries that a writer killed mid-write left (`atomic.remove_abandoned`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import shlex
import socket
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import jax

from resnet_jax import atomic, parallel
from resnet_jax.configuration import CONFIG_FILE, ConfigError
from resnet_jax.workdir import LOCK_FILE, create_workdir

# Filesystems that cannot lock (some network mounts) answer these: the run goes on, unguarded, with a warning.
UNSUPPORTED_ERRNOS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}

logger = logging.getLogger(__name__)


class WorkdirBusy(ConfigError):
    """Another process holds the workdir's lock; the message names it."""


def _holder(path: Path) -> str:
    """`pid 123, started 2025-01-02 10:00:00: train.py --workdir ...` from the lock file, as far as it says."""
    try:
        record = json.loads(path.read_text())
        pid, host, started, command = (record[key] for key in ("pid", "host", "started", "command"))
    except (OSError, ValueError, KeyError, TypeError):  # written this instant, or by something else
        return "another resnet-jax"
    where = "" if host == socket.gethostname() else f" on {host}"
    return f"another resnet-jax (pid {pid}{where}, started {started}: {command})"


def _open(path: Path, shared: bool) -> int:
    """A descriptor of the lock file at `path`, created when missing. A shared holder may lock a file it can only
    read (flock needs no write access): a run on a read-only disk, or another user's, is still read and scored."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as error:
        if shared and path.is_file() and error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            with contextlib.suppress(OSError):
                return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        raise


def _acquire(path: Path, shared: bool = False) -> int | None:
    """This process's descriptor holding the lock at `path` (alone, or `shared` with other shared holders), or None
    when another process holds it in a way that excludes this one. Raises OSError when the file cannot be opened."""
    descriptor = _open(path, shared)
    try:
        fcntl.flock(descriptor, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        return None
    except OSError as error:
        if error.errno not in UNSUPPORTED_ERRNOS:
            os.close(descriptor)
            raise
        logger.warning("%s cannot be locked here (%s): make sure no other run writes to it", path, error.strerror)
        return descriptor
    record = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": shlex.join(sys.argv)[:300],
    }
    # The record only names the holder to a refused process: on a full disk (or a lock file opened read-only) the
    # lock holds without it. Of several shared holders, it names the last to come.
    with contextlib.suppress(OSError):
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, (json.dumps(record) + "\n").encode(), 0)
    return descriptor


@contextlib.contextmanager
def hold(workdir: Path) -> Iterator[None]:
    """Holds `workdir`'s lock (creating the folder) for the body, or raises WorkdirBusy at once when another process
    holds it. In a multi-process run process 0 holds it for all (they share the folder), and all refuse together."""
    path = workdir / LOCK_FILE
    descriptor = None
    # Process 0 alone makes the folder and takes the lock: the others learn here whether it could, and stop with it.
    with parallel.stop_together("resnet_jax:locked", (WorkdirBusy, ConfigError)):
        if jax.process_index() == 0:
            create_workdir(workdir)
            try:
                descriptor = _acquire(path)
            except OSError as error:
                raise ConfigError(
                    f"cannot create {path} ({error.strerror}); free some space or choose another --workdir"
                ) from None
            if descriptor is None:
                raise WorkdirBusy(f"{_holder(path)} is writing to {workdir}; wait for it or use another --workdir")
    if jax.process_count() == 1:
        for leftover in atomic.remove_abandoned(workdir):
            logger.info("removed %s, left by a writer killed mid-write", leftover)
    try:
        yield
    finally:
        if descriptor is not None:
            os.close(descriptor)  # the kernel drops the lock with the last descriptor


def _locked_here(folder: Path) -> bool:
    """Whether `folder` holds a lock file of this package (one that names its holder, or an empty one): not some
    other program's `.lock`, which a tool must neither lock nor overwrite."""
    path = folder / LOCK_FILE
    try:
        text = path.read_text() if path.is_file() else None
    except (OSError, UnicodeDecodeError):
        return False
    if text is None or not text.strip():  # made this instant, or on a full disk: ours only beside a run's config
        return text is not None and (folder / CONFIG_FILE).is_file()
    try:
        record = json.loads(text)
    except ValueError:
        return False
    return isinstance(record, dict) and "pid" in record


def enclosing_workdir(path: str | os.PathLike, runs: Sequence[str | os.PathLike] = ()) -> Path | None:
    """The workdir that `path` (a file or folder a tool writes) lies in: the nearest folder, `path` itself or one
    above it, that is one of `runs` (the runs the tool reads) or holds this package's lock file, as every run,
    sweep and conversion does (a run as the tool was given it); None when it lies in none."""
    target = Path(path).expanduser().resolve()
    known = {Path(run).expanduser().resolve(): Path(run).expanduser() for run in runs}
    for folder in (target, *target.parents):
        if folder in known:
            return known[folder]
        if _locked_here(folder):
            return folder
    return None


@contextlib.contextmanager
def sharing(workdir: str | os.PathLike | None, flag: str | None = None) -> Iterator[None]:
    """Holds `workdir`'s lock shared, in this process alone, for the body: a tool's reading of a run and its writing
    into it, which a training, a sweep or a conversion of that workdir (holding it alone) is refused during; other
    tools may share it. Raises WorkdirBusy (`DIR is busy: ...`) at once when one of those holds it, offering `flag`
    (`--out`) to write elsewhere. Holds nothing when `workdir` is None or holds no run (no lock file, no
    config.json: the tool's read says so), nor where no lock file can be made or read (a read-only disk, another
    user's folder): nothing holds one there, and the tool's own write then fails, with its own message."""
    workdir = None if workdir is None else Path(workdir).expanduser()
    descriptor = None
    # A folder with neither a lock file nor a run's config.json holds no run (the tool's read says so): a tool never
    # leaves a lock file there, which would make it look like a workdir to every later tool.
    if workdir is not None and ((workdir / LOCK_FILE).is_file() or (workdir / CONFIG_FILE).is_file()):
        path = workdir / LOCK_FILE
        try:
            descriptor = _acquire(path, shared=True)
            busy = descriptor is None
        except OSError:  # a lock file that can be neither made nor read: no one holds it
            busy = False
        if busy:
            fix = f", or give {flag} a place outside it" if flag else ""
            raise WorkdirBusy(f"{workdir} is busy: {_holder(path)} is writing to it; wait for it{fix}")
    try:
        yield
    finally:
        if descriptor is not None:
            os.close(descriptor)
