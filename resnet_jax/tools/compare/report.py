"""compare's report: the markdown table of the measurements and the runs' accuracy (compare.md), and the figure of
accuracy or throughput against GFLOPs and parameters (compare.png).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.figure
import matplotlib.ticker
import ml_collections

from resnet_jax import data, plots
from resnet_jax.tools import common
from resnet_jax.tools.compare.accuracy import RunAccuracy
from resnet_jax.tools.compare.measure import Measurement


def _epochs(values: Sequence[float]) -> str:
    low, high = min(values), max(values)
    return f"{low:g}" if low == high else f"{low:g}-{high:g}"


def rate(value: float) -> str:
    """Images per second for the table: 1,234 or 56.7."""
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def _mib(value: int | None) -> str:
    return "n/a" if value is None else f"{value / 2**20:,.0f} MiB"


def compare_markdown(
    measurements: Sequence[Measurement],
    accuracies: dict[str, RunAccuracy],
    config: ml_collections.ConfigDict,
    repeats: int,
    differing: Sequence[str] = (),
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
            "number in runs; each run is listed below the table). Runs in one row differ only in their seed.",
            "",
        ]
        if differing:
            lines += [
                f"Besides the model, these runs also differ in {', '.join(differing)}: the rows do not compare the "
                "architectures alone.",
                "",
            ]
    lines += [header, rule]
    for m in measurements:
        cost = (
            f"{m.params:,} | {m.gflops:.3f} | {rate(m.images_per_second)} | "
            f"{m.step_milliseconds:,.1f} | {m.compile_seconds:.1f} | {_mib(m.peak_bytes)} | {_mib(m.xla_step_bytes)} |"
        )
        groups = [(label, run) for label, run in accuracies.items() if run.model == m.model] or [(m.model, None)]
        for label, run in groups:
            row = f"| {label} | {cost}"
            if accuracies:
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
            if not accuracies:
                axis.scatter([x], [m.images_per_second], color="C0")
                axis.annotate(m.model, (x, m.images_per_second), textcoords="offset points", xytext=(4, 4))
                continue
            for label, run in accuracies.items():
                if run.model != m.model:
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
                axis.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize="small")
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
