"""The commands around a run (train, evaluate, predict, export, plots, models, compare, sweep, data), built on the
library, which knows nothing of them. One flag convention (`common`), one `resnet-jax` entry point (`main`)."""

from resnet_jax import runtime

# Here, before any command has JAX run anything: see `reuse_freed_memory` for why it cannot wait.
runtime.reuse_freed_memory()
