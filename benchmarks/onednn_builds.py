"""The train step on oneDNN's kernels (convolutions and BatchNorm) with two or more oneDNN builds, side by side. Two
libdnnl cannot share a process, so each build has its own venv and source tree (its own built extension), and each
round runs one short timing process per build, in turn (the order reversed every other round, so that a drift in the
machine's load does not favour one); each build's step is set against the first build's of the same round, and the
median and range of those ratios (a build's step time over the first build's) over the rounds are printed. With
`--reference`, each process also times XLA's own step (the same program in every venv) window by window in turn with
oneDNN's, and the builds' ratios of the two are set against each other too: a figure that the load changing between
processes moves less.

    python -m benchmarks.onednn_builds --rounds 8 --reference \\
        --build 2026.1=/tmp/venv-sycl/bin/python:/tmp/src-sycl --build cpu-tbb=/tmp/venv-tbb/bin/python:/tmp/src-tbb

A build is NAME=PYTHON:SOURCE, SOURCE a checkout whose resnet_jax/onednn/ holds the extension built with PYTHON
(`cd SOURCE && PYTHONPATH=$PWD PYTHON -m resnet_jax.onednn.build`); the timing process runs there with
PYTHONPATH=SOURCE.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks import common

MARK = "onednn_builds: "


def child(args: argparse.Namespace) -> None:
    """One timing process: the step of `args.model` on oneDNN's kernels, `args.windows` windows; prints one JSON
    line (after MARK) with the median per step."""
    common.use_the_tools_allocator()
    import jax.numpy as jnp

    from resnet_jax.onednn import library

    reason = library.dtype_unavailable_reason(args.dtype)
    if reason:
        raise SystemExit(f"oneDNN cannot run {args.dtype} here: {reason}")
    loop = common.JaxTrainLoop(
        args.model, args.batch, args.dtype, 1, args.examples, conv_backend="onednn", norm_backend="onednn"
    )
    first_call = loop.first_call_seconds()
    runners: dict[str, common.Runner] = {"step": loop}
    if args.reference:
        runners["xla"] = common.JaxTrainLoop(args.model, args.batch, args.dtype, 1, args.examples)
    timings = common.interleaved_timings(runners, args.windows, args.min_window_seconds)
    timing = timings["step"]
    result = {
        "seconds_per_step": timing.seconds_per_step,
        "window_seconds": timing.window_seconds,
        "steps_per_window": timing.steps_per_window,
        "first_call_seconds": first_call,
        "mean_train_loss": loop.mean_loss(),
        "onednn": library.onednn_version(),
        "dtypes": [jnp.dtype(dtype).name for dtype in library.dtypes()],
        "library": str(library.LIBRARY),
        "load_average": os.getloadavg()[0],
    }
    if args.reference:
        xla = timings["xla"]
        # Each window of oneDNN's step against the XLA window after it, which ran under the same load.
        paired = [one / other for one, other in zip(timing.window_seconds, xla.window_seconds, strict=True)]
        result |= {
            "xla_seconds_per_step": xla.seconds_per_step,
            "xla_window_seconds": xla.window_seconds,
            "x_xla": statistics.median(paired),
        }
    print(MARK + json.dumps(result), flush=True)


def parse_build(text: str) -> tuple[str, str, Path]:
    name, _, rest = text.partition("=")
    python, _, source = rest.partition(":")
    if not (name and python and source):
        raise argparse.ArgumentTypeError(f"--build wants NAME=PYTHON:SOURCE, not {text!r}")
    return name, python, Path(source).resolve()


def run_child(args: argparse.Namespace, python: str, source: Path) -> dict:
    command = [python, "-m", "benchmarks.onednn_builds", "--child", "--model", args.model, "--batch", str(args.batch)]
    command += ["--dtype", args.dtype, "--windows", str(args.windows), "--examples", str(args.examples)]
    command += ["--min-window-seconds", str(args.min_window_seconds)] + (["--reference"] if args.reference else [])
    env = {**os.environ, "PYTHONPATH": str(source)}
    done = subprocess.run(command, cwd=source, env=env, capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith(MARK)]
    if done.returncode or not lines:
        raise SystemExit(f"{' '.join(command)} in {source} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len(MARK) :])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.onednn_builds", description=__doc__.split("\n\n")[0])
    parser.add_argument("--build", action="append", type=parse_build, default=[], help="NAME=PYTHON:SOURCE")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--windows", type=int, default=5, help="timed windows per process (its median is kept)")
    parser.add_argument("--min-window-seconds", type=float, default=2.0)
    parser.add_argument("--examples", type=int, default=2560, help="synthetic training examples")
    parser.add_argument(
        "--reference", action="store_true", help="also time XLA's own step in each process and compare by it"
    )
    parser.add_argument("--json", default="", help="write every process's figures here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args)
        return
    if len(args.build) < 2:
        parser.error("give two --build or more; the first is the one the others are set against")
    names = [name for name, _, _ in args.build]
    rounds: list[dict[str, dict]] = []
    print(f"{args.model}, batch {args.batch}, {args.dtype}: ms/step per process, and each step time / {names[0]}'s")
    for index in range(args.rounds):
        order = args.build if index % 2 == 0 else args.build[::-1]
        results = {name: run_child(args, python, source) for name, python, source in order}
        rounds.append(results)
        cells = [f"{name} {results[name]['seconds_per_step'] * 1e3:.0f} ms" for name in names]
        cells += [f"{name} {ratio:.3f}x" for name, ratio in zip(names[1:], ratios(results, names), strict=True)]
        print(f"round {index + 1} ({time.strftime('%H:%M:%S')}): " + ", ".join(cells), flush=True)
        arguments = {**vars(args), "build": [[name, python, str(source)] for name, python, source in args.build]}
        common.write_json(args.json, {"args": arguments, "rounds": rounds})
    print(summary(rounds, names, args.reference))


def ratios(results: dict[str, dict], names: list[str], key: str = "seconds_per_step") -> list[float]:
    """Each build's figure over the first build's, in one round."""
    return [results[name][key] / results[names[0]][key] for name in names[1:]]


def summary(rounds: list[dict[str, dict]], names: list[str], reference: bool) -> str:
    """A markdown table of the rounds (ms/step, the ratios to the first build; with `reference`, also each
    process's oneDNN step over its XLA step, and the ratios of those) and the ratios' medians and ranges."""
    headers = [f"{name} ms/step" for name in names] + [f"{name} / {names[0]}" for name in names[1:]]
    if reference:
        headers += [f"{name} x XLA" for name in names] + [f"{name} / {names[0]}, by XLA" for name in names[1:]]
    lines = ["", "| round | " + " | ".join(headers) + " |", "|---:|" + "---:|" * len(headers)]
    columns: list[list[float]] = [[] for _ in names[1:]]
    normalised: list[list[float]] = [[] for _ in names[1:]]
    for index, results in enumerate(rounds):
        cells = [f"{results[name]['seconds_per_step'] * 1e3:.0f}" for name in names]
        for column, ratio in zip(columns, ratios(results, names), strict=True):
            column.append(ratio)
            cells.append(f"{ratio:.3f}")
        if reference:
            cells += [f"{results[name]['x_xla']:.3f}" for name in names]
            for column, ratio in zip(normalised, ratios(results, names, "x_xla"), strict=True):
                column.append(ratio)
                cells.append(f"{ratio:.3f}")
        lines.append(f"| {index + 1} | " + " | ".join(cells) + " |")
    lines.append("")
    for name, column in zip(names[1:], columns, strict=True):
        lines.append(f"{name}'s step time / {names[0]}'s: {_median_range(column)} over {len(column)} rounds")
    if reference:
        for name, column in zip(names[1:], normalised, strict=True):
            lines.append(f"{name}'s (oneDNN step / XLA step) over {names[0]}'s: {_median_range(column)}")
    lines.append("")
    for name in names:
        first = rounds[0][name]
        lines.append(f"{name}: {first['onednn']}, oneDNN dtypes here {first['dtypes']}")
    return "\n".join(lines)


def _median_range(values: list[float]) -> str:
    return f"median {statistics.median(values):.3f}, range {min(values):.3f}-{max(values):.3f}"


if __name__ == "__main__":
    main()
