"""A sweep's results as a person reads them: DIR/results.csv and DIR/results.md (one row per trial, best first)
and DIR/sweep.png (accuracy against each swept key, and the curves of the best trials).
"""

from __future__ import annotations

import csv
import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from resnet_jax import metrics
from resnet_jax.tools import common
from resnet_jax.tools.sweep.spec import Dimension, SweepSpec, format_value

RESULTS_CSV = "results.csv"
RESULTS_MD = "results.md"
PLOT_FILE = "sweep.png"
STATE_ORDER = {"complete": 0, "pruned": 1, "failed": 2}
RESULT_COLUMNS = (
    "final_test_accuracy",
    "best_test_accuracy",
    "epochs",
    "wall_seconds",
    "images_per_second",
    "attempts",
    "error",
)


@dataclasses.dataclass
class TrialResult:
    """One row of the results table; `directory` is the trial's run folder."""

    name: str
    directory: Path
    state: str  # "complete", "pruned" or "failed"
    overrides: dict[str, Any]
    final_test_accuracy: float | None
    best_test_accuracy: float | None
    epochs: float | None
    wall_seconds: float | None
    images_per_second: float | None
    attempts: int
    error: str = ""


def ranked(results: Sequence[TrialResult]) -> list[TrialResult]:
    """Finished trials by final test accuracy (best accuracy breaks ties), then pruned, then failed."""
    return sorted(
        results,
        key=lambda r: (STATE_ORDER[r.state], -(r.final_test_accuracy or 0.0), -(r.best_test_accuracy or 0.0)),
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
    with (workdir / RESULTS_CSV).open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for rank, result in enumerate(results, 1):
            values = [getattr(result, column) for column in RESULT_COLUMNS]
            writer.writerow([rank, result.name, result.state, *result.overrides.values(), *values])
    (workdir / RESULTS_MD).write_text(results_markdown(spec, results))
    if results:
        plot_sweep(workdir, spec, results, top)


def results_markdown(spec: SweepSpec, results: Sequence[TrialResult]) -> str:
    import jax

    device = jax.devices()[0]
    states = ", ".join(
        f"{sum(r.state == s for r in results)} {s}" for s in STATE_ORDER if any(r.state == s for r in results)
    )
    lines = [
        f"Sweep ({spec.sampler}): " + "; ".join(d.describe() for d in spec.dimensions),
        "",
        f"{len(results)} of {common.plural(spec.trials, 'trial')} ({states or 'none yet'}), on {device.device_kind} "
        f"({device.platform}, jax {jax.__version__}). Sorted by final test accuracy.",
        "",
        "| rank | "
        + " | ".join(spec.keys)
        + " | state | final test acc | best test acc | epochs | wall s | images/s |",
        "|---:|" + "---:|" * len(spec.keys) + "---|---:|---:|---:|---:|---:|",
    ]
    for rank, result in enumerate(results, 1):
        values = " | ".join(format_value(value) for value in result.overrides.values())
        state = result.state + (f" ({result.attempts} attempts)" if result.attempts > 1 else "")
        lines.append(
            f"| {rank} | {values} | {state} | {_cell(result.final_test_accuracy, 4)} | "
            f"{_cell(result.best_test_accuracy, 4)} | {_cell(result.epochs, 2)} | {_cell(result.wall_seconds, 0)} | "
            f"{_cell(result.images_per_second, 0)} |"
        )
    failed = [result for result in results if result.error]
    lines += [""] + [f"- {result.name} failed: {result.error}" for result in failed] if failed else []
    return "\n".join(lines) + "\n"


def _numeric(values: Sequence[Any]) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def plot_sweep(workdir: Path, spec: SweepSpec, results: Sequence[TrialResult], top: int = 5) -> Path:
    """Final test accuracy against each swept key (a line per value of the other key in a 2-D grid), and the
    curves of the `top` best trials overlaid."""
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
    scored = [r for r in results if r.final_test_accuracy is not None]
    for axis, dimension in zip(axes, spec.dimensions, strict=False):
        _plot_dimension(axis, spec, dimension, scored)
    curves = [r for r in results if r.state != "failed"][:top]
    loss_axis, accuracy_axis = axes[len(spec.dimensions)], axes[len(spec.dimensions) + 1]
    accuracy_axis.sharex(loss_axis)
    for rank, result in enumerate(curves, 1):
        records = metrics.read_metrics(result.directory)
        train = [(r["epoch"], r["train_loss"]) for r in records if r.get("train_loss") is not None]
        evals = [(r["epoch"], r["test_accuracy"]) for r in records if r.get("test_accuracy") is not None]
        label = f"#{rank} {result.name}"
        line = loss_axis.plot(*zip(*train, strict=True), label=label)[0] if train else None
        if evals:
            accuracy_axis.plot(*zip(*evals, strict=True), "o-", label=label, color=line.get_color() if line else None)
    loss_axis.set(title=f"train loss, top {len(curves)}", xlabel="epoch", ylabel="train loss")
    accuracy_axis.set(title=f"test accuracy, top {len(curves)}", xlabel="epoch", ylabel="test accuracy")
    loss_axis.grid(alpha=0.3)
    accuracy_axis.grid(alpha=0.3)
    if curves:  # one legend: both panels draw a trial in the same colour
        loss_axis.legend(fontsize="small")
    figure.suptitle(f"{workdir.name}: {spec.sampler} sweep, {common.plural(len(results), 'trial')}")
    figure.tight_layout()
    path = workdir / PLOT_FILE
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _plot_dimension(axis: Any, spec: SweepSpec, dimension: Dimension, scored: Sequence[TrialResult]) -> None:
    import matplotlib.ticker

    values = [r.overrides[dimension.key] for r in scored]
    numeric = _numeric(values)
    positions = values if numeric else [list(dict.fromkeys(map(str, values))).index(str(v)) for v in values]
    others = [d for d in spec.dimensions if d is not dimension]
    if spec.sampler == "grid" and len(others) == 1:
        other = others[0].key
        for other_value in others[0].values:
            points = sorted(
                (x, r.final_test_accuracy)
                for x, r in zip(positions, scored, strict=True)
                if r.overrides[other] == other_value
            )
            if points:
                axis.plot(
                    *zip(*points, strict=True), "o-", label=f"{other.rsplit('.', 1)[-1]}={format_value(other_value)}"
                )
        axis.legend(fontsize="small")
    else:
        pruned = [r.state == "pruned" for r in scored]
        axis.scatter(
            [x for x, p in zip(positions, pruned, strict=True) if not p],
            [r.final_test_accuracy for r, p in zip(scored, pruned, strict=True) if not p],
            label="finished",
        )
        if any(pruned):
            axis.scatter(
                [x for x, p in zip(positions, pruned, strict=True) if p],
                [r.final_test_accuracy for r, p in zip(scored, pruned, strict=True) if p],
                marker="x",
                label="pruned (last eval)",
            )
            axis.legend(fontsize="small")
    if numeric and values and min(values) > 0 and (dimension.log or max(values) / min(values) >= 10):
        axis.set_xscale("log")
        axis.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    if numeric and dimension.values:
        axis.set_xticks(sorted(set(values)), [format_value(v) for v in sorted(set(values))])
    if not numeric:
        labels = list(dict.fromkeys(map(str, values)))
        axis.set_xticks(range(len(labels)), labels)
    axis.set(title=f"final test accuracy vs {dimension.key}", xlabel=dimension.key, ylabel="final test accuracy")
    axis.grid(alpha=0.3)
