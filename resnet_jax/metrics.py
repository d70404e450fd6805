"""Where metrics go: `metrics.jsonl`, TensorBoard event files and a per-epoch progress bar.

Only process 0 writes. Values arrive as host floats; the trainer fetches them from the device only when it logs.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import statistics
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax

METRICS_FILE = "metrics.jsonl"


def read_metrics(workdir: str | Path) -> list[dict[str, Any]]:
    """The records of a run's metrics.jsonl, in order (an empty list when there is none).

    A torn last line (the process was killed mid-write) is left out; damage anywhere else is an error.
    """
    path = Path(workdir) / METRICS_FILE
    if not path.exists():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines[:-1]]
    with contextlib.suppress(json.JSONDecodeError):
        records += [json.loads(line) for line in lines[-1:]]
    return records


def summarize_run(workdir: str | Path) -> dict[str, float | None]:
    """Final and best test accuracy, epochs and the median train images/s of a run's metrics.jsonl."""
    records = read_metrics(workdir)
    accuracies = [record["test_accuracy"] for record in records if record.get("test_accuracy") is not None]
    speeds = [record["images_per_second"] for record in records if record.get("images_per_second")]
    return {
        "final_test_accuracy": accuracies[-1] if accuracies else None,
        "best_test_accuracy": max(accuracies) if accuracies else None,
        "epochs": records[-1]["epoch"] if records else None,
        "images_per_second": statistics.median(speeds) if speeds else None,
    }


def _jsonable(value: float) -> float | None:
    return value if math.isfinite(value) else None


class MetricWriter:
    """Appends records to `metrics.jsonl` and mirrors scalars to TensorBoard under `workdir/tensorboard`."""

    def __init__(self, workdir: str | Path, enabled: bool | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self.path = Path(workdir) / METRICS_FILE
        self._tensorboard = None
        if self.enabled:
            from tensorboardX import SummaryWriter

            self._tensorboard = SummaryWriter(str(Path(workdir) / "tensorboard"), flush_secs=30)

    def truncate_after(self, step: int) -> None:
        """On resume, drops records of steps past the checkpoint: those steps run again and log again."""
        if not self.enabled or not self.path.exists():
            return
        kept = [record for record in read_metrics(self.path.parent) if record["step"] <= step]
        staging = self.path.with_suffix(".jsonl.tmp")
        staging.write_text("".join(json.dumps(record) + "\n" for record in kept))
        os.replace(staging, self.path)  # atomic: a kill leaves the old file or the new one

    def write(self, step: int, epoch: float, values: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), "epoch": round(float(epoch), 4)}
        record |= {key: _jsonable(float(value)) for key, value in values.items()}
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        for key, value in values.items():
            self._tensorboard.add_scalar(key, float(value), int(step))

    def close(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()


class ProgressBar:
    """A tqdm bar per epoch with loss, accuracy and images/s; silent when stdout is not a terminal."""

    def __init__(self, enabled: bool | None = None):
        self.enabled = (jax.process_index() == 0 and sys.stdout.isatty()) if enabled is None else enabled
        self._bar = None

    def start_epoch(self, epoch: int, total_steps: int, initial: int = 0) -> None:
        if not self.enabled:
            return
        from tqdm.auto import tqdm

        self.close()
        self._bar = tqdm(total=total_steps, initial=initial, desc=f"epoch {epoch + 1}", unit="step", leave=False)

    def update(self, steps: int, postfix: Mapping[str, float] | None = None) -> None:
        if self._bar is None:
            return
        self._bar.update(steps)
        if postfix:
            self._bar.set_postfix({key: f"{value:.4g}" for key, value in postfix.items()}, refresh=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
