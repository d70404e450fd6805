"""Shared test set-up (a persistent compilation cache), helpers for configs, commands and subprocesses, and the
tolerance for comparing runs that computed the same thing in different programs."""

import json
import os
import runpy
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

# One persistent compilation cache for the whole session, subprocesses included: most of a tiny run is compile time.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "resnet-jax-test-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

REPO_ROOT = Path(__file__).resolve().parents[1]
# The real Fashion-MNIST files that Debian's dataset-fashion-mnist installs (scripts/setup.sh does).
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
needs_fashion_files = pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="apt-get install dataset-fashion-mnist")
# CIFAR-10 as JPEG files, beside a clone on these machines (../shared); never copied into the repository.
CIFAR10_JPEG = REPO_ROOT.parent / "shared/data/cifar10-jpeg/cifar10-jpeg.tar.gz"
needs_cifar10_jpeg = pytest.mark.skipif(not CIFAR10_JPEG.is_file(), reason=f"{CIFAR10_JPEG} is not on this machine")


def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment for a child Python that imports this checkout and sees `extra` variables."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
    env.update(extra)
    return env


PYTHON = sys.executable
# Seconds a child Python may take before a test calls it a hang. Generous: on CI's 2 cores, beside the parallel suite,
# importing JAX alone takes tens of seconds. What a test asserts of speed, it asserts in its output, never by a clock.
HANG_LIMIT = 300


def run_multidevice_probe(module: str) -> dict:
    """Runs `python -m module` on 8 forced host devices (the count is fixed at JAX import, hence a child process)
    and returns the JSON object its last line prints."""
    done = subprocess.run(
        [PYTHON, "-m", module],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=subprocess_env(XLA_FLAGS="--xla_force_host_platform_device_count=8"),
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


# Two runs compare exactly only when they ran the same compiled programs on the same device layout (a resumed run
# against a straight one). Across device or process counts, batch splits or compiler options, XLA sums in another
# order, and which order differs between CPUs too (AVX2 and AVX-512 kernels block their reductions differently):
# float32 results then agree to rounding, a few ulps per step, which this bounds after a few training steps.
REASSOCIATION = {"rtol": 1e-5, "atol": 1e-6}
# Eight steps trained by two programs that differ in more than their sums' order (a scan against one dispatch per
# step) on XLA's own CPU kernels: the first steps' rounding grows through BatchNorm, to 2.8e-6 on a BatchNorm bias of
# 5e-3 and 1.5e-5 on one of 1,152 convolution weights (AVX2, 2026-12-07), past any element-wise bound that could still
# catch a wrong step. By each leaf's norm the two stay within 4.6e-4 (a BatchNorm bias). Those biases start at 0, so
# each of the 8 steps brings about an eighth of their norm: a batch skipped or repeated is off by far more than this.
TRAINED_APART = 1e-2


def assert_trained_alike(actual, expected, tolerance: float = TRAINED_APART) -> None:
    """Two trees of trained parameters alike leaf by leaf: ||actual - expected|| <= tolerance * ||expected||."""
    import chex  # here, as jax: importing jax before the cache variables above are set would leave them unread
    import jax

    chex.assert_trees_all_equal_shapes_and_dtypes(actual, expected)
    for (path, got), want in zip(
        jax.tree_util.tree_leaves_with_path(actual), jax.tree_util.tree_leaves(expected), strict=True
    ):
        got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
        apart = np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-12)
        assert apart <= tolerance, f"{jax.tree_util.keystr(path)}: {apart:.2e} of its norm apart"


def assert_eval_records_close(actual: list[dict], expected: list[dict]) -> None:
    """Evaluation records of two runs that differ by float reassociation only (see REASSOCIATION): the same steps,
    epochs and example counts; losses within REASSOCIATION; accuracies within one example, since a prediction at a
    near tie (top logits within rounding) may go either way."""
    assert [sorted(r) for r in actual] == [sorted(r) for r in expected]
    for got, want in zip(actual, expected, strict=True):
        for key, value in want.items():
            if key in ("step", "epoch", "test_examples"):
                assert got[key] == value, (key, got, want)
            elif "accuracy" in key:
                assert abs(got[key] - value) <= 1 / want["test_examples"] + 1e-12, (key, got, want)
            else:
                np.testing.assert_allclose(got[key], value, **REASSOCIATION, err_msg=key)


def optimizer(schedule=0.1, **overrides):
    """An optax transformation from the default `optimizer` section with `overrides`, at `schedule` (a schedule or
    a constant rate)."""
    import ml_collections
    import optax

    from resnet_jax import optim

    config = ml_collections.ConfigDict(optim.OPTIMIZER_DEFAULTS | overrides)
    rate = schedule if callable(schedule) else optax.constant_schedule(schedule)
    return optim.make_optimizer(config, rate)


def step_config(**augmentation):
    """Step settings for 3-channel tests: mean 0.5, std 0.25, float32, the default augmentation with overrides."""
    import jax.numpy as jnp

    from resnet_jax import augment, steps

    return steps.StepConfig(
        mean=(0.5,) * 3,
        std=(0.25,) * 3,
        dtype=jnp.float32,
        augmentation=augment.Augmentation(**(augment.DEFAULTS | augmentation)),
        label_smoothing=0.0,
        ema_decay=0.0,
        frozen_statistics=False,
    )


def load_config(name: str, **overrides):
    """A configs/<name>.py config with dotted-key overrides, e.g. load_config("smoke", **{"train.num_epochs": 1})."""
    config = runpy.run_path(str(REPO_ROOT / "configs" / f"{name}.py"))["get_config"]()
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        node = config
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    return config


def train_command(workdir, config: str = "smoke", *overrides: str) -> list[str]:
    """`python train.py --workdir W --config configs/<config>.py --config.k=v ...` as an argv list."""
    return [
        PYTHON,
        str(REPO_ROOT / "train.py"),
        f"--workdir={workdir}",
        f"--config={REPO_ROOT / 'configs' / config}.py",
    ] + [f"--config.{override}" for override in overrides]


@pytest.fixture
def repo_root() -> Path:
    return REPO_ROOT
