"""Weights across frameworks: PyTorch `state_dict`s (`.pth`, `.safetensors`) of torchvision's, akamaster's,
kuangliu's and the seed article's ResNets converted into runs of this zoo, and any run's weights written back.

The package's face is the layouts and the files, which build on the zoo alone; `interop.runs`, which writes and
reads whole runs, builds on the experiment and is imported by name.
"""

from resnet_jax.interop.files import read_state_dict
from resnet_jax.interop.layouts import LAYOUTS, InteropError, match, to_variables

__all__ = [
    "LAYOUTS",
    "InteropError",
    "match",
    "read_state_dict",
    "to_variables",
]
