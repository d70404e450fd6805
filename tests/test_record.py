"""What a run records is what ran: config.json is written once a run is accepted, holds the dtype and kernels it
resolved to, the devices and versions, the weights it started from, and every change accepted on resume with its
step (how it is scored, logged and saved included); a resume that would train something else, or name other weights,
is refused in one line and leaves the workdir byte-identical; so is a damaged record; a changed holdout draw is
refused."""

import contextlib
import importlib.metadata
import json
import logging
import math
import shutil
from pathlib import Path

import grain
import jax
import PIL
import pytest

from resnet_jax import configuration, data, inference, lock, metrics, trainer
from resnet_jax.configuration import ConfigError
from resnet_jax.data import DataError
from resnet_jax.tools import train as train_tool
from tests.conftest import REPO_ROOT, load_config

ONE_EPOCH = {"train.num_epochs": 1}
# What train.steps_per_call=0 runs here, and smoke's 4-step metric window in whole calls of it.
AUTO_STEPS_PER_CALL = 1 if jax.default_backend() == "cpu" else 50
SMOKE_WINDOW = math.ceil(4 / AUTO_STEPS_PER_CALL) * AUTO_STEPS_PER_CALL


def snapshot(workdir: Path) -> dict[str, bytes]:
    """Every file of a workdir and its bytes (the lock file names its latest holder, and is no part of the run)."""
    return {
        str(path.relative_to(workdir)): path.read_bytes()
        for path in sorted(workdir.rglob("*"))
        if path.is_file() and path.name != lock.LOCK_FILE
    }


def saved(workdir: Path) -> dict:
    return json.loads((workdir / configuration.CONFIG_FILE).read_text())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished one-epoch smoke run (8 steps of batch 64, SGD 0.1, cosine) and the bytes of all its files."""
    workdir = tmp_path_factory.mktemp("record") / "run"
    trainer.train_and_evaluate(load_config("smoke", **ONE_EPOCH), workdir)
    return workdir, snapshot(workdir)


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"optimizer.name": "adam"}, 'optimizer.name="sgd", and this config says "adam"'),
        ({"optimizer.learning_rate": 0.05}, "optimizer.learning_rate=0.1, and this config says 0.05"),
        ({"seed": 7}, "seed=0, and this config says 7"),
        ({"train.batch_size": 32}, "train.batch_size=64, and this config says 32"),
        ({"augment.flip": False}, "augment.flip=True, and this config says False"),
        ({"model.name": "resnet8"}, 'model.name="resnet8_tiny", and this config says "resnet8"'),
        ({"train.num_epochs": 0, "train.num_steps": 4}, "makes this run of 8 steps shorter (4)"),
    ],
)
def test_a_changed_resume_is_refused_in_one_line_and_leaves_the_workdir_byte_identical(trained, overrides, named):
    workdir, before = trained
    with pytest.raises(ConfigError, match="--fresh") as refused:
        trainer.train_and_evaluate(load_config("smoke", **(ONE_EPOCH | overrides)), workdir)
    assert named in str(refused.value)
    assert "\n" not in str(refused.value)
    assert snapshot(workdir) == before


def test_config_json_records_what_was_asked_and_what_ran(trained):
    workdir, _ = trained
    config = saved(workdir)
    record = config[configuration.RECORD_KEY]
    assert record["asked"]["model.dtype"] == "float32"  # smoke asks for float32 by name
    assert config["model"]["dtype"] == record["ran"]["model.dtype"] == "float32"
    assert record["ran"]["devices"] == jax.device_count() and record["ran"]["processes"] == 1
    assert record["ran"]["versions"]["jax"] == jax.__version__
    # What reads a folder's images: Grain streams them, Pillow decodes them.
    assert record["ran"]["versions"]["grain"] == grain.__version__
    assert record["ran"]["versions"]["pillow"] == PIL.__version__
    # Whichever oneDNN build is installed (setup.sh installs a CPU-only one, not PyPI's `onednn`), its version.
    installed = {}
    for name in ("onednn-cpu-gomp", "onednn-cpu-tbb", "onednn"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            installed[name] = importlib.metadata.version(name)
    if installed:
        assert all(version in record["ran"]["versions"]["onednn"] for version in installed.values())
    else:
        assert record["ran"]["versions"]["onednn"] is None
    assert record["ran"]["model.conv_backend"] in ("xla", "onednn")
    ran_loop = (record["ran"]["train.steps_per_call"], record["ran"]["train.log_every_steps"])
    assert ran_loop == (AUTO_STEPS_PER_CALL, SMOKE_WINDOW)  # (1, 4) on a CPU
    assert record["changes"] == []
    assert record["from_step"] == 0


def test_a_metric_window_that_is_not_whole_calls_is_recorded_and_said_as_the_one_kept(tmp_path, caplog):
    # The loop reads the metrics between calls: 4 steps in calls of 3 are windows of 6 (and the epoch's end, 8).
    workdir = tmp_path / "run"
    config = load_config("smoke", **ONE_EPOCH, **{"train.steps_per_call": 3, "train.log_every_steps": 4})
    with caplog.at_level(logging.INFO, logger="resnet_jax.startup"):
        trainer.train_and_evaluate(config, workdir)
    assert "train metrics every 6 steps (train.log_every_steps=4 rounded up to whole calls of " in caplog.text
    assert [row["step"] for row in metrics.read_metrics(workdir) if "train_loss" in row] == [6, 8]
    ran = saved(workdir)[configuration.RECORD_KEY]["ran"]
    assert (ran["train.steps_per_call"], ran["train.log_every_steps"]) == (3, 6)
    assert saved(workdir)["train"]["log_every_steps"] == 4  # what was asked stays beside it


def test_a_run_begun_without_a_record_is_recorded_from_the_step_it_resumed_at(tmp_path):
    workdir = tmp_path / "run"
    trainer.train_and_evaluate(load_config("smoke", **ONE_EPOCH), workdir)
    config = saved(workdir)
    del config[configuration.RECORD_KEY]  # as an earlier resnet-jax wrote it
    configuration.write_json(config, workdir / configuration.CONFIG_FILE)
    trainer.train_and_evaluate(load_config("smoke", **{"train.num_epochs": 2}), workdir)
    record = saved(workdir)[configuration.RECORD_KEY]
    assert record["from_step"] == 8  # one epoch of 8 steps ran unrecorded
    trainer.train_and_evaluate(load_config("smoke", **{"train.num_epochs": 3}), workdir)
    assert saved(workdir)[configuration.RECORD_KEY]["from_step"] == 8


def test_auto_on_xla_cpu_is_recorded_as_float32_and_a_resume_keeps_a_recorded_bfloat16(tmp_path):
    # On XLA's CPU convolutions bfloat16 was measured no faster, so 'auto' is float32 there...
    xla = tmp_path / "xla"
    trainer.train_and_evaluate(
        load_config("smoke", **ONE_EPOCH, **{"model.dtype": "auto", "model.conv_backend": "xla"}), xla
    )
    assert saved(xla)["model"]["dtype"] == "float32"
    assert saved(xla)[configuration.RECORD_KEY]["asked"]["model.dtype"] == "auto"
    # ...but a run that recorded bfloat16 goes on in bfloat16 when resumed with 'auto', wherever it is resumed.
    bf16 = tmp_path / "bf16"
    trainer.train_and_evaluate(load_config("smoke", **ONE_EPOCH, **{"model.dtype": "bfloat16"}), bf16)
    longer = {"train.num_epochs": 2, "model.dtype": "auto", "model.conv_backend": "xla"}
    results = trainer.train_and_evaluate(load_config("smoke", **longer), bf16)
    assert results["step"] == 16
    assert saved(bf16)["model"]["dtype"] == "bfloat16"
    with pytest.raises(ConfigError, match='model.dtype="bfloat16", and this config says "float32"'):
        trainer.train_and_evaluate(load_config("smoke", **{"train.num_epochs": 2, "model.dtype": "float32"}), bf16)


def test_a_longer_run_says_what_its_schedule_does_and_records_the_change(tmp_path, caplog):
    workdir = tmp_path / "run"
    trainer.train_and_evaluate(load_config("smoke", **ONE_EPOCH), workdir)
    with caplog.at_level(logging.WARNING, logger="resnet_jax.trainer"):
        trainer.train_and_evaluate(load_config("smoke", **{"train.num_epochs": 2}), workdir)
    # Cosine from 0.1: 0.05 * (1 + cos(pi * 7/8)) = 0.00381 over 8 steps, 0.05 * (1 + cos(pi * 7/16)) = 0.0598 over 16.
    (line,) = [record.getMessage() for record in caplog.records if "reshapes" in record.getMessage()]
    assert line.startswith("train.num_epochs 1 -> 2 reshapes this run's learning-rate schedule (cosine")
    assert "at step 7, the old end, the rate was 0.00381 and is now 0.0598" in line
    changes = saved(workdir)[configuration.RECORD_KEY]["changes"]
    assert {"step": 8, "key": "train.num_epochs", "from": 1, "to": 2} in changes
    assert saved(workdir)["train"]["num_epochs"] == 2


def test_kernels_that_auto_picks_differently_on_resume_are_refused_unless_named(tmp_path):
    workdir = tmp_path / "run"
    trainer.train_and_evaluate(load_config("smoke", **ONE_EPOCH), workdir)
    config = saved(workdir)
    here = config[configuration.RECORD_KEY]["ran"]["model.conv_backend"]
    elsewhere = "onednn" if here == "xla" else "xla"
    config[configuration.RECORD_KEY]["ran"]["model.conv_backend"] = elsewhere  # as if it ran on another machine
    configuration.write_json(config, workdir / configuration.CONFIG_FILE)
    before = snapshot(workdir)
    with pytest.raises(ConfigError, match=f"resume with --config.model.conv_backend={here} to go on"):
        trainer.train_and_evaluate(load_config("smoke", **{"train.num_epochs": 2}), workdir)
    assert snapshot(workdir) == before
    trainer.train_and_evaluate(load_config("smoke", **{"train.num_epochs": 2, "model.conv_backend": here}), workdir)
    changes = saved(workdir)[configuration.RECORD_KEY]["changes"]
    assert {"step": 8, "key": "ran.model.conv_backend", "from": elsewhere, "to": here} in changes


def test_the_train_sample_is_fixed_across_resume_and_a_changed_holdout_draw_is_refused(tmp_path):
    workdir = tmp_path / "run"
    sampled = {"data.validation_size": 64, "data.train_eval_size": 40, "schedule.name": "constant"}
    trainer.train_and_evaluate(load_config("smoke", **ONE_EPOCH, **sampled), workdir)
    digests = saved(workdir)["data"]["split_digests"]
    assert digests[data.VALIDATION].startswith("validation_seed 0, 64 rows: ")
    assert digests[data.TRAIN_EVAL].startswith("validation_seed 0, 40 rows: ")
    trainer.train_and_evaluate(load_config("smoke", **{"train.num_epochs": 2}, **sampled), workdir)
    assert saved(workdir)["data"]["split_digests"] == digests
    scored = [r["train_eval_examples"] for r in metrics.read_metrics(workdir) if "train_eval_accuracy" in r]
    assert scored == [40, 40]
    config = saved(workdir)
    config["data"]["split_digests"][data.VALIDATION] = "validation_seed 0, 64 rows: 0123456789abcdef"  # another numpy
    configuration.write_json(config, workdir / configuration.CONFIG_FILE)
    before = snapshot(workdir)
    with pytest.raises(DataError, match="the validation rows drawn now .* are not the ones this run recorded"):
        trainer.train_and_evaluate(load_config("smoke", **{"train.num_epochs": 3}, **sampled), workdir)
    assert snapshot(workdir) == before


def test_fresh_says_where_the_previous_run_went(trained, tmp_path, caplog):
    workdir = tmp_path / "run"
    shutil.copytree(trained[0], workdir)
    with caplog.at_level(logging.INFO, logger="resnet_jax.workdir"):
        trainer.train_and_evaluate(load_config("smoke", **ONE_EPOCH), workdir, mode="fresh")
    (archived,) = (workdir / "archive").iterdir()
    assert f"the previous run in {workdir} is archived in {archived}" in caplog.text
    assert (archived / configuration.CONFIG_FILE).read_bytes() == trained[1]["config.json"]


def copy_of(trained, tmp_path) -> Path:
    workdir = tmp_path / "run"
    shutil.copytree(trained[0], workdir)
    return workdir


def train_tool_refuses(argv: list[str], capsys) -> str:
    """The one error line `resnet-jax train` refuses `argv` with, at exit status 2 (no traceback)."""
    with pytest.raises(SystemExit) as exited:
        train_tool.main(argv)
    assert exited.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, lines
    return lines[0]


def test_finetune_with_other_weights_named_is_refused_in_one_line(trained, tmp_path, capsys):
    # --finetune starts from the workdir's run; --init-from names another: which one a run took would be a guess.
    workdir = copy_of(trained, tmp_path)
    other = tmp_path / "other"
    shutil.copytree(trained[0], other)
    smoke = ["--config", str(REPO_ROOT / "configs/smoke.py"), "--config.train.num_epochs=1"]
    line = train_tool_refuses(["--workdir", str(workdir), *smoke, "--finetune", "--init-from", str(other)], capsys)
    assert line.startswith("error: --finetune starts from the weights of the run in --workdir")
    assert f"finetune.source={str(other)!r}" in line
    assert snapshot(workdir) == trained[1]  # nothing archived


def test_a_finetune_records_the_archived_run_it_started_from_and_a_resume_keeps_it(trained, tmp_path):
    workdir = copy_of(trained, tmp_path)
    trainer.train_and_evaluate(load_config("smoke", **ONE_EPOCH), workdir, mode="finetune")
    (archived,) = (workdir / "archive").iterdir()
    assert saved(workdir)["finetune"]["source"] == str(archived)
    # Resumed by the same command without the flag, as its last line says: the record still names those weights.
    trainer.train_and_evaluate(load_config("smoke", **{"train.num_epochs": 2}), workdir)
    assert saved(workdir)["finetune"]["source"] == str(archived)


def test_a_resume_keeps_the_weights_a_run_started_from_and_refuses_other_ones(trained, tmp_path):
    source, workdir = trained[0], tmp_path / "run"
    trainer.train_and_evaluate(load_config("smoke", **ONE_EPOCH, **{"finetune.source": str(source)}), workdir)
    # The docs: a resume no longer needs the weights it started from, nor to name them.
    trainer.train_and_evaluate(load_config("smoke", **{"train.num_epochs": 2}), workdir)
    assert saved(workdir)["finetune"]["source"] == str(source)
    assert saved(workdir)[configuration.RECORD_KEY]["changes"] == [
        {"step": 8, "key": "train.num_epochs", "from": 1, "to": 2}
    ]
    # Other weights named on resume would be taken from nowhere (it restores its own checkpoint): refused.
    before = snapshot(workdir)
    other = {"train.num_epochs": 3, "finetune.source": str(tmp_path)}
    with pytest.raises(ConfigError, match=f"started from finetune.source={json.dumps(str(source))}") as refused:
        trainer.train_and_evaluate(load_config("smoke", **other), workdir)
    assert f"this config says finetune.source={json.dumps(str(tmp_path))}" in str(refused.value)
    assert "\n" not in str(refused.value)
    assert snapshot(workdir) == before
    # So are weights named on resuming a run that started from a new initialisation.
    fresh = copy_of(trained, tmp_path / "fresh")
    with pytest.raises(ConfigError, match="started from a new initialisation, and this config says finetune.source"):
        trainer.train_and_evaluate(load_config("smoke", **ONE_EPOCH, **{"finetune.source": str(source)}), fresh)
    assert snapshot(fresh) == trained[1]


def test_a_resume_may_change_how_the_run_is_scored_logged_and_saved_and_records_each_change(trained, tmp_path):
    workdir = copy_of(trained, tmp_path)
    # Each key with the smoke run's value (configs/smoke.py over base_config()) and the one it is resumed with.
    resumed_with = {
        "eval.tta_flip": (False, True),
        "eval.batch_size": (64, 32),
        "eval.every_epochs": (1, 2),
        "data.train_eval_size": (0, 40),
        "train.log_every_steps": (4, 2),
        "train.steps_per_call": (0, 2),
        "train.gradient_flow": (True, False),
        "train.on_nonfinite": ("stop", "skip"),
        "checkpoint.keep": (2, 3),
        "checkpoint.every_epochs": (1, 2),
        "checkpoint.async_save": (True, False),
        "train.num_epochs": (1, 2),
    }
    elsewhere = {"data.data_dir": str(tmp_path / "elsewhere")}  # where files are read from: not a change of the run
    overrides = {key: new for key, (_, new) in resumed_with.items()} | elsewhere
    trainer.train_and_evaluate(load_config("smoke", **overrides), workdir)
    changes = saved(workdir)[configuration.RECORD_KEY]["changes"]
    # And what the loop ran as: on a CPU, one step a call in windows of 4 steps before; 2 and 2 after.
    ran_with = {"ran.train.steps_per_call": (AUTO_STEPS_PER_CALL, 2), "ran.train.log_every_steps": (SMOKE_WINDOW, 2)}
    expected = [
        {"step": 8, "key": key, "from": old, "to": new} for key, (old, new) in (resumed_with | ran_with).items()
    ]
    assert sorted(changes, key=lambda change: change["key"]) == sorted(expected, key=lambda change: change["key"])
    # What the record says is what ran: the train sample is scored from the evaluation after step 8 on.
    rows = metrics.read_metrics(workdir)
    assert [row["step"] for row in rows if "train_eval_accuracy" in row] == [16]
    assert [row["step"] for row in rows if "test_accuracy" in row] == [8, 16]


NO_STEP = """its record's 'changes' holds {"key": "x"}, not a change with its key and step"""


@pytest.mark.parametrize(
    ("section", "damaged", "problem"),
    [
        (configuration.RECORD_KEY, {"ran": ["x"]}, "its record's 'ran' is a JSON list, not an object"),
        (configuration.RECORD_KEY, ["x"], "its 'record' is a JSON list, not an object"),
        (configuration.RECORD_KEY, {"changes": "x"}, "its record's 'changes' is a JSON str, not a list"),
        (configuration.RECORD_KEY, {"changes": [{"key": "x"}]}, NO_STEP),
        (configuration.RECORD_KEY, {"from_step": "0"}, "its record's 'from_step' is '0', not a step"),
        (configuration.RECORD_KEY, {"asked": 1}, "its record's 'asked' is a JSON int, not an object"),
        ("eval", [1], "its 'eval' is not a section"),
    ],
)
def test_a_damaged_record_is_refused_in_one_line_with_status_2(trained, tmp_path, capsys, section, damaged, problem):
    workdir = copy_of(trained, tmp_path)
    config = saved(workdir)
    config[section] = damaged
    configuration.write_json(config, workdir / configuration.CONFIG_FILE)
    before = snapshot(workdir)
    smoke = ["--config", str(REPO_ROOT / "configs/smoke.py"), "--config.train.num_epochs=2"]
    line = train_tool_refuses(["--workdir", str(workdir), *smoke], capsys)
    assert line.startswith(f"error: {workdir / configuration.CONFIG_FILE} is damaged ({problem}")
    assert snapshot(workdir) == before


def test_a_run_saved_with_both_lengths_is_read_as_trained_by_steps_by_the_tools_and_a_resume(trained, tmp_path):
    # Before both were refused, train.num_steps above 0 won over train.num_epochs: such a config.json still reads.
    workdir = copy_of(trained, tmp_path)
    config_file = workdir / configuration.CONFIG_FILE
    both = saved(workdir)
    both["train"] |= {"num_steps": 8, "num_epochs": 1}
    config_file.write_text(json.dumps(both))
    run = inference.restore_run(workdir, "latest")
    assert (run.config.train.num_steps, run.config.train.num_epochs) == (8, 0)
    longer = {"train.num_steps": 16, "train.num_epochs": 0}
    assert trainer.train_and_evaluate(load_config("smoke", **longer), workdir)["step"] == 16
    changes = saved(workdir)[configuration.RECORD_KEY]["changes"]
    assert [change["key"] for change in changes] == ["train.num_steps"]
