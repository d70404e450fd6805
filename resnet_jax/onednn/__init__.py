"""Convolutions and batch normalisation on oneDNN (the library PyTorch's CPU kernels run on) for XLA:CPU, through
jax.ffi: the C++ extension (conv.cc, batchnorm.cc, built by build.py), its loading (library.py), the
differentiable JAX functions over it (conv.py, batch-partitioned; batchnorm.py, with a flax module), and which
kernels, its or XLA's, a model runs on here (backend.py)."""

from resnet_jax.onednn.batchnorm import BatchNorm, batch_norm
from resnet_jax.onednn.conv import conv2d, conv_general_dilated
from resnet_jax.onednn.library import available, unavailable_reason

__all__ = ["BatchNorm", "available", "batch_norm", "conv2d", "conv_general_dilated", "unavailable_reason"]
