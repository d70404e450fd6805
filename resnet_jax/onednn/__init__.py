"""Convolutions on oneDNN (the library PyTorch's CPU convolutions run on) for XLA:CPU, through jax.ffi: the C++
extension (conv.cc, built by build.py), its loading (library.py) and the differentiable, batch-partitioned JAX
function over it (conv.py)."""

from resnet_jax.onednn.conv import conv2d, conv_general_dilated, supports
from resnet_jax.onednn.library import available, unavailable_reason

__all__ = ["available", "conv2d", "conv_general_dilated", "supports", "unavailable_reason"]
