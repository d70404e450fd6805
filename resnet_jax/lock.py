"""One writer per workdir: an OS lock (flock) on `DIR/.lock`, held while a training, a sweep or a conversion writes
there. The kernel releases it when the holder ends, however it ends (kill -9 included), so a lock is never stale;
the file records who holds it (pid, host, start, command) for the message that refuses a second writer. A new
holder removes the temporaries that a writer killed mid-write left (`atomic.remove_abandoned`).
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
from collections.abc import Iterator
from pathlib import Path

import jax
import numpy as np
from jax.experimental import multihost_utils

from resnet_jax import atomic
from resnet_jax.configuration import ConfigError
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


def _acquire(path: Path) -> int | None:
    """This process's descriptor holding the lock at `path`, or None when another process holds it."""
    try:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as error:
        raise ConfigError(
            f"cannot create {path} ({error.strerror}); free some space or choose another --workdir"
        ) from None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
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
    # The record only names the holder to a refused process: on a full disk the lock holds without it.
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
    if jax.process_index() == 0:
        create_workdir(workdir)
        descriptor = _acquire(path)
    taken = descriptor is not None
    if jax.process_count() > 1:
        taken = bool(multihost_utils.broadcast_one_to_all(np.int32(taken)))
    if not taken:
        raise WorkdirBusy(f"{_holder(path)} is writing to {workdir}; wait for it or use another --workdir")
    if jax.process_count() == 1:
        for leftover in atomic.remove_abandoned(workdir):
            logger.info("removed %s, left by a writer killed mid-write", leftover)
    try:
        yield
    finally:
        if descriptor is not None:
            os.close(descriptor)  # the kernel drops the lock with the last descriptor
