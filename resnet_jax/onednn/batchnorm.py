"""oneDNN's training-mode batch normalisation, optionally with the ReLU after it fused in, as a differentiable JAX
function over two FFI targets (forward with the batch statistics, backward with the scale and shift gradients), and
`BatchNorm`, a drop-in for flax's `nn.BatchNorm` (the same variables) that runs it while training.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax.onednn import library


def _forward_call(x: jax.Array, scale: jax.Array, shift: jax.Array, epsilon: float, relu: bool) -> tuple:
    channels = x.shape[-1]
    workspace = library.batch_norm_workspace_bytes(x.shape, x.dtype == jnp.bfloat16) if relu else 0
    out = (
        jax.ShapeDtypeStruct(x.shape, x.dtype),
        jax.ShapeDtypeStruct((channels,), jnp.float32),
        jax.ShapeDtypeStruct((channels,), jnp.float32),
        jax.ShapeDtypeStruct((workspace,), jnp.uint8),
    )
    call = jax.ffi.ffi_call("resnet_jax_onednn_batch_norm_forward", out)
    return call(x, scale, shift, epsilon=np.float32(epsilon), relu=relu)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _batch_norm(x: jax.Array, scale: jax.Array, shift: jax.Array, epsilon: float, relu: bool) -> tuple:
    y, mean, variance, _ = _forward_call(x, scale, shift, epsilon, relu)
    return y, mean, variance


def _batch_norm_forward(x, scale, shift, epsilon, relu):
    y, mean, variance, workspace = _forward_call(x, scale, shift, epsilon, relu)
    return (y, mean, variance), (x, scale, mean, variance, workspace)


def _batch_norm_backward(epsilon, relu, residuals, cotangents):
    x, scale, mean, variance, workspace = residuals
    # The statistics leave `batch_norm` through stop_gradient (they feed only the running averages): their
    # cotangents are zero, and the input's gradient through them is in oneDNN's backward pass already.
    dy = cotangents[0]
    out = (
        jax.ShapeDtypeStruct(x.shape, x.dtype),
        jax.ShapeDtypeStruct(scale.shape, jnp.float32),
        jax.ShapeDtypeStruct(scale.shape, jnp.float32),
    )
    call = jax.ffi.ffi_call("resnet_jax_onednn_batch_norm_backward", out)
    return call(x, dy, scale, mean, variance, workspace, epsilon=np.float32(epsilon), relu=relu)


_batch_norm.defvjp(_batch_norm_forward, _batch_norm_backward)


def batch_norm(
    x: jax.Array, scale: jax.Array, shift: jax.Array, epsilon: float = 1e-5, relu: bool = False
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """`x` (NHWC, float32 or bfloat16) normalised over its batch and spatial axes, times `scale` plus `shift`
    (float32, one per channel), then ReLU'd when `relu`; with the batch's mean and biased variance (float32, not
    differentiated). Differentiable in `x`, `scale` and `shift`."""
    if x.ndim != 4 or x.dtype not in library.DTYPES:
        raise ValueError(f"oneDNN batch normalisation takes 4-D NHWC float32 or bfloat16, got {x.dtype}{x.shape}")
    library.require("oneDNN batch normalisation", x.dtype)
    scale, shift = scale.astype(jnp.float32), shift.astype(jnp.float32)
    y, mean, variance = _batch_norm(x, scale, shift, float(epsilon), bool(relu))
    return y, jax.lax.stop_gradient(mean), jax.lax.stop_gradient(variance)


class BatchNorm(nn.Module):
    """flax's `nn.BatchNorm` over NHWC (the same `scale`/`bias` parameters and `mean`/`var` statistics, updated with
    the same momentum), computed by oneDNN while training; with `use_running_average`, flax's own arithmetic in XLA,
    which fuses it into the neighbouring elementwise work. `relu` applies the ReLU that follows it in the same pass."""

    use_running_average: bool = False
    momentum: float = 0.99
    epsilon: float = 1e-5
    dtype: Any = None
    param_dtype: Any = jnp.float32
    scale_init: Any = nn.initializers.ones
    bias_init: Any = nn.initializers.zeros
    relu: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        features = x.shape[-1]
        scale = self.param("scale", self.scale_init, (features,), self.param_dtype)
        bias = self.param("bias", self.bias_init, (features,), self.param_dtype)
        running_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((features,), jnp.float32))
        running_var = self.variable("batch_stats", "var", lambda: jnp.ones((features,), jnp.float32))
        dtype = self.dtype or jnp.promote_types(x.dtype, self.param_dtype)
        if self.use_running_average:
            # flax's own arithmetic, in its order, so that evaluation gives its results.
            y = (x - running_mean.value) * (jax.lax.rsqrt(running_var.value + self.epsilon) * scale) + bias
            return jnp.asarray(nn.relu(y) if self.relu else y, dtype)
        y, mean, variance = batch_norm(x.astype(dtype), scale, bias, self.epsilon, self.relu)
        if not self.is_initializing():
            running_mean.value = self.momentum * running_mean.value + (1 - self.momentum) * mean
            running_var.value = self.momentum * running_var.value + (1 - self.momentum) * variance
        return y
