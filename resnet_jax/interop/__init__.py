"""Weights across frameworks: PyTorch `state_dict`s (`.pth`, `.safetensors`) of torchvision's, akamaster's,
kuangliu's and the seed article's ResNets converted into runs of this zoo, and any run's weights written back.
"""

from resnet_jax.interop.files import read_state_dict, write_state_dict
from resnet_jax.interop.layouts import LAYOUTS, InteropError, Layout, Match, match, to_state_dict, to_variables
from resnet_jax.interop.runs import CONVERSION_FILE, run_state_dict, write_converted_run, write_run_weights

__all__ = [
    "CONVERSION_FILE",
    "LAYOUTS",
    "InteropError",
    "Layout",
    "Match",
    "match",
    "read_state_dict",
    "run_state_dict",
    "to_state_dict",
    "to_variables",
    "write_converted_run",
    "write_run_weights",
    "write_state_dict",
]
