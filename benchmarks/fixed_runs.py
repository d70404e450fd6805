"""What a benchmark that trains reports: every run goes to the end of its fixed-length recipe, and what it gives is
that run's wall time and its final accuracy (validation when the run holds a split out, and test), over seeds as
mean ± sd (min-max), with the number of seeds. Nothing stops on test and nothing is chosen by it. A "time to X"
figure, where one is printed, is read off the finished run's test curve afterwards and labelled so: the first
evaluation at or above X is picked on test, so it describes that run and decides nothing.

`spread` writes what `resnet_jax.tools.common.Spread.text` writes, to any number of digits and with a unit, and with
the count of seeds after it.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

READ_OFF = "read off the finished run's test curve"


def evaluations(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records that scored test, in order."""
    return [record for record in records if record.get("test_accuracy") is not None]


def final(records: Sequence[dict[str, Any]], key: str) -> float | None:
    """The last evaluation's `key` (`test_accuracy`, `validation_accuracy`); None when no evaluation has it."""
    return next((record[key] for record in reversed(records) if record.get(key) is not None), None)


def curve_seconds_to(records: Sequence[dict[str, Any]], target: float) -> float | None:
    """The seconds of the first evaluation whose test accuracy is at or above `target`, read off a FINISHED run's
    curve (never used to stop one); None when the curve never gets there."""
    return next((record["seconds"] for record in evaluations(records) if record["test_accuracy"] >= target), None)


def spread(values: Sequence[float | None], digits: int = 4, unit: str = "") -> str:
    """`0.9080 ± 0.0026 (0.9057-0.9108), 3 seeds`; `0.9074, one seed`; `none` when no run has a value; with
    `unit` " s", `63 ± 1 s (62-64 s), 2 seeds`. A run without the value (None) is left out of the count."""
    present = [value for value in values if value is not None]
    if not present:
        return "none"
    if len(present) == 1:
        return f"{present[0]:.{digits}f}{unit}, one seed"
    mean, sd = statistics.fmean(present), statistics.stdev(present)
    return (
        f"{mean:.{digits}f} ± {sd:.{digits}f}{unit} ({min(present):.{digits}f}-{max(present):.{digits}f}{unit}), "
        f"{len(present)} seeds"
    )


def _cell(value: float | None, digits: int = 4, missing: str = "none") -> str:
    return missing if value is None else f"{value:.{digits}f}"


def seed_groups(results: dict[str, dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Runs by recipe: `ours seed 0`, `ours seed 1` are `ours`; a run without a seed in its name is a group of one."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for name, result in results.items():
        groups.setdefault(name.partition(" seed ")[0], []).append(result)
    return groups


def summary_table(results: dict[str, dict[str, Any]], targets: Sequence[float]) -> tuple[list[str], list[list[str]]]:
    """One row per finished run (`records`: its evaluations with `seconds`; `wall_seconds`; `error` when it
    failed): its evaluations, final test accuracy, final validation accuracy when any run has one, wall time, and
    the seconds to each target read off its test curve."""
    validated = any(final(result["records"], "validation_accuracy") is not None for result in results.values())
    headers = ["run", "evaluations", "final test accuracy"]
    headers += ["final validation accuracy"] if validated else []
    headers += ["wall s, command to its end", *(f"s to {target:.2f}, read off the curve" for target in targets)]
    rows = []
    for name, result in results.items():
        records = result["records"]
        row = [name, str(len(evaluations(records))), _cell(final(records, "test_accuracy"))]
        row += [_cell(final(records, "validation_accuracy"))] if validated else []
        row.append(f"{result['wall_seconds']:.0f}" + (f" ({result['error']})" if "error" in result else ""))
        row += [_cell(curve_seconds_to(records, target), 0, "not reached") for target in targets]
        rows.append(row)
    return headers, rows


def group_lines(results: dict[str, dict[str, Any]]) -> list[str]:
    """Per recipe, over its seeds: the final test (and validation) accuracy and the wall time, mean ± sd."""
    lines = []
    for group, runs in seed_groups(results).items():
        line = f"{group}: final test accuracy {spread([final(run['records'], 'test_accuracy') for run in runs])}"
        validation = [final(run["records"], "validation_accuracy") for run in runs]
        if any(value is not None for value in validation):
            line += f"; final validation accuracy {spread(validation)}"
        line += f"; wall time {spread([run['wall_seconds'] for run in runs], 0, ' s')}"
        lines.append(line)
    return lines


def curve_ratio(ours: Sequence[dict[str, Any]], theirs: dict[str, Any], target: float) -> float | None:
    """Our runs' mean seconds to `target` over the other run's, both read off finished test curves; None unless
    every curve got there."""
    mine = [curve_seconds_to(run["records"], target) for run in ours]
    other = curve_seconds_to(theirs["records"], target)
    if not mine or None in mine or not other:
        return None
    return statistics.fmean(mine) / other
