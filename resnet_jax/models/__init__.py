"""The residual-network zoo in Flax linen: the blocks (`blocks`), the configurable `ResNet` (`network`), the zoo by
name and the config's `model` section (`registry`), and what a network costs (`cost`). Which kernels a built model
runs on is the oneDNN extension's to say (`resnet_jax.onednn.backend`).
"""

from resnet_jax.models.blocks import (
    PREACTIVATION_BLOCKS,
    BasicBlock,
    BottleneckBlock,
    PreActBasicBlock,
    PreActBottleneckBlock,
    conv_kernel_init,
    norm_relu,
    shortcut_a,
)
from resnet_jax.models.cost import count_params, forward_flops, init_shapes
from resnet_jax.models.network import FINAL_BN, HEAD, STAGE_STATS, STEM, ResNet, module_stages, stage_names
from resnet_jax.models.registry import (
    DEFAULTS,
    DTYPES,
    MODEL_REGISTRY,
    RESIDUAL_TWINS,
    SHORTCUTS,
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
    "FINAL_BN",
    "HEAD",
    "MODEL_REGISTRY",
    "PREACTIVATION_BLOCKS",
    "RESIDUAL_TWINS",
    "SHORTCUTS",
    "STAGE_STATS",
    "STEM",
    "BasicBlock",
    "BottleneckBlock",
    "PreActBasicBlock",
    "PreActBottleneckBlock",
    "ResNet",
    "build_model",
    "check_config",
    "conv_kernel_init",
    "count_params",
    "describe_computation",
    "forward_flops",
    "get_dtype",
    "get_model",
    "init_shapes",
    "module_stages",
    "norm_relu",
    "resolve_dtype",
    "shortcut_a",
    "stage_names",
]
