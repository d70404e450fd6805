"""The model zoo by name (`MODEL_REGISTRY`, `get_model`) and the `model` section of a config: its defaults, its
checks (pure: no devices, no native code) and `build_model`, which resolves `dtype=auto` and the kernels once, here.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from resnet_jax import configuration
from resnet_jax.models.blocks import BasicBlock, BottleneckBlock, PreActBasicBlock
from resnet_jax.models.network import Dtype, ResNet
from resnet_jax.onednn import backend


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
    """Raises a one-line ConfigError for the first `model` key that cannot work. Pure: whether this machine's kernels
    can run the section is `build_model`'s to say."""
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
    configuration.check_choice("model.conv_backend", model_config.conv_backend, backend.CONV_BACKENDS)
    configuration.check_choice("model.norm_backend", model_config.norm_backend, backend.NORM_BACKENDS)


def resolve_dtype(model_config: ml_collections.ConfigDict) -> Dtype:
    """The dtype a checked `model` section computes in here: its `dtype`, or for "auto" what `backend.auto_dtype`
    picks beside its convolutions. A run records what "auto" resolved to, and keeps it on resume."""
    if model_config.dtype == "auto":
        return backend.auto_dtype(model_config.conv_backend)
    return DTYPES[model_config.dtype]


def build_model(model_config: ml_collections.ConfigDict, num_classes: int) -> ResNet:
    """The network a checked `model` section (`check_config`) describes, on the kernels it asks for and this
    process's devices run: a one-line ConfigError where it asks for oneDNN's and they cannot run here."""
    dtype = resolve_dtype(model_config)
    convolutions, norm = backend.kernels(
        model_config.conv_backend, model_config.norm_backend, dtype, model_config.dtype
    )
    overrides = {
        "dtype": dtype,
        "zero_init_residual": model_config.zero_init_residual,
        "conv_backend": convolutions,
        "norm_backend": norm,
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
