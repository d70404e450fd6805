"""The oneDNN extension's build (resnet_jax/onednn/build.py) and packaging: its sources ship as package data, and a
build that fails where the extension is meant to be fails loudly, with the compiler's error, instead of leaving runs
on XLA's kernels unseen. Runs without the extension built."""

import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from resnet_jax.onednn import build, library
from tests.conftest import PYTHON, REPO_ROOT, subprocess_env

# A child process that builds the extension from the sources in argv[1] into that folder.
BUILD_FROM = """
import sys
from pathlib import Path
from resnet_jax.onednn import build, library
library.SOURCE = Path(sys.argv[1])
library.LIBRARY = library.SOURCE / library.LIBRARY.name
build.main()
"""


def test_the_extension_s_sources_are_package_data_so_an_installed_copy_can_build_it():
    globs = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    packaged = {path for pattern in globs["resnet_jax.onednn"] for path in library.SOURCE.glob(pattern)}
    stamped = {path for pattern in library.STAMPED for path in library.SOURCE.glob(pattern)}
    assert {path.name for path in stamped} >= {"CMakeLists.txt", "runtime.h", "runtime.cc", "conv.cc", "batchnorm.cc"}
    assert stamped <= packaged


def build_from(sources: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PYTHON, "-c", BUILD_FROM, str(sources)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=subprocess_env(**env),
        check=False,
    )


@pytest.mark.skipif(bool(build.not_wanted_reason() or build.cannot_build_reason()), reason="cannot build here")
def test_a_build_that_fails_exits_1_showing_the_compiler_s_error(tmp_path):
    sources = tmp_path / "onednn"
    shutil.copytree(library.SOURCE, sources, ignore=shutil.ignore_patterns("*.so*", "*.py", "__pycache__"))
    runtime = sources / "runtime.cc"
    runtime.write_text(runtime.read_text().replace('extern "C" int64_t OnednnCacheCapacity()', "int broken ="))
    done = build_from(sources)
    assert done.returncode == 1
    assert "error: expected" in done.stderr  # g++'s own line
    assert done.stderr.splitlines()[-1] == (
        "oneDNN kernels: not built (`cmake --build` failed (its output above)); fix that, or set "
        "RESNET_JAX_ONEDNN=0 to run on XLA's kernels"
    )
    assert not (sources / library.LIBRARY.name).exists()


def test_the_switch_turns_the_build_off_and_exits_0(tmp_path):
    done = build_from(tmp_path, RESNET_JAX_ONEDNN="0")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "oneDNN kernels: not built, runs use XLA's (RESNET_JAX_ONEDNN=0 turns the build off)"


def test_two_onednn_builds_in_one_venv_are_refused_naming_what_to_uninstall(monkeypatch):
    # Each writes lib/libdnnl.so* and include/oneapi/dnnl/: a venv set up with the SYCL build, then given the CPU one.
    both = {"onednn-cpu-gomp": "2023.2.0", "onednn": "2026.1.0"}
    monkeypatch.setattr(library, "installed_distributions", lambda: both)
    monkeypatch.setattr(build.shutil, "which", lambda tool: f"/usr/bin/{tool}")
    reason = build.cannot_build_reason()
    assert reason.startswith("onednn-cpu-gomp and onednn are installed together in ")
    assert reason.endswith(
        "pip uninstall -y onednn-cpu-gomp onednn-devel-cpu-gomp onednn onednn-devel, then bash scripts/setup.sh"
    )
