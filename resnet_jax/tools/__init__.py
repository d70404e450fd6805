"""The commands around a run (train, evaluate, predict, export, plots, models, compare, sweep, data), built on the
library, which knows nothing of them. One flag convention (`common`), one `resnet-jax` entry point (`main`). Importing
them sets nothing for the process: each command makes its process-wide settings (`runtime`) as it starts.
"""
