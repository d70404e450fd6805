"""Process-wide settings shared by the command-line tools: log output, XLA's persistent compilation cache, and the
C allocator's reuse of freed memory. Made by each command's `main` as it starts, never on import: a program that
imports resnet_jax as a library keeps its own. But a dependency's import does touch logging: orbax (imported with
`resnet_jax.checkpoint`) logs through absl as it loads, and absl then gives a root logger without handlers one on
stderr, so a program configures its logging before that import, or calls `logging.basicConfig(force=True)`.

The cache makes a resumed or repeated run skip most of its compile time (a restart after pre-emption, a sweep's
trials). `JAX_COMPILATION_CACHE_DIR` chooses another folder; an empty value turns the cache off.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any


def setup_logging() -> None:
    """This package's progress at INFO on stderr; the libraries' that log through absl (orbax, tfds) only from ERROR:
    their warnings are about what this package handles and reports itself (a save without metrics to rank it by,
    a tfds folder that is not prepared)."""
    from absl import logging as absl_logging  # here, as jax in `use_compile_cache`: `resnet-jax` imports this first

    absl_logging.set_verbosity(absl_logging.ERROR)
    absl_logger = logging.getLogger("absl")
    if not any(isinstance(f, _BackgroundThreadTracebacks) for f in absl_logger.filters):
        absl_logger.addFilter(_BackgroundThreadTracebacks())
    if not isinstance(sys.unraisablehook, _QuietAbandonedWrites):
        sys.unraisablehook = _QuietAbandonedWrites(sys.unraisablehook)
    # orbax writes checkpoints in asyncio tasks; after a failed save (a full disk) the tasks it abandoned log the
    # same error again when collected. `Checkpointer.wait` has reported it, once.
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    # Some of those abandoned writes are coroutines never started: Python warns of each as it exits, after the line.
    warnings.filterwarnings(
        "ignore",
        message=r"coroutine 'async_serialize_from_host\.<locals>\.\w+' was never awaited",
        category=RuntimeWarning,
    )
    package_logger = logging.getLogger("resnet_jax")
    if not package_logger.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        package_logger.addHandler(handler)
    package_logger.setLevel(logging.INFO)
    package_logger.propagate = False


class _StderrHandler(logging.StreamHandler):
    """Writes to `sys.stderr` as it is at each record, not as it was at set-up: a tool run inside another program
    (a test's captured output, a notebook) may swap stderr between runs and close the old one."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        del value


class _BackgroundThreadTracebacks(logging.Filter):
    """Drops the tracebacks that libraries' background threads log through absl (orbax's save threads, when a write
    fails on a full disk): each such thread keeps its exception and re-raises it to `Checkpointer.wait`, which
    reports it to the user once, in one line. Records of the main thread pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and record.thread != threading.main_thread().ident)


class _QuietAbandonedWrites:
    """Silences the callbacks of checkpoint writes that orbax abandoned after the first one failed.

    tensorstore finishes those writes later and reports each to an event loop orbax has closed by then: dozens of
    "Event loop is closed" tracebacks that would bury the one line that says what went wrong. Anything else that
    cannot be raised goes on to the previous hook.
    """

    def __init__(self, previous: Callable[[Any], object]) -> None:
        self.previous = previous

    def __call__(self, unraisable: Any) -> None:
        error = unraisable.exc_value
        if isinstance(error, RuntimeError) and str(error) == "Event loop is closed":
            return
        self.previous(unraisable)


def default_compile_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "resnet-jax" / "xla"


def use_compile_cache() -> None:
    """Turns on XLA's persistent compilation cache, unless the environment already decided."""
    if "JAX_COMPILATION_CACHE_DIR" in os.environ:
        return
    # Imported here: `resnet-jax` imports this module first, before it can turn a Ctrl-C into one line.
    import jax

    jax.config.update("jax_compilation_cache_dir", str(default_compile_cache()))
    # Small programs too: on a CPU even a tiny network's init takes seconds to compile.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
MALLOC_ENVIRONMENT = ("GLIBC_TUNABLES", "MALLOC_ARENA_MAX", "MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_")


def on_glibc() -> bool:
    return "CS_GNU_LIBC_VERSION" in getattr(os, "confstr_names", {}) and bool(os.confstr("CS_GNU_LIBC_VERSION"))


def reuse_freed_memory() -> bool:
    """Has glibc's malloc keep large freed blocks for reuse, where it would hand them back to the kernel at once;
    True when it took effect. A no-op off glibc, or where the environment already sets malloc's tunables.

    XLA:CPU allocates each execution's temporaries as one block (240 MB for a ResNet-20 train step at batch 128).
    Above glibc's 32 MB ceiling on its mmap threshold every such block is mapped afresh, and the kernel zero-fills
    each page at its first touch: 60,000 page faults a step, a third of the step's time on a 2-core CPU. One arena,
    no mmap and a 2 GB trim threshold keep those pages mapped from one step to the next. The commands that train
    (train, sweep, degradation, compare's measurements) and the JAX benchmarks call it first thing in their `main`,
    before JAX runs anything: a thread that has allocated keeps its own arena, and an arena other than the first one
    still maps large blocks afresh.
    """
    if not on_glibc() or any(name in os.environ for name in MALLOC_ENVIRONMENT):
        return False
    mallopt = ctypes.CDLL(None).mallopt
    return all(
        mallopt(parameter, value) == 1
        for parameter, value in ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1))
    )
