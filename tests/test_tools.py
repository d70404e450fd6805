"""The tools on a trained run (evaluate, plots, predict, export), checked against direct computations.

The workdir they read is written without the trainer, as the trainer writes one: config.json, metrics.jsonl and
orbax checkpoints of a built experiment's state, at steps 4 and 8 with different weights.
"""

import csv
import json
import runpy
import shutil
import subprocess
import textwrap

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from PIL import Image

from resnet_jax import (
    checkpoint,
    configuration,
    data,
    experiment,
    export,
    inference,
    metrics,
    models,
    parallel,
    plots,
    record,
)
from resnet_jax.onednn import backend, library
from resnet_jax.tools import convert as convert_tool
from resnet_jax.tools import evaluate as evaluate_tool
from resnet_jax.tools import export as export_tool
from resnet_jax.tools import features as features_tool
from resnet_jax.tools import main as tools_main
from resnet_jax.tools import plots as plots_tool
from resnet_jax.tools import predict as predict_tool
from tests.conftest import PYTHON, REPO_ROOT, subprocess_env

TEST_EXAMPLES = 100  # not a multiple of the eval batch: the padded, masked last batch is exercised
# Step -> the validation accuracy its checkpoint recorded: the best is not the latest.
ACCURACIES = {4: 0.3, 8: 0.2}


def tiny_config(**overrides):
    config = runpy.run_path(str(REPO_ROOT / "configs" / "smoke.py"))["get_config"]()
    config.data.synthetic_train_examples = 256
    config.data.synthetic_test_examples = TEST_EXAMPLES
    return configuration.apply_overrides(config, overrides)


def jitter(tree, seed, scale=0.3):
    """`tree` with every leaf scaled by its own noise: weights unlike any other step's."""
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return treedef.unflatten(
        [leaf * (1 + scale * jax.random.normal(key, leaf.shape)) for leaf, key in zip(leaves, keys, strict=True)]
    )


def normalized(step_config, images):
    """uint8 images as the model sees them: (x / 255 - mean) / std."""
    mean, std = (np.asarray(value, np.float32) for value in (step_config.mean, step_config.std))
    return jnp.asarray((images.astype(np.float32) / 255.0 - mean) / std)


def trained_state(built, state, seed):
    """A state as training leaves it: moved weights, BatchNorm statistics away from their (0, 1) start, and a head
    whose logits are centred on the training images (at initialisation every image gets the same class)."""
    batch_stats = jax.tree_util.tree_map_with_path(
        lambda path, leaf: leaf + 0.1 if "mean" in jax.tree_util.keystr(path) else leaf * 1.5, state.batch_stats
    )
    params = jitter(state.params, seed)
    inputs = normalized(built.step_config, split_arrays(built.config, "train").images)
    mean_logits = built.model.apply({"params": params, "batch_stats": batch_stats}, inputs, train=False).mean(0)
    params["head"]["bias"] = params["head"]["bias"] - mean_logits
    return state.replace(params=params, batch_stats=batch_stats)


def save_checkpoint(workdir, step, tree, accuracy=None):
    """One checkpoint as the trainer saves it (state tree, data position, the metric orbax ranks by)."""
    checkpointer = checkpoint.Checkpointer(workdir / "checkpoints", async_save=False)
    meta = {"position": {"epoch": 1, "step_in_epoch": 0}, "step": step}
    checkpointer.save(step, tree, meta, None if accuracy is None else {checkpoint.BEST_METRIC: accuracy})
    checkpointer.wait()
    checkpointer.close()


def write_workdir(workdir, config, trees):
    """config.json, a metrics record per checkpoint, and the checkpoints {step: tree}."""
    workdir.mkdir(parents=True, exist_ok=True)
    configuration.write_json(config, workdir / configuration.CONFIG_FILE)
    writer = metrics.MetricWriter(workdir, enabled=True)
    for epoch, (step, tree) in enumerate(sorted(trees.items()), start=1):
        accuracy = ACCURACIES.get(step, 0.1)
        values = {"train_loss": 2.0 / epoch, "learning_rate": 0.1 / epoch, "validation_accuracy": accuracy}
        writer.write(step, epoch, values | {"test_accuracy": 1 - accuracy})  # test would pick the other one
        save_checkpoint(workdir, step, tree, accuracy)
    writer.close()
    return workdir


@pytest.fixture(scope="session")
def built():
    return experiment.build(tiny_config())


@pytest.fixture(scope="session")
def new_state(built):
    return built.new_state()


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory, built, new_state):
    trees = {step: trained_state(built, new_state, seed=step).checkpoint_tree() for step in ACCURACIES}
    return write_workdir(tmp_path_factory.mktemp("tools") / "run", built.config, trees)


@pytest.fixture(scope="session")
def run(run_dir):
    return inference.restore_run(run_dir, "latest")


@pytest.fixture(scope="session")
def evaluation(run):
    return inference.evaluate_split(run, "test", tta_flip=False)


def split_arrays(config, split):
    return data.config_loader(config.data, split, config.seed)(None)


def direct_logits(run, images):
    """The model applied by hand to the normalised images, inference-mode BatchNorm."""
    return np.asarray(
        run.experiment.model.apply(run.variables, normalized(run.experiment.step_config, images), train=False)
    )


def near_ties(logits: np.ndarray, within: float) -> int:
    """How many examples have their top two logits within `within`: where logits computed in another order (the
    same model, other kernels or batch splits) may change the prediction."""
    top_two = np.sort(logits, axis=-1)[:, -2:]
    return int(np.sum(top_two[:, 1] - top_two[:, 0] <= within))


def cli_error(main, argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ")
    return lines[0]


def test_evaluation_equals_a_direct_computation_on_every_example(run, evaluation):
    split = split_arrays(run.config, "test")
    logits = direct_logits(run, split.images)
    assert evaluation.num_examples == TEST_EXAMPLES
    np.testing.assert_array_equal(evaluation.labels, split.labels)
    chex.assert_trees_all_close(evaluation.logits, logits, atol=1e-4, rtol=1e-4)
    assert len(set(logits.argmax(-1).tolist())) > 1  # the weights tell the images apart
    # Accuracy counts argmaxes: only an example whose top logits are within the logits' tolerance may differ.
    allowed = near_ties(logits, 2 * (1e-4 + 1e-4 * float(np.abs(logits).max()))) / TEST_EXAMPLES
    assert abs(evaluation.accuracy - np.mean(logits.argmax(-1) == split.labels)) <= allowed + 1e-9
    loss = optax.softmax_cross_entropy_with_integer_labels(jnp.asarray(logits), jnp.asarray(split.labels)).mean()
    assert evaluation.loss == pytest.approx(float(loss), rel=1e-5)
    # Top-5: the label among the five largest logits; only an example whose 5th and 6th logits tie may differ.
    ordered = np.sort(logits, axis=-1)
    in_top5 = np.any(np.argsort(logits, axis=-1)[:, -5:] == split.labels[:, None], axis=-1)
    assert 0 < in_top5.mean() < 1 and in_top5.mean() > np.mean(logits.argmax(-1) == split.labels)
    ties = np.sum(ordered[:, -5] - ordered[:, -6] <= 2 * (1e-4 + 1e-4 * float(np.abs(logits).max())))
    assert abs(evaluation.top5_accuracy - in_top5.mean()) <= ties / TEST_EXAMPLES + 1e-9


def test_the_restored_weights_are_the_checkpoints_replicated_on_the_mesh(run, built, new_state):
    expected = trained_state(built, new_state, seed=8)
    chex.assert_trees_all_close(run.variables, expected.variables)
    for leaf in jax.tree.leaves(run.variables):
        assert leaf.sharding.is_equivalent_to(parallel.replicated(run.experiment.mesh), leaf.ndim)


def test_report_confusion_matrix_and_heat_map_agree(run, evaluation, tmp_path):
    report, paths = evaluate_tool.write_outputs(run, evaluation, tmp_path)
    assert (report["step"], report["devices"], report["num_examples"]) == (8, 1, TEST_EXAMPLES)
    with paths["confusion_matrix.csv"].open() as handle:
        rows = list(csv.reader(handle))
    assert rows[0][1:] == list(run.class_names)
    assert [row[0] for row in rows[1:]] == list(run.class_names)
    matrix = np.asarray([[int(cell) for cell in row[1:]] for row in rows[1:]])
    np.testing.assert_array_equal(
        matrix, inference.confusion_matrix(evaluation.labels, evaluation.logits.argmax(-1), 10)
    )
    np.testing.assert_array_equal(matrix.sum(axis=1), np.bincount(evaluation.labels, minlength=10))
    assert np.trace(matrix) / TEST_EXAMPLES == pytest.approx(report["accuracy"])
    for index, entry in enumerate(json.loads(paths["report.json"].read_text())["per_class"]):
        assert entry["class"] == run.class_names[index]
        expected = matrix[index, index] / matrix[index].sum() if matrix[index].sum() else None
        assert entry["accuracy"] == pytest.approx(expected)
    with Image.open(paths["confusion_matrix.png"]) as image:
        assert image.format == "PNG"
        assert min(image.size) > 300


def test_confusion_matrix_counts_true_classes_along_rows():
    matrix = inference.confusion_matrix(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 0]), 3)
    np.testing.assert_array_equal(matrix, [[1, 1, 0], [0, 1, 0], [1, 0, 0]])


def test_flip_tta_averages_the_image_and_its_mirror(run):
    flipped = inference.evaluate_split(run, "test", tta_flip=True)
    images = split_arrays(run.config, "test").images
    expected = (direct_logits(run, images) + direct_logits(run, images[:, :, ::-1])) / 2
    chex.assert_trees_all_close(flipped.logits, expected, atol=1e-4, rtol=1e-4)


def test_checkpoints_are_chosen_by_step_and_best_by_recorded_accuracy(run_dir, run):
    earlier = inference.restore_run(run_dir, "4")
    assert (earlier.step, run.step) == (4, 8)
    with pytest.raises(AssertionError):
        chex.assert_trees_all_close(earlier.variables["params"], run.variables["params"])
    best = inference.restore_run(run_dir, "best")
    assert best.step == max(ACCURACIES, key=ACCURACIES.get) == 4
    chex.assert_trees_all_equal(best.variables, earlier.variables)


def test_a_checkpoint_in_the_old_optimizer_layout_still_evaluates(tmp_path, built, new_state):
    # Before the learning rate was applied at the state's step, optax's schedule count lived in the optimizer
    # state: one leaf more than today's state has.
    state = trained_state(built, new_state, seed=3)
    old_layout = state.checkpoint_tree() | {"opt_state": [state.opt_state, {"count": jnp.array(8, jnp.int32)}]}
    workdir = write_workdir(tmp_path / "old", built.config, {8: old_layout})
    checkpointer = checkpoint.Checkpointer(workdir / "checkpoints", async_save=False, create=False)
    with pytest.raises(ValueError, match="structures do not match"):  # restoring into today's train state
        checkpointer.restore(8, checkpoint.abstract_tree(state.checkpoint_tree()))
    checkpointer.close()
    run = inference.restore_run(workdir)
    chex.assert_trees_all_close(run.variables, state.variables)
    images = split_arrays(run.config, "test").images
    chex.assert_trees_all_close(inference.evaluate_split(run).logits, direct_logits(run, images), atol=1e-4, rtol=1e-4)


def test_a_run_with_an_ema_is_scored_on_its_averaged_weights(tmp_path):
    config = tiny_config(**{"train.ema_decay": 0.9})
    state = experiment.build(config).new_state()
    averaged = {"params": jitter(state.params, seed=11), "batch_stats": state.batch_stats}
    workdir = write_workdir(tmp_path / "ema", config, {4: state.replace(ema=averaged).checkpoint_tree()})
    run = inference.restore_run(workdir)
    chex.assert_trees_all_close(run.variables, averaged)
    # The checkpoint of a run without an EMA does not fit a config that keeps one.
    workdir = write_workdir(tmp_path / "no_ema", config, {4: state.replace(ema=None).checkpoint_tree()})
    with pytest.raises(checkpoint.CheckpointError, match=r"ema/\S+ \(.*\) is not in the checkpoint"):
        inference.restore_run(workdir)


def test_weights_of_another_shape_name_the_parameter_and_both_shapes(tmp_path, built, new_state, capsys):
    tree = jax.tree.map(lambda leaf: leaf, new_state.checkpoint_tree())  # new containers: the fixture stays whole
    features = tree["params"]["head"]["kernel"].shape[0]
    tree["params"]["head"]["kernel"] = jnp.zeros((features, 7))
    workdir = write_workdir(tmp_path / "other", built.config, {4: tree})
    message = cli_error(evaluate_tool.main, ["--workdir", str(workdir)], capsys)
    assert f"params/head/kernel is ({features}, 7) in the checkpoint but ({features}, 10) in the model" in message
    assert "checkpoint 4" in message


def test_a_damaged_checkpoint_is_named_in_one_line(tmp_path, built, new_state, capsys):
    workdir = write_workdir(tmp_path / "damaged", built.config, {4: new_state.checkpoint_tree()})
    for path in (workdir / "checkpoints" / "4" / "state").rglob("*"):
        if path.is_file() and path.stat().st_size > 1000:
            path.write_bytes(path.read_bytes()[:100])  # a copy cut short
    message = cli_error(evaluate_tool.main, ["--workdir", str(workdir)], capsys)
    assert f"checkpoint 4 in {workdir / 'checkpoints'} cannot be read" in message


def test_a_config_json_from_before_a_key_existed_still_loads(run_dir, tmp_path):
    saved = configuration.read_json(run_dir / configuration.CONFIG_FILE)
    del saved["train"]["label_smoothing"]
    saved["train"]["retired_key"] = 1
    (tmp_path / configuration.CONFIG_FILE).write_text(json.dumps(saved))
    config = inference.load_run_config(tmp_path)
    assert config.train.label_smoothing == experiment.TRAIN_DEFAULTS["label_smoothing"]
    assert "retired_key" not in config.train
    assert config.model.name == "resnet8_tiny"


def test_a_config_json_that_kept_a_train_sample_larger_than_its_train_split_reads_as_the_sample_scored(
    run_dir, tmp_path, capsys
):
    # Before such a sample was refused, the run scored its whole train split and config.json kept the size asked:
    # the tools read what was scored, and a tool that never scores it (predict) still runs.
    workdir = tmp_path / "run"
    shutil.copytree(run_dir, workdir)
    saved = configuration.read_json(workdir / configuration.CONFIG_FILE)
    train = saved["data"]["split_sizes"]["train"]
    saved["data"]["train_eval_size"] = train + 1000
    configuration.write_json(saved, workdir / configuration.CONFIG_FILE)
    assert inference.load_run_config(workdir).data.train_eval_size == train
    (image,) = save_images(split_arrays(tiny_config(), "test").images[:1], tmp_path)
    assert predict_tool.main(["--workdir", str(workdir), str(image)]) == 0
    assert "error" not in capsys.readouterr().err


def test_bad_workdirs_and_checkpoints_get_one_line_errors(run_dir, built, new_state, tmp_path, capsys):
    assert "not a folder" in cli_error(evaluate_tool.main, ["--workdir", str(tmp_path / "missing")], capsys)
    assert "no config.json" in cli_error(evaluate_tool.main, ["--workdir", str(tmp_path)], capsys)
    (tmp_path / "config.json").write_text("{not json")
    assert "cannot be read as JSON" in cli_error(evaluate_tool.main, ["--workdir", str(tmp_path)], capsys)
    (tmp_path / "config.json").write_text((run_dir / "config.json").read_text())
    assert "no checkpoints/ folder" in cli_error(predict_tool.main, ["--workdir", str(tmp_path), "x.png"], capsys)
    (tmp_path / "checkpoints").mkdir()
    message = cli_error(export_tool.main, ["--workdir", str(tmp_path), "--out", "m.bin"], capsys)
    assert "holds no checkpoint" in message
    message = cli_error(evaluate_tool.main, ["--workdir", str(run_dir), "--checkpoint", "7"], capsys)
    assert "checkpoint step 7 is not in" in message
    assert message.endswith("available: 4, 8, latest, best")
    # A run that ranked no checkpoint (no validation split) is not offered a best it would then refuse.
    unranked = tmp_path / "unranked"
    (unranked / "config.json").parent.mkdir()
    (unranked / "config.json").write_text((run_dir / "config.json").read_text())
    save_checkpoint(unranked, 4, trained_state(built, new_state, seed=4).checkpoint_tree())
    message = cli_error(evaluate_tool.main, ["--workdir", str(unranked), "--checkpoint", "7"], capsys)
    assert message.endswith("available: 4, latest")
    message = cli_error(evaluate_tool.main, ["--workdir", str(run_dir), "--checkpoint", "newest"], capsys)
    assert "not latest, best or a step number" in message
    message = cli_error(
        export_tool.main, ["--workdir", str(run_dir), "--out", "m.bin", "--platforms", "cpu,ipu"], capsys
    )
    assert "ipu not known" in message
    # Another holdout draw of the run's own data would score rows it trained on as "validation".
    for key in ("validation_seed=1", "validation_size=0.2"):
        message = cli_error(evaluate_tool.main, ["--workdir", str(run_dir), f"--config.data.{key}"], capsys)
        assert f"--config.data.{key.split('=')[0]}: this run's validation split is the rows it held out" in message


def test_a_validation_split_the_run_lacks_is_refused_before_any_scoring(run_dir, tmp_path, capsys):
    for main, out in ((evaluate_tool.main, tmp_path / "eval"), (features_tool.main, tmp_path / "features.npz")):
        message = cli_error(main, ["--workdir", str(run_dir), "--split", "validation", "--out", str(out)], capsys)
        assert message == (
            "error: --split validation: this run has no validation split (it held none out of train); score "
            "--split test or --split train"
        )
        assert not out.exists()


def test_tool_descriptions_are_whole_sentences(capsys):
    for tool in (evaluate_tool, predict_tool, export_tool, plots_tool):
        description = " ".join(tool.__doc__.split())
        assert description.endswith("."), tool.__name__
        with pytest.raises(SystemExit) as exit_info:
            tool.main(["--help"])
        assert exit_info.value.code == 0
        assert description in " ".join(capsys.readouterr().out.split()), tool.__name__


def test_curves_overlay_several_runs(run_dir, tmp_path, capsys):
    single = plots.write_curves([run_dir], tmp_path / "one.png")
    several = plots.write_curves([run_dir, run_dir], tmp_path / "two.png", labels=["a", "b"])
    for path in (single, several):
        with Image.open(path) as image:
            assert image.format == "PNG"
            assert image.size[0] > 1000
    assert plots_tool.main(["--workdir", str(run_dir), "--out", str(tmp_path / "cli.png")]) == 0
    assert (tmp_path / "cli.png").is_file()
    assert "no metrics.jsonl" in cli_error(plots_tool.main, ["--workdir", str(tmp_path)], capsys)


def save_images(images, folder):
    paths = [folder / f"image_{index}.png" for index in range(len(images))]
    for path, image in zip(paths, images, strict=True):
        Image.fromarray(image).save(path)
    return paths


def test_predict_top1_on_training_images_is_the_models_argmax(run, tmp_path):
    images = split_arrays(run.config, "train").images[:6]
    predictions = predict_tool.predict_files(run, save_images(images, tmp_path), top_k=3)
    logits = direct_logits(run, images)
    assert [prediction.top_k[0]["index"] for prediction in predictions] == logits.argmax(-1).tolist()
    softmax = np.asarray(jax.nn.softmax(logits.astype(np.float64), axis=-1))
    for prediction, expected in zip(predictions, softmax, strict=True):
        probabilities = [entry["probability"] for entry in prediction.top_k]
        assert probabilities == sorted(probabilities, reverse=True)
        np.testing.assert_allclose(probabilities, np.sort(expected)[::-1][:3], rtol=1e-4)
        assert prediction.top_k[0]["class"] == run.class_names[prediction.top_k[0]["index"]]


def test_predict_refuses_more_classes_than_the_run_has_in_one_line_and_lists_3_unless_asked(
    run_dir, run, tmp_path, capsys
):
    (image,) = save_images(split_arrays(run.config, "test").images[:1], tmp_path)
    # A list cut to the run's 10 classes would not be the 11 asked for.
    message = cli_error(predict_tool.main, ["--workdir", str(run_dir), str(image), "--top-k", "11"], capsys)
    assert message == "error: --top-k=11: this run has 10 classes; give 1 to 10 (--top-k=10 lists every class)"
    assert predict_tool.main(["--workdir", str(run_dir), str(image), "--json"]) == 0
    [prediction] = json.loads(capsys.readouterr().out)
    assert len(prediction["top_k"]) == predict_tool.DEFAULT_TOP_K == 3


def test_predict_reports_bad_files_and_still_predicts_the_others(run_dir, run, tmp_path, capsys):
    (good,) = save_images(split_arrays(run.config, "train").images[:1], tmp_path)
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("not an image")
    missing = tmp_path / "missing.jpg"
    argv = ["--workdir", str(run_dir), str(good), str(not_an_image), str(missing), "--json", "--top-k", "2"]
    assert predict_tool.main(argv) == 2
    captured = capsys.readouterr()
    results = json.loads(captured.out)
    assert [result["image"] for result in results] == [str(good), str(not_an_image), str(missing)]
    assert len(results[0]["top_k"]) == 2
    errors = captured.err.strip().splitlines()
    assert errors == [f"error: {results[1]['error']}", f"error: {results[2]['error']}"]
    assert str(not_an_image) in errors[0]
    assert "not an image" in errors[0]
    assert str(missing) in errors[1]
    assert "no such file" in errors[1]


_LOAD_WITH_JAX_ONLY = textwrap.dedent(
    """
    import sys
    for name in ("resnet_jax", "flax", "optax", "orbax", "ml_collections"):
        sys.modules[name] = None  # any import of them now fails
    try:
        import resnet_jax
    except ImportError:
        pass
    else:
        raise SystemExit("resnet_jax is importable")
    import jax
    import numpy as np
    exported = jax.export.deserialize(open(sys.argv[1], "rb").read())
    images = np.load(sys.argv[2])
    np.save(sys.argv[3], np.asarray(exported.call(images)))
    np.save(sys.argv[4], np.asarray(exported.call(images[:3])))
    """
)


def test_exported_model_runs_with_jax_alone_and_matches_evaluate(run_dir, run, evaluation, tmp_path, capsys):
    model_path = tmp_path / "model.bin"
    assert export_tool.main(["--workdir", str(run_dir), "--out", str(model_path), "--platforms", "cpu"]) == 0
    assert str(model_path) in capsys.readouterr().out
    description = json.loads(model_path.with_name("model.bin.json").read_text())
    assert description["input"]["shape"] == ["batch", *run.input_shape]
    assert description["class_names"] == list(run.class_names)
    assert (description["step"], description["platforms"]) == (8, ["cpu"])
    images = split_arrays(run.config, "test").images[:7]
    np.save(tmp_path / "images.npy", images)
    script = tmp_path / "load.py"
    script.write_text(_LOAD_WITH_JAX_ONLY)
    outputs = [tmp_path / "logits7.npy", tmp_path / "logits3.npy"]
    subprocess.run(
        [PYTHON, str(script), str(model_path), str(tmp_path / "images.npy"), *map(str, outputs)],
        check=True,
        cwd=tmp_path,
        env=subprocess_env(JAX_PLATFORMS="cpu"),
        timeout=300,
    )
    chex.assert_trees_all_close(np.load(outputs[0]), evaluation.logits[:7], atol=1e-5, rtol=1e-5)
    chex.assert_trees_all_close(np.load(outputs[1]), evaluation.logits[:3], atol=1e-5, rtol=1e-5)


def test_export_refuses_a_folder_as_its_file(run, tmp_path):
    with pytest.raises(inference.RunError, match="is a folder"):
        export.write_export(run, tmp_path)


def test_evaluate_on_three_devices_gives_the_single_device_report(run_dir, run, evaluation, tmp_path):
    # train.batch_size=64 does not divide by 3 devices; evaluation takes no training batch, so it must not matter.
    assert run.config.train.batch_size % 3
    out = tmp_path / "eval"
    completed = subprocess.run(
        [PYTHON, "-m", tools_main.__name__, "evaluate", "--workdir", str(run_dir), "--out", str(out), "--tta", "none"],
        env=subprocess_env(JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=3"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr
    report = json.loads((out / "report.json").read_text())
    assert (report["devices"], report["num_examples"]) == (3, TEST_EXAMPLES)
    # Three devices split each batch in three, so XLA sums in another order: equal to rounding, and the accuracy
    # equal but for examples whose top logits are within that rounding.
    allowed = near_ties(evaluation.logits, 1e-4) / TEST_EXAMPLES
    assert abs(report["accuracy"] - evaluation.accuracy) <= allowed + 1e-9
    assert report["loss"] == pytest.approx(evaluation.loss, rel=1e-5)
    assert "per-class accuracy" in completed.stdout
    assert run.class_names[0] in completed.stdout


def test_a_run_cut_short_by_num_steps_within_its_warm_up_epoch_is_read_by_every_tool(
    tmp_path, built, new_state, capsys
):
    # 256 examples in batches of 64: the 1-epoch warm-up is 4 steps of this 16-step run, which trains. The tools'
    # copy of the run steps one example at a time, where one epoch is 256 steps, longer than the run.
    config = tiny_config(**{"train.num_steps": 16, "train.num_epochs": 0, "schedule.warmup_epochs": 1.0})
    assert experiment.build(config).total_steps == 16
    assert_every_tool_reads(write_workdir(tmp_path / "run", config, {16: new_state.checkpoint_tree()}), capsys)


def test_a_run_that_mixed_images_from_weights_since_moved_is_read_by_every_tool(tmp_path, new_state, capsys):
    # Mixup needs two images in a batch, the tools' copy of the run has one; the weights it started from are in its
    # checkpoints, wherever the file it read them from went.
    config = tiny_config(**{"augment.mixup_alpha": 0.2, "finetune.source": str(tmp_path / "moved.safetensors")})
    assert_every_tool_reads(write_workdir(tmp_path / "run", config, {8: new_state.checkpoint_tree()}), capsys)


def assert_every_tool_reads(workdir, capsys):
    (image,) = save_images(split_arrays(tiny_config(), "test").images[:1], workdir.parent)
    run = ["--workdir", str(workdir)]
    out = workdir.parent
    assert evaluate_tool.main([*run, "--out", str(out / "eval")]) == 0
    assert predict_tool.main([*run, str(image)]) == 0
    assert features_tool.main([*run, "--out", str(out / "features.npz")]) == 0
    assert export_tool.main([*run, "--out", str(out / "model.bin"), "--platforms", "cpu"]) == 0
    assert convert_tool.main([*run, "--to", str(out / "weights.safetensors")]) == 0
    assert "error" not in capsys.readouterr().err


def test_a_run_on_official_files_since_moved_exports_and_predicts_and_evaluate_names_the_folder(tmp_path, capsys):
    files = tmp_path / "fashion"
    files.mkdir()  # the folder of the official files the run was given
    config = tiny_config(**{"data.dataset": "fashion_mnist", "data.source": "files", "data.files_dir": str(files)})
    built = experiment.build(config)  # as a run starts: it records the splits' sizes in its config
    state = built.new_state()
    variables = {"params": jitter(state.params, seed=3), "batch_stats": state.batch_stats}
    workdir = write_workdir(
        tmp_path / "run", built.config, {8: state.replace(params=variables["params"]).checkpoint_tree()}
    )
    files.rename(tmp_path / "moved")
    run = ["--workdir", str(workdir)]
    # export and predict read no training data.
    assert export_tool.main([*run, "--out", str(tmp_path / "model.bin"), "--platforms", "cpu"]) == 0
    description = json.loads((tmp_path / "model.bin.json").read_text())
    assert description["class_names"] == list(data.DATASETS["fashion_mnist"].class_names)
    assert description["input"]["shape"] == ["batch", 32, 32, 1]
    grey = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)  # a Fashion-MNIST-sized image
    Image.fromarray(grey).save(tmp_path / "query.png")
    capsys.readouterr()
    assert predict_tool.main([*run, str(tmp_path / "query.png"), "--json", "--top-k", "10"]) == 0
    [prediction] = json.loads(capsys.readouterr().out)
    padded = np.pad(grey, 2)[None, :, :, None]  # zero-padded, centred, to the run's 32x32
    logits = built.model.apply(variables, normalized(built.step_config, padded), train=False)
    expected = np.asarray(jax.nn.softmax(np.asarray(logits, np.float64), axis=-1))[0]
    got = {entry["index"]: entry["probability"] for entry in prediction["top_k"]}
    np.testing.assert_allclose([got[index] for index in range(10)], expected, rtol=1e-4)
    # The tools that read the run's splits name the folder that is gone, in one line (after the log line of the
    # stage that reads it, where progress goes to log lines).
    for main, extra in ((evaluate_tool.main, []), (features_tool.main, ["--out", str(tmp_path / "features.npz")])):
        with pytest.raises(SystemExit) as stop:
            main([*run, *extra])
        assert stop.value.code == 2
        errors = [line for line in capsys.readouterr().err.splitlines() if not line.endswith("compile included ...")]
        assert len(errors) == 1 and errors[0].startswith(f"error: {str(files)!r} does not exist"), errors


# What `library.unavailable_reason` says on a machine where the oneDNN extension was never built.
NOT_BUILT = "the oneDNN extension is not built (libresnet_jax_onednn.so); build it with bash scripts/setup.sh"
# A run recorded on an accelerator: XLA's kernels (oneDNN's run on CPUs only).
ON_A_GPU = {
    "model.conv_backend": "xla",
    "model.norm_backend": "xla",
    "platform": "gpu",
    "device_kind": "NVIDIA H100 80GB HBM3",
}


def recorded_workdir(run_dir, built, destination, ran, section=None):
    """A copy of `run_dir` whose config.json keeps the record a trainer writes (`record.make_record`), saying the
    run ran as `ran` says (elsewhere), its config's `section` keys changed."""
    shutil.copytree(run_dir, destination)
    config = configuration.apply_overrides(built.config, section or {})
    run_record = record.make_record(None, config, config, record.what_ran(built.model) | ran, [], 0)
    configuration.write_json(
        {**config.to_dict(), configuration.RECORD_KEY: run_record}, destination / configuration.CONFIG_FILE
    )
    return destination


def by_hand_logits(run, images, dtype):
    """The run's weights applied by a model built by hand in `dtype` on XLA's kernels."""
    model = models.get_model(run.config.model.name, num_classes=10, dtype=dtype, conv_backend="xla")
    return np.asarray(model.apply(run.variables, normalized(run.experiment.step_config, images), train=False))


def test_the_tools_compute_in_the_dtype_and_on_the_kernels_the_run_recorded(run_dir, built, run, tmp_path):
    # A run that computed in the dtype 'auto' does not pick here, on XLA's kernels (as on a GPU), its config saying
    # 'auto' for all three: here 'auto' would pick another dtype, and oneDNN's kernels where they are built.
    here = jnp.dtype(backend.auto_dtype("auto")).name
    elsewhere = "bfloat16" if here == "float32" else "float32"
    section = {"model.dtype": "auto", "model.conv_backend": "auto", "model.norm_backend": "auto"}
    workdir = recorded_workdir(run_dir, built, tmp_path / "gpu", ON_A_GPU | {"model.dtype": elsewhere}, section)
    recorded = inference.restore_run(workdir)
    model = recorded.experiment.model
    assert (jnp.dtype(model.dtype).name, model.conv_backend, model.norm_backend) == (elsewhere, "xla", "xla")
    # The same weights, scored in that dtype: against a float32 model built by hand, to float32's rounding, or off
    # by bfloat16's (its 8 bits of mantissa: 4e-3 of each value, over a network).
    images = split_arrays(run.config, "test").images
    chex.assert_trees_all_equal(recorded.variables, run.variables)
    logits = inference.evaluate_split(recorded).logits
    off = np.abs(logits - by_hand_logits(run, images, "float32")).max()
    assert off < 1e-4 if elsewhere == "float32" else 1e-4 < off < 3e-2


def test_recorded_kernels_that_cannot_run_here_give_way_to_xlas_in_one_log_line(
    run_dir, built, run, tmp_path, capsys, monkeypatch
):
    # The run computed on oneDNN; this machine has no oneDNN extension.
    monkeypatch.setattr(library, "unavailable_reason", lambda: NOT_BUILT)
    onednn = {"model.conv_backend": "onednn", "model.norm_backend": "onednn", "model.dtype": "float32"}
    workdir = recorded_workdir(run_dir, built, tmp_path / "cpu", onednn)
    capsys.readouterr()
    assert evaluate_tool.main(["--workdir", str(workdir), "--out", str(tmp_path / "eval")]) == 0
    said = [line for line in capsys.readouterr().err.splitlines() if "onednn" in line]
    assert len(said) == 1, said
    assert "convolutions and BatchNorm on onednn" in said[0]
    assert NOT_BUILT in said[0] if jax.default_backend() == "cpu" else "runs on CPUs only" in said[0]
    assert "computing on xla instead" in said[0] and "last bits" in said[0]
    recorded = inference.restore_run(workdir)
    assert (recorded.experiment.model.conv_backend, recorded.experiment.model.norm_backend) == ("xla", "xla")
    images = split_arrays(run.config, "test").images
    chex.assert_trees_all_close(
        inference.evaluate_split(recorded).logits, by_hand_logits(run, images, "float32"), atol=1e-4, rtol=1e-4
    )


def test_kernels_named_on_a_tool_win_over_the_record_and_the_rest_of_the_model_is_the_runs(
    run_dir, built, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(library, "unavailable_reason", lambda: NOT_BUILT)
    onednn = {"model.conv_backend": "onednn", "model.norm_backend": "onednn", "model.dtype": "float32"}
    workdir = recorded_workdir(run_dir, built, tmp_path / "cpu", onednn)
    run = ["--workdir", str(workdir), "--out", str(tmp_path / "eval")]
    capsys.readouterr()
    # Asked for by name: no fall-back to tell of, and BatchNorm follows the convolutions.
    assert evaluate_tool.main([*run, "--config.model.conv_backend=xla"]) == 0
    assert "onednn" not in capsys.readouterr().err
    named = inference.restore_run(workdir, overrides=["model.conv_backend=xla"]).experiment.model
    assert (named.conv_backend, named.norm_backend) == ("xla", "xla")
    # Kernels that cannot run here, named, are refused in one line saying why.
    line = cli_error(evaluate_tool.main, [*run, "--config.model.conv_backend=onednn"], capsys)
    assert "model.conv_backend='onednn' cannot run" in line and NOT_BUILT in line
    # The model's other keys are the run's.
    line = cli_error(evaluate_tool.main, [*run, "--config.model.dtype=bfloat16"], capsys)
    assert line.startswith("error: --config.model.dtype: a trained run's tools take data.* and eval.* overrides")
