"""The degradation experiment: its depths are checked before anything runs, its table and verdict follow the
validation error of every seed, and one tiny experiment runs through the command as a user runs it."""

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


def _write_run(run_dir, train_errors, validation_errors, test_errors):
    run_dir.mkdir(parents=True)
    lines = []
    for epoch, (train, validation, test) in enumerate(zip(train_errors, validation_errors, test_errors, strict=True)):
        lines.append({"step": epoch + 1, "epoch": epoch + 1.0, "train_accuracy": 1 - train})
        lines.append(
            {"step": epoch + 1, "epoch": epoch + 1.0, "validation_accuracy": 1 - validation, "test_accuracy": 1 - test}
        )
    (run_dir / metrics.METRICS_FILE).write_text("".join(json.dumps(line) + "\n" for line in lines))


def test_the_table_and_verdict_follow_validation_never_test(tmp_path):
    # Test error orders the plain nets the other way: the verdict must read validation.
    errors = {
        "plain20": ([0.5, 0.3], [0.5, 0.30], [0.5, 0.40]),
        "plain56": ([0.6, 0.4], [0.6, 0.35], [0.6, 0.30]),
        "resnet20": ([0.5, 0.3], [0.5, 0.30], [0.5, 0.30]),
        "resnet56": ([0.5, 0.2], [0.5, 0.32], [0.5, 0.25]),
    }
    nets = []
    for name, (train, validation, test) in errors.items():
        runs = []
        for seed, shift in ((0, 0.0), (1, 0.02)):
            run_dir = tmp_path / name / f"seed{seed}"
            _write_run(run_dir, train, [v + shift for v in validation], test)
            runs.append(run_dir)
        family, depth = re.fullmatch(r"([a-z]+)(\d+)", name).groups()
        nets.append(degradation.Network(name, family, int(depth), 1000, tuple(runs)))
    final = nets[1].final_errors()
    assert final["validation"].mean == pytest.approx(0.36) and final["validation"].runs == 2
    assert final["train"].mean == pytest.approx(0.4)
    lines = degradation.ordering(nets)
    assert "plain20 31.00% → plain56 36.00%; He's ordering holds" in lines[0]
    assert "resnet20 31.00% → resnet56 33.00%; He's ordering does NOT hold" in lines[1]
    table = degradation.table(nets, seeds=2)
    assert "| plain56 | 56 | 1,000 | 40.00 ± 0.00 (40.00-40.00) | 36.00 ± 1.41 (35.00-37.00) |" in table


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


def test_the_train_error_weighs_the_last_epochs_windows_by_their_steps():
    # Two epochs of 4 steps, logged every 3: windows of 3, 3 and 2 steps; the last epoch is steps 5-8.
    records = [
        {"step": 3, "epoch": 0.75, "train_accuracy": 0.1},
        {"step": 4, "epoch": 1.0, "test_accuracy": 0.5},
        {"step": 6, "epoch": 1.5, "train_accuracy": 0.4},
        {"step": 8, "epoch": 2.0, "train_accuracy": 1.0},
    ]
    assert degradation._last_epoch_train(records) == pytest.approx((0.4 * 3 + 1.0 * 2) / 5)
    assert degradation._last_epoch_train(records[1:2]) is None
