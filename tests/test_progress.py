"""Progress for a person: a training run, a sweep or a tool whose stdout is not a terminal reports in log lines
with the step, loss, images/s and the time left."""

import re
import subprocess

import pytest

from resnet_jax import metrics
from tests.conftest import REPO_ROOT, subprocess_env, train_command

LINE = re.compile(
    r"step (?P<step>\d+)/(?P<total>\d+) \(epoch (?P<epoch>[\d.]+)/(?P<epochs>[\d.]+)\) "
    r"loss (?P<loss>\d+\.\d{4}) acc (?P<acc>[01]\.\d{4}) (?P<rate>[\d,]+) img/s ETA (?P<eta>\d+[dhms][\dhms]*)$"
)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (42.4, "42s"), (59.6, "1m00s"), (252, "4m12s"), (7_500, "2h05m"), (3 * 86_400 + 4 * 3_600, "3d04h")],
)
def test_eta_is_spelled_in_two_units_at_most(seconds, text):
    assert metrics.format_duration(seconds) == text


def test_a_log_line_names_step_epoch_loss_accuracy_speed_and_eta():
    progress = metrics.Progress(total_steps=1407, steps_per_epoch=469, bar=False, lines=True)
    values = {"train_loss": 0.41234, "train_accuracy": 0.85111, "images_per_second": 1234.4}
    line = progress.line(868, values, eta_seconds=252)
    assert line == "step 868/1407 (epoch 1.85/3) loss 0.4123 acc 0.8511 1,234 img/s ETA 4m12s"
    # A window whose steps were all skipped (non-finite) has no loss to show.
    assert "loss n/a acc n/a" in progress.line(868, {"images_per_second": 10.0}, eta_seconds=None)


def test_eta_is_the_steps_left_at_the_measured_rate(monkeypatch):
    clock = iter([100.0, 120.0])
    monkeypatch.setattr(metrics.time, "perf_counter", lambda: next(clock))
    progress = metrics.Progress(total_steps=100, steps_per_epoch=50, bar=False, lines=True)
    progress.start_epoch(0, step=0)
    # 10 steps in 20 s: 90 steps left take 180 s.
    assert progress.eta_seconds(10) == pytest.approx(180.0)


def test_lines_only_where_stdout_is_not_a_terminal(monkeypatch):
    monkeypatch.setattr(metrics.sys.stdout, "isatty", lambda: True)
    assert not metrics.wants_log_lines()
    assert not metrics.Progress(10, 5).lines
    monkeypatch.setattr(metrics.sys.stdout, "isatty", lambda: False)
    assert metrics.wants_log_lines()


def test_training_with_stdout_captured_logs_a_progress_line_per_window(tmp_path):
    result = subprocess.run(
        train_command(tmp_path / "run", "smoke"),
        capture_output=True,  # stdout is a pipe, not a terminal
        text=True,
        env=subprocess_env(),
        cwd=REPO_ROOT,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    matches = [LINE.search(line) for line in result.stderr.splitlines()]
    lines = [match for match in matches if match]
    # 32 steps (4 epochs of 8), logged every 4 steps.
    assert [int(m["step"]) for m in lines] == list(range(4, 33, 4)), result.stderr
    assert {(m["total"], m["epochs"]) for m in lines} == {("32", "4")}
    assert [m["epoch"] for m in lines[:2]] == ["0.5", "1"]
    assert all(int(m["rate"].replace(",", "")) > 0 for m in lines)
    assert lines[-1]["eta"] == "0s"
    # Evaluations keep their own lines, between the windows.
    assert result.stderr.count("test accuracy") == 4
