"""The process-wide settings of `resnet_jax.runtime`: glibc's malloc told to keep XLA:CPU's large blocks mapped
between calls, which the commands that train set as they start; and nothing set by importing any module of the
package, so that a program that uses it as a library keeps its own settings."""

import json
import subprocess

import pytest

from resnet_jax import runtime
from resnet_jax.tools import compare, degradation, sweep, train
from tests.conftest import PYTHON, REPO_ROOT, subprocess_env

# Page faults per call of a program whose 64 MB result is freed before the next call: above glibc's 32 MB mmap
# ceiling, each result is mapped afresh and every one of its pages faults, unless the train command's setting holds.
# It is made as `resnet-jax train` makes it: after the command's imports, first thing in its `main`.
FAULTS_PER_CALL = """
import json, resource, sys
from resnet_jax.tools import train
from resnet_jax import runtime
runtime.reuse_freed_memory()
import jax, jax.numpy as jnp
add_one = jax.jit(lambda x: x + 1.0)
x = jnp.zeros((16 * 2**20,), jnp.float32)
for _ in range(24):  # glibc's heap settles within some 4-13 calls, as freed blocks coalesce enough to be reused
    add_one(x).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(16):
    add_one(x).block_until_ready()
pages = x.nbytes // resource.getpagesize()
print(json.dumps({"faults": (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 16, "pages": pages}))
"""

# Imports every module of the package and prints what that changed of the process-wide state: hooks, the loggers
# the commands set up, warning filters, the environment, signal handlers, JAX's compilation cache, and malloc (a
# 64 MB block, which glibc maps afresh unless `reuse_freed_memory` ran). The libraries the package imports come
# first, since what they set as they load is theirs (orbax gives the root logger a handler).
IMPORTS_CHANGE_NOTHING = """
import ctypes, importlib, json, logging, os, pkgutil, signal, sys, warnings
import jax, orbax.checkpoint
import resnet_jax

class MallocInfo(ctypes.Structure):  # glibc's struct mallinfo2, whole: it is returned by value
    names = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"
    _fields_ = [(name, ctypes.c_size_t) for name in names.split()]

libc = ctypes.CDLL(None)
libc.malloc.restype, libc.free.argtypes, libc.mallinfo2.restype = ctypes.c_void_p, [ctypes.c_void_p], MallocInfo

def large_blocks_mapped():
    before = libc.mallinfo2().hblks
    block = libc.malloc(64 << 20)
    mapped = libc.mallinfo2().hblks > before
    libc.free(block)
    return mapped

def state():
    loggers = {
        name: [logger.level, logger.propagate, [repr(h) for h in logger.handlers], [repr(f) for f in logger.filters]]
        for name, logger in ((name, logging.getLogger(name)) for name in ("", "absl", "asyncio", "resnet_jax"))
    }
    return {
        "sys.unraisablehook": repr(sys.unraisablehook),
        "sys.excepthook": repr(sys.excepthook),
        "loggers": loggers,
        "warnings": [repr(f) for f in warnings.filters],
        "os.environ": dict(os.environ),
        "signals": [repr(signal.getsignal(number)) for number in (signal.SIGINT, signal.SIGTERM)],
        "jax_compilation_cache_dir": jax.config.jax_compilation_cache_dir,
        "large blocks mapped": large_blocks_mapped(),
    }

before = state()
modules = [
    module.name
    for module in pkgutil.walk_packages(resnet_jax.__path__, "resnet_jax.")
    if not module.name.endswith("__main__") and not module.name.rsplit(".", 1)[-1].startswith("lib")
]
for name in modules:
    importlib.import_module(name)
after = state()
changed = {key: after[key] for key in before if after[key] != before[key]}
print(json.dumps({"modules": len(modules), "changed": changed}))
"""


def run_python(code: str, **environment: str) -> dict:
    """The JSON object the last line of `code` prints, run with malloc's tunables left to `environment`."""
    env = {key: value for key, value in subprocess_env().items() if key not in runtime.MALLOC_ENVIRONMENT}
    env.update(environment, JAX_PLATFORMS="cpu")
    done = subprocess.run(
        [PYTHON, "-c", code], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=180, check=True
    )
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.skipif(not runtime.on_glibc(), reason="glibc's malloc only")
def test_importing_the_package_changes_nothing_of_the_process():
    found = run_python(IMPORTS_CHANGE_NOTHING)
    assert found["modules"] > 50  # the walk found the package, tools and oneDNN's loader included
    assert found["changed"] == {}


@pytest.mark.skipif(not runtime.on_glibc(), reason="glibc's malloc only")
def test_the_train_command_keeps_large_freed_blocks_mapped():
    kept = run_python(FAULTS_PER_CALL)
    assert kept["faults"] < 0.25 * kept["pages"], kept
    # The same program with the setting left to the environment: every page of every result faults again.
    remapped = run_python(FAULTS_PER_CALL, MALLOC_ARENA_MAX="8")
    assert remapped["faults"] > 0.9 * remapped["pages"], remapped


class Started(Exception):
    """What the commands' `main` meets first, in place of the malloc setting."""


@pytest.mark.parametrize(
    "start",
    [
        lambda: train.main(["--help"]),
        lambda: sweep.main(["--help"]),
        lambda: degradation.main(["--help"]),
        lambda: compare.measure.measure_model("{}", 1),
    ],
    ids=["train", "sweep", "degradation", "compare's measurements"],
)
def test_the_commands_that_train_set_malloc_first(start, monkeypatch):
    def started() -> bool:
        raise Started

    monkeypatch.setattr(runtime, "reuse_freed_memory", started)
    with pytest.raises(Started):
        start()


def test_the_environment_decides_when_it_sets_malloc_tunables(monkeypatch):
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")
    assert runtime.reuse_freed_memory() is False
