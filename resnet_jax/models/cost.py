"""What a network costs, counted without running it: its variables' shapes (`init_shapes`), its parameters
(`count_params`) and its forward FLOPs per image (`forward_flops`, from XLA's cost analysis).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from resnet_jax.models.network import ResNet


def init_shapes(model: nn.Module, image_shape: Sequence[int] = (32, 32, 3)) -> Any:
    """The variables' shapes and dtypes, without allocating or computing them."""
    return jax.eval_shape(
        functools.partial(model.init, train=False), jax.random.key(0), jnp.zeros((1, *image_shape), jnp.float32)
    )


def count_params(params: Any) -> int:
    """Number of scalars in a parameter tree (arrays or shape structs)."""
    return sum(int(leaf.size) for leaf in jax.tree.leaves(params))


def forward_flops(model: nn.Module, image_shape: Sequence[int] = (32, 32, 3), batch: int = 1) -> float:
    """Forward FLOPs per image in eval mode (a multiply-add counts two), from XLA's cost analysis of the jitted
    forward pass, lowered for the CPU: a count of the network as written, the same whatever device trains it.

    The analysis runs on the lowered (pre-optimisation) HLO: it counts the convolutions as written, and it costs
    milliseconds where compiling ResNet-1202 on a CPU costs minutes.
    """
    on_cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
    # XLA counts its own convolutions only; oneDNN's are opaque calls to it.
    model = model.clone(conv_backend="xla", norm_backend="xla") if isinstance(model, ResNet) else model
    variables = jax.tree.map(
        lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=on_cpu), init_shapes(model, image_shape)
    )
    images = jax.ShapeDtypeStruct((batch, *image_shape), jnp.float32, sharding=on_cpu)
    lowered = jax.jit(functools.partial(model.apply, train=False)).lower(variables, images)
    # Some jax releases (0.11) return no analysis before compiling; the compiled count is then the fallback.
    cost = lowered.cost_analysis() or lowered.compile().cost_analysis()
    return float(cost["flops"]) / batch
