"""The configurable `ResNet` in Flax linen: stem, stages of blocks, pool, linear head; its parts' names (stem, stages,
head) and the per-stage output statistics it records for the gradient-flow metrics. BatchNorm state lives in the
`batch_stats` collection; parameters and BN statistics stay float32 while the convolutions compute in `dtype`.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from resnet_jax import onednn
from resnet_jax.models.blocks import PREACTIVATION_BLOCKS, ModuleDef, conv_kernel_init, norm_relu, pad_1

Dtype = Any

# The collection a ResNet records its stages' output statistics in, when it is mutable.
STAGE_STATS = "stage_stats"
STEM, HEAD, FINAL_BN = "stem", "head", "final_bn"


def stage_names(model: ResNet) -> tuple[str, ...]:
    """`stem`, `stage1`, ... `stageN`: the parts whose outputs `return_features` gives and `STAGE_STATS` records."""
    return (STEM, *(f"stage{index + 1}" for index in range(len(model.stage_sizes))))


def module_stages(params: Mapping[str, Any]) -> dict[str, str]:
    """The part of the network (`stem`, `stageK` or `head`) each top-level module of a ResNet's `params` belongs to;
    a pre-activation net's `final_bn` ends its last stage, as in `return_features`."""
    parts = {name: name.split("_")[0] for name in params}
    last_stage = max((part for part in parts.values() if part.startswith("stage")), key=lambda part: int(part[5:]))
    return {name: last_stage if name == FINAL_BN else part for name, part in parts.items()}


class ResNet(nn.Module):
    """A residual network: stem, stages of blocks (the first block of stages 2+ downsamples), pool, linear head.

    Attributes:
      stage_sizes: blocks per stage, e.g. (3, 3, 3) for ResNet-20.
      block_cls: one of the block classes of `blocks`.
      widths: base channels per stage (a bottleneck stage outputs 4x).
      stem: "cifar" (3x3 stride 1, no max-pool) or "imagenet" (7x7 stride 2 + 3x3 max-pool).
      stem_width: stem channels; defaults to widths[0].
      shortcut: "A" (zero-padded identity) or "B" (1x1 projection) where shapes change.
      dtype: compute dtype; params and BN statistics stay float32.
      zero_init_residual: start each residual branch at zero (last BN scale, or last conv for pre-activation).
      conv_bias: biases in the block convs (the seed article's PyTorch code has them).
      residual: False builds the plain network (He et al. 2015's baseline): the same layers without shortcuts.
      conv_backend: "xla" or "onednn" (resnet_jax/onednn/, CPUs only); the parameters are the same either way.
      norm_backend: "xla" or "onednn": training-mode BatchNorm and the ReLU after it in one oneDNN pass (one device
        only: its statistics are those of the batch it is given); evaluation is flax's BatchNorm either way.

    Applied with the `STAGE_STATS` collection mutable (the train step does), it also records the standard deviation
    of the stem's and each stage's output: a scalar reduction each, for the gradient-flow metrics.
    """

    stage_sizes: Sequence[int]
    block_cls: ModuleDef
    num_classes: int = 10
    widths: Sequence[int] = (64, 128, 256, 512)
    stem: str = "cifar"
    stem_width: int | None = None
    shortcut: str = "B"
    dtype: Dtype = jnp.float32
    zero_init_residual: bool = False
    conv_bias: bool = False
    dropout_rate: float = 0.0
    residual: bool = True
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    conv_backend: str = "xla"
    norm_backend: str = "xla"

    @nn.compact
    def __call__(
        self, x: jax.Array, train: bool = True, return_features: bool = False
    ) -> jax.Array | tuple[jax.Array, dict[str, jax.Array]]:
        """Logits; with `return_features`, also `{"stem", "stage1", ..., "pooled"}`: the stem's and each stage's
        output maps (NHWC, after the pre-activation net's final BN-ReLU for the last stage) and the pooled vector
        the head reads."""
        if len(self.widths) != len(self.stage_sizes):
            raise ValueError(f"widths {tuple(self.widths)} and stage_sizes {tuple(self.stage_sizes)} differ in length")
        if self.shortcut not in ("A", "B"):
            raise ValueError(f"shortcut must be 'A' or 'B', got {self.shortcut!r}")
        if self.zero_init_residual and not self.residual:
            raise ValueError("zero_init_residual would zero a plain network's only path; it needs shortcuts")
        conv = functools.partial(
            nn.Conv,
            use_bias=self.conv_bias,
            dtype=self.dtype,
            param_dtype=jnp.float32,
            kernel_init=conv_kernel_init,
            conv_general_dilated=onednn.conv_general_dilated if self.conv_backend == "onednn" else None,
        )
        norm = functools.partial(
            onednn.BatchNorm if self.norm_backend == "onednn" else nn.BatchNorm,
            use_running_average=not train,
            momentum=self.bn_momentum,
            epsilon=self.bn_epsilon,
            dtype=self.dtype,
            param_dtype=jnp.float32,
        )
        preactivation = self.block_cls in PREACTIVATION_BLOCKS
        stem_width = self.stem_width or self.widths[0]
        x = x.astype(self.dtype)
        stem_conv = functools.partial(conv, use_bias=False, name="stem_conv")
        if self.stem == "cifar":
            x = stem_conv(stem_width, (3, 3), padding=pad_1(3))(x)
        elif self.stem == "imagenet":
            x = stem_conv(stem_width, (7, 7), (2, 2), padding=pad_1(7))(x)
        else:
            raise ValueError(f"stem must be 'cifar' or 'imagenet', got {self.stem!r}")
        if not preactivation:
            x = norm_relu(norm, name="stem_bn")(x)
        if self.stem == "imagenet":
            x = nn.max_pool(x, (3, 3), (2, 2), padding=pad_1(3))
        features = {STEM: x}

        block_conv = functools.partial(conv, use_bias=self.conv_bias)
        for stage, (num_blocks, width) in enumerate(zip(self.stage_sizes, self.widths, strict=True)):
            for index in range(num_blocks):
                x = self.block_cls(
                    features=width,
                    conv=block_conv,
                    norm=norm,
                    strides=2 if stage > 0 and index == 0 else 1,
                    shortcut=self.shortcut,
                    zero_init_last=self.zero_init_residual,
                    dropout_rate=self.dropout_rate,
                    residual=self.residual,
                    name=f"stage{stage + 1}_block{index + 1}",
                )(x, train=train)
            features[f"stage{stage + 1}"] = x
        if preactivation:
            x = norm_relu(norm, name=FINAL_BN)(x)
            features[f"stage{len(self.stage_sizes)}"] = x
        if not self.is_initializing():  # init would otherwise make the collection a variable
            for name in stage_names(self):
                # sow stores nothing unless the collection is mutable, and XLA then drops the reduction.
                self.sow(STAGE_STATS, name, jnp.std(features[name].astype(jnp.float32)))
        features["pooled"] = x = jnp.mean(x, axis=(1, 2))
        logits = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32, name=HEAD)(x)
        logits = logits.astype(jnp.float32)
        return (logits, features) if return_features else logits
