"""The process-wide settings of `resnet_jax.runtime`: glibc's malloc told to keep XLA:CPU's large blocks mapped
between calls, which the tools set as they are imported."""

import json
import os
import subprocess
import sys

import pytest

from resnet_jax import runtime

# Page faults per call of a program whose 64 MB result is freed before the next call: above glibc's 32 MB mmap
# ceiling, each result is mapped afresh and every one of its pages faults, unless the tools' setting holds.
FAULTS_PER_CALL = """
import json, resource, sys
import resnet_jax.tools
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


def faults_per_call(environment: dict[str, str]) -> dict[str, float]:
    env = {key: value for key, value in os.environ.items() if key not in runtime.MALLOC_ENVIRONMENT}
    env.update(environment, JAX_PLATFORMS="cpu")
    result = subprocess.run(
        [sys.executable, "-c", FAULTS_PER_CALL], env=env, capture_output=True, text=True, timeout=120, check=True
    )
    return json.loads(result.stdout.splitlines()[-1])


@pytest.mark.skipif(not runtime.on_glibc(), reason="glibc's malloc only")
def test_tools_keep_large_freed_blocks_mapped():
    kept = faults_per_call({})
    assert kept["faults"] < 0.25 * kept["pages"], kept
    # The same program with the setting left to the environment: every page of every result faults again.
    remapped = faults_per_call({"MALLOC_ARENA_MAX": "8"})
    assert remapped["faults"] > 0.9 * remapped["pages"], remapped


def test_the_environment_decides_when_it_sets_malloc_tunables(monkeypatch):
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")
    assert runtime.reuse_freed_memory() is False
