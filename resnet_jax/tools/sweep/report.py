"""A sweep's results as a person reads them: DIR/results.csv and DIR/results.md (one row per trial, best by
validation accuracy first, with the spread over its seeds) and DIR/sweep.png (validation and test accuracy against
each swept key, error bars over the seeds, and the curves of the best trials).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from resnet_jax import atomic, metrics, plots, trainer
from resnet_jax.tools import common
from resnet_jax.tools.sweep.spec import Dimension, SweepSpec, format_value

RESULTS_CSV = "results.csv"
RESULTS_MD = "results.md"
PLOT_FILE = "sweep.png"
VALIDATION = trainer.VALIDATION_ACCURACY
STATE_ORDER = {"complete": 0, "pruned": 1, "failed": 2}
SPREAD_COLUMNS = ("mean", "sd", "min", "max")
RESULT_COLUMNS = (
    "seeds",
    *(f"validation_accuracy_{column}" for column in SPREAD_COLUMNS),
    *(f"test_accuracy_{column}" for column in SPREAD_COLUMNS),
    "epochs",
    "wall_seconds",
    "images_per_second",
    "attempts",
    "error",
)


@dataclasses.dataclass
class TrialResult:
    """One row of the results table: a trial's runs (one per seed) and the spread of their final accuracies."""

    name: str
    run_dirs: tuple[Path, ...]  # one per seed; the first one's curves are drawn
    state: str  # "complete", "pruned" or "failed"
    overrides: dict[str, Any]
    validation: common.Spread | None  # final validation accuracy over the runs: what ranks
    test: common.Spread | None  # final test accuracy over the same runs: reported only
    epochs: float | None  # the first run's
    wall_seconds: float | None
    images_per_second: float | None  # the median over the runs
    attempts: int
    error: str = ""

    @classmethod
    def of_runs(cls, name: str, run_dirs: Sequence[Path], **fields: Any) -> TrialResult:
        """The result of a trial whose runs are `run_dirs` (those not started yet count for nothing)."""
        summaries = [metrics.summarize_run(run_dir) for run_dir in run_dirs]
        speeds = [summary["images_per_second"] for summary in summaries if summary["images_per_second"]]
        return cls(
            name=name,
            run_dirs=tuple(run_dirs),
            validation=common.Spread.of([summary["final_validation_accuracy"] for summary in summaries]),
            test=common.Spread.of([summary["final_test_accuracy"] for summary in summaries]),
            epochs=summaries[0]["epochs"],
            images_per_second=statistics.median(speeds) if speeds else None,
            **fields,
        )

    @property
    def seeds(self) -> int:
        return self.validation.runs if self.validation else 0

    def csv_values(self) -> list[Any]:
        """The row's `RESULT_COLUMNS` (empty cells for what is not there)."""
        spreads = [
            [None] * 4 if spread is None else [spread.mean, spread.sd, spread.low, spread.high]
            for spread in (self.validation, self.test)
        ]
        return [
            self.seeds,
            *spreads[0],
            *spreads[1],
            self.epochs,
            self.wall_seconds,
            self.images_per_second,
            self.attempts,
            self.error,
        ]


def ranked(results: Sequence[TrialResult]) -> list[TrialResult]:
    """Finished trials by their mean final validation accuracy (the name breaks ties: never test accuracy), then
    pruned, then failed."""
    return sorted(
        results,
        key=lambda r: (STATE_ORDER[r.state], -(r.validation.mean if r.validation else 0.0), r.name),
    )


def _cell(value: Any, digits: int) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def write_results(workdir: Path, spec: SweepSpec, results: Sequence[TrialResult], top: int = 5) -> None:
    """DIR/results.csv, DIR/results.md and DIR/sweep.png."""
    header = ["rank", "trial", "state", *spec.keys, *RESULT_COLUMNS]
    rows = io.StringIO(newline="")
    writer = csv.writer(rows)
    writer.writerow(header)
    for rank, result in enumerate(results, 1):
        writer.writerow([rank, result.name, result.state, *result.overrides.values(), *result.csv_values()])
    atomic.write_text(workdir / RESULTS_CSV, rows.getvalue())
    atomic.write_text(workdir / RESULTS_MD, results_markdown(spec, results))
    if results:
        plot_sweep(workdir, spec, results, top)


def results_markdown(spec: SweepSpec, results: Sequence[TrialResult]) -> str:
    import jax

    device = jax.devices()[0]
    states = ", ".join(
        f"{sum(r.state == s for r in results)} {s}" for s in STATE_ORDER if any(r.state == s for r in results)
    )
    seeds = (
        f" Each trial trains {common.plural(spec.seeds, 'seed')}: mean ± standard deviation (min-max)."
        if spec.seeds > 1
        else ""
    )
    lines = [
        f"Sweep ({spec.sampler}): " + "; ".join(d.describe() for d in spec.dimensions),
        "",
        f"{len(results)} of {common.plural(spec.trials, 'trial')} ({states or 'none yet'}), on {device.device_kind} "
        f"({device.platform}, jax {jax.__version__}). Sorted by final validation accuracy (the split held out of "
        f"train); test accuracy is reported, never ranked on.{seeds}",
        "",
        "| rank | "
        + " | ".join(spec.keys)
        + " | state | validation acc | test acc | seeds | epochs | wall s | images/s |",
        "|---:|" + "---:|" * len(spec.keys) + "---|---:|---:|---:|---:|---:|---:|",
    ]
    for rank, result in enumerate(results, 1):
        values = " | ".join(format_value(value) for value in result.overrides.values())
        state = result.state + (f" ({result.attempts} attempts)" if result.attempts > 1 else "")
        accuracies = " | ".join(spread.text() if spread else "" for spread in (result.validation, result.test))
        lines.append(
            f"| {rank} | {values} | {state} | {accuracies} | {result.seeds} | {_cell(result.epochs, 2)} | "
            f"{_cell(result.wall_seconds, 0)} | {_cell(result.images_per_second, 0)} |"
        )
    failed = [result for result in results if result.error]
    lines += [""] + [f"- {result.name} failed: {result.error}" for result in failed] if failed else []
    return "\n".join(lines) + "\n"


def _numeric(values: Sequence[Any]) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def plot_sweep(workdir: Path, spec: SweepSpec, results: Sequence[TrialResult], top: int = 5) -> Path:
    """Final validation and test accuracy against each swept key (a line per value of the other key in a 2-D grid;
    error bars: the standard deviation over the seeds), and the curves of the `top` best trials (their first
    seed's) overlaid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = len(spec.dimensions) + 2
    columns = min(panels, 2 if panels == 4 else 3)
    rows = math.ceil(panels / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 4.0 * rows), squeeze=False)
    axes = axes.ravel()
    for axis in axes[panels:]:
        axis.set_visible(False)
    scored = [r for r in results if r.validation is not None]
    for axis, dimension in zip(axes, spec.dimensions, strict=False):
        _plot_dimension(axis, spec, dimension, scored)
    curves = [r for r in results if r.state != "failed"][:top]
    loss_axis, accuracy_axis = axes[len(spec.dimensions)], axes[len(spec.dimensions) + 1]
    accuracy_axis.sharex(loss_axis)
    for rank, result in enumerate(curves, 1):
        records = metrics.read_metrics(result.run_dirs[0])
        train = [(r["epoch"], r["train_loss"]) for r in records if r.get("train_loss") is not None]
        evals = [(r["epoch"], r[VALIDATION]) for r in records if r.get(VALIDATION) is not None]
        label = f"#{rank} {result.name}"
        line = loss_axis.plot(*zip(*train, strict=True), label=label)[0] if train else None
        if evals:
            accuracy_axis.plot(*zip(*evals, strict=True), "o-", label=label, color=line.get_color() if line else None)
    loss_axis.set(title=f"train loss, top {len(curves)}", xlabel="epoch", ylabel="train loss")
    accuracy_axis.set(title=f"validation accuracy, top {len(curves)}", xlabel="epoch", ylabel="validation accuracy")
    loss_axis.grid(alpha=0.3)
    accuracy_axis.grid(alpha=0.3)
    if curves:  # one legend: both panels draw a trial in the same colour
        loss_axis.legend(fontsize="small")
    seeds = f", {spec.seeds} seeds each" if spec.seeds > 1 else ""
    figure.suptitle(f"{workdir.name}: {spec.sampler} sweep, {common.plural(len(results), 'trial')}{seeds}")
    figure.tight_layout()
    path = workdir / PLOT_FILE
    plots.save_figure(figure, path, dpi=110)
    plt.close(figure)
    return path


def _errorbars(axis: Any, points: Sequence[tuple[float, common.Spread]], **style: Any) -> None:
    """Means with their standard deviation (over the seeds) as error bars, in the order given."""
    if points:
        xs, spreads = zip(*points, strict=True)
        errors = [spread.sd or 0.0 for spread in spreads]
        axis.errorbar(xs, [spread.mean for spread in spreads], yerr=errors, capsize=3, **style)


def _plot_dimension(axis: Any, spec: SweepSpec, dimension: Dimension, scored: Sequence[TrialResult]) -> None:
    import matplotlib.ticker

    values = [r.overrides[dimension.key] for r in scored]
    numeric = _numeric(values)
    positions = values if numeric else [list(dict.fromkeys(map(str, values))).index(str(v)) for v in values]
    others = [d for d in spec.dimensions if d is not dimension]
    if spec.sampler == "grid" and len(others) == 1:
        other = others[0].key
        for index, other_value in enumerate(others[0].values):
            chosen = sorted(
                [(x, r) for x, r in zip(positions, scored, strict=True) if r.overrides[other] == other_value],
                key=lambda point: point[0],
            )
            label = f"{other.rsplit('.', 1)[-1]}={format_value(other_value)}"
            colour = f"C{index % 10}"
            _errorbars(axis, [(x, r.validation) for x, r in chosen], fmt="o-", color=colour, label=f"{label} val")
            tested = [(x, r.test) for x, r in chosen if r.test]
            _errorbars(axis, tested, fmt="x--", color=colour, alpha=0.6, label=f"{label} test")
    else:
        for state, marker in (("complete", "o"), ("pruned", "s")):
            chosen = [(x, r) for x, r in zip(positions, scored, strict=True) if r.state == state]
            suffix = "" if state == "complete" else " (pruned, last eval)"
            _errorbars(
                axis, [(x, r.validation) for x, r in chosen], fmt=marker, color="C0", label="validation" + suffix
            )
            tested = [(x, r.test) for x, r in chosen if r.test]
            _errorbars(axis, tested, fmt="x", color="C1", alpha=0.7, label="test" + suffix)
    if scored:
        axis.legend(fontsize="small")
    if numeric and values and min(values) > 0 and (dimension.log or max(values) / min(values) >= 10):
        axis.set_xscale("log")
        axis.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    if numeric and dimension.values:
        axis.set_xticks(sorted(set(values)), [format_value(v) for v in sorted(set(values))])
    if not numeric:
        labels = list(dict.fromkeys(map(str, values)))
        axis.set_xticks(range(len(labels)), labels)
    axis.set(title=f"final accuracy vs {dimension.key}", xlabel=dimension.key, ylabel="final accuracy")
    axis.grid(alpha=0.3)
