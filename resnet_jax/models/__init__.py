"""The residual-network zoo in Flax linen: the blocks (`blocks`), the configurable `ResNet` (`network`), the zoo by
name and the config's `model` section (`registry`), and what a network costs (`cost`). Which kernels a built model
runs on is the oneDNN extension's to say (`resnet_jax.onednn.backend`).
"""

from resnet_jax.models.blocks import (
    BasicBlock,
    BottleneckBlock,
    PreActBasicBlock,
    PreActBottleneckBlock,
    shortcut_a,
)
from resnet_jax.models.cost import count_params, forward_flops, init_shapes
from resnet_jax.models.network import HEAD, STAGE_STATS, STEM, ResNet, module_stages, stage_names
from resnet_jax.models.registry import (
    DEFAULTS,
    DTYPES,
    MODEL_REGISTRY,
    RESIDUAL_TWINS,
    build_model,
    check_config,
    describe_computation,
    get_dtype,
    get_model,
    resolve_dtype,
)

__all__ = [
    "DEFAULTS",
    "DTYPES",
    "HEAD",
    "MODEL_REGISTRY",
    "RESIDUAL_TWINS",
    "STAGE_STATS",
    "STEM",
    "BasicBlock",
    "BottleneckBlock",
    "PreActBasicBlock",
    "PreActBottleneckBlock",
    "ResNet",
    "build_model",
    "check_config",
    "count_params",
    "describe_computation",
    "forward_flops",
    "get_dtype",
    "get_model",
    "init_shapes",
    "module_stages",
    "resolve_dtype",
    "shortcut_a",
    "stage_names",
]
