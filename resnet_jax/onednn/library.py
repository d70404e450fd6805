"""The oneDNN extension (`libresnet_jax_onednn.so` beside this file): whether it can be used here, checked before it is
loaded (its stamp against these sources, its loading in a child process), and its XLA FFI targets (convolutions,
BatchNorm) registered for the CPU. `RESNET_JAX_ONEDNN=0` turns it off (and off the build), so that a machine with it
built can still run as one without.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import importlib.metadata
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

SOURCE = Path(__file__).parent
LIBRARY = SOURCE / "libresnet_jax_onednn.so"
SWITCH = "RESNET_JAX_ONEDNN"
REBUILD = "python -m resnet_jax.onednn.build"
BUILD_COMMAND = f"bash scripts/setup.sh (or: {REBUILD})"
# What a library's stamp hashes besides oneDNN's version: every C++ source and the build script.
STAMPED = ("CMakeLists.txt", "*.h", "*.cc")
# The PyPI distributions of oneDNN's library that the extension builds against, each with its onednn-devel* headers:
# the CPU-only builds (TBB threads, the cpu-onednn extra's; OpenMP threads) and the SYCL build (the extra's until
# 2026-12-07). Each installs the same lib/libdnnl.so* and include/oneapi/dnnl/, so one venv holds one of them.
DISTRIBUTIONS = ("onednn-cpu-gomp", "onednn-cpu-tbb", "onednn")
# What the extension exports: the FFI handlers and its C entry points for ctypes.
SYMBOLS = (
    "OnednnStamp",
    "OnednnProbe",
    "OnednnCachedPrimitives",
    "OnednnHeldPrimitives",
    "OnednnCacheCapacity",
    "OnednnBatchNormWorkspaceBytes",
    "OnednnConvBuilds",
)
# What the extension's primitives compute in (bfloat16 with float32 accumulation and statistics), where the CPU lets
# oneDNN build them: see `dtypes`.
DTYPES = (jnp.float32, jnp.bfloat16)
TARGETS = {
    "resnet_jax_onednn_conv_forward": "OnednnConvForward",
    "resnet_jax_onednn_conv_backward_data": "OnednnConvBackwardData",
    "resnet_jax_onednn_conv_backward_weights": "OnednnConvBackwardWeights",
    "resnet_jax_onednn_batch_norm_forward": "OnednnBatchNormForward",
    "resnet_jax_onednn_batch_norm_backward": "OnednnBatchNormBackward",
}
# Run in a child process, since mapping a truncated library kills its process with SIGBUS: loads the library given,
# prints its stamp and the symbols of the rest it lacks.
_PROBE = """
import ctypes, json, sys
library = ctypes.CDLL(sys.argv[1])
stamp = getattr(library, "OnednnStamp", None)
if stamp is not None:
    stamp.restype = ctypes.c_char_p
print(json.dumps({
    "stamp": stamp().decode(errors="replace") if stamp is not None else "",
    "missing": [symbol for symbol in sys.argv[2:] if not hasattr(library, symbol)],
}))
"""
PROBE_TIMEOUT_S = 120


def switched_off() -> bool:
    return os.environ.get(SWITCH, "1").strip().lower() in ("0", "false", "no", "off")


def _point_opencl_at_the_venv() -> None:
    # Where the PyPI oneDNN is its SYCL build (`onednn`), its CPU engine is SYCL's OpenCL CPU device, whose driver
    # the intel-opencl-rt wheel puts in the venv's lib/, where the OpenCL loader does not look unless told.
    driver = Path(sys.prefix) / "lib" / "libintelocl.so"
    listed = os.environ.get("OCL_ICD_FILENAMES", "")
    if driver.exists() and str(driver) not in listed.split(":"):
        os.environ["OCL_ICD_FILENAMES"] = ":".join(filter(None, (str(driver), listed)))


@functools.cache
def _library() -> ctypes.CDLL:
    _point_opencl_at_the_venv()
    library = ctypes.CDLL(str(LIBRARY))
    library.OnednnCachedPrimitives.restype = ctypes.c_int64
    library.OnednnHeldPrimitives.restype = ctypes.c_int64
    library.OnednnCacheCapacity.restype = ctypes.c_int64
    library.OnednnBatchNormWorkspaceBytes.restype = ctypes.c_int64
    library.OnednnBatchNormWorkspaceBytes.argtypes = [ctypes.c_int64] * 4 + [ctypes.c_int]
    library.OnednnConvBuilds.argtypes = [ctypes.c_int]
    return library


def installed_distributions() -> dict[str, str]:
    """The oneDNN distributions of `DISTRIBUTIONS` installed here, by name, with their versions."""
    found = {}
    for name in DISTRIBUTIONS:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[name] = importlib.metadata.version(name)
    return found


def onednn_version() -> str:
    """The installed oneDNN distributions and versions ("2026.1.0" alone for PyPI's `onednn`, as before the CPU-only
    builds, so that a library built against it keeps its stamp), or "none"."""
    found = installed_distributions()
    return ", ".join(version if name == "onednn" else f"{name} {version}" for name, version in found.items()) or "none"


def source_stamp(directory: Path = SOURCE) -> str:
    """The stamp of a library built here from `directory`'s C++ sources: a hash of them, CMakeLists.txt and the
    installed oneDNN's version. build.py compiles it into the library (`OnednnStamp`)."""
    digest = hashlib.sha256(f"onednn {onednn_version()}\0".encode())
    for path in sorted((path for pattern in STAMPED for path in directory.glob(pattern)), key=lambda p: p.name):
        digest.update(f"{path.name}\0".encode() + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _verdict_file(path: Path) -> Path:
    # Beside the library: the hash of the file last found to load, and its stamp.
    return path.with_name(path.name + ".probed")


def _remembered_stamp(path: Path, digest: str) -> str | None:
    try:
        verdict = json.loads(_verdict_file(path).read_text())
        return verdict["stamp"] if verdict["sha256"] == digest else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _remember_stamp(path: Path, digest: str, stamp: str) -> None:
    # Written whole (a rename) or not at all; where the folder is read-only, each process probes again.
    verdict = _verdict_file(path)
    staged = verdict.with_name(f".{verdict.name}.{os.getpid()}")
    try:
        staged.write_text(json.dumps({"sha256": digest, "stamp": stamp}))
        os.replace(staged, verdict)
    except OSError:
        with contextlib.suppress(OSError):
            staged.unlink(missing_ok=True)


def _probed_stamp(path: Path) -> tuple[str, str]:
    """The stamp of the library at `path` as a child process that loads it reads it, or "" and what went wrong."""
    command = [sys.executable, "-I", "-c", _PROBE, str(path), *SYMBOLS, *TARGETS.values()]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        return "", f"does not load (loading it took over {PROBE_TIMEOUT_S} s)"
    if done.returncode < 0:
        try:
            name = signal.Signals(-done.returncode).name
        except ValueError:  # a real-time signal, which has no name
            name = f"signal {-done.returncode}"
        return "", f"is truncated or corrupt (loading it killed a process with {name})"
    if done.returncode:
        error = (done.stderr.strip().splitlines() or ["no error message"])[-1]
        return "", f"does not load ({error})"
    try:
        found = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return "", "does not load cleanly (loading it printed no stamp)"
    if found["missing"]:
        return "", f"is not this project's oneDNN extension (it lacks {', '.join(found['missing'][:3])})"
    return found["stamp"], ""


def library_problem(path: Path, stamp: str) -> str:
    """What keeps the extension library at `path` from being loaded with sources stamped `stamp` (unreadable, empty,
    truncated, foreign, stale), or "" when it may be: found without loading it into this process, by loading it in a
    child process, whose finding is kept beside the file by the file's hash."""
    try:
        content = path.read_bytes()
    except OSError as error:
        return f"cannot be read ({error.strerror or error})"
    if not content:
        return "is empty"
    digest = hashlib.sha256(content).hexdigest()
    built_stamp = _remembered_stamp(path, digest)
    if built_stamp is None:
        built_stamp, problem = _probed_stamp(path)
        if problem:
            return problem
        _remember_stamp(path, digest, built_stamp)
    if built_stamp != stamp:
        return "is stale: built from other C++ sources or another oneDNN than these"
    return ""


@functools.cache
def unavailable_reason() -> str:
    """Why the oneDNN primitives cannot run in this process, or "" when they can (and are registered). A library that
    is there but cannot be used (see `library_problem`) is also reported in one warning line on stderr, so that a run
    never falls back to XLA's kernels unseen."""
    if switched_off():
        return f"{SWITCH}={os.environ[SWITCH]} turns oneDNN off"
    if not LIBRARY.exists():
        return f"the oneDNN extension is not built ({LIBRARY.name}); build it with {BUILD_COMMAND}"
    problem = library_problem(LIBRARY, source_stamp(SOURCE))
    if problem:
        reason = f"{LIBRARY} {problem}; rebuild it with {REBUILD}"
        print(f"warning: oneDNN's kernels are off: {reason}", file=sys.stderr, flush=True)
        return reason
    try:
        library = _library()
    except (OSError, AttributeError) as error:
        return f"the oneDNN extension does not load ({error}); rebuild it with {BUILD_COMMAND}"
    message = ctypes.create_string_buffer(512)
    if library.OnednnProbe(message, len(message)) != 0:
        return f"oneDNN has no CPU engine here ({message.value.decode(errors='replace')})"
    for target, symbol in TARGETS.items():
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(library, symbol)), platform="cpu")
    return ""


@functools.cache
def dtypes() -> tuple[Any, ...]:
    """The dtypes of `DTYPES` whose convolutions and BatchNorm oneDNN builds on this CPU (none where it cannot run):
    bfloat16 needs bfloat16 instructions (AVX-512 BF16, AMX or AVX2 VNNI-2), which an AVX2-only CPU lacks."""
    if not available():
        return ()
    library = _library()
    return tuple(
        dtype
        for dtype in DTYPES
        if library.OnednnConvBuilds(int(dtype == jnp.bfloat16)) == 1
        and library.OnednnBatchNormWorkspaceBytes(2, 6, 6, 8, int(dtype == jnp.bfloat16)) >= 0
    )


def dtype_unavailable_reason(dtype: Any) -> str:
    """Why oneDNN cannot compute in `dtype` here, or "" when it can."""
    reason = unavailable_reason()
    if reason or jnp.dtype(dtype) in dtypes():
        return reason
    if jnp.dtype(dtype) not in DTYPES:
        return f"oneDNN computes in float32 or bfloat16, not {jnp.dtype(dtype).name}"
    return f"oneDNN has no {jnp.dtype(dtype).name} kernels for this CPU (they need AVX-512 BF16, AMX or AVX2 VNNI-2)"


def cached_primitives() -> int:
    """How many oneDNN primitives this process has built (one per pass, shape and dtype it has run, again after the
    cache dropped it)."""
    return int(_library().OnednnCachedPrimitives())


def held_primitives() -> tuple[int, int]:
    """How many built primitives the caches hold now, and how many each kind (convolutions, BatchNorm) keeps at most,
    the least recently used dropped first."""
    return int(_library().OnednnHeldPrimitives()), int(_library().OnednnCacheCapacity())


def batch_norm_workspace_bytes(shape: tuple[int, int, int, int], bfloat16: bool) -> int:
    """The bytes of oneDNN's workspace (the fused ReLU's mask) for batch normalisation of an NHWC `shape`."""
    n, h, w, c = (int(size) for size in shape)
    size = int(_library().OnednnBatchNormWorkspaceBytes(n, h, w, c, int(bfloat16)))
    if size < 0:
        raise RuntimeError(f"oneDNN cannot build batch normalisation for shape {shape}")
    return size


def require(what: str, dtype: Any) -> None:
    """Raises a one-line RuntimeError naming `what` (e.g. "oneDNN convolutions") when it cannot run here in `dtype`."""
    reason = dtype_unavailable_reason(dtype)
    if reason:
        raise RuntimeError(f"{what} cannot run: {reason}")


def available() -> bool:
    """Whether the oneDNN primitives can run here: built, loadable, not switched off, with a CPU engine."""
    return not unavailable_reason()
