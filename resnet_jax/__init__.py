"""resnet-jax: residual networks in JAX and Flax, trained by optax with orbax checkpoints. The command line is
`train.py` and `resnet_jax.tools`; the library (models, data, training) knows nothing of the tools.
"""
