"""Architecture comparison: parameters, forward GFLOPs, train-step speed, memory and compile time per model, and
the validation and test accuracy of trained runs, as the spread over each model's runs (seeds). `resnet-jax compare
--models resnet18,resnet34 [--runs A,B,...]` writes compare.md, compare.png and compare.json (the raw measurements)
into --out (default: the first run's compare/, or runs/compare/ without runs). Runs that differ only in their seed
are one row; runs of one model trained differently are rows of their own, and the keys the runs differ in besides
the model are said.
"""

# The command line; what it runs lives beside it: `measure` (a model's cost), `accuracy` (the runs read), `report`.

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ml_collections

from resnet_jax import atomic, data, experiment, metrics, models, runtime
from resnet_jax.configuration import ConfigError
from resnet_jax.tools import common
from resnet_jax.tools.compare import accuracy, measure, report

COMPARE_MD = "compare.md"
COMPARE_PNG = "compare.png"
COMPARE_JSON = "compare.json"
DEFAULT_OUTDIR = "compare"  # a folder named after the tool: its files never land on another tool's
MODELS_ONLY_OUTDIR = Path("runs") / DEFAULT_OUTDIR  # without runs: beside the README's runs, not in the repository


def _parser() -> common.ArgumentParser:
    parser = common.parser("compare", __doc__)
    parser.add_argument("--models", default="", help="comma-separated registry names (default: the runs' models)")
    parser.add_argument(
        "--runs", nargs="+", default=[], help="comma-separated trained workdirs (config.json + metrics.jsonl)"
    )
    parser.add_argument("--dataset", default="cifar10", help="input shape and classes when no --runs are given")
    parser.add_argument("--batch", type=int, default=128, help="global train batch to time")
    parser.add_argument("--steps", type=int, default=10, help="train steps per timed call")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls (after one warm-up call)")
    parser.add_argument("--dtype", default=None, help="compute dtype (default: the run's, else float32)")
    parser.add_argument(
        "--out",
        "--outdir",
        dest="out",
        default=None,
        help=f"the folder of compare.md, compare.png and compare.json (default: the first run's {DEFAULT_OUTDIR}/, "
        f"or {MODELS_ONLY_OUTDIR}/ without --runs; created when missing)",
    )
    return parser


def _checked_configs(args: Any) -> tuple[dict[str, accuracy.RunAccuracy], list[ml_collections.ConfigDict]]:
    """The runs' accuracies, and the measurement config of each model to compare, each one built once."""
    accuracies, run_config = accuracy.read_runs(args.runs)
    trained = list(dict.fromkeys(run.model for run in accuracies.values()))
    names = common.split_list(args.models) or trained
    names += [name for name in trained if name not in names]
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
    configs = [measure.measurement_config(base, name, args.batch, args.steps, args.dtype) for name in names]
    return accuracies, [experiment.build(config).config for config in configs]


def _compare(args: Any, default_out: Path) -> None:
    """Measures, tables and plots the models and runs `args` names, into --out (default `default_out`)."""
    try:
        accuracies, configs = _checked_configs(args)
    except (ConfigError, data.DataError) as error:
        common.fail(error)
    outdir = common.output_folder(args.out or default_out, "--out")  # before the long part
    runtime.setup_logging()
    progress = metrics.ItemProgress("model", len(configs), enabled=metrics.wants_log_lines())
    measurements = []
    for config in configs:
        name = config.model.name
        progress.start(name)
        try:
            measurements.append(measure.measure_isolated(config, args.repeats))
        except ConfigError as error:  # raised in the measuring process, and sent back whole
            common.fail(error)
        progress.finish(name, "measured")
        m = measurements[-1]
        print(
            f"{name}: {m.params:,} params, {m.gflops:.3f} GFLOPs, {report.rate(m.images_per_second)} images/s",
            flush=True,
        )
    differing = accuracy.differences_besides_the_model(args.runs)
    markdown = report.compare_markdown(measurements, accuracies, configs[0], args.repeats, differing)
    title = f"{', '.join(c.model.name for c in configs)} on {measurements[0].device_kind}, batch {args.batch}"
    try:
        atomic.write_text(outdir / COMPARE_MD, markdown)
        atomic.write_text(outdir / COMPARE_JSON, json.dumps([dataclasses.asdict(m) for m in measurements], indent=2))
        report.plot_compare(measurements, accuracies, outdir / COMPARE_PNG, title)
    except OSError as error:
        print(markdown, end="")  # the measurements took minutes: shown, though not saved
        common.fail(common.cannot_write(error.filename or outdir, error, "--out"))
    print(markdown, end="")
    print(f"wrote {', '.join(str(outdir / name) for name in (COMPARE_MD, COMPARE_PNG, COMPARE_JSON))}")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    args.runs = common.split_list(args.runs)
    default_out = Path(args.runs[0]) / DEFAULT_OUTDIR if args.runs else MODELS_ONLY_OUTDIR
    # Into a run (FIRST/compare/): its lock is held from before the runs' accuracies are read until the files are
    # written, as evaluate does.
    with common.writing_into(args.out or default_out, args.runs):
        _compare(args, default_out)
    return 0
