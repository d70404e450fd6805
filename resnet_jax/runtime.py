"""Process-wide settings shared by the command-line tools: log output, and XLA's persistent compilation cache.

The cache makes a resumed or repeated run skip most of its compile time (a restart after pre-emption, a sweep's
trials). `JAX_COMPILATION_CACHE_DIR` chooses another folder; an empty value turns the cache off.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import jax
from absl import logging as absl_logging


def setup_logging() -> None:
    """This package's progress at INFO on stderr; the libraries' (orbax logs every file it writes) from WARNING."""
    absl_logging.set_verbosity(absl_logging.WARNING)
    package_logger = logging.getLogger("resnet_jax")
    if not package_logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        package_logger.addHandler(handler)
    package_logger.setLevel(logging.INFO)
    package_logger.propagate = False


def default_compile_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "resnet-jax" / "xla"


def use_compile_cache() -> None:
    """Turns on XLA's persistent compilation cache, unless the environment already decided."""
    if "JAX_COMPILATION_CACHE_DIR" in os.environ:
        return
    jax.config.update("jax_compilation_cache_dir", str(default_compile_cache()))
    # Small programs too: on a CPU even a tiny network's init takes seconds to compile.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
