"""Figures of a run with matplotlib: training curves from `metrics.jsonl` (one run or several overlaid) and the
confusion-matrix heat map. The tools draw with them (`train` after its run, `plots`, `evaluate`, the sweep's and
the comparison's reports, `degradation`); the library itself does not.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from resnet_jax import atomic
from resnet_jax.configuration import CONFIG_FILE
from resnet_jax.metrics import METRICS_FILE, read_metrics

CURVES_FILE = "curves.png"
# The suffixes `savefig` writes that a person asks for; the format follows the suffix.
FIGURE_SUFFIXES = (".png", ".pdf", ".svg", ".jpg")
# A heat map cell is annotated with its count up to this many classes; beyond, the numbers no longer fit.
MAX_ANNOTATED_CLASSES = 20


class PlotError(RuntimeError):
    """A workdir whose files cannot be plotted; the message names the file and the fix."""


class NoMetricsError(PlotError):
    """A workdir without metrics to plot; the message names it."""


def _series(records: Sequence[dict[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(epochs, values) of the records that hold `key`; a value logged as null (non-finite) is NaN."""
    points = [(record["epoch"], record[key]) for record in records if key in record]
    epochs = np.asarray([epoch for epoch, _ in points], np.float64)
    values = np.asarray([math.nan if value is None else value for _, value in points], np.float64)
    return epochs, values


def _saved_config(workdir: Path) -> dict[str, Any]:
    """The run's config.json as saved ({} when there is none: metrics alone still plot)."""
    path = workdir / CONFIG_FILE
    if not path.exists():
        return {}
    try:
        saved = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise PlotError(f"{path} cannot be read as JSON ({error}); it is damaged: restore it or delete it") from None
    sections = ("model", "data", "train")
    if not isinstance(saved, dict) or not all(isinstance(saved.get(name, {}), dict) for name in sections):
        raise PlotError(f"{path} holds no config (a JSON object of sections); it is damaged: restore it or delete it")
    return saved


def _run_title(config: dict[str, Any]) -> str:
    model, dataset = config.get("model", {}).get("name"), config.get("data", {}).get("dataset")
    return f"{model} on {dataset}" if model and dataset else ""


def _number(section: dict[str, Any], key: str) -> float:
    value = section.get(key, 0.0)
    return float(value) if isinstance(value, (int, float)) else 0.0


def _target_changes(config: dict[str, Any]) -> dict[str, float]:
    """What makes the train targets differ from the test labels: label smoothing, Mixup and CutMix, as set."""
    train, augment = config.get("train", {}), config.get("augment", {})
    changes = {
        "label smoothing": _number(train, "label_smoothing"),
        "mixup": _number(augment, "mixup_alpha"),
        "CutMix": _number(augment, "cutmix_alpha"),
    }
    return {name: value for name, value in changes.items() if value}


def _train_label(config: dict[str, Any], metric: str) -> str:
    """A train curve's legend entry: the trainer logs the loss it minimises, against smoothed or mixed targets, and
    under mixing the accuracy of the dominant labels."""
    changes = _target_changes(config)
    if metric == "accuracy":
        changes = {name: value for name, value in changes.items() if name != "label smoothing"}
    return f"train ({', '.join(f'{name} {value:g}' for name, value in changes.items())})" if changes else "train"


def _labels(workdirs: Sequence[Path]) -> list[str]:
    """Each run's folder name, or its whole path where two folder names clash."""
    names = [path.name or str(path) for path in workdirs]
    return [name if names.count(name) == 1 else str(path) for name, path in zip(names, workdirs, strict=True)]


def _loss_title(configs: Sequence[dict[str, Any]]) -> str:
    changed = {name for config in configs for name in _target_changes(config)}
    what = ["label smoothing"] if "label smoothing" in changed else []
    what += ["mixing"] if changed - {"label smoothing"} else []
    return f"Loss: train with {' and '.join(what)}, evaluations without" if what else "Loss"


def _spans_decades(rates: Sequence[np.ndarray]) -> bool:
    """Whether the runs' peak learning rates differ tenfold or more: on a linear axis the lower ones lie flat."""
    peaks = [float(np.nanmax(r)) for r in rates if r.size and np.any(np.isfinite(r)) and np.nanmax(r) > 0]
    return len(peaks) > 1 and max(peaks) >= 10 * min(peaks)


# The gradient-flow panel's line style for each part of the network, in order, when several runs share the panel:
# six, for the stem, four stages and the head.
PART_STYLES = ("-", "--", "-.", ":", (0, (3, 1, 1, 1, 1, 1)), (0, (1, 3)))


def _flow_parts(records: Sequence[dict[str, Any]]) -> list[str]:
    """The parts whose gradient norms a run logged (`grad_norm/stem` ... `grad_norm/head`), in the network's order."""
    return list(dict.fromkeys(key[len("grad_norm/") :] for r in records for key in r if key.startswith("grad_norm/")))


def _plot_flow(axes: Any, records: Sequence[dict[str, Any]], colour: str | None, prefix: str) -> None:
    """One run's per-part gradient norms: a colour per part alone, else the run's colour and a style per part."""
    for index, part in enumerate(_flow_parts(records)):
        style = (
            {"color": f"C{index % 10}"}
            if colour is None
            else {"color": colour, "linestyle": PART_STYLES[index % len(PART_STYLES)]}
        )
        axes.plot(*_series(records, f"grad_norm/{part}"), label=prefix + part, **style)


def curves_figure(workdirs: str | Path | Sequence[str | Path], labels: Sequence[str] | None = None) -> Figure:
    """Train/validation/test loss and accuracy and the learning rate against epoch, one colour per run (train
    solid, validation dotted where the run has one, test dashed). The train loss is the one minimised, against
    smoothed or mixed targets (its legend says so), and under mixing the train accuracy is of the dominant labels;
    the evaluation losses are plain cross-entropy. The rate axis is logarithmic where the runs' rates differ by
    decades. Runs that logged their gradient flow get a fourth panel: each part's gradient norm, on a log axis.

    Raises NoMetricsError when a workdir has no metrics.jsonl records, PlotError (or MetricsError) for damaged files.
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
        runs.append((records, _saved_config(workdir)))

    flow = any(_flow_parts(records) for records, _ in runs)
    figure = Figure(figsize=(21 if flow else 16, 4.8), layout="constrained")
    loss_axes, accuracy_axes, rate_axes, *flow_axes = figure.subplots(1, 4 if flow else 3)
    several = len(runs) > 1
    rates = []
    for index, ((records, config), label) in enumerate(zip(runs, labels, strict=True)):
        colour = f"C{index % 10}"
        prefix = f"{label} " if several else ""
        train_labels = {metric: _train_label(config, metric) for metric in ("loss", "accuracy")}
        for axes, metric in ((loss_axes, "loss"), (accuracy_axes, "accuracy")):
            axes.plot(*_series(records, f"train_{metric}"), color=colour, label=prefix + train_labels[metric])
            for split, style, marker in (("validation", ":", "s"), ("test", "--", "o")):
                epochs, values = _series(records, f"{split}_{metric}")
                if values.size:
                    axes.plot(
                        epochs, values, color=colour, linestyle=style, marker=marker, markersize=3, label=prefix + split
                    )
        epochs, rate = _series(records, "learning_rate")
        rates.append(rate)
        rate_axes.plot(epochs, rate, color=colour, label=label)
        for axes in flow_axes:
            _plot_flow(axes, records, colour if several else None, prefix)
    for axes, ylabel, title in (
        (loss_axes, "cross-entropy loss", _loss_title([config for _, config in runs])),
        (accuracy_axes, "accuracy", "Accuracy"),
        (rate_axes, "learning rate", "Learning rate"),
        *((axes, "gradient L2 norm (log scale)", "Gradient norm per stage") for axes in flow_axes),
    ):
        axes.set_xlabel("epoch")
        axes.set_ylabel(ylabel)
        axes.set_title(title)
        axes.grid(alpha=0.3)
    if _spans_decades(rates):
        rate_axes.set_yscale("log", nonpositive="mask")
        rate_axes.set_ylabel("learning rate (log scale)")
    loss_axes.legend(fontsize="small")
    accuracy_axes.legend(fontsize="small")
    for axes in flow_axes:
        axes.set_yscale("log", nonpositive="mask")
        axes.legend(fontsize="small")
    if several:
        rate_axes.legend(fontsize="small")
    else:
        figure.suptitle(" - ".join(filter(None, [_run_title(runs[0][1]), str(workdirs[0])])))
    return figure


def write_curves(
    workdirs: str | Path | Sequence[str | Path], out_path: str | Path, labels: Sequence[str] | None = None
) -> Path:
    """`curves_figure` of the runs written to `out_path` (PNG, or another format matplotlib writes by its
    suffix). Returns the path written."""
    figure = curves_figure(workdirs, labels)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    save_figure(figure, out_path)
    return out_path


def save_figure(figure: Any, path: str | Path, dpi: int = 120) -> None:
    """Writes a matplotlib figure to `path` in the format its suffix names, atomically: a kill mid-write leaves
    the previous figure whole."""
    with atomic.replacing(path) as temporary:
        figure.savefig(temporary, dpi=dpi)


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
    save_figure(figure, out_path)
    return out_path
