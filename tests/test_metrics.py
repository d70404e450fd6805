"""Where a run's metrics go: TensorBoard event files that TensorBoard's own reader reads back, tag by tag, each
step once after a resume that ran steps again, and nothing of them lost to the next writer; and a failed write that
stops the caller with a MetricsWriteError and nothing else on stderr."""

import shutil
import subprocess
import textwrap
import time

import numpy as np
import pytest

from resnet_jax import metrics, trainer
from tests.conftest import PYTHON, REPO_ROOT, load_config, subprocess_env


def test_tensorboards_reader_reads_back_every_scalar_at_its_step(tmp_path):
    event_accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator", reason="the test extra installs tensorboard"
    )
    written = {
        4: {"train_loss": 2.302585, "learning_rate": 0.1, "grad_norm/stage1": 0.75},
        8: {"train_loss": 1.5, "learning_rate": 0.1, "grad_norm/stage1": 0.5},
        10: {"test_accuracy": 0.4375, "test_loss": 1.25},
    }
    writer = metrics.MetricWriter(tmp_path, enabled=True)
    for step, values in written.items():
        writer.write(step, step / 10, values)
    writer.close()

    events = event_accumulator.EventAccumulator(str(tmp_path / "tensorboard")).Reload()
    read = {tag: [(event.step, event.value) for event in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    # TensorBoard keeps a scalar as a float32: each value comes back as exactly that rounding of what was written.
    expected = {}
    for step, values in written.items():
        for tag, value in values.items():
            expected.setdefault(tag, []).append((step, float(np.float32(value))))
    assert read == expected


def event_files(workdir):
    return sorted((workdir / "tensorboard").glob("events.out.tfevents.*"))


def test_a_resumed_run_shows_each_step_once_in_tensorboard(tmp_path):
    """A run killed after it logged steps its last checkpoint does not hold runs them again and logs them again:
    TensorBoard (its reader's purge of a restarted run's later points) shows each step once, the replayed one."""
    loader = pytest.importorskip(
        "tensorboard.backend.event_processing.event_file_loader", reason="the test extra installs tensorboard"
    )
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    workdir = tmp_path / "run"
    config = load_config("smoke", **{"train.num_epochs": 2})  # 8 steps an epoch, a checkpoint at each end
    trainer.train_and_evaluate(config, workdir)
    shutil.rmtree(workdir / "checkpoints" / "16")  # killed before its last checkpoint was written: it resumes at 8
    first_run = [(record["step"], record.get("train_loss")) for record in metrics.read_metrics(workdir)]
    assert max(step for step, _ in first_run) == 16
    trainer.train_and_evaluate(config, workdir)

    logged = metrics.read_metrics(workdir)
    events = event_accumulator.EventAccumulator(str(workdir / "tensorboard")).Reload()
    for tag in ("train_loss", "learning_rate", "test_accuracy"):
        shown = [(event.step, event.value) for event in events.Scalars(tag)]
        expected = [(record["step"], float(np.float32(record[tag]))) for record in logged if tag in record]
        assert shown == expected, tag  # each step once, with the value the resumed run logged
    assert [step for step, _ in shown] == [8, 16]  # test_accuracy: the evaluation at each epoch's end
    # Two files, the first whole (its steps past 8 are hidden, not erased), and the START event TensorBoard purges by.
    first, second = event_files(workdir)
    assert {event.step for event in loader.EventFileLoader(str(first)).Load() if event.HasField("summary")} == {
        step for step, _ in first_run
    }
    starts = [event.step for event in loader.EventFileLoader(str(second)).Load() if event.HasField("session_log")]
    assert starts == [9]  # the first step run again: points of step 9 on from earlier files are purged


def test_a_writer_opened_in_the_same_second_as_the_last_keeps_its_events(tmp_path):
    loader = pytest.importorskip(
        "tensorboard.backend.event_processing.event_file_loader", reason="the test extra installs tensorboard"
    )
    metrics.MetricWriter(tmp_path / "warm-up", enabled=True).close()  # tensorboardX imported before the clock
    time.sleep(1.05 - time.time() % 1)  # a second's start: both writers below open within it
    writer = metrics.MetricWriter(tmp_path, enabled=True)
    writer.write(4, 1.0, {"train_loss": 0.5})
    writer.close()
    metrics.MetricWriter(tmp_path, enabled=True).close()  # a run resumed at once
    files = event_files(tmp_path)
    assert len(files) == 2
    assert [event.step for event in loader.EventFileLoader(str(files[0])).Load() if event.HasField("summary")] == [4]


# The event file is written in the calling thread. tensorboardX's SummaryWriter writes from a thread of its own and
# flushes again at exit, so a full disk there would print "Exception in thread" and "Exception ignored in atexit
# callback" tracebacks besides the run's one line. metrics.jsonl goes to /dev/null here, so that the event file is
# the one that fills up.
FILL_EVENTS = textwrap.dedent(
    """
    import os, resource, signal, sys
    from pathlib import Path
    from resnet_jax import metrics

    workdir = Path(sys.argv[1])
    os.symlink(os.devnull, workdir / metrics.METRICS_FILE)
    writer = metrics.MetricWriter(workdir, enabled=True)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))  # a write past 4 KiB fails, as on a full disk
    try:
        for step in range(1000):
            writer.write(step, step, {f"value_{key}": 1.0 for key in range(20)})
    except metrics.MetricsWriteError as error:
        print(error)
    try:
        writer.close()
    except metrics.MetricsWriteError as error:
        print(error)
    """
)


def test_a_failed_event_write_is_a_metrics_write_error_in_the_caller_and_nothing_else(tmp_path):
    done = subprocess.run(
        [PYTHON, "-c", FILL_EVENTS, str(tmp_path)],
        cwd=REPO_ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines() == [f"cannot write {tmp_path / 'tensorboard'}: File too large"] * 2
    assert done.stderr == ""
