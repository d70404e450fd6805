"""The tools on a run of the grain loader: `evaluate` scores a split through the run's own evaluation stream (the centre
crop, padding and unreadable files masked out), `features` embeds a split through it, and `predict` prepares a file
as that stream does, where the device loader's decoding squashes each whole image. The folder's images are noise of
other widths than heights, so that a squash and a centre crop give other pixels."""

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import chex
import jax
import numpy as np
import pytest
from PIL import Image

from resnet_jax import images, inference, metrics, optim, trainer
from resnet_jax.data import crops, listing
from resnet_jax.tools import evaluate as evaluate_tool
from resnet_jax.tools import features as features_tool
from resnet_jax.tools import predict as predict_tool
from tests.test_stream import grain_config, write_folder
from tests.test_tools import normalized

UNREADABLE = "test/bee/0.jpg"  # a JPEG, as write_folder writes every other file


@dataclasses.dataclass
class GrainRun:
    files: list[Path]  # the test files the run could decode, in the split's order
    labels: np.ndarray  # theirs
    workdir: Path
    run: inference.TrainedRun  # its latest checkpoint, restored
    network: Callable  # uint8 images -> logits: the model applied by hand to the normalised images

    def logits(self, images: np.ndarray) -> np.ndarray:
        return np.asarray(self.network(normalized(self.run.experiment.step_config, images)))


@pytest.fixture(scope="module")
def grain_run(tmp_path_factory):
    """A finished grain run of one epoch (4 steps) on noise images, one test file of them unreadable."""
    root = tmp_path_factory.mktemp("streamed") / "pets"
    written = write_folder(root)
    assert UNREADABLE in written
    rng = np.random.default_rng(1)
    for path in written:
        with Image.open(root / path) as image:
            width, height = image.size
        Image.fromarray(rng.integers(0, 256, (height, width, 3), np.uint8)).save(root / path, quality=95)
    (root / UNREADABLE).write_bytes(b"not an image")
    config = grain_config(root, **{"train.num_epochs": 1, "data.mean": (0.5,) * 3, "data.std": (0.25,) * 3})
    workdir = root.parent / "run"
    trainer.train_and_evaluate(config, workdir)
    listed = listing.open_listing(str(root))
    readable = [index for index, name in enumerate(listed.names["test"]) if name != UNREADABLE]
    files = [root / listed.names["test"][index] for index in readable]
    run = inference.restore_run(workdir)
    network = jax.jit(lambda inputs: run.experiment.model.apply(run.variables, inputs, train=False))
    return GrainRun(files, listed.labels["test"][readable], workdir, run, network)


def final_test_record(workdir):
    return [record for record in metrics.read_metrics(workdir) if "test_accuracy" in record][-1]


def eval_crops(files):
    return np.stack([crops.eval_image(path.read_bytes(), 8, 0) for path in files])


def test_evaluate_scores_the_runs_own_evaluation_stream(grain_run):
    files, labels, run = grain_run.files, grain_run.labels, grain_run.run
    record = final_test_record(grain_run.workdir)
    evaluation = inference.evaluate_split(run, "test")
    # The run's own record of its last evaluation: the 9 test files less the unreadable one, 3 rows of padding.
    assert record["test_examples"] == evaluation.num_examples == 8
    for key in ("loss", "accuracy", "top5_accuracy"):
        assert evaluation.summary[f"test_{key}"] == pytest.approx(record[f"test_{key}"], rel=1e-5, abs=1e-6)
    # Per example, in the split's order: the network on each file's centre crop.
    np.testing.assert_array_equal(evaluation.labels, labels)
    chex.assert_trees_all_close(evaluation.logits, grain_run.logits(eval_crops(files)), atol=1e-4, rtol=1e-4)
    # The device loader's decoding (each whole image squashed) scores other pixels: other logits, another loss.
    squashed = grain_run.logits(
        np.stack([images.read_image(path, run.experiment.info, run.input_shape) for path in files])
    )
    assert np.abs(squashed - evaluation.logits).max() > 1e-2
    assert abs(float(np.mean(optim.cross_entropy(squashed, labels))) - record["test_loss"]) > 1e-3
    # Flip averaging still applies: the mean of each crop's logits and its mirror's.
    flipped = inference.evaluate_split(run, "test", tta_flip=True)
    mirrored = grain_run.logits(eval_crops(files)[:, :, ::-1])
    chex.assert_trees_all_close(flipped.logits, (evaluation.logits + mirrored) / 2, atol=1e-4, rtol=1e-4)


def test_the_evaluate_tool_reports_the_runs_final_test_metrics(grain_run, tmp_path, capsys):
    record = final_test_record(grain_run.workdir)
    assert evaluate_tool.main(["--workdir", str(grain_run.workdir), "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["num_examples"] == 8
    assert report["accuracy"] == pytest.approx(record["test_accuracy"], abs=1e-6)
    assert report["loss"] == pytest.approx(record["test_loss"], rel=1e-5)
    assert sum(entry["examples"] for entry in report["per_class"]) == 8


def test_predict_prepares_a_file_as_the_runs_evaluation_does(grain_run):
    path, run = grain_run.files[0], grain_run.run
    (prediction,) = predict_tool.predict_files(run, [path], top_k=3)
    probabilities = np.zeros(3)
    for entry in prediction.top_k:
        probabilities[entry["index"]] = entry["probability"]
    logits = grain_run.logits(eval_crops([path]))[0].astype(np.float64)
    expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)
    squashed = grain_run.logits(images.read_image(path, run.experiment.info, run.input_shape)[None])[0]
    assert np.abs(squashed - logits).max() > 1e-2


def test_another_folder_given_to_a_grain_run_is_scored_not_refused_as_its_own_changed(grain_run, tmp_path):
    other = tmp_path / "others"
    write_folder(other, seed=2)
    run = inference.restore_run(grain_run.workdir, overrides=[f"data.files_dir={other}"])
    assert inference.evaluate_split(run, "test").num_examples == 9


def test_features_of_a_grain_run_are_its_networks_on_the_centre_crops_it_evaluated(grain_run, tmp_path, monkeypatch):
    programs, make_program = [], features_tool.feature_program

    def recorded_program(*args):
        programs.append(make_program(*args))
        return programs[-1]

    monkeypatch.setattr(features_tool, "feature_program", recorded_program)
    out = tmp_path / "emb.npz"
    # 9 test files in batches of 4: three batches, one program compiled once.
    argv = ["--workdir", str(grain_run.workdir), "--layer", "pooled", "--out", str(out), "--config.eval.batch_size=4"]
    assert features_tool.main(argv) == 0
    assert len(programs) == 1 and programs[0]._cache_size() == 1
    written = np.load(out)
    np.testing.assert_array_equal(written["labels"], grain_run.labels)  # the unreadable file left out
    model, step_config = grain_run.run.experiment.model, grain_run.run.experiment.step_config
    pooled = model.apply(
        grain_run.run.variables, normalized(step_config, eval_crops(grain_run.files)), train=False, return_features=True
    )[1]["pooled"]
    chex.assert_shape(written["features"], (8, pooled.shape[-1]))
    chex.assert_trees_all_close(written["features"], np.asarray(pooled), atol=1e-4, rtol=1e-4)

