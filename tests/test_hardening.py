"""Hardening: bad input is refused in one line, and kills, pre-emption, damage, NaNs and full disks lose nothing."""

import errno
import importlib
import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import chex
import jax
import numpy as np
import pytest

from resnet_jax import checkpoint, configuration, experiment, metrics, startup, trainer
from resnet_jax.tools import train as train_tool
from resnet_jax.tools.main import COMMANDS
from tests.conftest import HANG_LIMIT, PYTHON, REPO_ROOT, load_config, subprocess_env, train_command

# 1,024 examples in batches of 64: 16 steps an epoch, 3 epochs, a checkpoint after each.
LONGER = ("data.synthetic_train_examples=1024", "train.num_epochs=3")


def run(command, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, env=subprocess_env(), cwd=REPO_ROOT, **kwargs)


def complete_steps(workdir: Path) -> list[int]:
    folder = workdir / "checkpoints"
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.exists() else []


def final_state(workdir: Path):
    checkpointer = checkpoint.Checkpointer(workdir / "checkpoints", create=False)
    tree, meta = checkpointer.restore(checkpointer.latest_step(), None)
    return jax.device_get(tree), meta


def records_so_far(workdir: Path) -> list[dict]:
    """metrics.jsonl while a run writes it (a line may be half-written at this instant)."""
    try:
        return metrics.read_metrics(workdir)
    except ValueError:
        return []


def eval_records(workdir: Path) -> list[dict]:
    return [r for r in metrics.read_metrics(workdir) if "test_accuracy" in r]


@pytest.fixture(scope="module")
def baseline(tmp_path_factory) -> Path:
    """The uninterrupted run that every interrupted one must end up equal to."""
    workdir = tmp_path_factory.mktemp("baseline")
    result = run(train_command(workdir, "smoke", *LONGER))
    assert result.returncode == 0, result.stderr[-2000:]
    return workdir


def assert_same_end(workdir: Path, baseline: Path) -> None:
    (tree, _), (expected, _) = final_state(workdir), final_state(baseline)
    chex.assert_trees_all_equal(tree["params"], expected["params"])
    chex.assert_trees_all_equal(tree["batch_stats"], expected["batch_stats"])
    assert eval_records(workdir) == eval_records(baseline)


# ---------------------------------------------------------------------------------------------------------------
# 1. Config validation: one line naming key, value and what is allowed; non-zero exit; nothing compiled.

BAD_CONFIGS = {
    "unknown model": (["model.name=resnet21"], "model.name='resnet21'"),
    "unknown dataset": (["data.dataset=cifar11"], "data.dataset='cifar11'"),
    "unknown source": (["data.source=web"], "data.source='web'"),
    "unknown optimizer": (["optimizer.name=rmsprop"], "optimizer.name='rmsprop'"),
    "unknown schedule": (["schedule.name=linear_decay"], "schedule.name='linear_decay'"),
    "zero learning rate": (["optimizer.learning_rate=0"], "optimizer.learning_rate=0"),
    "negative learning rate": (["optimizer.learning_rate=-0.1"], "optimizer.learning_rate=-0.1"),
    "zero batch": (["train.batch_size=0"], "train.batch_size=0"),
    "negative batch": (["train.batch_size=-8"], "train.batch_size=-8"),
    "zero epochs": (["train.num_epochs=0"], "train.num_epochs=0"),
    "negative steps": (["train.num_steps=-5"], "train.num_steps=-5"),
    "bad dtype": (["model.dtype=float64"], "model.dtype='float64'"),
    "unknown key": (["model.nmae=resnet20"], "no key 'model.nmae'; did you mean model.name?"),
    "float16": (["model.dtype=float16"], "use bfloat16"),
    "boundary past the run": (
        ["schedule.name=piecewise", "schedule.boundaries=(0.5,1.5)"],
        "schedule.boundaries=(0.5, 1.5) are fractions of the run",
    ),
    "wrong type": (["train.batch_size=abc"], "train.batch_size=abc"),
    "missing files dir": (["data.source=files", "data.files_dir=/nonexistent/fmnist"], "/nonexistent/fmnist"),
    "bad pad mode": (["augment.pad_mode=wrap"], "augment.pad_mode='wrap'"),
    "bad non-finite policy": (["train.on_nonfinite=ignore"], "train.on_nonfinite='ignore'"),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_config_is_refused_in_one_line(tmp_path, case):
    overrides, named = BAD_CONFIGS[case]
    result = run(train_command(tmp_path / "run", "smoke", *overrides), timeout=HANG_LIMIT)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert named in lines[0]
    assert not (tmp_path / "run" / "checkpoints").exists()


# A --config file that cannot give a config: (file name, its text or None for no file, the fix the line names).
BAD_CONFIG_FILES = {
    "missing": ("missing.py", None, "no such file"),
    "folder": ("folder", "", "a folder, not a file"),
    "syntax error": ("syntax.py", "def get_config(:\n", "line 1: invalid syntax; fix the file's syntax"),
    "raises at import": ("raises.py", "import json\nraise RuntimeError('boom')\n", "RuntimeError: boom (line 2)"),
    "imports a missing module": ("imports.py", "import not_a_module_xyz\n", "No module named 'not_a_module_xyz'"),
    "no get_config": ("empty.py", "SEED = 1\n", "has no get_config(); define one"),
    "get_config raises": ("fails.py", "def get_config():\n    return 1 / 0\n", "ZeroDivisionError"),
    "returns a dict": ("plain.py", "def get_config():\n    return {'seed': 0}\n", "returned dict, not an ml_colle"),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIG_FILES))
def test_bad_config_file_is_refused_in_one_line_naming_it(tmp_path, case):
    name, text, fix = BAD_CONFIG_FILES[case]
    path = tmp_path / name
    if name == "folder":
        path.mkdir()
    elif text is not None:
        path.write_text(text)
    command = [*train_command(tmp_path / "run", "smoke")[:-1], f"--config={path}"]
    result = run(command, timeout=HANG_LIMIT)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: --config={path}")
    assert fix in lines[0]
    assert not (tmp_path / "run").exists()


def test_batch_that_does_not_divide_by_the_devices(tmp_path):
    command = train_command(tmp_path / "run", "smoke", "train.batch_size=63")
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=subprocess_env(XLA_FLAGS="--xla_force_host_platform_device_count=2"),
        timeout=HANG_LIMIT,
    )
    assert result.returncode != 0
    assert result.stderr.strip() == (
        "error: train.batch_size=63 does not divide by the 2 devices; use a multiple of 2, e.g. 62 or 64"
    )


@pytest.mark.parametrize("kind", ["file", "uncreatable"])
def test_bad_workdir_is_refused(tmp_path, kind):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    workdir = blocker if kind == "file" else blocker / "run"
    result = run(train_command(workdir, "smoke"), timeout=HANG_LIMIT)
    assert result.returncode != 0
    assert result.stderr.strip().count("\n") == 0
    assert str(workdir) in result.stderr
    assert ("is a file" if kind == "file" else "cannot be created") in result.stderr


@pytest.mark.timeout(HANG_LIMIT + 30)
def test_missing_data_offline_fails_fast_through_the_trainer(tmp_path):
    command = train_command(tmp_path / "run", "default", "data.source=tfds", f"data.data_dir={tmp_path / 'tfds'}")
    result = run(command, timeout=HANG_LIMIT)
    assert result.returncode != 0
    assert "no prepared tfds data" in result.stderr
    assert "data.source=files" in result.stderr


@pytest.mark.timeout(HANG_LIMIT + 30)
def test_a_run_refused_before_it_starts_leaves_no_workdir_behind(tmp_path):
    # The official files cannot be fetched (a mirror on a closed port): refused in one line, nothing created.
    mirror = "data.download_mirror=http://127.0.0.1:9/"
    command = train_command(tmp_path / "run", "default", f"data.files_dir={tmp_path / 'files'}", mirror)
    result = run(command, timeout=HANG_LIMIT)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert result.stderr.startswith("error: cifar10: cannot reach 127.0.0.1")
    assert not (tmp_path / "run").exists()


def test_a_run_refused_in_its_start_up_leaves_no_workdir_behind(tmp_path):
    (tmp_path / "empty").mkdir()  # a folder, but no run's weights in it: found only as start-up reads them
    result = run(train_command(tmp_path / "new" / "run", "smoke", f"finetune.source={tmp_path / 'empty'}"), timeout=120)
    assert result.returncode == 2  # bad input: a source with no weights, fixed by changing the command
    assert result.stderr.strip().splitlines()[-1].startswith("error: no readable checkpoint in")
    assert not (tmp_path / "new" / "run").exists()


@pytest.mark.parametrize("source", ["a folder without a run", "a foreign weight file"])
def test_weights_a_new_run_cannot_use_are_refused_in_one_line_before_it_says_what_it_runs(tmp_path, source):
    if source == "a folder without a run":
        weights = tmp_path / "empty"
        weights.mkdir()
        line = f"error: no readable checkpoint in {weights} to start from"
    else:
        weights = tmp_path / "resnet20.safetensors"
        weights.write_bytes(b"not a safetensors file")
        line = f"error: finetune.source={str(weights)!r}: "
    result = run([*train_command(tmp_path / "run", "smoke"), f"--init-from={weights}"], timeout=HANG_LIMIT)
    assert result.returncode == 2
    # The start-up line (the model, its data, its steps) came first, as if the run were going on.
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(line), result.stderr
    assert not (tmp_path / "run").exists()


def test_a_finetune_of_a_new_workdir_is_refused_and_leaves_no_workdir_behind(tmp_path, capsys):
    workdir = tmp_path / "new" / "run"
    with pytest.raises(SystemExit) as exit_info:
        train_tool.main(["--workdir", str(workdir), "--config", str(REPO_ROOT / "configs" / "smoke.py"), "--finetune"])
    assert exit_info.value.code == 2
    message = f"error: --finetune: --workdir={str(workdir)!r} holds no checkpoint to start from"
    assert capsys.readouterr().err.strip() == message
    assert not workdir.exists()


def test_an_empty_workdir_is_refused(tmp_path):
    result = run([*train_command(tmp_path / "unused", "smoke")[:2], "--workdir=", *train_command("x", "smoke")[3:]])
    assert result.returncode == 2
    assert (
        result.stderr.strip() == "error: --workdir is empty; give the folder for the run (it is created when missing)"
    )


# ---------------------------------------------------------------------------------------------------------------
# 2. A workdir holding a different run is not silently mixed.


def test_workdir_with_a_different_model_or_data_is_refused_until_told(tmp_path):
    workdir = tmp_path / "run"
    trainer.train_and_evaluate(load_config("smoke", **{"train.num_epochs": 1}), workdir)
    result = run(train_command(workdir, "smoke", "model.name=resnet20", "data.image_size=0"), timeout=120)
    assert result.returncode != 0
    assert 'trained with data.image_size=32, and this config says 0 (and 1 more: model.name)' in result.stderr
    assert "--fresh" in result.stderr
    assert "--finetune" in result.stderr
    assert complete_steps(workdir) == [8]

    # --finetune: archives the old run (nothing deleted) and starts at step 0 from its weights.
    old_params = final_state(workdir)[0]["params"]
    other_data = load_config("smoke", **{"train.num_epochs": 1, "data.synthetic_train_examples": 256})
    finetuned = trainer.train_and_evaluate(other_data, workdir, mode="finetune")
    archived = list((workdir / "archive").iterdir())
    assert len(archived) == 1
    assert (archived[0] / "checkpoints" / "8").is_dir()
    assert finetuned["step"] == 4  # 256 examples: a fresh 4-step epoch, not a resumed step count
    # One epoch of fine-tuning moves the weights a little; a fresh init would be far away.
    new_params = final_state(workdir)[0]["params"]
    start = np.concatenate([np.ravel(x) for x in jax.tree.leaves(old_params)])
    end = np.concatenate([np.ravel(x) for x in jax.tree.leaves(new_params)])
    assert np.linalg.norm(end - start) < 0.5 * np.linalg.norm(start)

    # Resuming with the same config still just continues.
    again = trainer.train_and_evaluate(
        load_config("smoke", **{"train.num_epochs": 2, "data.synthetic_train_examples": 256}), workdir
    )
    assert again["step"] == 8


# Torn by a kill before writes were atomic; valid JSON that holds no config.
@pytest.mark.parametrize("damaged", ['{"model": {"na', "[]", '{"data": null}'])
def test_a_damaged_config_json_is_refused_in_one_line_and_the_run_kept(tmp_path, damaged):
    workdir = tmp_path / "run"
    trainer.train_and_evaluate(load_config("smoke", **{"train.num_epochs": 1}), workdir)
    (workdir / "config.json").write_text(damaged)
    result = run(train_command(workdir, "smoke", "train.num_epochs=2"), timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "config.json is damaged" in lines[0]
    assert "--fresh" in lines[0]
    assert complete_steps(workdir) == [8]
    # Deleting it, as the message says, resumes with the config given.
    (workdir / "config.json").unlink()
    assert trainer.train_and_evaluate(load_config("smoke", **{"train.num_epochs": 2}), workdir)["step"] == 16
    # What ran before the resume is not known: the record covers the steps from it on.
    assert json.loads((workdir / "config.json").read_text())["record"]["from_step"] == 8


def test_config_json_is_replaced_whole(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("old")
    config = load_config("smoke")
    configuration.write_json(config, path)
    assert json.loads(path.read_text()) == json.loads(configuration.to_json(config))
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]


# ---------------------------------------------------------------------------------------------------------------
# 3 and 8. kill -9 at random moments, and SIGTERM: the same command resumes and ends exactly as if never stopped.


def start(workdir: Path) -> subprocess.Popen:
    return subprocess.Popen(
        train_command(workdir, "smoke", *LONGER),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=subprocess_env(),
        cwd=REPO_ROOT,
    )


def wait_for(process: subprocess.Popen, condition, timeout: float = 300) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if condition():
            return True
        time.sleep(0.005)
    return False


@pytest.mark.slow
def test_kill_9_at_random_moments_then_resume_ends_identical(tmp_path, baseline):
    workdir = tmp_path / "run"
    rng = random.Random(0)
    tmp_checkpoint = lambda: any(p.name.endswith("orbax-checkpoint-tmp") for p in (workdir / "checkpoints").glob("*"))  # noqa: E731
    moments = {
        "during an async checkpoint save": lambda: (workdir / "checkpoints").exists() and tmp_checkpoint(),
        "during training steps": lambda: len(records_so_far(workdir)) >= 3 + rng.randrange(6),
        "at the end of an epoch, around evaluation": lambda: any(
            r.get("step") == 32 and "train_loss" in r for r in records_so_far(workdir)
        ),
    }
    kills = []
    for moment, condition in moments.items():
        before = complete_steps(workdir)
        process = start(workdir)
        reached = wait_for(process, condition)
        process.kill()
        output = process.communicate()[0]
        complete = complete_steps(workdir)
        kills.append((moment, reached, complete))
        if before:  # the restart resumed from the newest complete checkpoint there was
            assert f"resumed from checkpoint {before[-1]} " in output, output[-2000:]
    assert sum(reached for _, reached, _ in kills) >= 2, kills
    finished = run(train_command(workdir, "smoke", *LONGER))
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert_same_end(workdir, baseline)


@pytest.mark.slow
def test_sigterm_saves_at_a_step_boundary_exits_0_and_resumes(tmp_path, baseline):
    workdir = tmp_path / "run"
    process = start(workdir)
    assert wait_for(process, lambda: 8 < max([0, *[r["step"] for r in records_so_far(workdir)]]) < 40)
    process.send_signal(signal.SIGTERM)
    output = process.communicate(timeout=120)[0]
    assert process.returncode == 0, output[-2000:]
    assert "pre-empted: SIGTERM: saved checkpoint" in output
    saved = complete_steps(workdir)[-1]
    _, meta = final_state(workdir)
    assert meta["position"] == {"epoch": saved // 16, "step_in_epoch": saved % 16}
    resumed = run(train_command(workdir, "smoke", *LONGER))
    assert resumed.returncode == 0
    assert f"resumed from checkpoint {saved} " in resumed.stderr
    assert_same_end(workdir, baseline)


# ---------------------------------------------------------------------------------------------------------------
# 4. A damaged newest checkpoint is skipped with a warning naming it; training falls back and nothing is deleted.


@pytest.mark.parametrize("damage", ["truncated file", "deleted array"])
def test_damaged_newest_checkpoint_falls_back_to_the_previous(tmp_path, damage):
    workdir = tmp_path / "run"
    trainer.train_and_evaluate(load_config("smoke", **{"train.num_epochs": 2}), workdir)
    data_files = [
        p for p in (workdir / "checkpoints" / "16" / "state").rglob("*") if p.is_file() and p.parent.name == "d"
    ]
    assert data_files
    for path in data_files:
        if damage == "truncated file":
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
        else:
            path.unlink()
    result = run(train_command(workdir, "smoke", "train.num_epochs=3"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "checkpoint 16 in" in result.stderr
    assert "was skipped" in result.stderr or "unreadable" in result.stderr
    assert "resumed from checkpoint 8 " in result.stderr
    assert (workdir / "checkpoints_damaged" / "16").is_dir()  # set aside, not deleted
    assert complete_steps(workdir)[-1] == 24


# ---------------------------------------------------------------------------------------------------------------
# 5. Non-finite values stop the run (or are skipped), and never reach a checkpoint.

EXPLODE_AT_STEP_10 = (
    "schedule.name=piecewise",
    "schedule.boundaries=(10,)",
    "schedule.boundary_unit=steps",
    "schedule.decay_factor=1e30",
)


def test_nonfinite_loss_stops_with_the_step_and_the_last_checkpoint_intact(tmp_path):
    workdir = tmp_path / "run"
    result = run(train_command(workdir, "smoke", *EXPLODE_AT_STEP_10))
    assert result.returncode != 0
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("training stopped: non-finite loss or gradient at step 1")
    assert "the last checkpoint, step 8, is intact" in line
    assert "Resume with --config.train.on_nonfinite=skip" in line
    assert complete_steps(workdir) == [8]
    tree, _ = final_state(workdir)
    chex.assert_tree_all_finite(tree)
    # As the line says: the same command with skip goes on from step 8, dropping every exploded step, and records it.
    resumed = run(train_command(workdir, "smoke", *EXPLODE_AT_STEP_10, "train.on_nonfinite=skip"))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    changes = json.loads((workdir / "config.json").read_text())[configuration.RECORD_KEY]["changes"]
    assert {"step": 8, "key": "train.on_nonfinite", "from": "stop", "to": "skip"} in changes


def test_nonfinite_steps_can_be_skipped_instead(tmp_path):
    workdir = tmp_path / "run"
    result = run(train_command(workdir, "smoke", *EXPLODE_AT_STEP_10, "train.on_nonfinite=skip"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "skipped" in result.stderr
    assert sum(r.get("nonfinite_steps", 0) for r in metrics.read_metrics(workdir)) > 0
    for step in complete_steps(workdir):
        chex.assert_tree_all_finite(
            checkpoint.Checkpointer(workdir / "checkpoints", create=False).restore(step, None)[0]
        )


# ---------------------------------------------------------------------------------------------------------------
# 7. A full disk during a save stops the run with a clear error; the previous checkpoint stays good.


def with_file_size_limit(command: list[str], kilobytes: int = 16) -> list[str]:
    """The command under a small RLIMIT_FSIZE, with SIGXFSZ ignored: write() then fails with EFBIG, as on a full
    disk. (A shell sets both, so that no Python runs between fork and exec.)"""
    return ["bash", "-c", f'trap "" XFSZ; ulimit -f {kilobytes}; exec "$@"', "bash", *command]


def test_disk_full_during_a_save_stops_cleanly_and_keeps_the_previous_checkpoint(tmp_path):
    workdir = tmp_path / "run"
    trainer.train_and_evaluate(load_config("smoke", **{"train.num_epochs": 1}), workdir)
    # Its own compile cache: under the size limit XLA's cache entries would be written truncated.
    cache = {"JAX_COMPILATION_CACHE_DIR": str(tmp_path / "xla-cache")}
    command = with_file_size_limit(train_command(workdir, "smoke", "train.num_epochs=2"))
    result = subprocess.run(command, capture_output=True, text=True, env=subprocess_env(**cache), cwd=REPO_ROOT)
    assert result.returncode != 0
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("training stopped: saving a checkpoint under")
    assert "Traceback" not in result.stderr, "orbax's background-thread tracebacks reached the user"
    assert "File too large" in line
    assert "Earlier checkpoints are untouched: the last good checkpoint is 8" in line
    assert complete_steps(workdir) == [8]
    assert not list((workdir / "checkpoints").glob("*.orbax-checkpoint-tmp*"))  # the failed save's folder
    tree, meta = final_state(workdir)
    chex.assert_tree_all_finite(tree)
    assert meta["position"] == {"epoch": 1, "step_in_epoch": 0}
    # With space again, the same command finishes the run (the torn save's leftovers are cleaned up).
    assert run(train_command(workdir, "smoke", "train.num_epochs=2")).returncode == 0
    assert json.loads((workdir / "config.json").read_text())["train"]["num_epochs"] == 2
    assert complete_steps(workdir)[-1] == 16
    assert os.access(workdir, os.W_OK)


def test_a_failed_background_save_found_by_the_next_save_stops_in_one_line(tmp_path, monkeypatch, capfd):
    # Epoch 2's save fails in orbax's background writer (as a full disk makes tensorstore fail, with a ValueError);
    # the run carries on until epoch 3's save finds that failure.
    from orbax.checkpoint._src.handlers import json_checkpoint_handler

    write = json_checkpoint_handler.JsonCheckpointHandler._save_fn

    async def failing_write(self, item, directory):
        if item.get("step") == 16:
            raise ValueError("[Errno 28] No space left on device")
        return await write(self, item, directory)

    monkeypatch.setattr(json_checkpoint_handler.JsonCheckpointHandler, "_save_fn", failing_write)
    workdir = tmp_path / "run"
    status = train_tool.main(
        [f"--workdir={workdir}", f"--config={REPO_ROOT / 'configs/smoke.py'}", "--config.train.num_epochs=3"]
    )
    stderr = capfd.readouterr().err
    assert status == 1
    assert "Traceback" not in stderr
    line = stderr.strip().splitlines()[-1]
    assert line.startswith(f"training stopped: saving a checkpoint under {workdir / 'checkpoints'} failed")
    assert line.endswith("No space left on device. Earlier checkpoints are untouched: the last good checkpoint is 8.")
    assert complete_steps(workdir) == [8]
    assert not list((workdir / "checkpoints").glob("*orbax-checkpoint-tmp*"))


# A real full disk: a 1 MiB tmpfs, mounted in a mount namespace of its own (a user namespace too, so that no root is
# needed where the kernel allows them). The script runs a 1-epoch run, fills the disk up to about 56 KiB, asks
# for a second epoch (its checkpoint cannot fit), then fills it to the brim and starts over with --fresh.
FULL_DISK_SCRIPT = """
set -u
mount -t tmpfs -o size=1m tmpfs "$DISK" || exit 77
"$@" --config.train.num_epochs=1 > "$OUT/first.log" 2>&1 || exit 78
free=$(df -B1 --output=avail "$DISK" | tail -1)
dd if=/dev/zero of="$DISK/filler" bs=1K count=$(( (free - 57344) / 1024 )) 2> /dev/null
"$@" --config.train.num_epochs=2 > "$OUT/second.log" 2>&1; echo $? > "$OUT/second.rc"
(cd "$DISK/run" && find . | sort) > "$OUT/second.files"
dd if=/dev/zero of="$DISK/filler2" bs=1K count=1024 2> /dev/null
"$@" --config.train.num_epochs=2 --fresh > "$OUT/third.log" 2>&1; echo $? > "$OUT/third.rc"
(cd "$DISK/run" && find . | sort) > "$OUT/third.files"
"""


@pytest.mark.slow
def test_a_real_full_disk_stops_in_one_line_naming_it_and_the_last_good_checkpoint(tmp_path):
    disk, out = tmp_path / "disk", tmp_path / "out"
    disk.mkdir()
    out.mkdir()
    command = ["unshare", "-rm", "bash", "-c", FULL_DISK_SCRIPT, "bash", *train_command(disk / "run", "smoke")]
    env = subprocess_env(DISK=str(disk), OUT=str(out), JAX_COMPILATION_CACHE_DIR=str(tmp_path / "xla-cache"))
    try:
        finished = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=HANG_LIMIT)
    except FileNotFoundError:
        pytest.skip("no unshare here")
    if finished.returncode in (1, 77) and not (out / "second.rc").exists():
        pytest.skip(f"the kernel refuses a mount namespace with a tmpfs here: {finished.stderr.strip()[:200]}")
    assert finished.returncode == 0, (out / "first.log").read_text()[-2000:] if (out / "first.log").exists() else ""

    second = (out / "second.log").read_text()
    assert (out / "second.rc").read_text().strip() == "1"
    assert "Traceback" not in second and "Exception" not in second, second[-3000:]
    line = second.strip().splitlines()[-1]
    assert line.startswith(f"training stopped: saving a checkpoint under {disk / 'run' / 'checkpoints'} failed")
    assert "No space left on device" in line
    assert line.endswith("Earlier checkpoints are untouched: the last good checkpoint is 8.")
    files = (out / "second.files").read_text().split()
    assert "./checkpoints/8/commit_success.txt" in files
    assert not [name for name in files if "tmp" in name]  # neither orbax's nor config.json's temporary files

    third = (out / "third.log").read_text()
    assert (out / "third.rc").read_text().strip() == "1"
    # The new run stops at the first of its files that the full disk refuses (its config.json, written once start-up
    # has accepted the run, or its TensorBoard events, opened just before): in one line that names it.
    assert "Traceback" not in third
    line = third.strip().splitlines()[-1]
    assert line.startswith(f"training stopped: cannot write {disk / 'run'}/"), line
    assert "No space left on device" in line
    files = (out / "third.files").read_text().split()
    assert not [name for name in files if "tmp" in name]
    assert any(name.endswith("/checkpoints/8/commit_success.txt") for name in files)  # archived, not lost


def test_a_different_optimizer_on_resume_is_refused_not_taken_for_damage(tmp_path):
    workdir = tmp_path / "run"
    trainer.train_and_evaluate(load_config("smoke", **{"train.num_epochs": 1}), workdir)
    with pytest.raises(configuration.ConfigError, match='optimizer.name="sgd", and this config says "adam"'):
        trainer.train_and_evaluate(load_config("smoke", **{"optimizer.name": "adam"}), workdir)
    assert complete_steps(workdir) == [8]
    assert not (workdir / "checkpoints_damaged").exists()


# ---------------------------------------------------------------------------------------------------------------
# 7. Restart modes mean what they say, and only damage moves a checkpoint aside.


@pytest.mark.parametrize("model", ["resnet8_tiny", "resnet8"])
def test_fresh_equals_a_run_in_a_new_workdir_bit_for_bit(tmp_path, model):
    reused, new = tmp_path / "reused", tmp_path / "new"
    trainer.train_and_evaluate(load_config("smoke", **{"train.num_epochs": 1}), reused)
    config = load_config("smoke", **{"train.num_epochs": 1, "model.name": model})
    trainer.train_and_evaluate(config, reused, mode="fresh")
    trainer.train_and_evaluate(config, new)
    chex.assert_trees_all_equal(final_state(reused)[0], final_state(new)[0])
    assert eval_records(reused) == eval_records(new)
    (archived,) = (reused / "archive").iterdir()
    assert complete_steps(archived) == [8]


def test_fresh_archives_everything_the_old_run_left_and_keeps_the_archive(tmp_path):
    workdir = tmp_path / "run"
    trainer.train_and_evaluate(load_config("smoke", **{"train.num_epochs": 1}), workdir)
    # What tools write from a run: an export, a conversion's note, plots. All belong to the old run.
    for name in ("export/model.bin", "conversion.json", "plots/curves.png"):
        (workdir / name).parent.mkdir(exist_ok=True)
        (workdir / name).write_text(name)
    trainer.train_and_evaluate(load_config("smoke", **{"train.num_epochs": 1}), workdir, mode="fresh")
    (archived,) = (workdir / "archive").iterdir()
    for name in ("export/model.bin", "conversion.json", "plots/curves.png"):
        assert (archived / name).read_text() == name
        assert not (workdir / name).exists()
    assert complete_steps(archived) == [8] and complete_steps(workdir) == [8]


@pytest.mark.parametrize("mode", ["fresh", "finetune"])
def test_a_run_started_with_fresh_or_finetune_and_stopped_says_to_resume_without_the_flag(tmp_path, mode, monkeypatch):
    workdir = tmp_path / "run"
    trainer.train_and_evaluate(load_config("smoke", **{"train.num_epochs": 1}), workdir)
    requested = trainer._StopRequests.requested

    def sigterm_at_once(self, agree=True):
        self.signal_name = self.signal_name or "SIGTERM"
        return requested(self, agree)

    monkeypatch.setattr(trainer._StopRequests, "requested", sigterm_at_once)
    with pytest.raises(trainer.Preempted, match=f"saved checkpoint 1; run the same command without --{mode} to"):
        trainer.train_and_evaluate(load_config("smoke", **{"train.num_epochs": 1}), workdir, mode=mode)
    monkeypatch.setattr(trainer._StopRequests, "requested", requested)
    # As told: the same command without the flag goes on from the checkpoint; the archive holds the old run alone.
    assert trainer.train_and_evaluate(load_config("smoke", **{"train.num_epochs": 1}), workdir)["step"] == 8
    assert len(list((workdir / "archive").iterdir())) == 1


def test_a_finetune_stopped_in_its_start_up_keeps_its_source_findable(tmp_path, monkeypatch):
    workdir = tmp_path / "run"
    trainer.train_and_evaluate(load_config("smoke", **{"train.num_epochs": 1}), workdir)

    def full_disk(folder):
        (folder / "tensorboard").mkdir()
        raise metrics.MetricsWriteError(f"cannot write {folder / 'tensorboard'}: No space left on device")

    # Stopped in start-up (its checkpoints folder made), after the old run was archived.
    monkeypatch.setattr(startup, "MetricWriter", full_disk)
    with pytest.raises(metrics.MetricsWriteError):
        trainer.train_and_evaluate(load_config("smoke", **{"train.num_epochs": 1}), workdir, mode="finetune")
    monkeypatch.undo()
    (archived,) = (workdir / "archive").iterdir()
    # The same command again finds no run to archive (the refused start left none) and names the one it archived.
    with pytest.raises(configuration.ConfigError, match=f"pass --init-from {archived} to start from it"):
        trainer.train_and_evaluate(load_config("smoke", **{"train.num_epochs": 1}), workdir, mode="finetune")
    assert [path.name for path in (workdir / "archive").iterdir()] == [archived.name]
    assert complete_steps(archived) == [8]
    started = load_config("smoke", **{"train.num_epochs": 1, "finetune.source": str(archived)})
    assert trainer.train_and_evaluate(started, workdir)["step"] == 8


def test_a_resume_refused_for_a_damaged_metrics_file_leaves_config_json_as_it_was(tmp_path):
    workdir = tmp_path / "run"
    trainer.train_and_evaluate(load_config("smoke", **{"train.num_epochs": 1}), workdir)
    before = (workdir / "config.json").read_bytes()
    lines = (workdir / "metrics.jsonl").read_text().splitlines(keepends=True)
    (workdir / "metrics.jsonl").write_text("".join([lines[0], "{not json\n", *lines[1:]]))
    with pytest.raises(metrics.MetricsError):
        trainer.train_and_evaluate(load_config("smoke", **{"train.num_epochs": 2}), workdir)
    assert (workdir / "config.json").read_bytes() == before


def test_the_best_evaluation_is_saved_between_the_checkpoints_every_epochs_asks_for(tmp_path, monkeypatch):
    scores = iter([0.5, 0.9, 0.6, 0.7])  # validation accuracy after epochs 1-4: the best at epoch 2 (step 16)

    def scored(accuracy):
        return {f"{split}_{name}": accuracy for split in ("validation", "test") for name in ("accuracy", "loss")}

    monkeypatch.setattr(
        trainer._Loop, "_evaluate", lambda self, state: scored(next(scores))
    )
    workdir = tmp_path / "run"
    trainer.train_and_evaluate(load_config("smoke", **{"checkpoint.every_epochs": 4}), workdir)
    checkpointer = checkpoint.Checkpointer(workdir / "checkpoints", create=False)
    assert checkpointer.best_step() == 16
    assert complete_steps(workdir) == [16, 32]  # the best, and the newest (epoch 3's was no better: not saved)
    checkpointer.close()


def test_eval_every_0_epochs_evaluates_once_at_the_end_whatever_the_length(tmp_path):
    workdir = tmp_path / "run"
    trainer.train_and_evaluate(load_config("smoke", **{"eval.every_epochs": 0, "train.num_epochs": 3}), workdir)
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [record["step"] for record in records if "test_accuracy" in record] == [24]  # 3 epochs of 8 steps


@pytest.mark.parametrize(
    "error", [OSError(errno.EIO, "Input/output error"), TypeError("unexpected keyword (another orbax version)")]
)
def test_a_restore_that_fails_for_a_passing_reason_or_a_version_moves_nothing(tmp_path, monkeypatch, error):
    workdir = tmp_path / "run"
    trainer.train_and_evaluate(load_config("smoke", **{"train.num_epochs": 2}), workdir)

    def failing_restore(self, step, abstract_state):
        raise error

    monkeypatch.setattr(checkpoint.Checkpointer, "restore", failing_restore)
    with pytest.raises(checkpoint.CheckpointError, match="nothing was moved"):
        trainer.train_and_evaluate(load_config("smoke", **{"train.num_epochs": 3}), workdir)
    assert complete_steps(workdir) == [8, 16]
    assert not (workdir / "checkpoints_damaged").exists()


def test_finetune_takes_what_fits_by_path_and_the_averaged_weights(tmp_path):
    source = tmp_path / "source"
    overrides = {"model.name": "resnet8", "train.num_epochs": 1, "train.ema_decay": 0.5}
    trainer.train_and_evaluate(load_config("smoke", **overrides), source)
    saved = final_state(source)[0]
    deeper = experiment.build(load_config("smoke", **{"model.name": "resnet20", "train.ema_decay": 0.9}))
    fresh = deeper.new_state()
    weights = checkpoint.newest_weights(source / "checkpoints")
    started = jax.device_get(checkpoint.transplant_weights(fresh, weights, str(source)))
    fresh = jax.device_get(fresh)
    # In both networks: the averaged weights, which the source's evaluations scored, not its raw ones.
    chex.assert_trees_all_equal(started.params["stage1_block1"], saved["ema"]["params"]["stage1_block1"])
    chex.assert_trees_all_equal(started.batch_stats["stem_bn"], saved["ema"]["batch_stats"]["stem_bn"])
    assert not np.array_equal(saved["ema"]["params"]["head"]["kernel"], saved["params"]["head"]["kernel"])
    # Only in the deeper one: its own initialisation. Its EMA starts from the weights it starts from.
    chex.assert_trees_all_equal(started.params["stage1_block2"], fresh.params["stage1_block2"])
    chex.assert_trees_all_equal(started.ema["params"], started.params)


def test_an_older_checkpoint_format_is_refused_in_one_line_that_says_how_to_go_on(tmp_path):
    workdir = tmp_path / "run"
    trainer.train_and_evaluate(load_config("smoke", **{"train.num_epochs": 1}), workdir)
    meta_file = workdir / "checkpoints" / "8" / "meta" / "metadata"
    meta = json.loads(meta_file.read_text())
    del meta["state_format"]  # as written before the format was recorded
    meta_file.write_text(json.dumps(meta))
    result = run(train_command(workdir, "smoke", "train.num_epochs=2"), timeout=120)
    assert result.returncode == 2
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: checkpoint 8 in") and "written by an earlier resnet-jax" in line
    assert "--finetune" in result.stderr
    assert complete_steps(workdir) == [8]
    finetuned = run([*train_command(workdir, "smoke", "train.num_epochs=1"), "--finetune"], timeout=120)
    assert finetuned.returncode == 0, finetuned.stderr[-2000:]


# ---------------------------------------------------------------------------------------------------------------
# 8. Help: every command's own, whole, at exit status 0.


def test_train_help_shows_its_own_flags_first():
    result = run([PYTHON, "train.py", "--help"], timeout=HANG_LIMIT)
    assert result.returncode == 0, result.stderr
    head = "\n".join(result.stdout.splitlines()[:3])
    for flag in ("--workdir", "--config", "--fresh", "--finetune"):
        assert flag in head


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_has_help_that_ends_in_a_whole_sentence(command, capsys):
    module = importlib.import_module(COMMANDS[command][0])
    with pytest.raises(SystemExit) as exited:
        module.main(["--help"])
    assert exited.value.code == 0
    shown = capsys.readouterr().out
    assert shown.startswith(f"usage: resnet-jax {command}")
    description = module.__doc__.split("\n\n")[0]
    assert " ".join(description.split()) in " ".join(shown.split())
    assert description.rstrip().endswith(".")


RUN_EACH_AS_MAIN = """
import contextlib, io, json, runpy, sys
shown = {}
for module in sys.argv[1:]:
    sys.argv = [module, "--help"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            runpy.run_module(module, run_name="__main__")
        except SystemExit as exited:
            shown[module] = (exited.code, out.getvalue()[:40])
print(json.dumps(shown))
"""


def test_every_command_is_also_python_m_its_module():
    # As tools/main.py and docs/tools.md say: `python -m resnet_jax.tools.X --help` is X's help, not a silent exit.
    modules = sorted({COMMANDS[command][0] for command in COMMANDS})
    done = run([PYTHON, "-c", RUN_EACH_AS_MAIN, *modules], timeout=HANG_LIMIT)
    shown = json.loads(done.stdout.strip().splitlines()[-1])
    assert {module: (code, text.split(" ")[0]) for module, (code, text) in shown.items()} == {
        module: (0, "usage:") for module in modules
    }


def test_resnet_jax_lists_its_commands_and_refuses_an_unknown_one_in_one_line():
    listed = run([PYTHON, "-m", "resnet_jax.tools.main", "--help"], timeout=HANG_LIMIT)
    assert listed.returncode == 0
    assert all(f"  {command} " in listed.stdout for command in COMMANDS)
    unknown = run([PYTHON, "-m", "resnet_jax.tools.main", "trian"], timeout=HANG_LIMIT)
    assert unknown.returncode == 2
    assert unknown.stderr.strip() == (
        f"error: resnet-jax: unknown command 'trian'; choose one of {', '.join(COMMANDS)}"
    )
