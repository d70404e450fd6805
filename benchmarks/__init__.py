"""Benchmarks of resnet-jax against PyTorch: step throughput, compile time, time to accuracy (run from the repo
root as `python -m benchmarks.<name>`; see benchmarks/RESULTS.md). Not part of the package or the tests."""
