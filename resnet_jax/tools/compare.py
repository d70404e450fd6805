"""Architecture comparison: parameters, forward GFLOPs, train-step speed, memory and compile time per model, and
the validation and test accuracy of trained runs, as the spread over each model's runs (seeds). `resnet-jax compare
--models resnet18,resnet34 [--runs DIR ...]` writes compare.md, compare.png and compare.json (the raw measurements)
into --outdir (default ./compare/).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import multiprocessing
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib.figure
import matplotlib.ticker
import ml_collections
import numpy as np

from resnet_jax import atomic, configuration, data, experiment, inference, metrics, models, plots, runtime
from resnet_jax.configuration import ConfigError
from resnet_jax.tools import common

COMPARE_MD = "compare.md"
COMPARE_PNG = "compare.png"
COMPARE_JSON = "compare.json"
DEFAULT_OUTDIR = "compare"  # a folder named after the tool: its files never land on another tool's


@dataclasses.dataclass
class Measurement:
    """What one model costs on this machine, at one batch size."""

    model: str
    params: int
    gflops: float  # forward pass, per image
    compile_seconds: float  # lowering + XLA compilation of the train program
    images_per_second: float  # median of the timed calls
    step_milliseconds: float
    xla_step_bytes: int | None  # the compiled train program's arguments + outputs + temporaries (less aliasing)
    peak_bytes: int | None  # the device's own peak counter; None where it keeps none (the CPU)
    device_kind: str
    platform: str
    device_count: int
    jax_version: str


@dataclasses.dataclass(frozen=True)
class RunAccuracy:
    """Final validation and test accuracy of a model's trained runs (its seeds), each run's in the order given
    (validation None for a run without that split); the table shows their spread."""

    workdirs: tuple[str, ...]
    validation: tuple[float | None, ...]
    test: tuple[float, ...]
    epochs: tuple[float, ...]

    @property
    def runs(self) -> int:
        return len(self.workdirs)

    def spreads(self) -> dict[str, common.Spread | None]:
        return {"validation": common.Spread.of(self.validation), "test": common.Spread.of(self.test)}


def _epochs(values: Sequence[float]) -> str:
    low, high = min(values), max(values)
    return f"{low:g}" if low == high else f"{low:g}-{high:g}"


def measurement_config(
    base: ml_collections.ConfigDict, model: str, batch: int, steps: int, dtype: str | None
) -> ml_collections.ConfigDict:
    """`base` (a run's config, or the default) training `model` on synthetic data of the same shape."""
    config = base.copy_and_resolve_references()
    config.model.name = model
    if dtype:
        config.model.dtype = dtype
    config.data.source = "synthetic"
    config.data.synthetic_train_examples = batch * steps
    config.data.synthetic_test_examples = batch
    config.data.validation_size = 0.0  # a run's held-out count could exceed the few timed batches
    config.train.batch_size = batch
    config.train.num_steps = steps
    config.train.steps_per_call = steps
    # A step's speed does not depend on the rate, and a run of a few steps has no room for a recipe's drops.
    config.schedule.name = "constant"
    config.schedule.warmup_epochs = 0.0
    return config


def _host_random_state(abstract_state: Any, mesh: Any) -> Any:
    """A train state of the right shapes, filled on the host: a step's speed does not depend on the values, and
    XLA:CPU takes longer to compile the random initialiser than the train step itself."""
    import jax
    import jax.numpy as jnp

    from resnet_jax.parallel import replicated

    rng = np.random.default_rng(0)

    def fill(leaf):
        if jnp.issubdtype(leaf.dtype, jnp.floating):
            return (0.05 * rng.standard_normal(leaf.shape)).astype(leaf.dtype)
        return np.zeros(leaf.shape, leaf.dtype)

    return jax.device_put(jax.tree.map(fill, abstract_state), replicated(mesh))


def measure_model(config_json: str, repeats: int) -> Measurement:
    """Compiles the run's own train program (`Experiment.lower_train_program`: `train.steps_per_call` steps over
    device-resident data) for the config's model and batch, runs it once to warm up, then times `repeats` calls."""
    import jax
    import jax.numpy as jnp

    config = configuration.from_saved(json.loads(config_json), experiment.base_config())
    built = experiment.build(config)
    abstract_state = built.lower_new_state().out_info
    state = _host_random_state(abstract_state, built.mesh)
    split = built.load_train_split()
    num_steps = built.steps_per_call

    start = time.perf_counter()
    program = built.lower_train_program(state, split, [num_steps]).compile()
    compile_seconds = time.perf_counter() - start
    per_call = num_steps if program.scan else 1  # else one dispatch a step
    compiled = program.train[per_call]
    permutation, totals = program.permutation(jnp.int32(0)), program.zero_totals()

    def call(state, totals):
        for first in range(0, num_steps, per_call):
            state, totals = compiled(state, totals, split, permutation, jnp.int32(first))
        return jax.block_until_ready((state, totals))

    analysis = compiled.memory_analysis()
    xla_step_bytes = (
        None
        if analysis is None
        else analysis.argument_size_in_bytes
        + analysis.output_size_in_bytes
        + analysis.temp_size_in_bytes
        - analysis.alias_size_in_bytes
    )

    state, totals = call(state, totals)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        state, totals = call(state, totals)
        seconds.append(time.perf_counter() - start)
    call_seconds = statistics.median(seconds)
    device = jax.devices()[0]
    stats = device.memory_stats()
    return Measurement(
        model=config.model.name,
        params=models.count_params(abstract_state.params),
        gflops=models.forward_flops(built.model, built.input_shape) / 1e9,
        compile_seconds=compile_seconds,
        images_per_second=config.train.batch_size * num_steps / call_seconds,
        step_milliseconds=1000 * call_seconds / num_steps,
        xla_step_bytes=xla_step_bytes,
        peak_bytes=stats.get("peak_bytes_in_use") if stats else None,
        device_kind=device.device_kind,
        platform=device.platform,
        device_count=jax.device_count(),
        jax_version=jax.__version__,
    )


def measure_isolated(config: ml_collections.ConfigDict, repeats: int) -> Measurement:
    """`measure_model` in a fresh process: the device's peak-memory counter cannot be reset, and one model's
    compiled programs and buffers must not weigh on the next one's numbers."""
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(measure_model, configuration.to_json(config), repeats).result()


def read_runs(run_dirs: Sequence[str | Path]) -> tuple[dict[str, RunAccuracy], ml_collections.ConfigDict | None]:
    """Each model's runs' accuracy over the given trained workdirs, and the first run's config (for the input
    shape). A damaged config.json or metrics.jsonl is a ConfigError naming the file."""
    per_model: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    first_config, datasets = None, set()
    for run_dir in map(Path, run_dirs):
        if not (run_dir / configuration.CONFIG_FILE).exists():
            raise ConfigError(f"--runs {str(run_dir)!r} holds no {configuration.CONFIG_FILE}")
        try:
            config = inference.load_run_config(run_dir)
            summary = metrics.summarize_run(run_dir)
        except (inference.RunError, metrics.MetricsError) as error:
            raise ConfigError(f"--runs {str(run_dir)!r}: {error}") from None
        if summary["final_test_accuracy"] is None:
            raise ConfigError(f"--runs {str(run_dir)!r} has no evaluation in its metrics yet")
        first_config = first_config or config
        datasets.add(config.data.dataset)
        per_model.setdefault(config.model.name, []).append((str(run_dir), summary))
    if len(datasets) > 1:
        raise ConfigError(f"--runs mixes datasets ({', '.join(sorted(datasets))}); compare one at a time")
    accuracies = {
        model: RunAccuracy(
            workdirs=tuple(workdir for workdir, _ in runs),
            validation=tuple(summary["final_validation_accuracy"] for _, summary in runs),
            test=tuple(summary["final_test_accuracy"] for _, summary in runs),
            epochs=tuple(summary["epochs"] for _, summary in runs),
        )
        for model, runs in per_model.items()
    }
    return accuracies, first_config


def _rate(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def _mib(value: int | None) -> str:
    return "n/a" if value is None else f"{value / 2**20:,.0f} MiB"


def compare_markdown(
    measurements: Sequence[Measurement],
    accuracies: dict[str, RunAccuracy],
    config: ml_collections.ConfigDict,
    repeats: int,
) -> str:
    first = measurements[0]
    shape = "x".join(map(str, data.config_input_shape(config.data)))
    lines = [
        f"Models on {first.device_kind} ({first.platform}, {common.plural(first.device_count, 'device')}, "
        f"jax {first.jax_version}); "
        f"{config.data.dataset} inputs {shape}, train step at batch {config.train.batch_size}, {config.model.dtype}.",
        "",
        f"Train images/s: the train program every run runs ({common.plural(config.train.steps_per_call, 'step')} "
        f"per call on device-resident data), the median of {common.plural(repeats, 'timed call')} after one warm-up "
        "call. Compile: lowering and XLA compilation of that program. GFLOPs: XLA's cost analysis of the forward "
        "pass per image, a multiply-add counting two. "
        "Peak memory: the device's own counter, each model in a fresh process (n/a where the device keeps none); "
        "XLA step memory: the compiled program's arguments, outputs and temporaries.",
        "",
    ]
    header = "| model | params | GFLOPs/image | train images/s | step ms | compile s | peak memory | XLA step memory |"
    rule = "|---|---:|---:|---:|---:|---:|---:|---:|"
    if accuracies:
        header += " validation acc | test acc | epochs | runs |"
        rule += "---:|---:|---:|---:|"
        lines += [
            "Accuracy: each run's final evaluation, on the validation split held out of train and on test. A model "
            "trained in several runs (seeds) shows the mean ± the standard deviation (min-max) of its runs (their "
            "number in runs; each run is listed below the table).",
            "",
        ]
    lines += [header, rule]
    for m in measurements:
        row = (
            f"| {m.model} | {m.params:,} | {m.gflops:.3f} | {_rate(m.images_per_second)} | "
            f"{m.step_milliseconds:,.1f} | {m.compile_seconds:.1f} | {_mib(m.peak_bytes)} | {_mib(m.xla_step_bytes)} |"
        )
        if accuracies:
            run = accuracies.get(m.model)
            spreads = run.spreads() if run else {}
            texts = tuple(spread.text() if spread else "n/a" for spread in spreads.values())
            cells = (*texts, _epochs(run.epochs), str(run.runs)) if run else ("",) * 4
            row += "".join(f" {cell} |" for cell in cells)
        lines.append(row)
    several = [(model, run) for model, run in accuracies.items() if run.runs > 1]
    if several:
        lines.append("")
        lines += [
            f"- {model}: {workdir} validation {'n/a' if validation is None else f'{validation:.4f}'}, test "
            f"{test:.4f}, {epochs:g} epoch{'' if epochs == 1 else 's'}"
            for model, run in several
            for workdir, validation, test, epochs in zip(
                run.workdirs, run.validation, run.test, run.epochs, strict=True
            )
        ]
    return "\n".join(lines) + "\n"


def _short(value: float) -> str:
    """A tick label: 0.5, 2, 20k, 10M."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:g}{unit}"
    return f"{value:g}"


def compare_figure(
    measurements: Sequence[Measurement], accuracies: dict[str, RunAccuracy], title: str
) -> matplotlib.figure.Figure:
    """Validation and test accuracy (the mean of a model's runs, their standard deviation as an error bar) against
    forward GFLOPs and parameters (logarithmic), or train throughput (logarithmic too) where there are no runs."""
    figure = matplotlib.figure.Figure(figsize=(11, 4.2), layout="constrained")
    axes = figure.subplots(1, 2)
    for axis, (attribute, label) in zip(
        axes, (("gflops", "forward GFLOPs / image"), ("params", "parameters")), strict=True
    ):
        legend = {"validation": "validation", "test": "test"}  # each entry labels the first model drawn
        for m in measurements:
            x = getattr(m, attribute)
            if accuracies:
                run = accuracies.get(m.model)
                if run is None:
                    continue
                spreads = run.spreads()
                for (name, spread), colour, marker in zip(spreads.items(), ("C0", "C1"), ("o", "x"), strict=True):
                    if spread is not None:
                        axis.errorbar(
                            [x],
                            [spread.mean],
                            yerr=spread.sd,
                            fmt=marker,
                            color=colour,
                            capsize=3,
                            label=legend.pop(name, None),
                        )
                y = (spreads["validation"] or spreads["test"]).mean
            else:
                y = m.images_per_second
                axis.scatter([x], [y], color="C0")
            axis.annotate(m.model, (x, y), textcoords="offset points", xytext=(4, 4), fontsize="small")
        axis.set_xscale("log")
        # Values within one decade have no power of ten between them: 1-2-5 ticks, each labelled, keep the axis read.
        axis.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        axis.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda value, _: _short(value)))
        axis.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        axis.margins(0.2)
        axis.set(xlabel=label, ylabel="final accuracy" if accuracies else "train images/s")
        axis.grid(alpha=0.3, which="both")
        if accuracies:
            axis.legend(fontsize="small")
        else:
            axis.set_yscale("log")
    figure.suptitle(title)
    return figure


def plot_compare(
    measurements: Sequence[Measurement], accuracies: dict[str, RunAccuracy], path: Path, title: str
) -> Path:
    """`compare_figure` written to `path`."""
    plots.save_figure(compare_figure(measurements, accuracies, title), path, dpi=110)
    return path


def _parser() -> common.ArgumentParser:
    parser = common.parser("compare", __doc__)
    parser.add_argument("--models", default="", help="comma-separated registry names (default: the runs' models)")
    parser.add_argument("--runs", nargs="+", default=[], help="trained workdirs (config.json + metrics.jsonl)")
    parser.add_argument("--dataset", default="cifar10", help="input shape and classes when no --runs are given")
    parser.add_argument("--batch", type=int, default=128, help="global train batch to time")
    parser.add_argument("--steps", type=int, default=10, help="train steps per timed call")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls (after one warm-up call)")
    parser.add_argument("--dtype", default=None, help="compute dtype (default: the run's, else float32)")
    parser.add_argument(
        "--outdir",
        default=DEFAULT_OUTDIR,
        help=f"the folder of compare.md, compare.png and compare.json (default: ./{DEFAULT_OUTDIR}/, created when "
        "missing)",
    )
    return parser


def _checked_configs(args: Any) -> tuple[dict[str, RunAccuracy], list[ml_collections.ConfigDict]]:
    """The runs' accuracies, and the measurement config of each model to compare, each one built once."""
    accuracies, run_config = read_runs(args.runs)
    names = [name.strip() for name in args.models.split(",") if name.strip()] or list(accuracies)
    names += [name for name in accuracies if name not in names]
    if not names:
        raise ConfigError("give --models a,b,... or --runs DIR ...")
    unknown = [name for name in names if name not in models.MODEL_REGISTRY]
    if unknown:
        raise ConfigError(f"--models: unknown {', '.join(unknown)}; choose from {', '.join(models.MODEL_REGISTRY)}")
    if min(args.batch, args.steps, args.repeats) < 1:
        raise ConfigError("--batch, --steps and --repeats must be positive")
    base = run_config or experiment.base_config()
    if run_config is None:
        base.data.dataset = args.dataset
    # Each built here, so that a config that cannot run is refused before any measurement; as built, with the
    # splits' sizes recorded.
    configs = [measurement_config(base, name, args.batch, args.steps, args.dtype) for name in names]
    return accuracies, [experiment.build(config).config for config in configs]


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        accuracies, configs = _checked_configs(args)
    except (ConfigError, data.DataError) as error:
        common.fail(error)
    outdir = common.output_folder(args.outdir, "--outdir")  # before the long part
    runtime.setup_logging()
    progress = metrics.ItemProgress("model", len(configs), enabled=metrics.wants_log_lines())
    measurements = []
    for config in configs:
        name = config.model.name
        progress.start(name)
        try:
            measurements.append(measure_isolated(config, args.repeats))
        except ConfigError as error:  # raised in the measuring process, and sent back whole
            common.fail(error)
        progress.finish(name, "measured")
        m = measurements[-1]
        print(f"{name}: {m.params:,} params, {m.gflops:.3f} GFLOPs, {_rate(m.images_per_second)} images/s", flush=True)
    markdown = compare_markdown(measurements, accuracies, configs[0], args.repeats)
    title = f"{', '.join(c.model.name for c in configs)} on {measurements[0].device_kind}, batch {args.batch}"
    try:
        atomic.write_text(outdir / COMPARE_MD, markdown)
        atomic.write_text(outdir / COMPARE_JSON, json.dumps([dataclasses.asdict(m) for m in measurements], indent=2))
        plot_compare(measurements, accuracies, outdir / COMPARE_PNG, title)
    except OSError as error:
        print(markdown, end="")  # the measurements took minutes: shown, though not saved
        common.fail(common.cannot_write(error.filename or outdir, error, "--outdir"))
    print(markdown, end="")
    print(f"wrote {', '.join(str(outdir / name) for name in (COMPARE_MD, COMPARE_PNG, COMPARE_JSON))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
