"""The residual blocks in Flax linen: basic and bottleneck, post- and pre-activation, each also plain (no shortcut,
`residual` off), and the shortcut options A (zero-padded identity) and B (1x1 projection) where shapes change.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from resnet_jax import onednn

ModuleDef = Any

# He et al. (2015, "Delving deep into rectifiers") initialisation, as used by the ResNet papers.
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def pad_1(kernel: int) -> list[tuple[int, int]]:
    """Explicit symmetric padding, as the papers' Torch/Caffe code pads; XLA's "SAME" pads strided convs
    asymmetrically."""
    return [(kernel // 2, kernel // 2)] * 2


def shortcut_a(x: jax.Array, features: int, strides: int) -> jax.Array:
    """Option A: parameter-free identity, subsampled by `strides`, zero-padding the new channels."""
    if strides > 1:
        x = x[:, ::strides, ::strides, :]
    extra = features - x.shape[-1]
    if extra < 0:
        raise ValueError(f"shortcut A cannot reduce channels ({x.shape[-1]} -> {features}); use shortcut 'B'")
    if extra:
        x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))
    return x


def norm_relu(norm: ModuleDef, **kwargs: Any) -> Callable[[jax.Array], jax.Array]:
    """`norm(**kwargs)` (flax's `nn.BatchNorm` or oneDNN's, as a partial) followed by a ReLU: one fused pass where the
    norm is oneDNN's, which takes the ReLU itself."""
    module = getattr(norm, "func", norm)
    if isinstance(module, type) and issubclass(module, onednn.BatchNorm):
        return norm(relu=True, **kwargs)
    layer = norm(**kwargs)
    return lambda x: nn.relu(layer(x))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with BN and ReLU; post-activation (He et al. 2015). Dropout, when asked for, sits
    between the two convolutions, where Wide-ResNets put it (every block here places it so). Every block with
    `residual` off is its plain counterpart: the same layers without the shortcut (He et al.'s plain nets)."""

    features: int
    conv: ModuleDef
    norm: ModuleDef
    strides: int = 1
    shortcut: str = "B"
    zero_init_last: bool = False
    dropout_rate: float = 0.0
    residual: bool = True
    expansion = 1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
        y = self.conv(self.features, (3, 3), (self.strides, self.strides), padding=pad_1(3))(x)
        y = norm_relu(self.norm)(y)
        y = nn.Dropout(self.dropout_rate, deterministic=not train)(y)
        y = self.conv(self.features, (3, 3), padding=pad_1(3))(y)
        y = self.norm(scale_init=nn.initializers.zeros if self.zero_init_last else nn.initializers.ones)(y)
        return nn.relu(_add_shortcut(self, y, x, self.features, self.norm))


class BottleneckBlock(nn.Module):
    """1x1 reduce -> 3x3 -> 1x1 expand (x4), e.g. 64 -> 64 -> 256 channels, as in the seed article's §5.2."""

    features: int
    conv: ModuleDef
    norm: ModuleDef
    strides: int = 1
    shortcut: str = "B"
    zero_init_last: bool = False
    dropout_rate: float = 0.0
    residual: bool = True
    expansion = 4

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
        y = norm_relu(self.norm)(self.conv(self.features, (1, 1))(x))
        y = self.conv(self.features, (3, 3), (self.strides, self.strides), padding=pad_1(3))(y)
        y = norm_relu(self.norm)(y)
        y = nn.Dropout(self.dropout_rate, deterministic=not train)(y)
        y = self.conv(self.features * 4, (1, 1))(y)
        y = self.norm(scale_init=nn.initializers.zeros if self.zero_init_last else nn.initializers.ones)(y)
        return nn.relu(_add_shortcut(self, y, x, self.features * 4, self.norm))


def _project(
    x: jax.Array, features: int, strides: int, shortcut: str, conv: ModuleDef, norm: ModuleDef | None
) -> jax.Array:
    """The shortcut path: identity when shapes agree, else option A (padding) or B (1x1 conv [+ BN])."""
    if strides == 1 and x.shape[-1] == features:
        return x
    if shortcut == "A":
        return shortcut_a(x, features, strides)
    y = conv(features, (1, 1), (strides, strides), name="shortcut_conv")(x)
    return norm(name="shortcut_bn")(y) if norm is not None else y


def _add_shortcut(block: nn.Module, y: jax.Array, x: jax.Array, features: int, norm: ModuleDef | None) -> jax.Array:
    """A block's branch `y` plus its shortcut from `x`; `y` alone in a plain block (`residual` off), whose stride-2
    first conv is then the only downsampling, with no projection."""
    if not block.residual:
        return y
    return y + _project(x, features, block.strides, block.shortcut, block.conv, norm)


class PreActBasicBlock(nn.Module):
    """Pre-activation basic block (He et al. 2016): BN-ReLU-conv twice; also the Wide-ResNet block.

    With `zero_init_last`, the last conv starts at zero, since a pre-activation branch ends in a conv, not a BN.
    """

    features: int
    conv: ModuleDef
    norm: ModuleDef
    strides: int = 1
    shortcut: str = "B"
    zero_init_last: bool = False
    dropout_rate: float = 0.0
    residual: bool = True
    expansion = 1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
        preact = norm_relu(self.norm)(x)
        needs_projection = self.strides != 1 or x.shape[-1] != self.features
        # When the shape changes the projection sees the pre-activated input, as in both papers' code.
        shortcut_input = preact if needs_projection and self.shortcut == "B" else x
        y = self.conv(self.features, (3, 3), (self.strides, self.strides), padding=pad_1(3))(preact)
        y = norm_relu(self.norm)(y)
        y = nn.Dropout(self.dropout_rate, deterministic=not train)(y)
        last_init = nn.initializers.zeros if self.zero_init_last else conv_kernel_init
        y = self.conv(self.features, (3, 3), padding=pad_1(3), kernel_init=last_init)(y)
        return _add_shortcut(self, y, shortcut_input, self.features, None)


class PreActBottleneckBlock(nn.Module):
    """Pre-activation bottleneck block (He et al. 2016)."""

    features: int
    conv: ModuleDef
    norm: ModuleDef
    strides: int = 1
    shortcut: str = "B"
    zero_init_last: bool = False
    dropout_rate: float = 0.0
    residual: bool = True
    expansion = 4

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
        out_features = self.features * 4
        preact = norm_relu(self.norm)(x)
        needs_projection = self.strides != 1 or x.shape[-1] != out_features
        shortcut_input = preact if needs_projection and self.shortcut == "B" else x
        y = self.conv(self.features, (1, 1))(preact)
        y = norm_relu(self.norm)(y)
        y = self.conv(self.features, (3, 3), (self.strides, self.strides), padding=pad_1(3))(y)
        y = norm_relu(self.norm)(y)
        y = nn.Dropout(self.dropout_rate, deterministic=not train)(y)
        last_init = nn.initializers.zeros if self.zero_init_last else conv_kernel_init
        y = self.conv(out_features, (1, 1), kernel_init=last_init)(y)
        return _add_shortcut(self, y, shortcut_input, out_features, None)


PREACTIVATION_BLOCKS = (PreActBasicBlock, PreActBottleneckBlock)
