"""One 3x3 convolution at a time, its forward pass and each gradient, as XLA runs it with each convolution library it
calls and, where it is built, on oneDNN through jax.ffi (resnet_jax/onednn/), against PyTorch's channels-last
convolution, in one process: where the CPU train step's time goes.

    python -m benchmarks.conv_layers --batch 128 --shapes 32x16,16x32,8x64
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from resnet_jax import onednn, steps

# The two convolution libraries XLA:CPU (jax 0.10) calls. Its XNNPACK and oneDNN options
# (`xla_cpu_experimental_xnn_fusion_type`, `xla_cpu_use_onednn`, ...=LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION) leave
# these convolutions to Eigen: the compiled programs hold no call into either library.
CPU_LIBRARIES: dict[str, dict[str, Any]] = {
    "Eigen (the trainer's)": steps.CPU_TRAIN_COMPILER_OPTIONS,
    "YNNPACK (XLA's default)": {},
}
ONEDNN = "oneDNN (jax.ffi)"
PASSES = ("forward", "input gradient", "weight gradient")


def _conv(x: jax.Array, w: jax.Array) -> jax.Array:
    return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _onednn_conv(x: jax.Array, w: jax.Array) -> jax.Array:
    return onednn.conv2d(x, w, (1, 1), "SAME")


def jax_passes(conv: Callable = _conv) -> dict[str, Callable[[jax.Array, jax.Array, jax.Array], jax.Array]]:
    """Each pass alone, as a function of (x, w, dy): a convolution is linear in each operand, so neither gradient
    needs the forward pass. Operands are arguments, never constants, which XLA would fold at compile time."""
    return {
        "forward": lambda x, w, dy: conv(x, w),
        "input gradient": lambda x, w, dy: jax.vjp(lambda x: conv(x, w), x)[1](dy)[0],
        "weight gradient": lambda x, w, dy: jax.vjp(lambda w: conv(x, w), w)[1](dy)[0],
    }


class _JaxPass:
    steps_per_unit = 1

    def __init__(self, function: Callable, operands: tuple[jax.Array, ...], options: dict[str, Any]):
        self.operands = operands
        self.compiled = jax.jit(function).lower(*operands).compile(options or None)

    def run(self, units: int) -> None:
        # Each call waited for: independent calls could overlap, and spill into the next runner's window.
        for _ in range(units):
            self.compiled(*self.operands).block_until_ready()


class _TorchPass:
    steps_per_unit = 1

    def __init__(self, function: Callable[[], Any], synchronize: Callable[[], None]):
        self.function, self.synchronize = function, synchronize

    def run(self, units: int) -> None:
        for _ in range(units):
            self.function()
        self.synchronize()


def torch_passes(x: np.ndarray, w: np.ndarray, dy: np.ndarray) -> tuple[dict[str, Callable[[], Any]], Callable]:
    import torch

    device = "cuda" if common.on_accelerator() and torch.cuda.is_available() else "cpu"
    as_nchw = lambda array: torch.from_numpy(array).permute(0, 3, 1, 2).to(device)  # noqa: E731
    tx = as_nchw(x).contiguous(memory_format=torch.channels_last)
    tdy = as_nchw(dy).contiguous(memory_format=torch.channels_last)
    tw = torch.from_numpy(w).permute(3, 2, 0, 1).to(device).contiguous(memory_format=torch.channels_last)
    backward = functools.partial(
        torch.ops.aten.convolution_backward, tdy, tx, tw, None, (1, 1), (1, 1), (1, 1), False, (0, 0), 1
    )

    @torch.no_grad()
    def forward():
        return torch.nn.functional.conv2d(tx, tw, padding=1)

    synchronize = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    passes = {
        "forward": forward,
        "input gradient": lambda: backward((True, False, False)),
        "weight gradient": lambda: backward((False, True, False)),
    }
    return passes, synchronize


def check_same_results(
    jax_calls: dict[str, Callable], operands: tuple[jax.Array, ...], torch_calls: dict[str, Callable]
) -> dict[str, float]:
    """Max relative difference of each pass between the two frameworks (layouts converted)."""
    errors = {}
    for name in PASSES:
        ours = np.asarray(jax.jit(jax_calls[name])(*operands))
        theirs = torch_calls[name]()
        theirs = theirs[0] if name == "input gradient" else theirs[1] if name == "weight gradient" else theirs
        theirs = theirs.detach().cpu().numpy()
        theirs = theirs.transpose(2, 3, 1, 0) if name == "weight gradient" else theirs.transpose(0, 2, 3, 1)
        errors[name] = float(np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs)))
    return errors


def main(argv: Sequence[str] | None = None) -> None:
    common.use_the_tools_allocator()
    parser = argparse.ArgumentParser(prog="python -m benchmarks.conv_layers", description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--shapes", default="32x16,16x32,8x64", help="SIZExCHANNELS list (ResNet-20's three stages)")
    parser.add_argument("--windows", type=int, default=5)
    parser.add_argument("--min-window-seconds", type=float, default=0.3)
    parser.add_argument("--no-torch", action="store_true", help="XLA's libraries only")
    parser.add_argument("--json", default="")
    args = parser.parse_args(argv)
    env = common.environment()
    libraries = {"XLA": {}} if common.on_accelerator() else CPU_LIBRARIES
    with_onednn = not common.on_accelerator() and onednn.available()
    if not common.on_accelerator() and not with_onednn:
        print(f"no oneDNN column: {onednn.unavailable_reason()}")
    rows, results = [], []
    for shape in common.parse_list(args.shapes):
        size, channels = (int(part) for part in shape.split("x"))
        rng = np.random.default_rng(0)
        x = rng.standard_normal((args.batch, size, size, channels), dtype=np.float32)
        w = (rng.standard_normal((3, 3, channels, channels)) * 0.1).astype(np.float32)
        dy = rng.standard_normal((args.batch, size, size, channels), dtype=np.float32)
        operands = (jnp.asarray(x), jnp.asarray(w), jnp.asarray(dy))
        jax_calls = jax_passes()
        runners: dict[tuple[str, str], common.Runner] = {
            (library, name): _JaxPass(call, operands, options)
            for library, options in libraries.items()
            for name, call in jax_calls.items()
        }
        if with_onednn:
            runners |= {
                (ONEDNN, name): _JaxPass(call, operands, steps.CPU_TRAIN_COMPILER_OPTIONS)
                for name, call in jax_passes(_onednn_conv).items()
            }
        errors = {}
        if not args.no_torch:
            torch_calls, synchronize = torch_passes(x, w, dy)
            errors = check_same_results(jax_calls, operands, torch_calls)
            runners |= {
                ("PyTorch channels_last", name): _TorchPass(call, synchronize) for name, call in torch_calls.items()
            }
        timings = common.interleaved_timings(runners, args.windows, args.min_window_seconds)
        columns = [
            *libraries,
            *([ONEDNN] if with_onednn else []),
            *([] if args.no_torch else ["PyTorch channels_last"]),
        ]
        for library in columns:
            milliseconds = [timings[(library, name)].seconds_per_step * 1e3 for name in PASSES]
            rows.append([f"{size}x{size}x{channels}", library, *milliseconds, sum(milliseconds)])
            timings_by_pass = dict(zip(PASSES, milliseconds, strict=True))
            results.append({"shape": shape, "library": library, "milliseconds": timings_by_pass})
        if errors:
            print(
                f"{shape}: largest relative difference from PyTorch "
                + ", ".join(f"{name} {error:.1e}" for name, error in errors.items())
            )
    print(f"\n### One 3x3 convolution, batch {args.batch}, float32 (benchmarks/conv_layers.py)\n")
    print(common.environment_line(env) + "\n")
    headers = ("input", "library", *(f"{name} ms" for name in PASSES), "all three ms")
    print(common.markdown_table(headers, rows))
    common.write_json(args.json, {"environment": env, "batch": args.batch, "results": results})


if __name__ == "__main__":
    main()
