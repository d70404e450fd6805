"""The tools on a trained run: evaluate, plots, predict and export, checked against direct computations.

One tiny run is trained per test session (shared by pytest-xdist workers through a file lock).
"""

import csv
import json
import runpy
import subprocess
import textwrap

import chex
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from filelock import FileLock
from PIL import Image

from resnet_jax import data, evaluate, export, metrics, plots, predict, trainer
from tests.conftest import PYTHON, REPO_ROOT, subprocess_env

TEST_EXAMPLES = 100  # not a multiple of the eval batch: the padded, masked last batch is exercised


def _tiny_config():
    config = runpy.run_path(str(REPO_ROOT / "configs" / "smoke.py"))["get_config"]()
    config.data.synthetic_train_examples = 256
    config.data.synthetic_test_examples = TEST_EXAMPLES
    config.train.num_epochs = 2
    return config


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory, request):
    """A workdir trained for two epochs (checkpoints at steps 4 and 8), built once per session."""
    under_xdist = hasattr(request.config, "workerinput")
    root = tmp_path_factory.getbasetemp().parent if under_xdist else tmp_path_factory.getbasetemp()
    workdir = root / "tools_run"
    with FileLock(str(root / "tools_run.lock")):
        if not (workdir / "trained").exists():
            trainer.train_and_evaluate(_tiny_config(), workdir, mode="fresh")
            (workdir / "trained").touch()
    return workdir


@pytest.fixture(scope="session")
def run(run_dir):
    return evaluate.restore_run(run_dir, "latest")


@pytest.fixture(scope="session")
def evaluation(run):
    return evaluate.evaluate_split(run, "test", tta_flip=False)


def _test_split(run):
    config = run.config
    return data.load_split(
        config.data.dataset,
        "test",
        source=config.data.source,
        synthetic_examples=config.data.synthetic_test_examples,
        seed=config.seed,
    )


def _direct_logits(run, images):
    """The model applied by hand: (x / 255 - mean) / std, inference-mode BatchNorm."""
    mean, std = (np.asarray(v, np.float32) for v in (run.experiment.step_config.mean, run.experiment.step_config.std))
    inputs = (images.astype(np.float32) / 255.0 - mean) / std
    return np.asarray(run.experiment.model.apply(run.variables, jnp.asarray(inputs), train=False))


def _train_images(run, count):
    config = run.config
    split = data.load_split(
        config.data.dataset,
        "train",
        source=config.data.source,
        synthetic_examples=config.data.synthetic_train_examples,
        seed=config.seed,
    )
    return split.images[:count]


def near_ties(logits: np.ndarray, within: float) -> int:
    """How many examples have their top two logits within `within`: where logits computed in another order (the
    same model, other kernels or batch splits) may change the prediction."""
    top_two = np.sort(logits, axis=-1)[:, -2:]
    return int(np.sum(top_two[:, 1] - top_two[:, 0] <= within))


def test_evaluation_equals_a_direct_computation_on_every_example(run, evaluation):
    split = _test_split(run)
    logits = _direct_logits(run, split.images)
    assert evaluation.num_examples == TEST_EXAMPLES
    np.testing.assert_array_equal(evaluation.labels, split.labels)
    chex.assert_trees_all_close(evaluation.logits, logits, atol=1e-4, rtol=1e-4)
    # Accuracy counts argmaxes: only an example whose top logits are within the logits' tolerance may differ.
    allowed = near_ties(logits, 2 * (1e-4 + 1e-4 * float(np.abs(logits).max()))) / TEST_EXAMPLES
    assert abs(evaluation.accuracy - np.mean(logits.argmax(-1) == split.labels)) <= allowed + 1e-9
    loss = optax.softmax_cross_entropy_with_integer_labels(jnp.asarray(logits), jnp.asarray(split.labels)).mean()
    assert evaluation.loss == pytest.approx(float(loss), rel=1e-5)


def test_report_confusion_matrix_and_heat_map_agree(run, evaluation, tmp_path):
    report, paths = evaluate.write_outputs(run, evaluation, tmp_path)
    assert report["step"] == 8
    assert report["devices"] == 1
    assert report["num_examples"] == TEST_EXAMPLES
    with paths["confusion_matrix.csv"].open() as handle:
        rows = list(csv.reader(handle))
    assert rows[0][1:] == list(run.class_names)
    assert [row[0] for row in rows[1:]] == list(run.class_names)
    matrix = np.asarray([[int(cell) for cell in row[1:]] for row in rows[1:]])
    assert matrix.sum() == TEST_EXAMPLES
    np.testing.assert_array_equal(matrix.sum(axis=1), np.bincount(evaluation.labels, minlength=10))
    assert np.trace(matrix) / TEST_EXAMPLES == pytest.approx(report["accuracy"])
    for index, entry in enumerate(json.loads(paths["report.json"].read_text())["per_class"]):
        assert entry["class"] == run.class_names[index]
        expected = matrix[index, index] / matrix[index].sum() if matrix[index].sum() else None
        assert entry["accuracy"] == pytest.approx(expected)
    with Image.open(paths["confusion_matrix.png"]) as image:
        assert image.format == "PNG"
        assert min(image.size) > 300


def test_flip_tta_averages_the_image_and_its_mirror(run):
    flipped = evaluate.evaluate_split(run, "test", tta_flip=True)
    images = _test_split(run).images
    expected = (_direct_logits(run, images) + _direct_logits(run, images[:, :, ::-1])) / 2
    chex.assert_trees_all_close(flipped.logits, expected, atol=1e-4, rtol=1e-4)


def test_an_earlier_checkpoint_can_be_chosen_by_step(run_dir, run):
    earlier = evaluate.restore_run(run_dir, "4")
    assert (earlier.step, run.step) == (4, 8)
    with pytest.raises(AssertionError):
        chex.assert_trees_all_close(earlier.variables["params"], run.variables["params"])


def test_best_checkpoint_is_the_one_with_the_highest_test_accuracy(run_dir):
    evals = [record for record in metrics.read_metrics(run_dir) if "test_accuracy" in record]
    best = max(evals, key=lambda record: record["test_accuracy"])["step"]
    assert evaluate.restore_run(run_dir, "best").step == best


def _cli_error(main, argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    return lines[0]


def test_bad_workdirs_and_checkpoints_get_one_line_errors(run_dir, tmp_path, capsys):
    assert "not a folder" in _cli_error(evaluate.main, ["--workdir", str(tmp_path / "missing")], capsys)
    assert "no config.json" in _cli_error(evaluate.main, ["--workdir", str(tmp_path)], capsys)
    (tmp_path / "config.json").write_text((run_dir / "config.json").read_text())
    assert "no checkpoints/ folder" in _cli_error(predict.main, ["--workdir", str(tmp_path), "x.png"], capsys)
    (tmp_path / "checkpoints").mkdir()
    assert "holds no checkpoint" in _cli_error(export.main, ["--workdir", str(tmp_path), "--out", "m.bin"], capsys)
    message = _cli_error(evaluate.main, ["--workdir", str(run_dir), "--checkpoint", "7"], capsys)
    assert "checkpoint step 7 is not in" in message
    assert "available: 4, 8" in message
    with pytest.raises(SystemExit):
        evaluate.main(["--workdir", str(run_dir), "--checkpoint", "newest"])
    assert "not latest, best or a step number" in capsys.readouterr().err


def test_curves_overlay_several_runs(run_dir, tmp_path, capsys):
    single = plots.write_curves([run_dir], tmp_path / "one.png")
    several = plots.write_curves([run_dir, run_dir], tmp_path / "two.png", labels=["a", "b"])
    for path in (single, several):
        with Image.open(path) as image:
            assert image.format == "PNG"
            assert image.size[0] > 1000
    assert "no metrics.jsonl" in _cli_error(plots.main, ["--workdir", str(tmp_path)], capsys)


def test_predict_top1_on_training_images_is_the_models_argmax(run, tmp_path):
    images = _train_images(run, 6)
    paths = []
    for index, image in enumerate(images):
        paths.append(tmp_path / f"train_{index}.png")
        Image.fromarray(image).save(paths[-1])
    predictions = predict.predict_files(run, paths, top_k=3)
    expected = _direct_logits(run, images).argmax(-1)
    assert [p.top_k[0]["index"] for p in predictions] == expected.tolist()
    for prediction in predictions:
        probabilities = [entry["probability"] for entry in prediction.top_k]
        assert len(probabilities) == 3
        assert probabilities == sorted(probabilities, reverse=True)
        assert prediction.top_k[0]["class"] == run.class_names[prediction.top_k[0]["index"]]


def test_predict_reports_bad_files_and_still_predicts_the_others(run_dir, run, tmp_path, capsys):
    good = tmp_path / "good.png"
    Image.fromarray(_train_images(run, 1)[0]).save(good)
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("not an image")
    missing = tmp_path / "missing.jpg"
    argv = ["--workdir", str(run_dir), str(good), str(not_an_image), str(missing), "--json", "--top-k", "2"]
    with pytest.raises(SystemExit) as exit_info:
        predict.main(argv)
    assert exit_info.value.code == 2
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


def test_exported_model_runs_with_jax_alone_and_matches_evaluate(run, evaluation, tmp_path):
    model_path, description_path = export.write_export(run, tmp_path / "model.bin")
    description = json.loads(description_path.read_text())
    assert description["input"]["shape"] == ["batch", *run.input_shape]
    assert description["class_names"] == list(run.class_names)
    images = _test_split(run).images[:7]
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


def test_evaluate_cli_on_two_devices_gives_the_single_device_report(run_dir, run, evaluation, tmp_path):
    out = tmp_path / "eval"
    completed = subprocess.run(
        [PYTHON, "-m", "resnet_jax.evaluate", "--workdir", str(run_dir), "--out", str(out), "--tta", "none"],
        env=subprocess_env(JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["devices"] == 2
    # Two devices split each batch in two, so XLA sums in another order: equal to rounding, and the accuracy
    # equal but for examples whose top logits are within that rounding.
    allowed = near_ties(evaluation.logits, 1e-4) / TEST_EXAMPLES
    assert abs(report["accuracy"] - evaluation.accuracy) <= allowed + 1e-9
    assert report["loss"] == pytest.approx(evaluation.loss, rel=1e-5)
    assert "per-class accuracy" in completed.stdout
    assert run.class_names[0] in completed.stdout
