"""One writer per workdir: a second training, sweep or conversion on a workdir in use is refused in one line naming
the holder and touches nothing; the lock goes with its holder, however it ends. The tools and the trainer's last
figure write into a run only under its lock: beside one another, never beside a training of it."""

import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from safetensors.numpy import save_file

from resnet_jax import atomic, inference, lock, plots, trainer
from resnet_jax.configuration import ConfigError
from resnet_jax.tools import compare, degradation, evaluate, export, features, sweep
from resnet_jax.tools import convert as convert_tool
from resnet_jax.tools import plots as plots_tool
from resnet_jax.tools import train as train_tool
from resnet_jax.tools.sweep import run as sweep_run
from resnet_jax.tools.sweep import spec as sweep_spec
from tests.conftest import PYTHON, REPO_ROOT, load_config, subprocess_env, train_command
from tests.fixtures.references import CASES
from tests.test_interop import TINY_DATA, case_state_dict, cli_error
from tests.test_tools import ACCURACIES, built, new_state, run_dir, tiny_config  # noqa: F401 (a trained workdir)

HOLDER = """
import sys, time
from pathlib import Path
from resnet_jax import lock
with lock.hold(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(600)
"""


def contents(folder: Path) -> dict[str, bytes]:
    """Every file under `folder`, by relative path, with its bytes."""
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def refusal(workdir: Path) -> str:
    return f"is writing to {workdir}; wait for it or use another --workdir"


@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("one_epoch") / "run"
    trainer.train_and_evaluate(load_config("smoke", **{"train.num_epochs": 1}), workdir)
    return workdir


@pytest.mark.parametrize("flags", [(), ("--fresh",)], ids=["resume", "fresh"])
def test_a_second_training_is_refused_in_one_line_and_changes_no_byte(tmp_path, one_epoch, flags):
    workdir = tmp_path / "run"
    shutil.copytree(one_epoch, workdir)
    with lock.hold(workdir):
        before = contents(workdir)
        command = [*train_command(workdir, "smoke", "train.num_epochs=2"), *flags]
        result = subprocess.run(command, capture_output=True, text=True, env=subprocess_env(), cwd=REPO_ROOT)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: another resnet-jax (pid {os.getpid()}, started ")
    assert lines[0].endswith(refusal(workdir))
    assert contents(workdir) == before  # config.json, metrics.jsonl, checkpoints; nothing archived
    assert {"config.json", "metrics.jsonl", "checkpoints/8/_CHECKPOINT_METADATA"} <= before.keys()


def test_the_lock_goes_with_a_holder_killed_by_sigkill(tmp_path):
    workdir = tmp_path / "run"
    holder = subprocess.Popen(
        [PYTHON, "-c", HOLDER, str(workdir)], stdout=subprocess.PIPE, text=True, env=subprocess_env(), cwd=REPO_ROOT
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(lock.WorkdirBusy, match=f"pid {holder.pid}, started .*{refusal(workdir)}"):
            lock.hold(workdir).__enter__()
    finally:
        holder.kill()
        holder.communicate()
    with lock.hold(workdir):
        assert f'"pid": {os.getpid()}' in (workdir / lock.LOCK_FILE).read_text()


KILLED_MID_WRITE = """
import os, signal, sys
from resnet_jax import atomic
with atomic.replacing(sys.argv[1]) as temporary, open(temporary, "wb") as handle:
    handle.write(b"half")
    handle.flush()
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_the_next_holder_removes_what_a_writer_killed_mid_write_left_and_keeps_a_live_ones(tmp_path):
    workdir = tmp_path / "run"
    (workdir / "plots").mkdir(parents=True)
    for target in (workdir / "config.json", workdir / "plots" / "loss.png"):
        done = subprocess.run([PYTHON, "-c", KILLED_MID_WRITE, str(target)], env=subprocess_env(), cwd=REPO_ROOT)
        assert done.returncode == -9
    left = sorted(path.name for path in workdir.rglob(".*") if path.name != lock.LOCK_FILE)
    assert len(left) == 2 and all(".tmp" in name for name in left)
    live = atomic.temporary_path(workdir / "metrics.jsonl")  # this process's: a writer still at work
    live.write_text("{}")
    with lock.hold(workdir):
        remaining = sorted(path.name for path in workdir.rglob(".*") if path.name != lock.LOCK_FILE)
    assert remaining == [live.name]
    assert not (workdir / "config.json").exists()


def test_a_second_sweep_is_refused_in_one_line_before_its_study_opens(tmp_path, capsys):
    workdir = tmp_path / "sweep"
    with lock.hold(workdir), pytest.raises(SystemExit) as stop:
        sweep.main(["--config", str(REPO_ROOT / "configs/smoke.py"), "--workdir", str(workdir), "--grid", "seed=0,1"])
    assert stop.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].endswith(refusal(workdir)), lines
    assert sorted(path.name for path in workdir.iterdir()) == [lock.LOCK_FILE]


def test_a_study_database_in_use_says_another_sweep_runs_not_to_move_it(tmp_path):
    workdir = tmp_path / "sweep"
    workdir.mkdir()
    study_file = workdir / sweep_run.STUDY_FILE
    optuna.create_study(storage=f"sqlite:///{study_file}", study_name=sweep_run.STUDY_NAME, direction="maximize")
    before = study_file.read_bytes()
    writer = sqlite3.connect(study_file, isolation_level=None)
    writer.execute("BEGIN EXCLUSIVE")  # what a sweep's write holds for a moment; sqlite waits 5 s, then gives up
    try:
        config = sweep_run.with_validation(load_config("smoke"))
        spec = sweep_spec.make_spec(config, ["seed=0,1"], [], 0, "tpe", False, 2, 1)
        with pytest.raises(ConfigError, match=f"{study_file} is in use by another sweep; wait for it") as error:
            sweep_run.run_sweep(config, workdir, spec)
    finally:
        writer.close()
    assert "move it away" not in str(error.value)
    assert study_file.read_bytes() == before


def test_a_conversion_into_a_held_folder_is_refused_in_one_line(tmp_path, capsys):
    source, workdir = tmp_path / "resnet20.safetensors", tmp_path / "run"
    save_file(case_state_dict(CASES["akamaster_resnet20"]), source)
    with lock.hold(workdir):
        message = cli_error(convert_tool.main, ["--from", str(source), "--workdir", str(workdir), *TINY_DATA], capsys)
    assert message.endswith(refusal(workdir))
    assert sorted(path.name for path in workdir.iterdir()) == [lock.LOCK_FILE]


def test_the_holder_is_named_by_pid_start_and_command(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["train.py", "--workdir", "my run"])
    with lock.hold(tmp_path), pytest.raises(lock.WorkdirBusy) as error:
        lock.hold(tmp_path).__enter__()
    assert str(error.value).startswith(f"another resnet-jax (pid {os.getpid()}, started ")
    assert f": train.py --workdir 'my run') {refusal(tmp_path)}" in str(error.value)


# Each tool with its default output, which lies inside the run: DIR/eval/, DIR/features/, DIR/export/,
# DIR/curves.png, DIR/compare/.
TOOLS_WRITING_INTO_THE_RUN = {
    "evaluate": (evaluate.main, ["--workdir", "{run}"]),
    "features": (features.main, ["--workdir", "{run}"]),
    "export": (export.main, ["--workdir", "{run}", "--platforms", "cpu"]),
    "plots": (plots_tool.main, ["--workdir", "{run}"]),
    "compare": (compare.main, ["--runs", "{run}", "--batch", "4", "--steps", "1", "--repeats", "1"]),
}


@pytest.mark.parametrize("tool", TOOLS_WRITING_INTO_THE_RUN)
def test_a_tool_writing_into_a_run_that_trains_is_refused_in_one_line_and_writes_nothing(
    tmp_path,
    run_dir,  # noqa: F811
    capsys,
    tool,
):
    workdir = tmp_path / "run"
    shutil.copytree(run_dir, workdir)
    main, argv = TOOLS_WRITING_INTO_THE_RUN[tool]
    with lock.hold(workdir):  # as a training of the run holds it
        before = contents(workdir)
        message = cli_error(main, [arg.format(run=workdir) for arg in argv], capsys)
        assert contents(workdir) == before
    assert message.startswith(f"error: {workdir} is busy: another resnet-jax (pid {os.getpid()}, started "), message
    assert message.endswith(") is writing to it; wait for it, or give --out a place outside it"), message


def test_a_training_cannot_archive_a_run_while_evaluate_scores_it_and_tools_share_it(
    tmp_path,
    run_dir,  # noqa: F811
    capsys,
    monkeypatch,
):
    """The race: evaluate scores for minutes; a `train --fresh` meanwhile archived the run, and evaluate's report of
    the old run landed in the new one. Now the training is refused, naming evaluate; another tool shares the run."""
    workdir = tmp_path / "run"
    shutil.copytree(run_dir, workdir)
    config_before = (workdir / "config.json").read_bytes()
    command = ["resnet-jax", "evaluate", "--workdir", str(workdir)]
    monkeypatch.setattr(sys, "argv", command)
    scoring, seen = inference.evaluate_split, {}

    def meanwhile(*args, **kwargs):
        try:
            trainer.train_and_evaluate(tiny_config(**{"train.num_epochs": 1}), workdir, "fresh")
        except lock.WorkdirBusy as error:
            seen["training"] = str(error)
        seen["plots"] = plots_tool.main(["--workdir", str(workdir)])  # a tool beside it, into the same run
        return scoring(*args, **kwargs)

    monkeypatch.setattr(inference, "evaluate_split", meanwhile)
    assert evaluate.main(["--workdir", str(workdir)]) == 0
    assert seen.get("training", "").startswith(f"another resnet-jax (pid {os.getpid()}, started "), seen
    assert seen["training"].endswith(f": {' '.join(command)}) {refusal(workdir)}")
    assert seen["plots"] == 0 and (workdir / plots.CURVES_FILE).is_file()
    assert not (workdir / "archive").exists()
    assert (workdir / "config.json").read_bytes() == config_before
    report = json.loads((workdir / "eval" / "latest" / "report.json").read_text())
    assert report["step"] == max(ACCURACIES)  # the run it scored is the run it wrote into


def refused_meanwhile(workdir: Path, seen: list, write):
    """`write` (a figure or table writer), which first records whether a training starting in `workdir` now (its
    lock.hold) is refused."""

    def spy(*args, **kwargs):
        try:
            with lock.hold(workdir):
                seen.append("not refused")
        except lock.WorkdirBusy:
            seen.append("refused")
        return write(*args, **kwargs)

    return spy


def test_the_trainer_draws_its_curves_under_the_runs_lock(tmp_path, monkeypatch):
    workdir, seen = tmp_path / "run", []
    monkeypatch.setattr(plots, "write_curves", refused_meanwhile(workdir, seen, plots.write_curves))
    argv = ["--workdir", str(workdir), "--config", str(REPO_ROOT / "configs/smoke.py"), "--config.train.num_epochs=1"]
    assert train_tool.main(argv) == 0
    assert seen == ["refused"]  # a training starting while curves.png is drawn
    assert (workdir / plots.CURVES_FILE).stat().st_size > 10_000


def test_degradation_writes_its_figure_and_table_under_the_folders_lock(tmp_path, monkeypatch, capsys):
    workdir, seen = tmp_path / "degradation", []

    def finished_sweep(config, folder, spec, top, name):  # the sweep's runs are done; its lock is let go
        with lock.hold(Path(folder)):
            return []

    monkeypatch.setattr(sweep, "run_as_a_tool", finished_sweep)
    monkeypatch.setattr(degradation, "plot", refused_meanwhile(workdir, seen, degradation.plot))
    argv = ["--config", str(REPO_ROOT / "configs/smoke.py"), "--workdir", str(workdir), "--depths", "20,32"]
    assert degradation.main([*argv, "--seeds", "1", "--config.data.train_eval_size=40"]) == 0
    assert seen == ["refused"]
    assert (workdir / degradation.TABLE_FILE).is_file() and (workdir / degradation.PLOT_FILE).is_file()
    # A sweep that begins in the folder as this one ends: the figure and table wait for it, in one line.
    with contextlib.ExitStack() as another:

        def another_begins(config, folder, spec, top, name):
            another.enter_context(lock.hold(Path(folder)))
            return []

        monkeypatch.setattr(sweep, "run_as_a_tool", another_begins)
        message = cli_error(degradation.main, [*argv, "--seeds", "1", "--config.data.train_eval_size=40"], capsys)
    assert message.startswith(f"error: {workdir} is busy: another resnet-jax (pid {os.getpid()}, started "), message
    again = "run the same command again (its runs are done, and are read, not trained again)"
    assert message.endswith(f"is writing to it; wait for it, then {again}"), message


def test_a_tool_leaves_no_lock_file_in_a_folder_that_holds_no_run(tmp_path, capsys):
    # A mistyped --workdir: refused by the tool's read, and not made to look like a workdir to every later tool.
    (tmp_path / "notarun").mkdir()
    message = cli_error(evaluate.main, ["--workdir", str(tmp_path / "notarun")], capsys)
    assert "has no config.json" in message
    assert not (tmp_path / "notarun" / lock.LOCK_FILE).exists()
    assert lock.enclosing_workdir(tmp_path / "notarun" / "eval") is None


def test_another_programs_empty_lock_file_is_neither_locked_nor_written(tmp_path):
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / lock.LOCK_FILE).write_text("")  # some other tool's lock file, beside no run
    assert lock.enclosing_workdir(tmp_path / "project" / "eval") is None
    (tmp_path / "project" / "config.json").write_text("{}")  # beside a run's config, an empty one is ours
    assert lock.enclosing_workdir(tmp_path / "project" / "eval") == tmp_path / "project"
