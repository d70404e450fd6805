"""Ctrl-C and SIGTERM before the training loop (imports, start-up compiles): one line, no traceback, exit 130 /
143, even where the parent left SIGINT ignored. (In the loop a checkpoint is saved first: test_hardening.)"""

import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import PYTHON, REPO_ROOT, subprocess_env, train_command

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc/PID/status")

STOPPED = "checkpoints already written are kept, and the same command resumes"


def catches(pid: int, signum: int) -> bool:
    """Whether process `pid` has a handler for `signum` (its SigCgt mask, /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    return False


def wait_until(process: subprocess.Popen, condition, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, "the run ended before the moment to signal it"
        assert time.monotonic() < deadline, "the moment to signal never came"
        time.sleep(0.002)


def start(command: list[str], ignore_sigint: bool = False, **env: str) -> subprocess.Popen:
    if ignore_sigint:  # what a script's `command &` does to its background commands; exec keeps it ignored
        command = ["sh", "-c", 'trap "" INT; exec "$@"', "sh", *command]
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env(**env), cwd=REPO_ROOT
    )


def assert_one_line_stop(process: subprocess.Popen, signum: int, lines: int | None = 1) -> None:
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 128 + signum, stderr[-3000:]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr[-3000:]
    said = stderr.strip().splitlines()
    assert said[-1] == f"stopped by {signal.Signals(signum).name}; {STOPPED}"
    if lines is not None:
        assert len(said) == lines, stderr


@pytest.mark.parametrize(
    ("signum", "ignore_sigint"),
    [(signal.SIGINT, False), (signal.SIGTERM, False), (signal.SIGINT, True)],
    ids=["SIGINT", "SIGTERM", "SIGINT left ignored by the parent"],
)
def test_a_signal_during_the_imports_stops_in_one_line(tmp_path, signum, ignore_sigint):
    process = start(train_command(tmp_path / "run", "smoke"), ignore_sigint)
    # Sent as soon as train.py handles SIGTERM, its first act, while the seconds of imports run.
    wait_until(process, lambda: catches(process.pid, signal.SIGTERM))
    process.send_signal(signum)
    assert_one_line_stop(process, signum)


def test_resnet_jax_train_stops_in_one_line_during_the_imports_too(tmp_path):
    command = [PYTHON, "-m", "resnet_jax.tools.main", "train", *train_command(tmp_path / "run", "smoke")[2:]]
    process = start(command)
    wait_until(process, lambda: catches(process.pid, signal.SIGTERM))
    process.send_signal(signal.SIGINT)
    assert_one_line_stop(process, signal.SIGINT)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_during_the_start_up_compiles_stops_in_one_line(tmp_path, signum):
    workdir = tmp_path / "run"
    # An empty compile cache: the start-up compiles for seconds after the workdir's lock is taken (config.json is
    # written only once they are done).
    process = start(train_command(workdir, "smoke"), JAX_COMPILATION_CACHE_DIR=str(tmp_path / "cache"))
    wait_until(process, (workdir / ".lock").exists)
    process.send_signal(signum)
    assert_one_line_stop(process, signum, lines=None)  # the start-up's own log lines may come first


def test_in_process_the_handlers_are_set_for_the_call_and_put_back_after():
    from resnet_jax import interrupts

    before = signal.getsignal(signal.SIGTERM)
    during = {}
    assert interrupts.run(lambda: during.setdefault("handler", signal.getsignal(signal.SIGTERM)) and 3) == 3
    assert callable(during["handler"]) and during["handler"] is not before
    assert signal.getsignal(signal.SIGTERM) is before
