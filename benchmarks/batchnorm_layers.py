"""One training-mode BatchNorm + ReLU at a time, forward and backward together, as XLA compiles flax's, as oneDNN
runs it through jax.ffi (resnet_jax/onednn/, the ReLU fused in) where it is built, and as PyTorch runs it in
channels-last, in one process: the part of the CPU train step outside the convolutions.

    python -m benchmarks.batchnorm_layers --batch 128 --shapes 32x16,16x32,8x64 --dtypes float32,bfloat16
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from resnet_jax import models, onednn, steps
from resnet_jax.onednn import batchnorm, library

XLA, ONEDNN, TORCH = "XLA (flax nn.BatchNorm)", "oneDNN (jax.ffi)", "PyTorch channels_last"


def _xla_norm_relu(x: jax.Array, scale: jax.Array, shift: jax.Array) -> jax.Array:
    variables = {"params": {"scale": scale, "bias": shift}, "batch_stats": {"mean": scale * 0, "var": scale * 0}}
    y, _ = nn.BatchNorm(use_running_average=False, dtype=x.dtype).apply(variables, x, mutable=["batch_stats"])
    return nn.relu(y)


def _onednn_norm_relu(x: jax.Array, scale: jax.Array, shift: jax.Array) -> jax.Array:
    return batchnorm.batch_norm(x, scale, shift, relu=True)[0]


def forward_and_backward(norm_relu: Callable) -> Callable:
    """(x, scale, shift, dy) -> the output and the three gradients: one training step's work for this layer."""

    def step(x, scale, shift, dy):
        y, pullback = jax.vjp(norm_relu, x, scale, shift)
        return y, *pullback(dy)

    return step


class _JaxStep:
    steps_per_unit = 1

    def __init__(self, function: Callable, operands: tuple[jax.Array, ...]):
        self.operands = operands
        self.compiled = jax.jit(function).lower(*operands).compile(steps.CPU_TRAIN_COMPILER_OPTIONS or None)

    def run(self, units: int) -> None:
        for _ in range(units):
            jax.block_until_ready(self.compiled(*self.operands))


class _TorchStep:
    steps_per_unit = 1

    def __init__(self, x: np.ndarray, dy: np.ndarray, bfloat16: bool):
        import torch

        self.torch = torch
        as_nchw = lambda array: torch.from_numpy(array).permute(0, 3, 1, 2)  # noqa: E731
        dtype = torch.bfloat16 if bfloat16 else torch.float32
        self.x = as_nchw(x).to(dtype).contiguous(memory_format=torch.channels_last).requires_grad_()
        self.dy = as_nchw(dy).to(dtype).contiguous(memory_format=torch.channels_last)
        self.norm = torch.nn.BatchNorm2d(x.shape[-1]).to(memory_format=torch.channels_last)

    def run(self, units: int) -> None:
        for _ in range(units):
            # autocast's rule for batch_norm: a bfloat16 input normalised with float32 statistics and parameters.
            with self.torch.autocast("cpu", dtype=self.torch.bfloat16, enabled=self.x.dtype == self.torch.bfloat16):
                y = self.torch.relu(self.norm(self.x))
            y.backward(self.dy)


def main(argv: Sequence[str] | None = None) -> None:
    common.use_the_tools_allocator()
    parser = argparse.ArgumentParser(prog="python -m benchmarks.batchnorm_layers", description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--shapes", default="32x16,16x32,8x64", help="SIZExCHANNELS list (ResNet-20's three stages)")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--windows", type=int, default=5)
    parser.add_argument("--min-window-seconds", type=float, default=0.3)
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--json", default="")
    args = parser.parse_args(argv)
    env = common.environment()
    if not onednn.available():
        print(f"no oneDNN column: {onednn.unavailable_reason()}")
    rows, results = [], []
    for dtype_name in common.parse_list(args.dtypes):
        dtype = models.get_dtype(dtype_name)
        # oneDNN builds no bfloat16 kernels on an AVX2-only CPU: that dtype gets no oneDNN row there.
        onednn_reason = library.dtype_unavailable_reason(dtype)
        if onednn.available() and onednn_reason:
            print(f"no oneDNN row in {dtype_name}: {onednn_reason}")
        for shape in common.parse_list(args.shapes):
            size, channels = (int(part) for part in shape.split("x"))
            rng = np.random.default_rng(0)
            x = rng.standard_normal((args.batch, size, size, channels), dtype=np.float32)
            dy = rng.standard_normal((args.batch, size, size, channels), dtype=np.float32)
            scale = rng.uniform(0.5, 1.5, channels).astype(np.float32)
            shift = rng.standard_normal(channels).astype(np.float32)
            operands = (jnp.asarray(x, dtype), jnp.asarray(scale), jnp.asarray(shift), jnp.asarray(dy, dtype))
            runners: dict[str, Any] = {XLA: _JaxStep(forward_and_backward(_xla_norm_relu), operands)}
            if not onednn_reason:
                runners[ONEDNN] = _JaxStep(forward_and_backward(_onednn_norm_relu), operands)
            if not args.no_torch:
                runners[TORCH] = _TorchStep(x, dy, dtype == jnp.bfloat16)
            timings = common.interleaved_timings(runners, args.windows, args.min_window_seconds)
            for name, timing in timings.items():
                milliseconds = timing.seconds_per_step * 1e3
                rows.append([f"{size}x{size}x{channels}", dtype_name, name, milliseconds, timing.spread])
                results.append({"shape": shape, "dtype": dtype_name, "runner": name, "milliseconds": milliseconds})
    print(f"\n### One BatchNorm + ReLU, forward and backward, batch {args.batch} (benchmarks/batchnorm_layers.py)\n")
    print(common.environment_line(env) + "\n")
    print(common.markdown_table(("input", "dtype", "runner", "ms", "spread"), rows))
    common.write_json(args.json, {"environment": env, "batch": args.batch, "results": results})


if __name__ == "__main__":
    main()
