"""Benchmarks of resnet-jax against PyTorch: step throughput, compile time, time to accuracy (run from the repo
root as `python -m benchmarks.<name>`; see benchmarks/RESULTS.md). Not part of the package or the tests."""

from resnet_jax import runtime

# The tools' allocator setting (resnet_jax/tools/__init__.py), so that a benchmark times the step a run takes.
runtime.reuse_freed_memory()
