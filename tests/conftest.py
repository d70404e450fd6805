"""Shared test set-up (a persistent compilation cache) and helpers for configs, commands and subprocesses."""

import os
import runpy
import sys
import tempfile
from pathlib import Path

import pytest

# One persistent compilation cache for the whole session, subprocesses included: most of a tiny run is compile time.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "resnet-jax-test-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

REPO_ROOT = Path(__file__).resolve().parents[1]


def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment for a child Python that imports this checkout and sees `extra` variables."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
    env.update(extra)
    return env


PYTHON = sys.executable


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
