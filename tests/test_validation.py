"""The validation split held out from train: stratified by class, fixed by its own seed, disjoint from what trains,
for each source; and what chooses (the kept best checkpoint, the run's best) follows it, by one rule, and never test."""

import json

import numpy as np
import pytest

from resnet_jax import best, checkpoint, configuration, data, experiment, metrics, trainer
from resnet_jax.data import holdout
from tests.conftest import FASHION_DIR, load_config, needs_fashion_files


def test_each_class_gives_its_share_and_the_rows_are_disjoint_and_whole():
    labels = np.repeat([0, 1, 2, 3], [100, 50, 30, 20])
    np.random.default_rng(0).shuffle(labels)
    train, validation = holdout.holdout_rows(labels, 40, seed=0)
    np.testing.assert_array_equal(np.bincount(labels[validation]), [20, 10, 6, 4])  # 20% of each class
    assert len(np.intersect1d(train, validation)) == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([train, validation])), np.arange(len(labels)))
    # Shares that do not divide evenly: the largest remainders get the rounding, and the total is exact.
    _, validation = holdout.holdout_rows(labels, 7, seed=0)
    np.testing.assert_array_equal(np.bincount(labels[validation], minlength=4), [3, 2, 1, 1])


def test_the_draw_is_fixed_by_its_seed_alone():
    labels = np.tile(np.arange(10), 50)
    _, first = holdout.holdout_rows(labels, 100, seed=3)
    _, again = holdout.holdout_rows(labels, 100, seed=3)
    _, other = holdout.holdout_rows(labels, 100, seed=4)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    np.testing.assert_array_equal(np.bincount(labels[other]), [10] * 10)


def test_a_holdout_that_empties_a_class_for_training_is_refused_in_one_line():
    labels = np.array([0] * 10 + [1] * 1)
    with pytest.raises(data.DataError, match="all 1 train examples of class 1, leaving none to train on") as error:
        holdout.holdout_rows(labels, 6, seed=0)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(("size", "held"), [(0.0, 0), (0.1, 51), (0.25, 128), (100.0, 100), (1.0, 1)])
def test_a_count_or_a_fraction_of_train_sizes_the_synthetic_runs_splits(size, held):
    built = experiment.build(load_config("smoke", **{"data.validation_size": size}))
    config = built.config
    assert config.data.split_sizes.to_dict() == {"train": 512 - held, "validation": held, "test": 200}
    assert built.eval_splits == (("validation", "test") if held else ("test",))
    assert json.loads(configuration.to_json(config))["data"]["split_sizes"]["validation"] == held


def test_an_eval_batch_larger_than_every_split_is_cut_to_the_largest_one():
    # 128 validation and 200 test examples: a batch of 4096 would be 95% padding, computed.
    built = experiment.build(load_config("smoke", **{"data.validation_size": 0.25, "eval.batch_size": 4096}))
    assert built.eval_split_rows("test") == (200, 200)
    assert built.eval_split_rows("validation") == (128, 200)
    smaller = experiment.build(load_config("smoke", **{"data.validation_size": 0.25, "eval.batch_size": 64}))
    assert smaller.eval_split_rows("test") == (200, 256)


def test_the_synthetic_sources_train_and_validation_rows_are_its_train_split_divided():
    config = experiment.build(load_config("smoke", **{"data.validation_size": 0.25})).config
    whole = data.config_loader(load_config("smoke").data, "train", config.seed)(None)
    train = data.config_loader(config.data, "train", config.seed)(None)
    validation = data.config_loader(config.data, "validation", config.seed)(None)
    assert (len(train), len(validation)) == (384, 128)
    # A quarter of each class, to within the rounding of its share.
    shares = np.bincount(validation.labels, minlength=10) - np.bincount(whole.labels, minlength=10) / 4
    assert np.all(np.abs(shares) < 1)
    held = {image.tobytes() for image in validation.images}
    assert not held & {image.tobytes() for image in train.images}
    assert held | {image.tobytes() for image in train.images} == {image.tobytes() for image in whole.images}
    # The loader's rows slice the held-out split itself (a process's share of it).
    part = data.config_loader(config.data, "validation", config.seed)(slice(10, 20))
    np.testing.assert_array_equal(part.images, validation.images[10:20])


@needs_fashion_files
def test_fashion_mnists_files_hold_out_a_stratified_tenth_independent_of_the_training_seed():
    config = experiment.base_config()
    config.data.dataset, config.data.source, config.data.files_dir = "fashion_mnist", "files", str(FASHION_DIR)
    config.data.validation_size = 0.1
    assert data.record_split_sizes(config.data) == {"train": 54_000, "validation": 6_000, "test": 10_000}
    validation = data.config_loader(config.data, "validation", 0)(None)
    np.testing.assert_array_equal(np.bincount(validation.labels), [600] * 10)  # 6,000 of each class in train
    # The training seed draws nothing here: only data.validation_seed does.
    np.testing.assert_array_equal(data.config_loader(config.data, "validation", 7)(None).labels, validation.labels)
    reseeded = configuration.apply_overrides(config, {"data.validation_seed": 1})
    assert not np.array_equal(data.config_loader(reseeded.data, "validation", 0)(None).images, validation.images)
    counted = configuration.apply_overrides(config, {"data.validation_size": 5000.0})
    assert data.run_split_sizes(counted.data)["validation"] == 5000


def test_a_run_without_a_validation_split_is_told_so_when_one_is_asked_for():
    config = experiment.build(load_config("smoke")).config
    with pytest.raises(data.DataError, match="this run has no validation split; give data.validation_size"):
        data.config_loader(config.data, "validation", 0)(None)


# ----------------------------------------------------------------------------------------------------------------
# What chooses follows validation accuracy.


def test_the_kept_best_checkpoint_follows_validation_accuracy_and_never_test(tmp_path):
    checkpointer = checkpoint.Checkpointer(tmp_path / "ckpt", keep=2, async_save=False)
    validation, test = [0.5, 0.9, 0.6, 0.7, 0.65], [0.95, 0.5, 0.6, 0.7, 0.65]  # test's best is step 1
    for step, accuracy in enumerate(validation, 1):
        checkpointer.save(step, {"w": np.full(3, step, np.float32)}, {"step": step}, {"validation_accuracy": accuracy})
    checkpointer.wait()
    assert checkpointer.steps() == [2, 4, 5]
    assert checkpointer.best_step() == 2 != int(np.argmax(test)) + 1
    assert checkpoint.Checkpointer(tmp_path / "ckpt", create=False).best_step() == 2  # read back from disk
    tree, meta = checkpointer.restore(2, None)
    np.testing.assert_array_equal(tree["w"], np.full(3, 2, np.float32))
    assert meta == {"step": 2, "state_format": checkpoint.STATE_FORMAT}


def test_the_kept_checkpoint_the_runs_record_and_its_summary_break_a_tie_alike_the_later_wins(tmp_path):
    validation, test = [0.5, 0.8, 0.8, 0.6], [0.1, 0.2, 0.3, 0.4]
    evaluations = [
        {"step": step, "validation_accuracy": accuracy, "test_accuracy": test_accuracy}
        for step, (accuracy, test_accuracy) in enumerate(zip(validation, test, strict=True), 1)
    ]
    assert best.best_of(evaluations) == {"step": 3, "validation_accuracy": 0.8, "test_accuracy": 0.3}
    checkpointer = checkpoint.Checkpointer(tmp_path / "ckpt", keep=1, async_save=False)
    writer = metrics.MetricWriter(tmp_path, enabled=True)
    for evaluation in evaluations:
        step = evaluation["step"]
        checkpointer.save(
            step, {"w": np.zeros(1)}, {"step": step}, {"validation_accuracy": evaluation["validation_accuracy"]}
        )
        writer.write(step, step, {key: value for key, value in evaluation.items() if key != "step"})
    checkpointer.wait()
    writer.close()
    assert (checkpointer.steps(), checkpointer.best_step()) == ([3, 4], 3)
    summary = metrics.summarize_run(tmp_path)
    assert (summary["best_validation_accuracy"], summary["test_accuracy_at_best_validation"]) == (0.8, 0.3)


def test_without_validation_no_best_is_kept(tmp_path):
    checkpointer = checkpoint.Checkpointer(tmp_path / "ckpt", keep=2, async_save=False)
    for step in range(1, 5):
        checkpointer.save(step, {"w": np.full(3, step, np.float32)}, {"step": step})
    checkpointer.wait()
    assert checkpointer.steps() == [3, 4]
    assert checkpointer.best_step() is None


def scripted_evaluations(monkeypatch, validation, test):
    """Replaces the trainer's evaluation by these accuracies, one pair per evaluation, in order; the loop, the
    checkpoints and the selection are the real ones."""
    values = iter(zip(validation, test, strict=True))

    def evaluate(self, state):
        accuracy, test_accuracy = next(values)
        return {
            "validation_accuracy": accuracy,
            "validation_loss": 1.0 - accuracy,
            "test_accuracy": test_accuracy,
            "test_loss": 1.0 - test_accuracy,
        }

    monkeypatch.setattr(trainer._Loop, "_evaluate", evaluate)


def test_a_runs_best_is_its_highest_validation_accuracy_where_test_would_pick_another_step(tmp_path, monkeypatch):
    # 384 train examples after the holdout, 6 steps an epoch: evaluations at steps 6, 12, 18 and 24.
    validation, test = [0.9, 0.5, 0.6, 0.7], [0.1, 0.95, 0.2, 0.3]
    scripted_evaluations(monkeypatch, validation, test)
    results = trainer.train_and_evaluate(load_config("smoke", **{"data.validation_size": 0.25}), tmp_path)
    assert (results["best_validation_accuracy"], results["test_accuracy_at_best_validation"]) == (0.9, 0.1)
    assert (results["validation_accuracy"], results["test_accuracy"]) == (0.7, 0.3)
    checkpointer = checkpoint.Checkpointer(tmp_path / "checkpoints", create=False)
    assert checkpointer.steps() == [6, 18, 24]  # the last two (keep=2) and the best by validation; not step 12
    assert checkpointer.best_step() == 6
    assert checkpointer.restore_meta(24)["best_validation"] == {
        "step": 6,
        "validation_accuracy": 0.9,
        "test_accuracy": 0.1,
    }
    summary = metrics.summarize_run(tmp_path)
    assert {key: summary[key] for key in metrics.SUMMARY_KEYS[:4]} == {
        "final_validation_accuracy": 0.7,
        "best_validation_accuracy": 0.9,
        "test_accuracy_at_best_validation": 0.1,
        "final_test_accuracy": 0.3,
    }
    assert "best_test_accuracy" not in json.dumps(metrics.read_metrics(tmp_path))


def test_a_run_without_validation_reports_test_and_keeps_no_best(tmp_path, monkeypatch):
    results = trainer.train_and_evaluate(load_config("smoke", **{"train.num_epochs": 2}), tmp_path)
    assert "best_validation_accuracy" not in results and "validation_accuracy" not in results
    assert 0.0 <= results["test_accuracy"] <= 1.0
    checkpointer = checkpoint.Checkpointer(tmp_path / "checkpoints", create=False)
    assert (checkpointer.steps(), checkpointer.best_step()) == ([8, 16], None)
    summary = metrics.summarize_run(tmp_path)
    assert summary["final_test_accuracy"] == results["test_accuracy"]
    assert summary["best_validation_accuracy"] is summary["test_accuracy_at_best_validation"] is None
