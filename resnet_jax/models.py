"""The residual-network zoo in Flax linen: blocks, the configurable `ResNet`, the registry, and the `model` section
of a config (its defaults, its checks, and `build_model`). BatchNorm state lives in the `batch_stats` collection;
parameters and BN statistics stay float32 while the convolutions compute in `dtype` (e.g. bfloat16).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from resnet_jax import configuration, onednn

ModuleDef = Any
Dtype = Any

# He et al. (2015, "Delving deep into rectifiers") initialisation, as used by the ResNet papers.
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _pad_1(kernel: int) -> list[tuple[int, int]]:
    # Explicit symmetric padding, as the papers' Torch/Caffe code pads; XLA's "SAME" pads strided convs
    # asymmetrically.
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
        y = self.conv(self.features, (3, 3), (self.strides, self.strides), padding=_pad_1(3))(x)
        y = norm_relu(self.norm)(y)
        y = nn.Dropout(self.dropout_rate, deterministic=not train)(y)
        y = self.conv(self.features, (3, 3), padding=_pad_1(3))(y)
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
        y = self.conv(self.features, (3, 3), (self.strides, self.strides), padding=_pad_1(3))(y)
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
        y = self.conv(self.features, (3, 3), (self.strides, self.strides), padding=_pad_1(3))(preact)
        y = norm_relu(self.norm)(y)
        y = nn.Dropout(self.dropout_rate, deterministic=not train)(y)
        last_init = nn.initializers.zeros if self.zero_init_last else conv_kernel_init
        y = self.conv(self.features, (3, 3), padding=_pad_1(3), kernel_init=last_init)(y)
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
        y = self.conv(self.features, (3, 3), (self.strides, self.strides), padding=_pad_1(3))(y)
        y = norm_relu(self.norm)(y)
        y = nn.Dropout(self.dropout_rate, deterministic=not train)(y)
        last_init = nn.initializers.zeros if self.zero_init_last else conv_kernel_init
        y = self.conv(out_features, (1, 1), kernel_init=last_init)(y)
        return _add_shortcut(self, y, shortcut_input, out_features, None)


PREACTIVATION_BLOCKS = (PreActBasicBlock, PreActBottleneckBlock)
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
      block_cls: one of the block classes above.
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
            x = stem_conv(stem_width, (3, 3), padding=_pad_1(3))(x)
        elif self.stem == "imagenet":
            x = stem_conv(stem_width, (7, 7), (2, 2), padding=_pad_1(7))(x)
        else:
            raise ValueError(f"stem must be 'cifar' or 'imagenet', got {self.stem!r}")
        if not preactivation:
            x = norm_relu(norm, name="stem_bn")(x)
        if self.stem == "imagenet":
            x = nn.max_pool(x, (3, 3), (2, 2), padding=_pad_1(3))
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


def _cifar_resnet(depth: int) -> Callable[..., ResNet]:
    if (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
    n = (depth - 2) // 6
    return functools.partial(ResNet, stage_sizes=(n, n, n), block_cls=BasicBlock, widths=(16, 32, 64), shortcut="A")


def _wide_resnet(depth: int, widen: int) -> Callable[..., ResNet]:
    if (depth - 4) % 6:
        raise ValueError(f"Wide-ResNet depth must be 6n+4, got {depth}")
    n = (depth - 4) // 6
    return functools.partial(
        ResNet,
        stage_sizes=(n, n, n),
        block_cls=PreActBasicBlock,
        widths=(16 * widen, 32 * widen, 64 * widen),
        stem_width=16,
    )


MODEL_REGISTRY: dict[str, Callable[..., ResNet]] = {
    **{f"resnet{depth}": _cifar_resnet(depth) for depth in (8, 20, 32, 44, 56, 110, 1202)},
    "resnet18": functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block_cls=BasicBlock),
    "resnet34": functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=BasicBlock),
    "resnet50": functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=BottleneckBlock),
    "resnet101": functools.partial(ResNet, stage_sizes=(3, 4, 23, 3), block_cls=BottleneckBlock),
    "resnet152": functools.partial(ResNet, stage_sizes=(3, 8, 36, 3), block_cls=BottleneckBlock),
    # torchvision's ImageNet ResNets: a 7x7 stride-2 stem and a max-pool (the stride sits on the bottleneck's 3x3,
    # torchvision's "v1.5"), for weights converted from it (resnet_jax.interop).
    **{
        f"resnet{depth}_imagenet": functools.partial(ResNet, stage_sizes=sizes, block_cls=block, stem="imagenet")
        for depth, sizes, block in (
            (18, (2, 2, 2, 2), BasicBlock),
            (34, (3, 4, 6, 3), BasicBlock),
            (50, (3, 4, 6, 3), BottleneckBlock),
            (101, (3, 4, 23, 3), BottleneckBlock),
            (152, (3, 8, 36, 3), BottleneckBlock),
        )
    },
    "preact_resnet18": functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block_cls=PreActBasicBlock),
    "wrn16_8": _wide_resnet(16, 8),
    "wrn28_10": _wide_resnet(28, 10),
    "wrn40_4": _wide_resnet(40, 4),
    # The seed article's own network: BasicBlock [2, 2, 2] over 16/32/64, with PyTorch's default conv biases
    # in the blocks and a 1x1 conv + BN shortcut.
    "seed_resnet": functools.partial(
        ResNet, stage_sizes=(2, 2, 2), block_cls=BasicBlock, widths=(16, 32, 64), shortcut="B", conv_bias=True
    ),
    # A tiny network for smoke runs and tests: ResNet-8 at quarter width.
    "resnet8_tiny": functools.partial(
        ResNet, stage_sizes=(1, 1, 1), block_cls=BasicBlock, widths=(4, 8, 16), shortcut="A"
    ),
}
# He et al. (2015)'s plain networks, each its residual twin without shortcuts: the §4.2 CIFAR nets (plain-20 ...
# plain-110, downsampling by a stage's stride-2 first conv) and the §4.1 pair (plain-18, plain-34, here with the
# zoo's CIFAR stem and widths).
RESIDUAL_TWINS = {f"plain{depth}": f"resnet{depth}" for depth in (20, 32, 44, 56, 110, 18, 34)}
MODEL_REGISTRY |= {
    plain: functools.partial(MODEL_REGISTRY[twin], residual=False) for plain, twin in RESIDUAL_TWINS.items()
}

# "auto" (`resolve_dtype`) picks one of these for the run's devices. No float16: it needs loss scaling to train
# (its gradients underflow), while bfloat16 has float32's range and runs as fast wherever float16 does on today's
# GPUs and CPUs (Ampere and later, AMX and AVX512-BF16).
DTYPES: dict[str, Dtype] = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
SHORTCUTS = ("A", "B")
# "auto": oneDNN's convolutions on a CPU where the extension is built (resnet_jax/onednn/) and has kernels for the
# model's dtype, XLA's elsewhere.
CONV_BACKENDS = ("auto", "xla", "onednn")
# "auto": oneDNN's training-mode BatchNorm (+ ReLU) where the convolutions run on oneDNN and the run has one CPU
# device (its batch statistics are those of the batch it is given, which on a batch split over devices is a shard's).
NORM_BACKENDS = ("auto", "xla", "onednn")

# The `model` section of a config. shortcut "" keeps the registry's choice (A for the CIFAR family, B for
# ResNet-18 and up).
DEFAULTS = {
    "name": "resnet20",
    "dtype": "float32",
    "shortcut": "",
    "zero_init_residual": False,
    "dropout_rate": 0.0,
    "conv_backend": "auto",
    "norm_backend": "auto",
}


def get_dtype(name: str) -> Dtype:
    """Maps a dtype name from a config to the jnp dtype."""
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; choose one of {', '.join(DTYPES)}")
    return DTYPES[name]


def check_config(model_config: ml_collections.ConfigDict) -> None:
    """Raises a one-line ConfigError for the first `model` key that cannot work."""
    configuration.check_choice("model.name", model_config.name, MODEL_REGISTRY)
    if model_config.dtype == "float16":
        raise configuration.ConfigError(
            "model.dtype='float16' is not offered: float16 trains only with loss scaling; use bfloat16, which needs "
            "none and runs as fast"
        )
    configuration.check_choice("model.dtype", model_config.dtype, ("auto", *DTYPES))
    if model_config.shortcut:
        configuration.check_choice("model.shortcut", model_config.shortcut, SHORTCUTS)
    configuration.check_choice("model.zero_init_residual", model_config.zero_init_residual, (False, True))
    if model_config.name in RESIDUAL_TWINS:
        plain = f"model.name={model_config.name!r} is a plain network (no shortcuts)"
        if model_config.shortcut:
            raise configuration.ConfigError(
                f"{plain}: model.shortcut={model_config.shortcut!r} has nothing to shape; leave it empty"
            )
        if model_config.zero_init_residual:
            raise configuration.ConfigError(
                f"{plain}: model.zero_init_residual would zero its only path; leave it False"
            )
    configuration.check_in_range("model.dropout_rate", model_config.dropout_rate, 0.0, 1.0)
    for key, backends in (("conv_backend", CONV_BACKENDS), ("norm_backend", NORM_BACKENDS)):
        setting = model_config[key]
        configuration.check_choice(f"model.{key}", setting, backends)
        reason = setting == "onednn" and onednn.library.dtype_unavailable_reason(resolve_dtype(model_config))
        if reason:
            raise configuration.ConfigError(
                f"model.{key}='onednn' cannot run model.dtype={model_config.dtype!r}: {reason}; or use 'auto'"
            )


def resolve_dtype(model_config: ml_collections.ConfigDict) -> Dtype:
    """The dtype a checked `model` section computes in here: its `dtype`, or for "auto" the faster measured choice
    (benchmarks/RESULTS.md): bfloat16 on accelerators and where oneDNN has bfloat16 kernels for the convolutions,
    float32 on XLA:CPU, whose bfloat16 convolutions were measured no faster (an AVX2-only CPU, or
    `model.conv_backend=xla`). A run records what "auto" resolved to, and keeps it on resume."""
    if model_config.dtype != "auto":
        return DTYPES[model_config.dtype]
    if jax.default_backend() != "cpu":
        return jnp.bfloat16
    if model_config.conv_backend != "xla" and jnp.bfloat16 in onednn.library.dtypes():
        return jnp.bfloat16
    return jnp.float32


def conv_backend(setting: str, dtype: Dtype) -> str:
    """The convolutions a checked `model.conv_backend` setting runs on in `dtype` with this process's devices."""
    on_cpu = jax.default_backend() == "cpu"
    if setting == "onednn" and not on_cpu:
        raise configuration.ConfigError(
            f"model.conv_backend='onednn' runs on CPUs only, and this run's devices are {jax.default_backend()}; "
            "use 'auto' or 'xla'"
        )
    runs_here = on_cpu and not onednn.library.dtype_unavailable_reason(dtype)
    return "onednn" if setting == "onednn" or (setting == "auto" and runs_here) else "xla"


def norm_backend(setting: str, convolutions: str) -> str:
    """The training-mode BatchNorm a checked `model.norm_backend` setting runs on with this process's devices, beside
    `convolutions` (the resolved `conv_backend`)."""
    one_cpu = jax.default_backend() == "cpu" and jax.device_count() == 1
    if setting == "onednn" and not one_cpu:
        raise configuration.ConfigError(
            f"model.norm_backend='onednn' needs one CPU device, and this run has {jax.device_count()} "
            f"{jax.default_backend()} devices (each would normalise its own shard); use 'auto' or 'xla'"
        )
    return "onednn" if setting == "onednn" or (setting == "auto" and one_cpu and convolutions == "onednn") else "xla"


def build_model(model_config: ml_collections.ConfigDict, num_classes: int) -> ResNet:
    """The network a config's `model` section describes, checked first."""
    check_config(model_config)
    dtype = resolve_dtype(model_config)
    convolutions = conv_backend(model_config.conv_backend, dtype)
    overrides = {
        "dtype": dtype,
        "zero_init_residual": model_config.zero_init_residual,
        "conv_backend": convolutions,
        "norm_backend": norm_backend(model_config.norm_backend, convolutions),
    }
    if model_config.shortcut:
        overrides["shortcut"] = model_config.shortcut
    return MODEL_REGISTRY[model_config.name](
        num_classes=num_classes, dropout_rate=model_config.dropout_rate, **overrides
    )


def describe_computation(model: nn.Module) -> str:
    """What a model computes in and on, for the run's log: "bfloat16, convolutions and BatchNorm on onednn"."""
    dtype = jnp.dtype(getattr(model, "dtype", jnp.float32)).name
    convolutions, norm = getattr(model, "conv_backend", "xla"), getattr(model, "norm_backend", "xla")
    if convolutions == norm:
        return f"{dtype}, convolutions and BatchNorm on {convolutions}"
    return f"{dtype}, convolutions on {convolutions}, BatchNorm on {norm}"


def get_model(name: str, num_classes: int = 10, **overrides: Any) -> ResNet:
    """Builds a registered model, e.g. `get_model("resnet20", num_classes=100, dtype=jnp.bfloat16)`."""
    if name not in MODEL_REGISTRY:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_REGISTRY)}")
    if isinstance(overrides.get("dtype"), str):
        overrides["dtype"] = get_dtype(overrides["dtype"])
    return MODEL_REGISTRY[name](num_classes=num_classes, **overrides)


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
