"""Shared test set-up: quiet TensorFlow-free JAX on the CPU, and small helpers."""

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def repo_root() -> Path:
    return REPO_ROOT


def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment for a child Python that imports this checkout and sees `extra` variables."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
    env.update(extra)
    return env


PYTHON = sys.executable
