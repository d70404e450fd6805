"""The last table of benchmarks/gpu_suite.sh: the issue's goals against what the suite measured, read from the
JSON files and logs its stages left in one folder (a missing stage shows as not measured).

    python -m benchmarks.suite_summary RESULTS_DIR
"""

from __future__ import annotations

import argparse
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import common


def _load(folder: Path, name: str) -> dict[str, Any] | None:
    path = folder / name
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _ratio_row(comparison: dict[str, Any] | None, model: str, goal: float) -> list[str]:
    label = f"{model}: best JAX / best PyTorch, images/s"
    if not comparison:
        return [label, "not measured", f">= {goal}x", "?"]
    rates = comparison["images_per_second"]
    best_jax, best_torch = comparison["best_jax"], comparison["best_torch"]
    ratio = comparison["best_ratio"]
    if not best_jax or not best_torch:
        return [label, f"incomplete: {comparison.get('errors') or 'no runner of one side'}", f">= {goal}x", "?"]
    detail = f"{ratio:.2f}x ({best_jax} {rates[best_jax]:,.0f} vs {best_torch} {rates[best_torch]:,.0f}, "
    detail += f"batch {comparison['batch']})"
    if comparison.get("errors"):
        detail += f"; not measured: {', '.join(comparison['errors'])}"
    return [label, detail, f">= {goal}x", "yes" if ratio >= goal else "no"]


def _time_row(label: str, run: dict[str, Any] | None, seconds: float | None, goal: float, note: str = "") -> list[str]:
    """A wall-time goal: met or not on `seconds` (the finished run's); `note` follows the measured figure."""
    if not run:
        return [label, "not measured", f"<= {goal:.0f} s", "?"]
    if seconds is not None:
        return [label, f"{seconds:.1f} s{note}", f"<= {goal:.0f} s", "yes" if seconds <= goal else "no"]
    projected = run.get("projected_total_seconds")
    detail = f"not finished in {run['total_seconds']:.0f} s ({run['steps_done']} of {run['total_steps']} steps"
    if run.get("evaluations"):
        # A run cut by its time limit has no final accuracy: its last evaluation is not the recipe's figure.
        last = run["evaluations"][-1]["test_accuracy"]
        detail += f", the last evaluation's test accuracy {last:.4f}, not the recipe's figure"
    detail += f"; all steps projected at {projected:.0f} s)" if projected else ")"
    return [label, detail, f"<= {goal:.0f} s", "no"]


def _fashion_row(run: dict[str, Any] | None, goal: float) -> list[str]:
    """The Fashion-MNIST recipe in airbench's form: its fixed length run to the end, the wall time judged against
    the goal, its final accuracy reported (one seed: a goal on accuracy is for the mean over seeds, not judged
    here); seconds to a target only as read off the finished run's test curve."""
    epochs = ((run or {}).get("config") or {}).get("train", {}).get("num_epochs")
    label = f"Fashion-MNIST, the fixed {epochs or '?'}-epoch recipe to its end, compile included"
    finished = bool(run) and run.get("steps_done") == run.get("total_steps")
    if not finished:
        return _time_row(label, run, None, goal)
    note = ""
    if run.get("final_test_accuracy") is not None:
        note = f"; final test accuracy {run['final_test_accuracy']:.4f} (one seed)"
    if run.get("final_validation_accuracy") is not None:
        note += f", validation {run['final_validation_accuracy']:.4f}"
    if run.get("target") is not None:
        reached = run.get("curve_seconds_to_target")
        note += f"; {run['target']} read off its test curve: " + (
            f"{reached:.1f} s" if reached is not None else "never"
        )
    return _time_row(label, run, run["total_seconds"], goal, note)


def _tests_row(folder: Path) -> list[str]:
    try:
        text = (folder / "tests.log").read_text()
    except OSError:
        return ["pytest on the GPU", "not run", "all pass", "?"]
    summaries = re.findall(r"^=*\s*(\d+ (?:passed|failed|errors?)\b.*?) in [\d.]+s", text, re.MULTILINE)
    counts = summaries[-1] if summaries else f"no summary (stopped?); {text.count(' PASSED')} passed so far"
    return ["pytest on the GPU", counts, "all pass", "no" if re.search(r"failed|error", counts) else "yes"]


def _start_up_line(log: Path) -> str | None:
    try:
        found = re.search(r"start-up took .*", log.read_text())
    except OSError:
        return None
    return found.group(0) if found else None


def _config(result: dict[str, Any]) -> tuple:
    return (result["model"], result["batch"], result["dtype"], result["steps_per_call"])


def summarize(folder: Path) -> str:
    throughput = _load(folder, "throughput.json")
    comparisons = {}
    for name in ("torch_resnet20.json", "torch_resnet18.json"):
        run = _load(folder, name)
        for comparison in (run or {}).get("comparisons", []):
            comparisons[comparison["model"]] = comparison
    he_run = _load(folder, "tta_he_resnet20.json")
    fashion = _load(folder, "tta_fashion_mnist.json")
    sources = [throughput, _load(folder, "torch_resnet20.json"), fashion, he_run]
    env = next((source["environment"] for source in sources if source and "environment" in source), None)
    he_finished = he_run and he_run.get("steps_done") == he_run.get("total_steps")
    rows = [
        _ratio_row(comparisons.get(model), model, 1.3)
        for model in dict.fromkeys(["resnet20", "resnet18", *comparisons])
        if model in comparisons or model in ("resnet20", "resnet18")
    ]
    rows += [
        _time_row(
            f"He et al. ResNet-20 recipe, {he_run['total_steps'] if he_run else 64_000} steps at batch 128, "
            "compile included",
            he_run,
            he_run["total_seconds"] if he_finished else None,
            60,
        ),
        _fashion_row(fashion, 30),
        _tests_row(folder),
    ]
    lines = ["### GPU suite summary", ""]
    if env:
        lines += [common.environment_line(env), ""]
    lines.append(common.markdown_table(("goal", "measured", "target", "met"), rows))
    if throughput and throughput.get("results"):
        lines += ["", "Train-step throughput (x floor: measured time / max(compute floor, memory floor)):", ""]
        table = []
        for result in throughput["results"]:
            floor = max(result.get("compute_floor_s", math.nan), result.get("memory_floor_s", math.nan))
            table.append(
                [
                    result["model"],
                    result["batch"],
                    result["dtype"],
                    result["steps_per_call"],
                    result["images_per_second"],
                    result["seconds_per_step"] * 1e3,
                    result["first_call_seconds"],
                    result["flops"] / result["seconds_per_step"] / 1e12,
                    result["seconds_per_step"] / floor if floor > 0 else math.nan,
                ]
            )
        headers = ("model", "batch", "dtype", "steps/call", "images/s", "ms/step", "first call s", "TFLOP/s", "x floor")
        lines.append(common.markdown_table(headers, table))
    graphs = _load(folder, "throughput_while_graphs.json")
    if graphs and graphs.get("results") and throughput:
        plain = {_config(result): result for result in throughput.get("results", [])}
        rows = [
            [
                *_config(result),
                plain[_config(result)]["images_per_second"] if _config(result) in plain else math.nan,
                result["images_per_second"],
            ]
            for result in graphs["results"]
        ]
        lines += ["", f"With XLA_FLAGS={graphs['environment']['xla_flags'] or '(none)'}:", ""]
        headers = ("model", "batch", "dtype", "steps/call", "images/s, XLA defaults", "images/s, these flags")
        lines.append(common.markdown_table(headers, rows))
    startups = [(name, _start_up_line(folder / f"{name}.log")) for name in ("tta_fashion_mnist", "tta_he_resnet20")]
    if any(line for _, line in startups):
        lines += ["", "Start-up, as the trainer logged it (data, restore and compiles, before the first step):", ""]
        lines += [f"- {name}: {line}" for name, line in startups if line]
    stages = folder / "stages.tsv"
    if stages.exists():
        lines += ["", "Stages (exit code 124: stopped at its time limit):", ""]
        stage_rows = [line.split("\t") for line in stages.read_text().splitlines() if line.strip()]
        lines.append(common.markdown_table(("stage", "exit code", "seconds"), stage_rows))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.suite_summary", description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    print(summarize(parser.parse_args(argv).folder))


if __name__ == "__main__":
    main()
