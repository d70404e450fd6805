"""Builds the oneDNN extension (convolutions and BatchNorm) with the system's cmake and g++ against the venv's PyPI
oneDNN (`pip install -e ".[cpu-onednn]"`), stamped with its sources' hash: `python -m resnet_jax.onednn.build`. Where
the extension is not meant to be (not x86-64 Linux, or RESNET_JAX_ONEDNN=0) it says so and exits 0; where it is but
cannot be built, it shows why and exits 1, so that the set-up and CI fail rather than run on XLA's kernels unseen.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import jax

from resnet_jax.onednn import library

# The most lines of a failed command's output shown: the compiler's first errors and cmake's summary fit.
OUTPUT_LINES = 80


def not_wanted_reason() -> str:
    """Why this machine does not use the extension at all, or ""."""
    if library.switched_off():
        return f"{library.SWITCH}=0 turns the build off"
    if sys.platform != "linux" or platform.machine() != "x86_64":
        return f"the PyPI oneDNN is for x86-64 Linux, not {sys.platform} {platform.machine()}"
    return ""


def cannot_build_reason() -> str:
    """What this machine lacks to build the extension, or ""."""
    missing = [tool for tool in ("cmake", "g++") if shutil.which(tool) is None]
    if missing:
        return f"{' and '.join(missing)} not found: apt-get install cmake g++"
    installed = library.installed_distributions()
    if len(installed) > 1:
        # Each writes lib/libdnnl.so* and include/oneapi/dnnl/ (a .venv set up before 2026-12-07 has the SYCL build).
        packages = " ".join(name for dist in installed for name in (dist, dist.replace("onednn", "onednn-devel", 1)))
        return (
            f"{' and '.join(installed)} are installed together in {sys.prefix}, each over the other's files: "
            f"pip uninstall -y {packages}, then bash scripts/setup.sh"
        )
    if not (Path(sys.prefix) / "include" / "oneapi" / "dnnl" / "dnnl.hpp").exists():
        return f'oneDNN is not installed in {sys.prefix}: pip install -e ".[cpu-onednn]"'
    return ""


def build() -> str:
    """Builds `libresnet_jax_onednn.so` and checks it as a run would; returns "" or the one-line reason it was not
    built, after printing the failing command's output to stderr."""
    reason = cannot_build_reason()
    if reason:
        return reason
    stamp = library.source_stamp()
    with tempfile.TemporaryDirectory() as build_dir:
        commands = (
            ["cmake", "-S", str(library.SOURCE), "-B", build_dir, f"-DONEDNN_PREFIX={sys.prefix}"]
            + [f"-DXLA_FFI_INCLUDE={jax.ffi.include_dir()}", f"-DRESNET_JAX_ONEDNN_STAMP={stamp}"],
            ["cmake", "--build", build_dir, "--parallel", str(os.cpu_count() or 1)],  # the three sources at once
        )
        for command in commands:
            done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False)
            if done.returncode:
                print("\n".join(done.stdout.splitlines()[-OUTPUT_LINES:]), file=sys.stderr, flush=True)
                return f"`{' '.join(command[:2])}` failed (its output above)"
        # Moved into place in one rename: a process starting meanwhile sees the old library or the new, whole.
        staged = library.LIBRARY.with_name(f".{library.LIBRARY.name}.{os.getpid()}")
        shutil.copyfile(Path(build_dir) / library.LIBRARY.name, staged)
        os.replace(staged, library.LIBRARY)
    problem = library.library_problem(library.LIBRARY, stamp)
    return f"the library built {problem}" if problem else ""


def main() -> None:
    reason = not_wanted_reason()
    if reason:
        print(f"oneDNN kernels: not built, runs use XLA's ({reason})")
        return
    reason = build() or library.unavailable_reason()
    if reason:
        raise SystemExit(
            f"oneDNN kernels: not built ({reason}); fix that, or set {library.SWITCH}=0 to run on XLA's kernels"
        )
    print(f"oneDNN kernels (convolutions, BatchNorm): built {library.LIBRARY}")


if __name__ == "__main__":
    main()
