"""Figures of a run with matplotlib: training curves from `metrics.jsonl` (one run or several overlaid) and the
confusion-matrix heat map. The trainer and the `plots` and `evaluate` tools draw with them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from resnet_jax.metrics import METRICS_FILE, read_metrics

CURVES_FILE = "curves.png"
# A heat map cell is annotated with its count up to this many classes; beyond, the numbers no longer fit.
MAX_ANNOTATED_CLASSES = 20


class NoMetricsError(RuntimeError):
    """A workdir without metrics to plot; the message names it."""


def _series(records: Sequence[dict[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(epochs, values) of the records that hold `key`; a value logged as null (non-finite) is NaN."""
    points = [(record["epoch"], record[key]) for record in records if key in record]
    epochs = np.asarray([epoch for epoch, _ in points], np.float64)
    values = np.asarray([math.nan if value is None else value for _, value in points], np.float64)
    return epochs, values


def _run_title(workdir: Path) -> str:
    try:
        config = json.loads((workdir / "config.json").read_text())
        return f"{config['model']['name']} on {config['data']['dataset']}"
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def _labels(workdirs: Sequence[Path]) -> list[str]:
    """Each run's folder name, or its whole path where two folder names clash."""
    names = [path.name or str(path) for path in workdirs]
    return [name if names.count(name) == 1 else str(path) for name, path in zip(names, workdirs, strict=True)]


def write_curves(
    workdirs: str | Path | Sequence[str | Path], out_path: str | Path, labels: Sequence[str] | None = None
) -> Path:
    """Plots train/test loss, train/test accuracy and the learning rate against epoch, one colour per run
    (train solid, test dashed), into `out_path` (PNG). Returns the path written.

    Raises NoMetricsError when a workdir has no metrics.jsonl records.
    """
    if isinstance(workdirs, (str, Path)):
        workdirs = [workdirs]
    workdirs = [Path(workdir) for workdir in workdirs]
    labels = list(labels) if labels is not None else _labels(workdirs)
    runs = []
    for workdir in workdirs:
        records = read_metrics(workdir)
        if not records:
            raise NoMetricsError(f"{workdir} has no {METRICS_FILE} records to plot; is it a training workdir?")
        runs.append(records)

    figure = Figure(figsize=(16, 4.8), layout="constrained")
    loss_axes, accuracy_axes, rate_axes = figure.subplots(1, 3)
    several = len(runs) > 1
    for index, (records, label) in enumerate(zip(runs, labels, strict=True)):
        colour = f"C{index % 10}"
        prefix = f"{label} " if several else ""
        for axes, metric in ((loss_axes, "loss"), (accuracy_axes, "accuracy")):
            axes.plot(*_series(records, f"train_{metric}"), color=colour, label=f"{prefix}train")
            axes.plot(
                *_series(records, f"test_{metric}"),
                color=colour,
                linestyle="--",
                marker="o",
                markersize=3,
                label=f"{prefix}test",
            )
        rate_axes.plot(*_series(records, "learning_rate"), color=colour, label=label)
    for axes, ylabel, title in (
        (loss_axes, "cross-entropy loss", "Loss"),
        (accuracy_axes, "accuracy", "Accuracy"),
        (rate_axes, "learning rate", "Learning rate"),
    ):
        axes.set_xlabel("epoch")
        axes.set_ylabel(ylabel)
        axes.set_title(title)
        axes.grid(alpha=0.3)
    loss_axes.legend(fontsize="small")
    accuracy_axes.legend(fontsize="small")
    if several:
        rate_axes.legend(fontsize="small")
    else:
        figure.suptitle(" - ".join(filter(None, [_run_title(workdirs[0]), str(workdirs[0])])))
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_path, dpi=120)
    return out_path


def write_confusion_matrix(
    matrix: np.ndarray, class_names: Sequence[str], out_path: str | Path, title: str = ""
) -> Path:
    """A heat map of a confusion matrix (rows: true class, columns: predicted): colour is the fraction of each
    true class, and each cell shows its count (up to MAX_ANNOTATED_CLASSES classes)."""
    matrix = np.asarray(matrix)
    num_classes = len(class_names)
    totals = matrix.sum(axis=1, keepdims=True)
    fractions = np.divide(matrix, totals, out=np.zeros(matrix.shape, np.float64), where=totals > 0)
    side = max(6.0, 0.55 * num_classes + 2.5)
    figure = Figure(figsize=(side + 1.5, side), layout="constrained")
    axes = figure.subplots()
    image = axes.imshow(fractions, cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(image, ax=axes, shrink=0.8, label="fraction of the true class")
    ticks = np.arange(num_classes)
    font = "medium" if num_classes <= MAX_ANNOTATED_CLASSES else "xx-small"
    axes.set_xticks(ticks, labels=class_names, rotation=45, ha="right", rotation_mode="anchor", fontsize=font)
    axes.set_yticks(ticks, labels=class_names, fontsize=font)
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    if title:
        axes.set_title(title)
    if num_classes <= MAX_ANNOTATED_CLASSES:
        for (row, column), count in np.ndenumerate(matrix):
            colour = "white" if fractions[row, column] > 0.5 else "black"
            axes.text(column, row, str(count), ha="center", va="center", color=colour, fontsize="small")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_path, dpi=120)
    return out_path
