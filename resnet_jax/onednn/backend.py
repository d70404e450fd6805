"""Which kernels a model runs on with this process's devices: oneDNN's (this package) or XLA's, for its convolutions
and for its training-mode BatchNorm, and the dtype `model.dtype=auto` computes in, which follows them. Asked when a
model is built, never when its config is checked: the answers load the extension (`library.unavailable_reason`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from resnet_jax import configuration
from resnet_jax.onednn import library

Dtype = Any

# "auto": oneDNN's convolutions on a CPU where the extension is built and has kernels for the model's dtype, XLA's
# elsewhere.
CONV_BACKENDS = ("auto", "xla", "onednn")
# "auto": oneDNN's training-mode BatchNorm (+ ReLU) where the convolutions run on oneDNN and the run has one CPU
# device (its batch statistics are those of the batch it is given, which on a batch split over devices is a shard's).
NORM_BACKENDS = ("auto", "xla", "onednn")


def auto_dtype(conv_setting: str) -> Dtype:
    """What `model.dtype=auto` computes in beside a checked `model.conv_backend` setting: the faster measured choice
    (benchmarks/RESULTS.md), bfloat16 on accelerators and where oneDNN has bfloat16 kernels for the convolutions,
    float32 on XLA:CPU, whose bfloat16 convolutions were measured no faster (an AVX2-only CPU, or
    `model.conv_backend=xla`)."""
    if jax.default_backend() != "cpu":
        return jnp.bfloat16
    if conv_setting != "xla" and jnp.bfloat16 in library.dtypes():
        return jnp.bfloat16
    return jnp.float32


def kernels(conv_setting: str, norm_setting: str, dtype: Dtype, dtype_setting: str) -> tuple[str, str]:
    """The kernels ("onednn" or "xla") that checked `model.conv_backend` and `model.norm_backend` settings run on in
    `dtype` (what `model.dtype=dtype_setting` resolved to) with this process's devices: the convolutions', then
    training-mode BatchNorm's. A one-line ConfigError where a setting of "onednn" cannot run here."""
    for key, setting in (("conv_backend", conv_setting), ("norm_backend", norm_setting)):
        reason = setting == "onednn" and library.dtype_unavailable_reason(dtype)
        if reason:
            raise configuration.ConfigError(
                f"model.{key}='onednn' cannot run model.dtype={dtype_setting!r}: {reason}; or use 'auto'"
            )
    convolutions = _conv_backend(conv_setting, dtype)
    return convolutions, _norm_backend(norm_setting, convolutions)


def _conv_backend(setting: str, dtype: Dtype) -> str:
    on_cpu = jax.default_backend() == "cpu"
    if setting == "onednn" and not on_cpu:
        raise configuration.ConfigError(
            f"model.conv_backend='onednn' runs on CPUs only, and this run's devices are {jax.default_backend()}; "
            "use 'auto' or 'xla'"
        )
    runs_here = on_cpu and not library.dtype_unavailable_reason(dtype)
    return "onednn" if setting == "onednn" or (setting == "auto" and runs_here) else "xla"


def _norm_backend(setting: str, convolutions: str) -> str:
    one_cpu = jax.default_backend() == "cpu" and jax.device_count() == 1
    if setting == "onednn" and not one_cpu:
        raise configuration.ConfigError(
            f"model.norm_backend='onednn' needs one CPU device, and this run has {jax.device_count()} "
            f"{jax.default_backend()} devices (each would normalise its own shard); use 'auto' or 'xla'"
        )
    return "onednn" if setting == "onednn" or (setting == "auto" and one_cpu and convolutions == "onednn") else "xla"
