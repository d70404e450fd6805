"""Progress for a person: a training run, a sweep or a tool whose stdout is not a terminal reports in log lines
with the step, loss, images/s and the time left."""

import re
import shutil
import subprocess

import pytest

from resnet_jax import metrics
from tests.conftest import HANG_LIMIT, REPO_ROOT, subprocess_env, train_command

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
        timeout=HANG_LIMIT,
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


# ---------------------------------------------------------------------------------------------------------------
# Issue 36: each epoch's bar counts the steps that epoch runs, reaches them, and stays in the scroll-back.


def final_bar(stderr: str) -> str:
    """What a terminal shows last of tqdm's writes: the text after the last carriage return, with its line end."""
    return stderr.rsplit("\r", 1)[-1]


@pytest.mark.parametrize(
    ("total_steps", "steps_per_epoch", "epoch", "step", "initial", "runs", "shown"),
    [
        (250, 468, 0, 0, 0, 250, "250/250"),  # --config.train.num_steps=250 in 468-step epochs
        (1000, 468, 2, 936, 0, 64, "64/64"),  # the last epoch of a run cut short
        (1000, 468, 1, 500, 32, 436, "468/468"),  # a whole epoch resumed 32 steps in
        (20, 8, 2, 18, 2, 2, "4/4"),  # a resumed last epoch cut short
    ],
)
def test_an_epochs_bar_counts_the_steps_it_runs_and_is_kept(
    capsys, total_steps, steps_per_epoch, epoch, step, initial, runs, shown
):
    progress = metrics.Progress(total_steps, steps_per_epoch, bar=True, lines=False)
    progress.start_epoch(epoch, step, initial)
    for _ in range(runs // 4):
        progress.advance(4)
    progress.advance(runs % 4)
    progress.close()
    last = final_bar(capsys.readouterr().err)
    assert last.startswith(f"epoch {epoch + 1}: 100%") and f" {shown} " in last, last
    assert last.endswith("\n")  # left on its line, not blanked for the next one


def test_setup_says_each_phase_before_it_runs(tmp_path):
    """scripts/setup.sh with every long command stubbed (they print what they were asked): a line naming each phase
    comes before the phase's command."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(REPO_ROOT / "scripts" / "setup.sh", tmp_path / "scripts" / "setup.sh")
    stubs = tmp_path / "bin"
    stubs.mkdir()
    stub = '#!/bin/sh\necho "RAN $(basename "$0") $*"\ncase "$*" in *--version*) echo "Python 3";; esac\n'
    for name in ("python3", "sudo", "apt-get"):
        (stubs / name).write_text(stub)
        (stubs / name).chmod(0o755)
    # `python3 -m venv .venv` is stubbed, so the venv's python is one too.
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "python").write_text(stub)
    (tmp_path / ".venv" / "bin" / "python").chmod(0o755)
    env = subprocess_env(PATH=f"{stubs}:/usr/bin:/bin")
    result = subprocess.run(
        ["bash", str(tmp_path / "scripts" / "setup.sh")], capture_output=True, text=True, env=env, timeout=HANG_LIMIT
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    said = [index for index, line in enumerate(lines) if line.startswith("setup [")]
    ran = [index for index, line in enumerate(lines) if line.startswith("RAN ")]
    assert ran and said[0] < ran[0]
    # Every command runs after a line saying what it is part of: no silent stretch of commands.
    phases = ("Debian data", "venv", "pip install", "oneDNN build")
    for phase in phases:
        assert any(phase in lines[index] for index in said), (phase, result.stdout)
    pip = [index for index in ran if "pip install" in lines[index]]
    assert pip and all(any(s < index and "pip install" in lines[s] for s in said) for index in pip)
    assert "done; next:" in lines[-1]
