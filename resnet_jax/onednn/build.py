"""Builds the oneDNN extension (convolutions and BatchNorm) with the system's cmake and g++ against the venv's PyPI
oneDNN (`pip install -e ".[cpu-onednn]"`): `python -m resnet_jax.onednn.build`. When it cannot, it says why in one
line and exits 0, so that the set-up goes on and runs use XLA's kernels.
"""

from __future__ import annotations

import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import jax

from resnet_jax.onednn import library

SOURCE = Path(__file__).parent


def cannot_build_reason() -> str:
    """Why this machine cannot build the extension, or ""."""
    if library.switched_off():
        return f"{library.SWITCH}=0 turns the build off"
    if sys.platform != "linux" or platform.machine() != "x86_64":
        return f"the PyPI oneDNN is for x86-64 Linux, not {sys.platform} {platform.machine()}"
    missing = [tool for tool in ("cmake", "g++") if shutil.which(tool) is None]
    if missing:
        return f"{' and '.join(missing)} not found"
    if not (Path(sys.prefix) / "include" / "oneapi" / "dnnl" / "dnnl.hpp").exists():
        return f'oneDNN is not installed in {sys.prefix}: pip install -e ".[cpu-onednn]"'
    return ""


def build() -> str:
    """Builds `libresnet_jax_onednn.so`; returns "" or the one-line reason it was not built."""
    reason = cannot_build_reason()
    if reason:
        return reason
    with tempfile.TemporaryDirectory() as build_dir:
        commands = (
            ["cmake", "-S", str(SOURCE), "-B", build_dir, f"-DONEDNN_PREFIX={sys.prefix}"]
            + [f"-DXLA_FFI_INCLUDE={jax.ffi.include_dir()}"],
            ["cmake", "--build", build_dir],
        )
        for command in commands:
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode:
                errors = [line for line in done.stdout.splitlines() + done.stderr.splitlines() if "error" in line]
                return f"{command[0]} failed: {(errors or ['(no error line)'])[0].strip()}"
    return ""


def main() -> None:
    library.LIBRARY.unlink(missing_ok=True)
    reason = build() or library.unavailable_reason()
    print(
        f"oneDNN kernels: not built, runs use XLA's ({reason})"
        if reason
        else f"oneDNN kernels (convolutions, BatchNorm): built {library.LIBRARY}"
    )


if __name__ == "__main__":
    main()
