"""What the benchmarks share: the environment they ran in, interleaved timed windows, the runs' own train program
(`Experiment.lower_train_program`) on synthetic device-resident data, XLA's FLOP and byte counts, the device's
measured ceilings (matrix-product rate, copy bandwidth) and the floors they give, and the JSON/Markdown output."""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import jax
import jax.extend
import jax.numpy as jnp
import jaxlib
import ml_collections

from resnet_jax import atomic, data, experiment, runtime, steps

MODELS = ("resnet20", "resnet56", "resnet18", "seed_resnet")
IMAGE_SHAPE = (32, 32, 3)


def use_the_tools_allocator() -> None:
    """The tools' malloc setting (`runtime.reuse_freed_memory`), so that a benchmark times the step a run takes:
    first thing in a JAX benchmark's `main`, before JAX runs anything. The PyTorch-only programs (`recipe_torch`,
    the seed's) leave it out and run as a PyTorch user runs them."""
    runtime.reuse_freed_memory()


def on_accelerator() -> bool:
    return jax.devices()[0].platform != "cpu"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment() -> dict[str, Any]:
    """Where and when a benchmark ran: device, versions, host, flags and the date."""
    device = jax.devices()[0]
    info = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "device": device.device_kind if device.platform != "cpu" else f"CPU: {_cpu_model()}",
        "platform": device.platform,
        "device_count": jax.device_count(),
        "host_cores": os.cpu_count(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "python": platform.python_version(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    if "torch" in sys.modules:
        info["torch"] = sys.modules["torch"].__version__
    return info


def environment_line(env: dict[str, Any]) -> str:
    parts = [env["date"], env["device"], f"jax {env['jax']} / jaxlib {env['jaxlib']}"]
    if "torch" in env:
        parts.append(f"torch {env['torch']}")
    if env.get("load_average") is not None:
        parts.append(f"load average {env['load_average']:.1f} on {env['host_cores']} cores")
    if env["xla_flags"]:
        parts.append(f"XLA_FLAGS={env['xla_flags']}")
    return " | ".join(parts)


# ----------------------------------------------------------------------------------------------------------------
# Timing.


class Runner(Protocol):
    """Something to time: `run(units)` does `units` units of work and returns once the device has finished."""

    steps_per_unit: int

    def run(self, units: int) -> None: ...


@dataclass
class Timing:
    seconds_per_step: float  # median over windows
    window_seconds: list[float]  # per-step time of each window
    steps_per_window: int

    @property
    def spread(self) -> float:
        """(slowest - fastest) / median over the windows: how far to trust a difference."""
        return (max(self.window_seconds) - min(self.window_seconds)) / self.seconds_per_step


def _units_for(runner: Runner, min_seconds: float, max_units: int = 100_000) -> int:
    """Doubles the units per window until one window lasts `min_seconds` (this also warms the runner up)."""
    units = 1
    while True:
        start = time.perf_counter()
        runner.run(units)
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds or units >= max_units:
            return units
        units = min(max_units, max(units * 2, math.ceil(units * 1.2 * min_seconds / max(elapsed, 1e-6))))


def interleaved_timings(
    runners: dict[str, Runner], windows: int, min_seconds: float, deadline: float | None = None
) -> dict[str, Timing]:
    """Times each runner in `windows` windows of at least `min_seconds`, taking turns window by window, so that
    a change in the machine's load hits every runner alike; returns the median per step of each. Past
    `deadline` (a `time.perf_counter()` reading) no new round starts, though every runner gets one window."""
    units = {name: _units_for(runner, min_seconds) for name, runner in runners.items()}
    samples: dict[str, list[float]] = {name: [] for name in runners}
    for round_index in range(windows):
        if round_index and deadline is not None and time.perf_counter() > deadline:
            break
        for name, runner in runners.items():
            start = time.perf_counter()
            runner.run(units[name])
            steps_done = units[name] * runner.steps_per_unit
            samples[name].append((time.perf_counter() - start) / steps_done)
    return {
        name: Timing(statistics.median(values), values, units[name] * runners[name].steps_per_unit)
        for name, values in samples.items()
    }


# ----------------------------------------------------------------------------------------------------------------
# The runs' own train program on synthetic data.


def bench_config(
    model: str,
    batch: int,
    dtype: str,
    steps_per_call: int,
    examples: int,
    dataset: str = "cifar10",
    image_size: int = 32,
) -> ml_collections.ConfigDict:
    """The He et al. recipe (SGD 0.1, momentum 0.9, wd 1e-4, pad-crop + flip) for `model` on synthetic data in
    `dataset`'s shape (`image_size` 0: its native size)."""
    config = experiment.base_config()
    config.model.name = model
    config.model.dtype = dtype
    config.data.dataset = dataset
    config.data.image_size = image_size
    config.data.source = "synthetic"
    config.data.synthetic_train_examples = examples
    config.data.synthetic_test_examples = batch
    config.train.batch_size = batch
    config.train.steps_per_call = steps_per_call
    return config


def synthetic_images(examples: int, seed: int = 0) -> data.SplitArrays:
    """CIFAR-shaped uint8 images and labels, the same for every framework: with seed 0, the very training split a
    `JaxTrainLoop` of `examples` CIFAR-10 examples reads."""
    return data.synthetic_split(IMAGE_SHAPE, 10, examples, seed, "train")


@dataclass
class JaxTrainLoop:
    """`Experiment.lower_train_program()`, the program every run trains with, over its synthetic training split on
    the device. One unit of work is one call: `steps_per_call` steps in one dispatch (or, on the CPU,
    `steps_per_call` asynchronous per-step dispatches)."""

    model: str
    batch: int
    dtype: str = "float32"
    steps_per_call: int = 1
    examples: int = 50_000
    scan: bool | None = None
    compiler_options: dict[str, Any] | None = None  # over the train program's own (or XLA's, with xla_defaults)
    xla_defaults: bool = False  # XLA's own options instead of the train program's tuned ones
    conv_backend: str = "xla"  # model.conv_backend: "onednn" runs the convolutions on oneDNN (resnet_jax/onednn/)
    norm_backend: str = "xla"  # model.norm_backend: "onednn" runs training-mode BatchNorm + ReLU on oneDNN
    dataset: str = "cifar10"
    image_size: int = 32
    gradient_flow: bool = True  # train.gradient_flow: the per-stage gradient norms and output spreads
    calls: int = field(default=0, init=False)

    def __post_init__(self):
        config = bench_config(
            self.model, self.batch, self.dtype, self.steps_per_call, self.examples, self.dataset, self.image_size
        )
        config.train.gradient_flow = self.gradient_flow
        config.model.conv_backend = self.conv_backend
        config.model.norm_backend = self.norm_backend
        self.experiment = experiment.build(config)
        if self.experiment.steps_per_epoch < self.steps_per_call:
            raise ValueError(f"{self.examples} examples hold fewer than steps_per_call={self.steps_per_call} batches")
        self.split = self.experiment.load_train_split()
        self.state = self.experiment.new_state()
        self.steps_per_unit = self.steps_per_call
        self.program: steps.TrainProgram | None = None  # compiled by the first call

    def _call(self) -> None:
        if self.program is None:
            lowered = self.experiment.lower_train_program(
                self.state, self.split, [self.steps_per_call], self.scan, {} if self.xla_defaults else None
            )
            self.program = lowered.map(lambda program: program.compile(self.compiler_options))
            self.permutation, self.totals = self.program.permutation(jnp.int32(0)), self.program.zero_totals()
        positions = self.experiment.steps_per_epoch - self.steps_per_call + 1
        first = (self.calls * self.steps_per_call) % positions
        per_call = self.steps_per_call if self.program.scan else 1
        for offset in range(0, self.steps_per_call, per_call):
            self.state, self.totals = self.program.train[per_call](
                self.state, self.totals, self.split, self.permutation, jnp.int32(first + offset)
            )
        self.calls += 1

    def first_call_seconds(self) -> float:
        """Wall time of the first call: lowering, compiling and one run."""
        start = time.perf_counter()
        self._call()
        jax.block_until_ready((self.state, self.totals))
        return time.perf_counter() - start

    def run(self, units: int) -> None:
        for _ in range(units):
            self._call()
        jax.block_until_ready((self.state, self.totals))

    def mean_loss(self) -> float:
        totals = jax.device_get(self.totals)
        return float(totals["loss_sum"] / max(float(totals["count"]), 1.0))

    def step_cost(self, compiled_bytes: bool = False) -> dict[str, float]:
        """What one train step must do: FLOPs from XLA's cost analysis of the unoptimised HLO (the convolutions
        as written, counting only kernel taps that land inside the image), and the fewest bytes it must move
        (`conv_io_bytes`). With `compiled_bytes`, also XLA's estimate of the bytes its fused step moves (this
        compiles the step once more)."""
        train_step = steps.make_train_step(self.experiment.step_config)
        images = jax.ShapeDtypeStruct((self.batch, *self.experiment.input_shape), jnp.uint8)
        labels = jax.ShapeDtypeStruct((self.batch,), jnp.int32)
        lowered = jax.jit(train_step).lower(self.state, images, labels)
        # Some jax releases (0.11) give no analysis before compiling: the compiled count is then the fallback.
        analysis = lowered.cost_analysis() or lowered.compile().cost_analysis()
        cost = {
            "flops": _cost(analysis, "flops"),
            "bytes": conv_io_bytes(train_step, self.state, images, labels),
        }
        if compiled_bytes:
            cost["xla_bytes_estimate"] = _cost(lowered.compile().cost_analysis(), "bytes accessed")
        return cost


def conv_io_bytes(function: Callable, *args: Any) -> float:
    """Bytes of every convolution's operands and result in `function`'s jaxpr (forward and backward): what a step
    must move through device memory at the least, were every other operation fused into the convolutions."""
    total = 0

    def visit(jaxpr: jax.extend.core.Jaxpr) -> None:
        nonlocal total
        for equation in jaxpr.eqns:
            if equation.primitive.name == "conv_general_dilated":
                total += sum(v.aval.size * v.aval.dtype.itemsize for v in (*equation.invars, *equation.outvars))
            for value in equation.params.values():
                for item in value if isinstance(value, (tuple, list)) else (value,):
                    if isinstance(item, jax.extend.core.ClosedJaxpr):
                        visit(item.jaxpr)
                    elif isinstance(item, jax.extend.core.Jaxpr):
                        visit(item)

    visit(jax.make_jaxpr(function)(*args).jaxpr)
    return float(total)


def _cost(analysis: Any, key: str) -> float:
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else {}
    return float((analysis or {}).get(key, float("nan")))


# ----------------------------------------------------------------------------------------------------------------
# The device's ceilings and a step's floors.


class _Repeated:
    def __init__(self, function: Callable, *args):
        self.function, self.args, self.steps_per_unit = function, args, 1

    def run(self, units: int) -> None:
        out = None
        for _ in range(units):
            out = self.function(*self.args)
        jax.block_until_ready(out)


def measure_ceilings(min_seconds: float = 0.5) -> dict[str, float]:
    """Measured ceilings of this device: matrix-product FLOP/s in bfloat16 and float32 (at JAX's default
    precision, as the convolutions run) and device-memory bandwidth of a large elementwise copy (bytes read plus
    written), each the median of 3 windows."""
    accelerator = on_accelerator()
    size = 8192 if accelerator else 1024
    elements = (1 << 28) if accelerator else (1 << 24)
    keys = jax.random.split(jax.random.key(0), 3)
    runners: dict[str, Runner] = {}
    for name, dtype in (("bfloat16", jnp.bfloat16), ("float32", jnp.float32)):
        a = jax.random.normal(keys[0], (size, size), dtype)
        b = jax.random.normal(keys[1], (size, size), dtype)
        runners[f"matmul_{name}"] = _Repeated(jax.jit(jnp.matmul), a, b)
    source = jax.random.uniform(keys[2], (elements,), jnp.float32)
    runners["copy"] = _Repeated(jax.jit(lambda x: x * 1.5), source)
    timings = interleaved_timings(runners, windows=3, min_seconds=min_seconds)
    ceilings = {
        f"{name}_flops_per_second": 2 * size**3 / timings[f"matmul_{name}"].seconds_per_step
        for name in ("bfloat16", "float32")
    }
    ceilings["bytes_per_second"] = 2 * 4 * elements / timings["copy"].seconds_per_step
    return ceilings


def floors(cost: dict[str, float], dtype: str, ceilings: dict[str, float] | None) -> dict[str, float]:
    """The compute floor (FLOPs / matrix rate of `dtype`) and memory floor (bytes / bandwidth) of a step."""
    if not ceilings:
        return {}
    return {
        "compute_floor_s": cost["flops"] / ceilings[f"{dtype}_flops_per_second"],
        "memory_floor_s": cost["bytes"] / ceilings["bytes_per_second"],
    }


# ----------------------------------------------------------------------------------------------------------------
# Output.


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            if math.isnan(value):
                return "-"
            return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"
        return str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def write_json(path: str | os.PathLike | None, payload: dict[str, Any]) -> None:
    if not path:
        return
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(target, json.dumps(payload, indent=2, default=float) + "\n")


def parse_list(text: str, kind: Callable[[str], Any] = str) -> list[Any]:
    return [kind(item.strip()) for item in text.split(",") if item.strip()]


def jax_runner(spec: str, model: str, batch: int, steps_per_call: int, examples: int) -> JaxTrainLoop:
    """A JAX runner from `DTYPE[+onednn|+onednn_conv][+xla_defaults][+scan][+no_scan][+OPTION=VALUE ...]`: the train
    program in that dtype, with its convolutions and BatchNorms on oneDNN (`onednn_conv`: its convolutions only; else
    XLA's), optionally compiled with XLA's default options instead
    of the train program's, with the scan forced on or off, or with XLA compiler options on top
    (`float32+xla_cpu_prefer_vector_width=512`)."""
    dtype, *flags = spec.split("+")
    options = {key: _option_value(value) for key, _, value in (flag.partition("=") for flag in flags if "=" in flag)}
    flags = [flag for flag in flags if "=" not in flag]
    unknown = set(flags) - {"onednn", "onednn_conv", "xla_defaults", "scan", "no_scan"}
    if unknown:
        raise ValueError(f"unknown JAX runner flags {sorted(unknown)} in {spec!r}")
    scan = True if "scan" in flags else False if "no_scan" in flags else None
    conv_backend = "onednn" if {"onednn", "onednn_conv"} & set(flags) else "xla"
    norm_backend = "onednn" if "onednn" in flags else "xla"
    return JaxTrainLoop(
        model,
        batch,
        dtype,
        steps_per_call,
        examples,
        scan,
        options or None,
        "xla_defaults" in flags,
        conv_backend,
        norm_backend,
    )


def _option_value(text: str) -> bool | int | str:
    """XLA wants a bool option as a bool and an int option as an int; anything else stays a string."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    return int(text) if text.lstrip("-").isdigit() else text


def parse_scan(text: str) -> bool | None:
    """`auto` leaves the choice to `steps.scan_is_fast` (scan off the CPU only)."""
    return {"auto": None, "on": True, "off": False}[text]
