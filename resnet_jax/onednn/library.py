"""The oneDNN extension (`libresnet_jax_onednn.so` beside this file): whether it can be used here, and its XLA FFI
targets (convolutions, BatchNorm) registered for the CPU. `RESNET_JAX_ONEDNN=0` turns it off (and off the build),
so that a machine with it built can still run as one without.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

LIBRARY = Path(__file__).with_name("libresnet_jax_onednn.so")
SWITCH = "RESNET_JAX_ONEDNN"
BUILD_COMMAND = "bash scripts/setup.sh (or: python -m resnet_jax.onednn.build)"
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


def switched_off() -> bool:
    return os.environ.get(SWITCH, "1").strip().lower() in ("0", "false", "no", "off")


def _point_opencl_at_the_venv() -> None:
    # The PyPI oneDNN is its SYCL build: its CPU engine is SYCL's OpenCL CPU device, whose driver the
    # intel-opencl-rt wheel puts in the venv's lib/, where the OpenCL loader does not look unless told.
    driver = Path(sys.prefix) / "lib" / "libintelocl.so"
    listed = os.environ.get("OCL_ICD_FILENAMES", "")
    if driver.exists() and str(driver) not in listed.split(":"):
        os.environ["OCL_ICD_FILENAMES"] = ":".join(filter(None, (str(driver), listed)))


@functools.cache
def _library() -> ctypes.CDLL:
    _point_opencl_at_the_venv()
    library = ctypes.CDLL(str(LIBRARY))
    library.OnednnCachedPrimitives.restype = ctypes.c_int64
    library.OnednnBatchNormWorkspaceBytes.restype = ctypes.c_int64
    library.OnednnBatchNormWorkspaceBytes.argtypes = [ctypes.c_int64] * 4 + [ctypes.c_int]
    library.OnednnConvBuilds.argtypes = [ctypes.c_int]
    return library


@functools.cache
def unavailable_reason() -> str:
    """Why the oneDNN primitives cannot run in this process, or "" when they can (and are registered)."""
    if switched_off():
        return f"{SWITCH}={os.environ[SWITCH]} turns oneDNN off"
    if not LIBRARY.exists():
        return f"the oneDNN extension is not built ({LIBRARY.name}); build it with {BUILD_COMMAND}"
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
    """How many oneDNN primitives this process has built (one per pass, shape and dtype it has run)."""
    return int(_library().OnednnCachedPrimitives())


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
