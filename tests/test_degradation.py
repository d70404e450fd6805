"""The degradation experiment: its depths are checked before anything runs, its table and verdict follow the
training error (the train sample in evaluation mode) of every seed, and one tiny experiment runs through the command
as a user runs it."""

import json
import re

import pytest

from resnet_jax import configuration, metrics
from resnet_jax.tools import degradation
from resnet_jax.tools import main as resnet_jax_main
from resnet_jax.tools.sweep import run


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("20", "two or more"),
        ("56,20", "shallow first"),
        ("20,20", "two or more"),
        ("20,x", "whole numbers"),
        ("20,58", "no plain58"),
    ],
)
def test_depths_are_refused_in_one_line(text, problem):
    with pytest.raises(configuration.ConfigError, match=problem):
        degradation.parse_depths(text)


def _write_run(run_dir, training_errors, validation_errors, test_errors):
    run_dir.mkdir(parents=True)
    lines = []
    for epoch, (train, validation, test) in enumerate(
        zip(training_errors, validation_errors, test_errors, strict=True)
    ):
        # The logged windows' train accuracy (augmented, train mode) is deliberately the opposite ordering.
        lines.append({"step": epoch + 1, "epoch": epoch + 1.0, "train_accuracy": train})
        lines.append(
            {
                "step": epoch + 1,
                "epoch": epoch + 1.0,
                "train_eval_accuracy": 1 - train,
                "validation_accuracy": 1 - validation,
                "test_accuracy": 1 - test,
            }
        )
    (run_dir / metrics.METRICS_FILE).write_text("".join(json.dumps(line) + "\n" for line in lines))


def _networks(tmp_path, errors, shifts=(0.0, 0.02)):
    nets = []
    for name, (train, validation, test) in errors.items():
        runs = []
        for seed, shift in enumerate(shifts):
            run_dir = tmp_path / name / f"seed{seed}"
            _write_run(run_dir, [t + shift for t in train], validation, test)
            runs.append(run_dir)
        family, depth = re.fullmatch(r"([a-z]+)(\d+)", name).groups()
        nets.append(degradation.Network(name, family, int(depth), 1000, tuple(runs), total_steps=2))
    return nets


def test_the_verdict_reads_training_error_where_validation_disagrees(tmp_path):
    # Validation (and test) order both families the other way round: the verdict must follow training error.
    errors = {
        "plain20": ([0.5, 0.10], [0.5, 0.40], [0.5, 0.40]),
        "plain56": ([0.6, 0.20], [0.6, 0.30], [0.6, 0.30]),
        "resnet20": ([0.5, 0.15], [0.5, 0.30], [0.5, 0.30]),
        "resnet56": ([0.5, 0.05], [0.5, 0.35], [0.5, 0.35]),
    }
    nets = _networks(tmp_path, errors)
    final = nets[1].final_errors()
    assert final["train_eval"].mean == pytest.approx(0.21) and final["train_eval"].runs == 2
    assert final["validation"].mean == pytest.approx(0.30)
    lines = degradation.ordering(nets)
    assert "training error: plain20 11.00% → plain56 21.00%; He's ordering holds" in lines[0]
    assert "training error: resnet20 16.00% → resnet56 6.00%; He's ordering holds" in lines[1]
    table = degradation.table(nets, seeds=2)
    assert "| plain56 | 56 | 1,000 | 21.00 ± 1.41 (20.00-22.00) | 30.00 ± 0.00 (30.00-30.00) |" in table


def test_a_run_still_running_has_no_final_error(tmp_path):
    errors = {"plain20": ([0.5, 0.10], [0.5, 0.3], [0.5, 0.3])}
    (net,) = _networks(tmp_path, errors)
    assert net.final_errors()["train_eval"].runs == 2
    longer = degradation.Network(net.name, net.family, net.depth, net.params, net.run_dirs, total_steps=3)
    assert longer.final_errors()["train_eval"] is None
    assert "| plain20 | 20 | 1,000 |  |  |  | 0 of 2 |" in degradation.table([longer], seeds=2)


def test_overlapping_seeds_hold_by_the_mean_only_and_a_reversed_order_does_not_hold(tmp_path):
    errors = {
        "plain20": ([0.5, 0.10], [0.5, 0.3], [0.5, 0.3]),
        "plain56": ([0.5, 0.11], [0.5, 0.3], [0.5, 0.3]),  # ahead by 1 point; the seeds spread 5
        "resnet20": ([0.5, 0.10], [0.5, 0.3], [0.5, 0.3]),
        "resnet56": ([0.5, 0.12], [0.5, 0.3], [0.5, 0.3]),
    }
    lines = degradation.ordering(_networks(tmp_path, errors, shifts=(0.0, 0.05)))
    assert lines[0].endswith("He's ordering holds by the mean, within the seeds' spread")
    assert lines[1].endswith("He's ordering does NOT hold")


def test_a_tiny_experiment_runs_as_a_user_runs_it(tmp_path, capsys):
    workdir = tmp_path / "degradation"
    args = [
        "degradation",
        "--config",
        "configs/smoke.py",
        "--workdir",
        str(workdir),
        "--depths",
        "20,32",
        "--seeds",
        "2",
        "--config.train.num_epochs=1",
        "--config.data.synthetic_train_examples=96",
        "--config.data.synthetic_test_examples=32",
        "--config.train.batch_size=32",
        "--config.eval.batch_size=32",
        "--config.data.train_eval_size=40",
    ]
    assert resnet_jax_main.main(args) == 0
    table = (workdir / degradation.TABLE_FILE).read_text()
    for name in ("plain20", "plain32", "resnet20", "resnet32"):
        assert f"| {name} |" in table
        trial_dir = workdir / run.TRIALS_DIR / run.trial_name({"model.name": name})
        assert all((trial_dir / f"seed{seed}" / metrics.METRICS_FILE).exists() for seed in (0, 1))
    assert table.count("| 2 of 2 |") == 4
    assert (workdir / degradation.PLOT_FILE).stat().st_size > 10_000
    assert "He's ordering" in capsys.readouterr().out
    records = metrics.read_metrics(trial_dir / "seed0")
    scored = [record["train_eval_examples"] for record in records if "train_eval_accuracy" in record]
    assert scored == [40]  # one evaluation of the 40-image train sample


def test_the_command_refuses_a_config_without_a_train_sample(tmp_path, capsys):
    args = ["degradation", "--config", "configs/smoke.py", "--workdir", str(tmp_path / "d")]
    with pytest.raises(SystemExit) as stop:
        resnet_jax_main.main(args)
    assert stop.value.code == 2
    assert "data.train_eval_size=0" in capsys.readouterr().err


def test_the_command_refuses_a_train_sample_larger_than_the_train_split_before_anything_is_written(tmp_path, capsys):
    workdir = tmp_path / "d"
    args = ["degradation", "--config", "configs/smoke.py", "--workdir", str(workdir)]
    # smoke's 512 train examples, less the 10% the sweep holds out to rank on: 461.
    with pytest.raises(SystemExit) as stop:
        resnet_jax_main.main([*args, "--config.data.train_eval_size=5000"])
    assert stop.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and "Traceback" not in error
    assert "data.train_eval_size=5000 is more than the run's train split holds (461 examples" in error
    assert "--config.data.train_eval_size=461" in error
    assert len(error.splitlines()) == 1
    assert not workdir.exists()
