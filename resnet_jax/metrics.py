"""Where metrics and progress go: `metrics.jsonl`, TensorBoard event files, and for a person a progress bar on a
terminal or progress lines (step, loss, images/s, ETA) in a log. Only process 0 writes. Values arrive as host
floats; the trainer fetches them from the device only when it logs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import statistics
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jax

from resnet_jax import atomic
from resnet_jax.best import best_of

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"


class MetricsError(ValueError):
    """A metrics.jsonl that cannot be read; the message names the file, the line and the fix."""


def _record(path: Path, number: int, line: str) -> dict[str, Any]:
    """Line `number` of `path` as a record: a JSON object with a step and an epoch, as MetricWriter writes."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise MetricsError(
            f"{path} line {number} is not JSON ({error.msg}); the file is damaged: delete or repair that line"
        ) from None
    if not isinstance(record, dict) or not {"step", "epoch"} <= record.keys():
        raise MetricsError(
            f"{path} line {number} is not a metrics record (a JSON object with a step and an epoch); "
            "the file is damaged: delete or repair that line"
        )
    return record


def read_metrics(workdir: str | Path) -> list[dict[str, Any]]:
    """The records of a run's metrics.jsonl, in order (an empty list when there is none).

    A torn last line (the process was killed mid-write) is left out; damage anywhere else is a MetricsError naming
    the line.
    """
    path = Path(workdir) / METRICS_FILE
    if not path.exists():
        return []
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or error
        raise MetricsError(f"{path} cannot be read ({reason}); give the workdir of a training run") from None
    lines = [(number, line) for number, line in enumerate(text.splitlines(), 1) if line.strip()]
    records = [_record(path, number, line) for number, line in lines[:-1]]
    if lines and not _is_torn(lines[-1][1]):
        records.append(_record(path, *lines[-1]))
    return records


def _is_torn(line: str) -> bool:
    """Whether the last line was cut short by a kill mid-write: it does not parse."""
    try:
        json.loads(line)
    except json.JSONDecodeError:
        return True
    return False


SUMMARY_KEYS = (
    "final_validation_accuracy",
    "best_validation_accuracy",
    "test_accuracy_at_best_validation",
    "final_test_accuracy",
    "epochs",
    "images_per_second",
)


def summarize_run(workdir: str | Path) -> dict[str, float | None]:
    """A run's metrics.jsonl in `SUMMARY_KEYS`: the final validation and test accuracy, the best validation
    accuracy and the test accuracy of that same evaluation (the last of equals), epochs, and the median train
    images/s. Nothing is chosen on test: without a validation split the validation keys and the best are None."""
    records = read_metrics(workdir)
    evaluations = [record for record in records if record.get("test_accuracy") is not None]
    validated = [record for record in evaluations if record.get("validation_accuracy") is not None]
    best = best_of(evaluations)
    speeds = [record["images_per_second"] for record in records if record.get("images_per_second")]
    return {
        "final_validation_accuracy": validated[-1]["validation_accuracy"] if validated else None,
        "best_validation_accuracy": best["validation_accuracy"] if best else None,
        "test_accuracy_at_best_validation": best["test_accuracy"] if best else None,
        "final_test_accuracy": evaluations[-1]["test_accuracy"] if evaluations else None,
        "epochs": records[-1]["epoch"] if records else None,
        "images_per_second": statistics.median(speeds) if speeds else None,
    }


def _jsonable(value: float) -> float | None:
    return value if math.isfinite(value) else None


class MetricsWriteError(RuntimeError):
    """The metrics could not be written (a full disk, a read-only folder); the message names the file."""


def _wait_for_a_new_events_name(events_dir: Path) -> None:
    """Returns once no event file is named by the current second. tensorboardX names a file by the second its
    writer opens (events.out.tfevents.<seconds>.<host>) and opens it with "wb": a writer opened in the same second
    as the last one (a run resumed at once) would empty that one's file. A new second gives a new name, later in
    the order of names that TensorBoard reads the files in. One writer at a time (the workdir's lock): no other
    can take the name meanwhile."""
    while any(events_dir.glob(f"events.out.tfevents.{int(time.time())}.*")):
        time.sleep(0.05)


class MetricWriter:
    """Appends records to `metrics.jsonl` and mirrors scalars to TensorBoard event files under
    `workdir/tensorboard`, both written in the calling thread: a failed write (a full disk) is a `MetricsWriteError`
    raised where it happened, not a background thread's traceback or an exit handler's."""

    def __init__(self, workdir: str | Path, enabled: bool | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self.path = Path(workdir) / METRICS_FILE
        self._events = None
        if self.enabled:
            # Imported here: tensorboardX imports torch where it is installed, a second the tools need not wait.
            # Its EventsWriter, not its SummaryWriter: that one writes from a thread of its own and flushes again at
            # exit, where a full disk becomes two tracebacks (tests/test_metrics.py writes into one).
            from tensorboardX import summary
            from tensorboardX.event_file_writer import EventsWriter
            from tensorboardX.proto import event_pb2

            self._scalar, self._event, self._session_log = summary.scalar, event_pb2.Event, event_pb2.SessionLog
            events_dir = Path(workdir) / "tensorboard"
            with self._reporting(events_dir):
                events_dir.mkdir(parents=True, exist_ok=True)
                _wait_for_a_new_events_name(events_dir)
                self._events = EventsWriter(str(events_dir / "events"))

    @contextlib.contextmanager
    def _reporting(self, path: Path) -> Iterator[None]:
        try:
            yield
        except OSError as error:
            raise MetricsWriteError(f"cannot write {path}: {error.strerror or error}") from error

    def truncate_after(self, step: int) -> None:
        """On resume, drops records of steps past the checkpoint: those steps run again and log again.

        metrics.jsonl is rewritten without them. Event files are only ever appended to, so TensorBoard is told
        the way it expects: a SessionLog START event at the first step that logs again, `step + 1` (tensorboardX's
        `purge_step`), after which its reader drops every point of that step or later that the earlier files
        hold. TensorBoard's Rust data server drops them too, as the replayed steps arrive."""
        if not self.enabled:
            return
        if self.path.exists():
            kept = [record for record in read_metrics(self.path.parent) if record["step"] <= step]
            with self._reporting(self.path):
                atomic.write_text(self.path, "".join(json.dumps(record) + "\n" for record in kept))
        start = self._session_log(status=self._session_log.START)
        with self._reporting(self.path.parent / "tensorboard"):
            self._events.write_event(self._event(wall_time=time.time(), step=int(step) + 1, session_log=start))
            self._events.flush()

    def write(self, step: int, epoch: float, values: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), "epoch": round(float(epoch), 4)}
        record |= {key: _jsonable(float(value)) for key, value in values.items()}
        with self._reporting(self.path), self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        event = self._event(wall_time=time.time(), step=int(step))
        for key, value in values.items():
            event.summary.value.extend(self._scalar(key, float(value)).value)
        with self._reporting(self.path.parent / "tensorboard"):
            self._events.write_event(event)
            self._events.flush()

    def close(self) -> None:
        if self._events is not None:
            events, self._events = self._events, None
            with self._reporting(self.path.parent / "tensorboard"):
                events.close()


def format_duration(seconds: float) -> str:
    """A time span for a person, two units at most: 42s, 4m12s, 2h05m, 3d04h."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def _count(value: float) -> str:
    """A number of epochs without trailing zeros: 3, 1.85, 164.1."""
    return f"{value:.2f}".rstrip("0").rstrip(".")


def wants_log_lines() -> bool:
    """Whether progress goes into log lines: on process 0 when stdout is not a terminal (a file, a pipe, a batch
    scheduler's capture), where a progress bar would be unreadable or lost."""
    return jax.process_index() == 0 and not sys.stdout.isatty()


class Progress:
    """A training run's progress for a person. On a terminal: a tqdm bar per epoch with loss, accuracy and images/s.
    Elsewhere: one log line per log window, e.g.
    `step 400/1407 (epoch 0.85/3) loss 0.4123 acc 0.8511 1,234 img/s ETA 4m12s`.

    The ETA is the steps left at the loop's measured wall time per step in this process: from its first step on, so
    compiling (done before) is left out and evaluations and checkpoints (part of the wait) are counted; it settles
    once the first evaluation has run.
    """

    def __init__(self, total_steps: int, steps_per_epoch: int, bar: bool | None = None, lines: bool | None = None):
        self.total_steps, self.steps_per_epoch = total_steps, steps_per_epoch
        self.bar = (jax.process_index() == 0 and sys.stdout.isatty()) if bar is None else bar
        self.lines = wants_log_lines() if lines is None else lines
        self._bar = None
        self._first: tuple[int, float] | None = None  # (step, time) when this process's loop began

    def start_epoch(self, epoch: int, step: int, initial: int = 0) -> None:
        """An epoch begins at global `step`, `initial` steps into it (a resumed run)."""
        if self._first is None:
            self._first = (step, time.perf_counter())
        if not self.bar:
            return
        from tqdm.auto import tqdm

        self.close()
        # The steps this epoch runs (a run's last may be cut short by train.num_steps); each finished bar is kept.
        total = min(self.steps_per_epoch, self.total_steps - (step - initial))
        self._bar = tqdm(total=total, initial=initial, desc=f"epoch {epoch + 1}", unit="step", leave=True)

    def advance(self, steps: int) -> None:
        if self._bar is not None:
            self._bar.update(steps)

    def eta_seconds(self, step: int) -> float | None:
        """Seconds left at the measured rate; None before a step was measured."""
        if self._first is None or step <= self._first[0]:
            return None
        first_step, started = self._first
        return (self.total_steps - step) * (time.perf_counter() - started) / (step - first_step)

    def window(self, step: int, values: Mapping[str, float]) -> None:
        """A log window's train metrics (`train_loss`, `train_accuracy`, `images_per_second`), reported at `step`."""
        if self._bar is not None:
            shown = {"loss": "train_loss", "acc": "train_accuracy", "img/s": "images_per_second"}
            self._bar.set_postfix({k: f"{values[v]:.4g}" for k, v in shown.items() if v in values}, refresh=False)
        if self.lines:
            logger.info("%s", self.line(step, values, self.eta_seconds(step)))

    def line(self, step: int, values: Mapping[str, float], eta_seconds: float | None) -> str:
        """The log line of a window: step, epoch, loss, accuracy, images/s and ETA."""
        epochs = f"epoch {_count(step / self.steps_per_epoch)}/{_count(self.total_steps / self.steps_per_epoch)}"
        parts = [f"step {step}/{self.total_steps} ({epochs})"]
        # A window of only skipped (non-finite) steps has no loss or accuracy.
        parts.append(f"loss {values['train_loss']:.4f}" if "train_loss" in values else "loss n/a")
        parts.append(f"acc {values['train_accuracy']:.4f}" if "train_accuracy" in values else "acc n/a")
        parts.append(f"{values.get('images_per_second', 0.0):,.0f} img/s")
        parts.append("ETA " + ("?" if eta_seconds is None else format_duration(eta_seconds)))
        return " ".join(parts)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


@contextlib.contextmanager
def stage(description: str, enabled: bool | None = None) -> Iterator[None]:
    """Logs a long stage that has no steps of its own to count (a whole split scored in one dispatch) as it starts
    and with its duration when it ends, where progress goes into log lines (`wants_log_lines`)."""
    enabled = wants_log_lines() if enabled is None else enabled
    started = time.perf_counter()
    if enabled:
        logger.info("%s ...", description)
    yield
    if enabled:
        logger.info("%s: done in %s", description, format_duration(time.perf_counter() - started))


class ItemProgress:
    """Progress through the items of a long job (a sweep's trials, the models of a comparison) as log lines on
    process 0: `trial 2/6 started: NAME (ETA 9m12s)` and `trial 2/6 complete in 3m05s: NAME (ETA 6m10s)`. The ETA
    is the items left at the mean time of those done in this process."""

    def __init__(self, noun: str, total: int, done: int = 0, enabled: bool | None = None):
        self.noun, self.total, self.done = noun, total, done
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self._times: list[float] = []
        self._started: float | None = None

    def eta_seconds(self, left: int) -> float | None:
        return statistics.fmean(self._times) * left if self._times else None

    def _eta(self, left: int) -> str:
        eta = self.eta_seconds(left)
        return "ETA ?" if eta is None else f"ETA {format_duration(eta)}"

    def start(self, name: str) -> None:
        self._started = time.perf_counter()
        if self.enabled:
            logger.info(
                "%s %d/%d started: %s (%s)",
                self.noun,
                self.done + 1,
                self.total,
                name,
                self._eta(self.total - self.done),
            )

    def finish(self, name: str, outcome: str = "done") -> None:
        seconds = time.perf_counter() - self._started
        self._times.append(seconds)
        self.done += 1
        if self.enabled:
            logger.info(
                "%s %d/%d %s in %s: %s (%s)",
                self.noun,
                self.done,
                self.total,
                outcome,
                format_duration(seconds),
                name,
                self._eta(self.total - self.done),
            )
