"""The grain loader (data.loader=grain) on folders the tests write: JPEG and PNG files of random sizes, each one solid
colour that names it, so that a streamed pixel says which file it came from."""

import json
import logging
import shutil
import signal
import subprocess
import tarfile
import time
import tracemalloc

import chex
import jax
import numpy as np
import psutil
import pytest
from PIL import Image

from resnet_jax import configuration, data, experiment, steps, trainer
from resnet_jax.data import crops, listing, stream
from tests.conftest import PYTHON, REPO_ROOT, subprocess_env
from tests.test_trainer import eval_records, final_params

CLASSES = ("ant", "bee", "cow")
LEVELS = np.arange(16, 256, 32)  # 8 levels a channel, 32 apart: a JPEG's solid colour stays nearest its own


def colour(index: int) -> tuple[int, int, int]:
    return tuple(int(LEVELS[(index // 8**channel) % 8]) for channel in range(3))


def identify(images: np.ndarray) -> np.ndarray:
    """The file index each image's centre pixel is the colour of."""
    centre = images[..., images.shape[-3] // 2, images.shape[-2] // 2, :].astype(int)
    levels = np.abs(centre[..., None] - LEVELS).argmin(-1)
    return levels[..., 0] + 8 * levels[..., 1] + 64 * levels[..., 2]


def write_folder(root, train=6, test=3, seed=0, size=(12, 40)):
    """`train` and `test` files a class, of random sizes, JPEG and PNG in turn; returns {relative path: index}."""
    rng = np.random.default_rng(seed)
    index, written = 0, {}
    for split, count in (("train", train), ("test", test)):
        for name in CLASSES:
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for number in range(count):
                width, height = (int(side) for side in rng.integers(*size, 2))
                path = f"{split}/{name}/{number}.{'jpg' if index % 2 else 'png'}"
                Image.new("RGB", (width, height), colour(index)).save(root / path, quality=95)
                written[path], index = index, index + 1
    return written


def grain_config(root, **overrides):
    config = experiment.base_config()
    config.model.name = "resnet8_tiny"
    data.use_folder(config.data, root)
    config.data.loader = "grain"
    config.data.image_size = 8
    config.data.workers = 0
    config.augment.crop_padding = 0
    config.train.batch_size = 4
    config.train.num_steps = 0
    config.train.num_epochs = 2
    config.train.log_every_steps = 2
    config.schedule.name = "cosine"
    config.eval.batch_size = 4
    config.checkpoint.keep = 5
    return configuration.apply_overrides(config, overrides)


@pytest.fixture
def pets(tmp_path):
    root = tmp_path / "pets"
    return root, write_folder(root)


def test_streamed_batches_hold_each_train_file_once_an_epoch_with_its_label(pets):
    root, written = pets
    built = experiment.build(grain_config(root))
    assert built.info.class_names == CLASSES and built.config.data.image_shape == (8, 8, 3)
    assert built.steps_per_epoch == 4  # 18 train files, batches of 4: 2 left out each epoch
    train = built.open_train_stream()
    try:
        epochs = [train.take(built.steps_per_epoch) for _ in range(2)]
    finally:
        train.close()
    names = {index: path for path, index in written.items()}
    for images, labels in epochs:
        chex.assert_shape(images, (4, 4, 8, 8, 3))
        assert images.dtype == np.uint8 and labels.dtype == np.int32
        files = identify(images).ravel()
        assert len(set(files.tolist())) == 16  # no file twice in an epoch
        assert all(names[file].startswith("train/") for file in files)
        assert [CLASSES.index(names[file].split("/")[1]) for file in files] == labels.ravel().tolist()
    # Each epoch reshuffles, and leaves out other files.
    assert identify(epochs[0][0]).tolist() != identify(epochs[1][0]).tolist()


def test_evaluation_batches_cover_every_file_once_padded_and_masked(pets):
    root, written = pets
    built = experiment.build(grain_config(root, **{"eval.batch_size": 4}))
    test = built.open_eval_stream("test")
    try:
        for _ in range(2):  # each evaluation reads the split from its start
            batches = list(test.batches())
            assert len(batches) == 3  # 9 test files in 3 batches of 4, 3 rows of padding
            mask = np.concatenate([b["mask"] for b in batches])
            files = identify(np.concatenate([b["image"] for b in batches]))[mask]
            assert mask.tolist() == [True] * 9 + [False] * 3
            assert sorted(files.tolist()) == sorted(i for p, i in written.items() if p.startswith("test/"))
            labels = np.concatenate([b["label"] for b in batches])[mask]
            names = {index: path for path, index in written.items()}
            assert [CLASSES.index(names[file].split("/")[1]) for file in files] == labels.tolist()
    finally:
        test.close()


def test_evaluation_resizes_the_short_side_and_takes_the_centre():
    # A 40x20 image whose red rises 6 a column and green 12 a row. Resized to 18 on the short side (16 / 0.875), its
    # centre 16x16 is the centred square of 16 * 20 / 18 = 17.8 of the image's pixels, and output pixel j samples the
    # image at left + (j + 0.5) * 17.8 / 16; bilinear resampling of a ramp is the ramp there, to the rounding to uint8.
    # (A crop of 16 image pixels, or of the whole short side, is 2 or more off somewhere.)
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[..., 0] = 6 * np.arange(40)[None, :]
    pixels[..., 1] = 12 * np.arange(20)[:, None]
    pixels[..., 2] = 200
    buffer = __import__("io").BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    out = crops.eval_image(buffer.getvalue(), 16, 0)
    chex.assert_shape(out, (16, 16, 3))
    side = 16 * 20 / 18
    sampled_at = (np.arange(16) + 0.5) * side / 16  # from the crop's left or top edge, in image pixels
    red = 6 * ((40 - side) / 2 + sampled_at - 0.5)  # pixel i's centre is at i + 0.5
    green = 12 * ((20 - side) / 2 + sampled_at - 0.5)
    np.testing.assert_allclose(out[..., 0], np.broadcast_to(red[None, :], (16, 16)), atol=1.5)
    np.testing.assert_allclose(out[..., 1], np.broadcast_to(green[:, None], (16, 16)), atol=1.5)
    assert (out[..., 2] == 200).all()


def test_the_training_crop_is_torchvisions_random_resized_crop():
    # RandomResizedCrop(scale=(0.08, 1), ratio=(3/4, 4/3)): a box inside the image, of 8-100% of its area and an
    # aspect ratio of 3/4-4/3 (to the rounding of its sides), placed anywhere.
    rng = np.random.default_rng(0)
    boxes = np.array([crops.crop_box(400, 300, rng) for _ in range(2000)])
    left, top, right, bottom = boxes.T
    assert (left >= 0).all() and (top >= 0).all() and (right <= 400).all() and (bottom <= 300).all()
    width, height = right - left, bottom - top
    area, ratio = width * height / (400 * 300), width / height
    assert area.min() > 0.075 and area.max() <= 1 and ratio.min() > 0.74 and ratio.max() < 1.34
    assert area.min() < 0.1 and area.max() > 0.9 and ratio.min() < 0.76 and ratio.max() > 1.31  # the whole range
    assert left.max() > 200 and top.max() > 150  # not only at the corner
    # An image no allowed box fits (10x1000): torchvision's fallback, the centre crop at the nearest ratio, 3/4.
    assert crops.crop_box(10, 1000, rng) == (0, 493, 10, 506)
    image = np.zeros((300, 400, 3), np.uint8)
    buffer = __import__("io").BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    chex.assert_shape(crops.train_image(buffer.getvalue(), 24, 0, rng), (24, 24, 3))


def test_the_sampled_statistics_are_the_train_images_and_never_held_as_floats(tmp_path):
    # PNG files of one colour each (exact through decoding and any resize): the statistics are those of the colours,
    # each image weighing alike at the network's size.
    colours = [colour(index) for index in range(0, 48 * 7, 7)]
    for index, rgb in enumerate(colours):
        path = tmp_path / "train" / CLASSES[index % 3] / f"{index}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (20 + index, 30), rgb).save(path)
    shutil.copytree(tmp_path / "train", tmp_path / "test")
    files = listing.open_listing(tmp_path)
    tracemalloc.start()
    try:
        info = listing.folder_info(files, 224, 3, statistics=True)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    expected = np.asarray(colours, np.float64) / 255
    np.testing.assert_allclose(info.mean, expected.mean(axis=0), atol=1e-6)
    np.testing.assert_allclose(info.std, expected.std(axis=0), atol=1e-6)
    # The 48 decoded images are 7 MiB as uint8; as one float64 array, 8 times that.
    assert peak < 48 * 224 * 224 * 3 * 8, peak


def test_a_tar_streams_as_its_folder(pets, tmp_path):
    root, _ = pets
    archive = tmp_path / "pets.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(root, arcname="pets")
    folder_listing, tar_listing = listing.open_listing(str(root)), listing.open_listing(str(archive))
    assert tar_listing.names == folder_listing.names and tar_listing.digest == folder_listing.digest
    streams = [experiment.build(grain_config(source)).open_train_stream() for source in (root, archive)]
    try:
        (images, labels), (tar_images, tar_labels) = (train.take(3) for train in streams)
    finally:
        for train in streams:
            train.close()
    np.testing.assert_array_equal(tar_images, images)
    np.testing.assert_array_equal(tar_labels, labels)


def test_what_the_grain_loader_cannot_serve_is_one_line(pets, tmp_path):
    root, _ = pets
    refused = {
        "data.loader='grain' streams a folder of images": {
            "data.dataset": "synthetic",
            "data.source": "synthetic",
        },
        "data.image_size=0: the grain loader": {"data.image_size": 0},
        "data.loader='cpu' is not known; allowed: device, grain": {"data.loader": "cpu"},
        "data.workers": {"data.workers": -1},
    }
    for message, overrides in refused.items():
        with pytest.raises(configuration.ConfigError, match=message):
            experiment.check_config(grain_config(root, **overrides))
    archive = tmp_path / "pets.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root, arcname="pets")
    with pytest.raises(configuration.ConfigError, match="compressed archive"):
        experiment.check_config(grain_config(archive))


def test_a_validation_split_the_run_has_not_is_one_line(pets):
    root, _ = pets  # no validation/ folder, and nothing held out
    with pytest.raises(data.DataError, match="this run has no validation split"):
        experiment.build(grain_config(root)).open_eval_stream("validation")


def test_a_folder_changed_since_the_run_began_is_refused(pets):
    root, _ = pets
    recorded = experiment.build(grain_config(root)).config
    assert len(recorded.data.files_digest) == 32
    experiment.build(recorded)  # the same files: accepted
    Image.new("RGB", (9, 9), (1, 2, 3)).save(root / "train" / "ant" / "new.png")
    with pytest.raises(data.DataError, match="the folder changed since the run began"):
        experiment.build(
            configuration.apply_overrides(grain_config(root), {"data.files_digest": recorded.data.files_digest})
        )


def test_a_run_lists_its_folder_once_for_its_four_streams(pets, tmp_path, monkeypatch):
    # At ImageNet's size a listing walks and stats a million files: train, train_eval, validation and test share one.
    root, _ = pets
    listed, open_listing = [], listing.open_listing
    monkeypatch.setattr(listing, "open_listing", lambda *args: listed.append(args) or open_listing(*args))
    overrides = {"data.validation_size": 4, "data.train_eval_size": 4, "train.num_epochs": 1}
    config = grain_config(root, **overrides, **{"data.mean": (0.5,) * 3, "data.std": (0.25,) * 3})
    trainer.train_and_evaluate(config, tmp_path / "run")
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["data"]["split_sizes"]["validation"] == 4 and saved["data"]["train_eval_size"] == 4
    assert len(listed) == 2  # once as the run is built (its folder recorded), once for the streams


def test_unreadable_files_are_skipped_with_one_warning(pets, caplog):
    root, written = pets
    (root / "train" / "bee" / "broken.jpg").write_bytes(b"not a jpeg")
    (root / "test" / "cow" / "broken.png").write_bytes(b"not a png")
    built = experiment.build(grain_config(root, **{"data.mean": (0.5,) * 3, "data.std": (0.25,) * 3}))
    train, test = built.open_train_stream(), built.open_eval_stream("test")
    try:
        with caplog.at_level(logging.WARNING, logger="resnet_jax.data.stream"):
            images, _ = train.take(2 * built.steps_per_epoch)
            batches = list(test.batches())
    finally:
        train.close()
        test.close()
    warnings = [r.getMessage() for r in caplog.records]
    assert [w for w in warnings if "broken.jpg" in w] == [
        f"{root}: train/bee/broken.jpg could not be decoded, and is skipped (the next file takes its place); further "
        "ones are counted"
    ]
    assert any("test/cow/broken.png" in w for w in warnings)
    assert set(identify(images).ravel().tolist()) <= set(written.values())  # only files that decode
    mask = np.concatenate([b["mask"] for b in batches])
    assert mask.sum() == 9  # 10 test files, one unreadable: left out of the evaluation


def test_a_worker_that_dies_is_one_error_line_not_a_hang(pets):
    root, _ = pets
    train = experiment.build(grain_config(root, **{"data.workers": 1})).open_train_stream()
    try:
        train.take(1)
        for worker in psutil.Process().children(recursive=True):
            if "spawn_main" in " ".join(worker.cmdline()):  # Grain's worker, not multiprocessing's resource tracker
                worker.send_signal(signal.SIGKILL)
        failure = None
        for _ in range(100):  # the batches the worker had ready before it died come first
            try:
                train.take(1)
            except data.DataError as error:
                failure = str(error)
                break
        assert failure is not None and "\n" not in failure
        assert "the grain loader stopped: Worker process was terminated unexpectedly" in failure
    finally:
        train.close()


@pytest.mark.slow
def test_a_training_process_killed_by_sigkill_leaves_no_worker_behind_and_resumes(tmp_path):
    root = tmp_path / "pets"
    write_folder(root)
    workdir = tmp_path / "run"
    command = [
        PYTHON, "train.py", "--workdir", str(workdir), "--config", "configs/smoke.py", "--config.data.dataset=folder",
        "--config.data.source=folder", f"--config.data.files_dir={root}", "--config.data.loader=grain",
        "--config.data.image_size=8", "--config.data.workers=1", "--config.augment.crop_padding=0",
        "--config.train.batch_size=4", "--config.train.num_steps=0", "--config.train.num_epochs=30",
    ]  # fmt: skip
    trainer_process = subprocess.Popen(command, cwd=REPO_ROOT, env=subprocess_env(), stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL)  # fmt: skip
    watched = psutil.Process(trainer_process.pid)
    try:
        deadline = time.monotonic() + 120
        # A finished checkpoint's folder is its step alone (orbax renames it so once written).
        while not [path for path in (workdir / "checkpoints").glob("*") if path.name.isdigit()]:
            assert trainer_process.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        workers = [p for p in watched.children(recursive=True) if "spawn_main" in " ".join(p.cmdline())]
        assert workers  # the train stream's, and the test split's
        trainer_process.kill()
        trainer_process.wait()
        _, alive = psutil.wait_procs(workers, timeout=15)
        assert not alive, f"{len(alive)} of {len(workers)} Grain workers outlived the killed training process"
    finally:
        if trainer_process.poll() is None:
            trainer_process.kill()
    resumed = subprocess.run(command, cwd=REPO_ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from checkpoint" in resumed.stderr + resumed.stdout


TAKE = stream.TrainStream.take


class Recorded:
    """The batches the loop takes from its train stream (by file and label), while in effect."""

    def __init__(self, monkeypatch, fail_at: int | None = None):
        self.seen = []

        def recording_take(stream_self, count):
            if len(self.seen) == fail_at:
                raise RuntimeError("killed")  # as kill -9: no checkpoint is saved on the way out
            images, labels = TAKE(stream_self, count)
            self.seen.append((identify(images).tolist(), labels.tolist()))
            return images, labels

        monkeypatch.setattr(stream.TrainStream, "take", recording_take)


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    """Two epochs of 4 steps, straight through: its folder, config, workdir and batches."""
    root = tmp_path_factory.mktemp("straight") / "pets"
    write_folder(root)
    config = grain_config(root, **{"data.mean": (0.5,) * 3, "data.std": (0.25,) * 3})
    with pytest.MonkeyPatch.context() as monkeypatch:
        recorded = Recorded(monkeypatch)
        trainer.train_and_evaluate(config, root.parent / "run")
    assert len(recorded.seen) == 8
    return config, root.parent / "run", recorded.seen


def assert_same_run(workdir, straight_workdir):
    chex.assert_trees_all_equal(final_params(straight_workdir), final_params(workdir))
    assert eval_records(straight_workdir) == eval_records(workdir)


def test_stopped_by_sigterm_mid_epoch_and_resumed_equals_straight_through(straight_run, tmp_path, monkeypatch):
    config, straight_workdir, straight = straight_run
    recorded = Recorded(monkeypatch)
    # SIGTERM as the loop checks for it after step 3 of the first epoch's 4: it saves a checkpoint and stops.
    requested = trainer._StopRequests.requested

    def stop_after_step_3(self, agree=True):
        if len(recorded.seen) == 3 and self.signal_name is None:
            self.signal_name = "SIGTERM"
        return requested(self, agree)

    monkeypatch.setattr(trainer._StopRequests, "requested", stop_after_step_3)
    with pytest.raises(trainer.Preempted, match="saved checkpoint 3"):
        trainer.train_and_evaluate(config, tmp_path)
    monkeypatch.setattr(trainer._StopRequests, "requested", requested)
    trainer.train_and_evaluate(config, tmp_path)
    assert recorded.seen == straight  # the resumed run went on from the 4th batch
    assert_same_run(tmp_path, straight_workdir)


def test_killed_mid_epoch_and_resumed_from_the_epochs_checkpoint_equals_straight_through(
    straight_run, tmp_path, monkeypatch
):
    config, straight_workdir, straight = straight_run
    killed = Recorded(monkeypatch, fail_at=5)  # dies taking step 6, with checkpoint 4 (epoch 1's end) on disk
    with pytest.raises(RuntimeError, match="killed"):
        trainer.train_and_evaluate(config, tmp_path)
    assert killed.seen == straight[:5]
    resumed = Recorded(monkeypatch)
    trainer.train_and_evaluate(config, tmp_path)
    assert resumed.seen == straight[4:]  # from checkpoint 4's iterator state: batches 5 to 8 again
    assert_same_run(tmp_path, straight_workdir)


def test_resumed_with_other_workers_goes_on_from_the_steps_batch_and_records_the_change(
    straight_run, tmp_path, monkeypatch
):
    config, straight_workdir, straight = straight_run
    Recorded(monkeypatch, fail_at=5)  # dies taking step 6: checkpoint 4's Grain state is for no workers
    with pytest.raises(RuntimeError, match="killed"):
        trainer.train_and_evaluate(config, tmp_path)
    resumed = Recorded(monkeypatch)
    more_workers = configuration.apply_overrides(config, {"data.workers": 2, "data.per_worker_buffer_size": 1})
    trainer.train_and_evaluate(more_workers, tmp_path)
    assert resumed.seen == straight[4:]
    assert_same_run(tmp_path, straight_workdir)
    saved = json.loads((tmp_path / configuration.CONFIG_FILE).read_text())
    assert saved["data"]["workers"] == 2
    assert {"step": 4, "key": "data.workers", "from": 0, "to": 2} in saved[configuration.RECORD_KEY]["changes"]


def tree_rss(process: psutil.Process) -> int:
    total = 0
    try:
        for member in (process, *process.children(recursive=True)):
            total += member.memory_info().rss
    except psutil.NoSuchProcess:  # one ended between the listing and its reading
        pass
    return total


MEMORY_PROBE = """
import resource, sys
import numpy as np
from resnet_jax.data import listing, stream

if __name__ == "__main__":
    files = listing.open_listing(sys.argv[1])
    train = stream.train_stream(files, "train", np.arange(len(files.names["train"])), 16, 10, 128, 0, 0, 2, 2)
    train.take(10)
    train.close()
"""


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_the_folder(tmp_path):
    # 4,000 images of 128x128x3 would take 188 MiB held decoded, as the device loader holds them, more with the
    # listing and copies; streamed, the peak of any process stays that of a few batches.
    peaks = {}
    for count in (500, 4000):
        root = tmp_path / str(count)
        for index in range(count):
            path = root / "train" / CLASSES[index % 2] / f"{index}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (136, 136), colour(index % 512)).save(path)
        shutil.copytree(root / "train", root / "test")
        (tmp_path / "probe.py").write_text(MEMORY_PROBE)
        probe = subprocess.Popen([PYTHON, str(tmp_path / "probe.py"), str(root)], cwd=REPO_ROOT, env=subprocess_env())
        peaks[count] = 0
        while probe.poll() is None:  # the resident memory of the probe and its workers together, at its highest
            peaks[count] = max(peaks[count], tree_rss(psutil.Process(probe.pid)))
            time.sleep(0.02)
        assert probe.returncode == 0
    assert peaks[4000] - peaks[500] < 250 * 2**20, peaks


@pytest.mark.slow
def test_the_scanned_loop_feeds_stacked_batches_and_trains_as_the_per_step_one(straight_run, tmp_path, monkeypatch):
    # Accelerators scan: calls of 3 and 1 steps an epoch, each on its batches stacked (3, batch, ...).
    config, straight_workdir, straight = straight_run
    monkeypatch.setattr(steps, "scan_is_fast", lambda mesh: True)
    recorded = Recorded(monkeypatch)
    results = trainer.train_and_evaluate(configuration.apply_overrides(config, {"train.steps_per_call": 3}), tmp_path)
    assert results["step"] == 8
    assert [len(files) for files, _ in recorded.seen] == [3, 1, 3, 1]
    assert [batch for files, labels in recorded.seen for batch in zip(files, labels, strict=True)] == [
        (files[0], labels[0]) for files, labels in straight
    ]
    # The same steps on the same batches, compiled in a loop: apart by XLA's reassociation only, far less than the
    # weights moved.
    initial = jax.tree.leaves(jax.device_get(experiment.build(config).new_state().params))
    for start, scanned, per_step in zip(
        initial, jax.tree.leaves(final_params(tmp_path)), jax.tree.leaves(final_params(straight_workdir)), strict=True
    ):
        assert np.linalg.norm(scanned - per_step) <= 1e-2 * np.linalg.norm(per_step - start)


def test_a_checkpoint_saved_after_a_resume_with_other_workers_resumes_at_its_own_batch(
    straight_run, tmp_path, monkeypatch
):
    # The stream opened at the step's batch (another worker count) saves Grain's state of that stream: restored, it
    # must go on from the step it was saved at, not from as many batches after the run's start.
    config, straight_workdir, straight = straight_run
    one_worker = configuration.apply_overrides(config, {"data.workers": 1})
    Recorded(monkeypatch, fail_at=5)  # dies taking step 6: checkpoint 4's Grain state is for one worker
    with pytest.raises(RuntimeError, match="killed"):
        trainer.train_and_evaluate(one_worker, tmp_path)
    recorded = Recorded(monkeypatch)
    requested = trainer._StopRequests.requested

    def stop_after_one_step(self, agree=True):
        if len(recorded.seen) == 1 and self.signal_name is None:
            self.signal_name = "SIGTERM"
        return requested(self, agree)

    monkeypatch.setattr(trainer._StopRequests, "requested", stop_after_one_step)
    with pytest.raises(trainer.Preempted, match="saved checkpoint 5"):
        trainer.train_and_evaluate(config, tmp_path)  # no workers: the stream starts at batch 4
    monkeypatch.setattr(trainer._StopRequests, "requested", requested)
    resumed = Recorded(monkeypatch)
    trainer.train_and_evaluate(config, tmp_path)  # no workers again: checkpoint 5's Grain state is restored
    assert recorded.seen[:1] + resumed.seen == straight[4:]
    assert_same_run(tmp_path, straight_workdir)
