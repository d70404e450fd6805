"""oneDNN's convolutions as a differentiable JAX function: a `jax.custom_vjp` over the three FFI targets (forward,
backward-data, backward-weights), each batch-partitioned with `custom_partitioning` so that a batch-sharded `jit`
runs them shard by shard, and `conv_general_dilated`, a drop-in for `jax.lax`'s that flax's `nn.Conv` takes.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding, PartitionSpec

from resnet_jax.onednn import library

Pads = tuple[tuple[int, int], tuple[int, int]]
_NHWC = ("NHWC", "HWIO", "NHWC")


def _attributes(strides: tuple[int, int], pads: Pads) -> dict[str, int]:
    (top, bottom), (left, right) = pads
    return {
        "stride_h": strides[0],
        "stride_w": strides[1],
        "pad_top": top,
        "pad_bottom": bottom,
        "pad_left": left,
        "pad_right": right,
    }


def _output_shape(x_shape: Sequence[int], w_shape: Sequence[int], strides: tuple[int, int], pads: Pads) -> tuple:
    spatial = [
        (size + low + high - window) // stride + 1
        for size, window, stride, (low, high) in zip(x_shape[1:3], w_shape[:2], strides, pads, strict=True)
    ]
    return (x_shape[0], *spatial, w_shape[3])


def _batch_axes(sharding: Any) -> Any:
    """The mesh axes an NHWC array's batch dimension is split over (None when it is whole)."""
    spec = getattr(sharding, "spec", None)
    return spec[0] if spec else None


def _batch_partitioned(local, static_argnums: tuple[int, ...], rule: str, weights_out: bool = False):
    """`local` (arrays first, then static arguments) run shard by shard where its activations are split over the
    batch: kernels stay whole on every device, and when `weights_out` (the weight gradient) each shard's gradients
    are summed over the batch's mesh axes. Any other split of the operands is undone first."""
    partitioned = custom_partitioning(local, static_argnums=static_argnums)
    statics = len(static_argnums)

    def shardings(mesh, arg_shapes):
        axes = _batch_axes(arg_shapes[0].sharding)
        batch, whole = NamedSharding(mesh, PartitionSpec(axes)), NamedSharding(mesh, PartitionSpec())
        if weights_out:
            return axes, (batch, batch), (whole, whole)
        return axes, (batch,) + (whole,) * (len(arg_shapes) - 1), batch

    def partition(*args):
        static, (mesh, arg_shapes, _) = args[:statics], args[statics:]
        axes, arg_shardings, result_shardings = shardings(mesh, arg_shapes)

        def lower(*operands):
            results = local(*operands, *static)
            return jax.lax.psum(results, axes) if weights_out and axes else results

        return mesh, lower, result_shardings, arg_shardings

    def infer(*args):
        mesh, arg_shapes, _ = args[statics:]
        return shardings(mesh, arg_shapes)[2]

    # Shardy wants the special factors in the order they first appear in the rule.
    factors = dict.fromkeys(rule.replace(",", " ").replace("->", " ").split())
    partitioned.def_partition(
        partition=partition,
        infer_sharding_from_operands=infer,
        sharding_rule=rule,
        need_replication_factors=tuple(factor for factor in factors if factor != "b"),
        reduction_factors=("b",) if weights_out else (),
    )
    return partitioned


def _forward_local(x: jax.Array, w: jax.Array, bias: jax.Array, strides: tuple[int, int], pads: Pads) -> jax.Array:
    out = jax.ShapeDtypeStruct(_output_shape(x.shape, w.shape, strides, pads), x.dtype)
    return jax.ffi.ffi_call("resnet_jax_onednn_conv_forward", out)(x, w, bias, **_attributes(strides, pads))


def _backward_data_local(
    dy: jax.Array, w: jax.Array, strides: tuple[int, int], pads: Pads, x_hwc: tuple[int, int, int]
) -> jax.Array:
    out = jax.ShapeDtypeStruct((dy.shape[0], *x_hwc), dy.dtype)
    return jax.ffi.ffi_call("resnet_jax_onednn_conv_backward_data", out)(dy, w, **_attributes(strides, pads))


def _backward_weights_local(
    x: jax.Array, dy: jax.Array, strides: tuple[int, int], pads: Pads, w_shape: tuple, bias: bool
) -> tuple[jax.Array, jax.Array]:
    out = (jax.ShapeDtypeStruct(w_shape, x.dtype), jax.ShapeDtypeStruct((w_shape[3] if bias else 0,), x.dtype))
    return jax.ffi.ffi_call("resnet_jax_onednn_conv_backward_weights", out)(x, dy, **_attributes(strides, pads))


_forward = _batch_partitioned(_forward_local, (3, 4), "b h w c, kh kw ci co, z -> b oh ow o")
_backward_data = _batch_partitioned(_backward_data_local, (2, 3, 4), "b oh ow o, kh kw ci co -> b h w c")
_backward_weights = _batch_partitioned(
    _backward_weights_local, (2, 3, 4, 5), "b h w c, b oh ow o -> kh kw ci co, z", weights_out=True
)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _conv(x: jax.Array, w: jax.Array, bias: jax.Array, strides: tuple[int, int], pads: Pads) -> jax.Array:
    return _forward(x, w, bias, strides, pads)


def _conv_forward(x, w, bias, strides, pads):
    return _forward(x, w, bias, strides, pads), (x, w, bias.size > 0)


def _conv_backward(strides, pads, residuals, dy):
    x, w, has_bias = residuals
    dx = _backward_data(dy, w, strides, pads, x.shape[1:])
    dw, dbias = _backward_weights(x, dy, strides, pads, w.shape, has_bias)
    return dx, dw, dbias


_conv.defvjp(_conv_forward, _conv_backward)


def conv2d(
    x: jax.Array,
    w: jax.Array,
    strides: Sequence[int] = (1, 1),
    padding: str | Sequence[tuple[int, int]] = "SAME",
    bias: jax.Array | None = None,
) -> jax.Array:
    """`x` (NHWC) convolved with `w` (HWIO) on oneDNN, plus `bias` (per output channel) when given; differentiable
    in all three. `padding` is "SAME", "VALID" or a (low, high) pair per spatial dimension, as in `jax.lax`."""
    library.require("oneDNN convolutions", x.dtype)
    strides = (int(strides[0]), int(strides[1]))
    if isinstance(padding, str):
        padding = jax.lax.padtype_to_pads(x.shape[1:3], w.shape[:2], strides, padding)
    pads = tuple((int(low), int(high)) for low, high in padding)
    bias = jnp.zeros((0,), x.dtype) if bias is None else bias.astype(x.dtype)
    return _conv(x, w, bias, strides, pads)


def supports(
    lhs: jax.Array,
    rhs: jax.Array,
    padding: Any,
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    preferred_element_type: Any = None,
) -> bool:
    """Whether oneDNN takes this `jax.lax.conv_general_dilated` call: 2-D, NHWC/HWIO, undilated, ungrouped, one
    float32 or bfloat16 dtype, padding never negative."""
    if lhs.ndim != 4 or rhs.ndim != 4 or lhs.dtype != rhs.dtype or lhs.dtype not in library.DTYPES:
        return False
    if preferred_element_type is not None and preferred_element_type != lhs.dtype:
        return False
    if any(d != 1 for d in (*(lhs_dilation or (1, 1)), *(rhs_dilation or (1, 1)))):
        return False
    if feature_group_count != 1 or batch_group_count != 1:
        return False
    if jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) != jax.lax.conv_dimension_numbers(
        lhs.shape, rhs.shape, _NHWC
    ):
        return False
    return isinstance(padding, str) or all(low >= 0 and high >= 0 for low, high in padding)


def conv_general_dilated(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: Any,
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision: Any = None,
    preferred_element_type: Any = None,
) -> jax.Array:
    """`jax.lax.conv_general_dilated` with the calls oneDNN takes (see `supports`) run on oneDNN, the rest on XLA:
    flax's `nn.Conv(..., conv_general_dilated=conv_general_dilated)`. `precision` does not apply to oneDNN, which
    computes float32 in float32 and bfloat16 with float32 accumulation."""
    options = {
        "lhs_dilation": lhs_dilation,
        "rhs_dilation": rhs_dilation,
        "dimension_numbers": dimension_numbers,
        "feature_group_count": feature_group_count,
        "batch_group_count": batch_group_count,
        "preferred_element_type": preferred_element_type,
    }
    if supports(lhs, rhs, padding, **options):
        return conv2d(lhs, rhs, window_strides, padding)
    return jax.lax.conv_general_dilated(lhs, rhs, window_strides, padding, precision=precision, **options)
