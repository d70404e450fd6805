"""The folder source: class folders of PNG and JPEG images, plain or in a .tar/.tar.gz, decoded once into the cache;
each bad layout one line; a folder run's classes and statistics recorded in its config.json, so that its tools
name them without the folder."""

import json
import logging
import os
import shutil
import tarfile

import numpy as np
import pytest
from PIL import Image

from resnet_jax import configuration, data, experiment, record
from resnet_jax.data import folder, listing
from resnet_jax.tools import evaluate as evaluate_tool
from resnet_jax.tools import export as export_tool
from resnet_jax.tools import predict as predict_tool
from resnet_jax.tools import train as train_tool
from tests.conftest import CIFAR10_JPEG, REPO_ROOT, needs_cifar10_jpeg

COLOURS = {"cat": (220, 40, 40), "dog": (40, 200, 60), "eel": (30, 60, 230)}  # sorted: the labels 0, 1, 2


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """Every test decodes into a cache of its own."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def image(label: int, index: int, size: int = 8, mode: str = "RGB") -> Image.Image:
    """A class's colour, with noise that differs per image."""
    rng = np.random.default_rng(100 * label + index)
    colour = np.array(list(COLOURS.values())[label])
    pixels = np.clip(colour + rng.normal(0, 20, (size, size, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels).convert(mode)


def write_folder(root, train=4, test=2, suffix=".png", size=8, classes=tuple(COLOURS), validation=0):
    offsets = {"train": 0, "test": 50, "validation": 100}
    for split, count in (("train", train), ("test", test), ("validation", validation)):
        for label, name in enumerate(classes if count else ()):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for index in range(count):
                image(label, index + offsets[split], size).save(root / split / name / f"{index}{suffix}")
    return root


def write_tar(folder_path, archive, top=""):
    with tarfile.open(archive, "w:gz" if archive.suffix == ".gz" else "w") as tar:
        tar.add(folder_path, arcname=top or ".")
    return archive


def test_a_png_folder_is_read_exactly_with_sorted_classes_and_train_statistics(tmp_path):
    root = write_folder(tmp_path / "pets", train=3, test=2)
    opened = data.open_folder(root, 0, 0)
    assert opened.info.class_names == ("cat", "dog", "eel")
    assert opened.info.image_shape == (8, 8, 3)
    assert opened.info.split_sizes == {"train": 9, "test": 6}
    train = opened.split("train")
    np.testing.assert_array_equal(train.labels, [0, 0, 0, 1, 1, 1, 2, 2, 2])
    np.testing.assert_array_equal(train.images[4], np.asarray(image(1, 1)))  # PNG is lossless
    np.testing.assert_array_equal(opened.split("test").images[5], np.asarray(image(2, 51)))
    pixels = train.images.reshape(-1, 3) / 255
    np.testing.assert_allclose(opened.info.mean, pixels.mean(0), atol=1e-6)
    np.testing.assert_allclose(opened.info.std, pixels.std(0), atol=1e-6)


@pytest.mark.parametrize(("name", "top"), [("pets.tar", ""), ("pets.tar.gz", ""), ("pets.tar.gz", "pets")])
def test_a_tarball_reads_as_its_folder_without_unpacking(tmp_path, name, top):
    root = write_folder(tmp_path / "pets", suffix=".jpg")
    archive = write_tar(root, tmp_path / name, top)
    shutil.rmtree(root)
    from_archive = data.open_folder(archive)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["cache", name]  # nothing unpacked beside it
    write_folder(tmp_path / "again", suffix=".jpg")
    from_folder = data.open_folder(tmp_path / "again")
    assert from_archive.info == from_folder.info
    for split in data.SPLITS:
        np.testing.assert_array_equal(from_archive.split(split).images, from_folder.split(split).images)
        np.testing.assert_array_equal(from_archive.split(split).labels, from_folder.split(split).labels)


def test_class_folders_linked_from_elsewhere_read_as_the_folder_they_link_in_either_loader(tmp_path):
    # A subset of a large folder is made of links to its class folders, as torchvision's ImageFolder reads them.
    root = write_folder(tmp_path / "pets")
    (root / "test" / "cat" / "again").symlink_to(root / "test" / "cat", target_is_directory=True)  # not walked into
    linked = tmp_path / "linked"
    for split in ("train", "test"):
        for name in COLOURS:
            (linked / split).mkdir(parents=True, exist_ok=True)
            (linked / split / name).symlink_to(root / split / name, target_is_directory=True)
    opened = data.open_folder(linked)
    assert opened.info.split_sizes == {"train": 12, "test": 6}
    assert opened.files_digest == data.open_folder(root).files_digest
    for split in data.SPLITS:
        np.testing.assert_array_equal(opened.split(split).images, data.open_folder(root).split(split).images)
    streamed = listing.open_listing(linked)
    assert streamed.names == listing.open_listing(root).names
    assert streamed.digest == opened.files_digest


@pytest.mark.parametrize("as_tar", [False, True])
def test_a_folder_larger_than_memory_is_refused_before_decoding_naming_the_grain_loader(tmp_path, monkeypatch, as_tar):
    root = write_folder(tmp_path / "pets")  # 18 images: 72 KiB decoded at 64x64 grey, a 20 KiB and more .tar
    source = write_tar(root, tmp_path / "pets.tar") if as_tar else root
    real_sysconf = os.sysconf
    pages = {"SC_PAGE_SIZE": 4096, "SC_PHYS_PAGES": 4}  # a machine of 16 KiB
    monkeypatch.setattr(os, "sysconf", lambda name: pages.get(name) or real_sysconf(name))
    with pytest.raises(data.DataError, match="more than this machine's 0.0 GiB of memory") as refused:
        data.open_folder(source, 64, 1)
    assert "data.loader='grain'" in str(refused.value) and "\n" not in str(refused.value)
    assert not list((tmp_path / "cache").rglob("*.npy"))  # nothing decoded


@pytest.mark.parametrize("as_archive", [False, True])
@pytest.mark.parametrize("image_size", [64, 0])
def test_the_memory_a_folder_needs_is_its_images_decoded_not_its_archive_s_compressed_size(
    tmp_path, monkeypatch, as_archive, image_size
):
    # 18 noisy RGB PNGs of 8x8, read with data.channels=0 (the default): RGB, 3 bytes a pixel. The .tar.gz is a few
    # KiB; decoded at 64 px they take 216 KiB, and an archive's files are held in memory while they decode.
    root = write_folder(tmp_path / "pets")
    source = write_tar(root, tmp_path / "pets.tar.gz") if as_archive else root
    side = image_size or 8
    decoded = 18 * side * side * 3
    read = 0
    if as_archive:
        with tarfile.open(source) as tar:
            read = sum(member.size for member in tar if member.isfile())
        assert source.stat().st_size < decoded + read - 1  # judged by its compressed size, it would pass
    held = decoded + read
    extracted = []
    real_extract = tarfile.TarFile.extractfile
    monkeypatch.setattr(
        tarfile.TarFile, "extractfile", lambda tar, member: extracted.append(member) or real_extract(tar, member)
    )
    monkeypatch.setattr(folder, "physical_memory", lambda: held - 1)
    with pytest.raises(data.DataError, match=f"decoded at {side}x{side}x3") as refused:
        data.open_folder(source, image_size, 0)
    assert "data.loader='grain'" in str(refused.value) and "\n" not in str(refused.value)
    assert not list((tmp_path / "cache").rglob("*.npy"))  # nothing decoded
    assert len(extracted) <= 1  # one image's header looked at; the archive's images were not read into memory
    monkeypatch.setattr(folder, "physical_memory", lambda: held)
    assert data.open_folder(source, image_size, 0).split("train").images.shape == (12, side, side, 3)


def test_a_second_open_reads_the_cache_and_a_changed_file_decodes_again(tmp_path, monkeypatch):
    root = write_folder(tmp_path / "pets")
    first = data.open_folder(root)
    decoded = []
    original = folder._decode_one
    monkeypatch.setattr(folder, "_decode_one", lambda *args: decoded.append(1) or original(*args))
    again = data.open_folder(root)
    assert not decoded
    np.testing.assert_array_equal(again.split("train").images, first.split("train").images)
    image(0, 9).save(root / "train" / "cat" / "0.png")
    stat = (root / "train" / "cat" / "0.png").stat()
    os.utime(root / "train" / "cat" / "0.png", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    changed = data.open_folder(root)
    assert len(decoded) == 18
    np.testing.assert_array_equal(changed.split("train").images[0], np.asarray(image(0, 9)))


def test_images_are_resized_to_image_size_and_made_grey_or_rgb(tmp_path):
    root = write_folder(tmp_path / "pets", size=8)
    image(0, 7, size=20, mode="L").save(root / "train" / "cat" / "big_grey.png")
    (tmp_path / "cache").mkdir()
    with pytest.raises(data.DataError, match="different sizes.*give data.image_size"):
        data.open_folder(root)
    resized = data.open_folder(root, image_size=12)
    assert resized.split("train").images.shape == (13, 12, 12, 3)  # grey among colour: RGB, the grey repeated
    grey_one = resized.split("train").images[4]  # train/cat/big_grey.png, after 0-3.png
    np.testing.assert_array_equal(grey_one[..., 0], grey_one[..., 2])
    grey = data.open_folder(root, image_size=8, channels=1)
    assert grey.split("test").images.shape == (6, 8, 8, 1)
    assert len(grey.info.mean) == 1


def test_a_folder_of_16_bit_pngs_holds_their_8_bit_values_and_statistics(tmp_path):
    # Each class one grey level v stored as 16-bit v * 257; clipped to 8 bits every image would be white (mean 1.0).
    levels = {"cat": 40, "dog": 200}
    for split in ("train", "test"):
        for name, level in levels.items():
            (tmp_path / "deep" / split / name).mkdir(parents=True)
            Image.fromarray(np.full((8, 8), level * 257, np.uint16)).save(tmp_path / "deep" / split / name / "0.png")
    opened = data.open_folder(tmp_path / "deep")
    np.testing.assert_array_equal(opened.split("train").images[:, 0, 0, 0], [40, 200])
    assert opened.info.mean == pytest.approx((120 / 255,))


def test_an_all_grey_folder_stays_grey(tmp_path):
    root = tmp_path / "digits"
    for split in data.SPLITS:
        for name in ("one", "two"):
            (root / split / name).mkdir(parents=True)
            image(0, 0, mode="L").save(root / split / name / "a.png")
    assert data.open_folder(root).info.image_shape == (8, 8, 1)


def empty_class(root):
    write_folder(root)
    (root / "train" / "fox").mkdir()


def class_only_in_test(root):
    write_folder(root)
    shutil.copytree(root / "test" / "eel", root / "test" / "yak")


def mixed_sizes(root):
    write_folder(root)
    image(0, 9, size=10).save(root / "test" / "dog" / "odd.png")


def no_images(root):
    (root / "train" / "cat").mkdir(parents=True)
    (root / "test" / "cat").mkdir(parents=True)
    (root / "train" / "cat" / "notes.txt").write_text("no image")


def no_train(root):
    write_folder(root)
    shutil.rmtree(root / "train")


def no_test(root):
    write_folder(root)
    shutil.rmtree(root / "test")


def not_square(root):
    write_folder(root, size=8)
    for path in root.rglob("*.png"):
        Image.open(path).resize((8, 6)).save(path)


def one_class(root):
    write_folder(root, classes=("cat",))


BAD_FOLDERS = {  # each layout, and its one line
    one_class: "train/ holds one class folder \\(cat/\\); a classifier needs at least 2 classes",
    empty_class: "train/fox/ holds no images",
    class_only_in_test: "test/ has classes that train/ lacks \\(yak\\)",
    mixed_sizes: "images of different sizes .* give data.image_size",
    no_images: "holds no images",
    no_train: "has no train/ folder",
    no_test: "has no test/ folder",
    not_square: "not square; give data.image_size",
}


@pytest.mark.parametrize("case", list(BAD_FOLDERS), ids=lambda case: case.__name__)
@pytest.mark.parametrize("as_tar", [False, True])
def test_a_bad_folder_is_one_data_error_line(tmp_path, case, as_tar):
    root = tmp_path / "pets"
    root.mkdir()
    case(root)
    source = write_tar(root, tmp_path / "pets.tar") if as_tar else root
    with pytest.raises(data.DataError, match=BAD_FOLDERS[case]) as error:
        data.open_folder(source)
    assert "\n" not in str(error.value)


def test_a_dataset_of_fewer_than_two_classes_is_refused_whatever_its_source():
    for names, count in (((), "0 classes \\(none\\)"), (("cat",), "1 class \\(cat\\)")):
        with pytest.raises(data.DataError, match=f"pets has {count}; a classifier needs at least 2"):
            data.DatasetInfo("pets", names, (8, 8, 3), (0.5,) * 3, (0.2,) * 3, {"train": 4, "test": 2})


def test_a_path_that_is_no_folder_or_tar_is_one_line(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    for path, message in ((tmp_path / "missing", "does not exist"), (tmp_path / "notes.txt", "neither a folder")):
        with pytest.raises(data.DataError, match=message):
            data.open_folder(path)


def test_unreadable_images_are_skipped_with_one_warning_naming_the_first(tmp_path, caplog):
    root = write_folder(tmp_path / "pets", suffix=".jpg")
    whole = (root / "train" / "dog" / "1.jpg").read_bytes()
    (root / "train" / "dog" / "1.jpg").write_bytes(whole[: len(whole) // 2])  # truncated
    (root / "test" / "eel" / "0.jpg").write_text("not a jpeg")
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    (root / "train" / "cat" / ".DS_Store").write_bytes(b"\0")  # hidden: ignored without a word
    with caplog.at_level(logging.WARNING, logger=folder.__name__):
        opened = data.open_folder(root)
    assert opened.info.split_sizes == {"train": 11, "test": 5}
    warnings = [record.getMessage() for record in caplog.records]
    skipped = [line for line in warnings if "could not be decoded" in line]
    assert len(skipped) == 1
    assert "2 files" in skipped[0] and "train/dog/1.jpg" in skipped[0]
    assert [line for line in warnings if "not images" in line] == [
        f"{root}: 1 files are not images in a class folder, and were ignored (the first: train/cat/notes.txt)"
    ]


def folder_config(root, **overrides):
    config = experiment.base_config()
    config.model.name = "resnet8_tiny"
    data.use_folder(config.data, root)
    config.data.image_size = 0
    config.train.batch_size = 4
    config.train.num_steps = 0
    config.train.num_epochs = 1
    config.schedule.name = "cosine"
    config.eval.batch_size = 6
    return configuration.apply_overrides(config, overrides)


def test_folder_config_checks_are_one_line(tmp_path):
    root = write_folder(tmp_path / "pets")
    bad = {
        "data.source='folder' with data.dataset='cifar10'": {"data.dataset": "cifar10"},
        "data.files_dir=.* does not exist; put a folder of images there": {"data.files_dir": str(tmp_path / "no")},
        "data.mean=.*one number per input channel \\(1 or 3\\)": {"data.mean": (0.1, 0.2)},
        "data.channels": {"data.channels": 2},
    }
    for message, overrides in bad.items():
        with pytest.raises(configuration.ConfigError, match=message):
            experiment.check_config(folder_config(root, **overrides))


def test_the_folder_is_recorded_in_the_config_and_must_still_agree(tmp_path):
    root = write_folder(tmp_path / "pets")
    config = folder_config(root, **{"data.mean": (0.5, 0.5, 0.5)})
    asked = config.to_dict()
    built = experiment.build(config)
    assert config.to_dict() == asked  # the config given is left as it was: the experiment records in its own
    config = built.config
    assert built.info.class_names == ("cat", "dog", "eel")
    assert config.data.class_names == ("cat", "dog", "eel")
    assert config.data.image_shape == (8, 8, 3)
    assert config.data.split_sizes.to_dict() == {"train": 12, "validation": 0, "test": 6}
    assert config.data.mean == (0.5, 0.5, 0.5)  # the user's, kept
    assert config.data.std == data.open_folder(root).info.std
    # A resumed run records the same, so it trains what the run trained.
    resumed = experiment.build(folder_config(root, **{"data.mean": (0.5, 0.5, 0.5)})).config
    assert record.training_differences(config.to_dict(), resumed.to_dict()) == []
    # A changed folder no longer matches the record: its run's data would mix with another's.
    shutil.copytree(root / "train" / "eel", root / "train" / "fox")
    with pytest.raises(data.DataError, match="data.class_names=.* the folder changed"):
        experiment.build(configuration.apply_overrides(config, {"data.split_sizes.train": 0}))
    with pytest.raises(data.DataError, match="the folder changed"):
        experiment.build(config).load_eval_split("test")


def replace_one_cat(root):
    """Another cat image in place of one: the class counts stay, the data do not."""
    replaced = root / "train" / "cat" / "1.png"
    size = replaced.stat().st_size
    image(0, 77, size=16).save(replaced)
    assert replaced.stat().st_size != size


def rename_one_cat(root):
    """The same image under another name: it takes another row of train/ (the rows are sorted by name)."""
    (root / "train" / "cat" / "1.png").rename(root / "train" / "cat" / "9.png")


@pytest.mark.parametrize("change", [replace_one_cat, rename_one_cat])
def test_the_device_loader_refuses_a_folder_whose_files_changed_but_not_their_counts(tmp_path, change):
    root = write_folder(tmp_path / "pets")
    # Resized to one size, and normalised by given values: what the run records of the folder cannot change with it.
    kept = {"data.image_size": 8, "data.mean": (0.5, 0.5, 0.5), "data.std": (0.25, 0.25, 0.25)}
    recorded = experiment.build(folder_config(root, **kept)).config
    assert recorded.data.loader == "device" and len(recorded.data.files_digest) == 32
    experiment.build(recorded).load_eval_split("test")  # the same files: accepted
    change(root)
    assert data.open_folder(root, 8).info.split_sizes == {"train": 12, "test": 6}  # what the old checks compared
    given = {**kept, "data.files_digest": recorded.data.files_digest}
    with pytest.raises(data.DataError, match="data.files_digest=.* the folder changed since the run began"):
        experiment.build(folder_config(root, **given))  # a resume, as it is built
    with pytest.raises(data.DataError, match="the folder changed since the run began"):
        experiment.build(recorded).load_eval_split("test")  # a tool on the run's own data


def test_a_folder_run_recorded_before_the_device_loader_recorded_its_files_resumes(tmp_path):
    root = write_folder(tmp_path / "pets")
    now = experiment.build(folder_config(root, **{"data.mean": (0.5,) * 3, "data.std": (0.25,) * 3})).config.to_dict()
    before = {**now, "data": {**now["data"], "files_digest": ""}}  # what such a run's config.json holds
    assert record.training_differences(before, now) == []
    other = {**now, "data": {**now["data"], "files_digest": "0" * 32}}
    assert record.training_differences(other, now) == ["data.files_digest"]


def test_a_resume_on_a_folder_with_other_files_is_one_line_and_leaves_config_json_as_it_was(tmp_path, capsys):
    root = write_folder(tmp_path / "pets", train=8, test=2)
    run = tmp_path / "run"
    args = [
        *("--workdir", str(run), "--config", str(REPO_ROOT / "configs/smoke.py")),
        *("--config.data.dataset=folder", "--config.data.source=folder", f"--config.data.files_dir={root}"),
        *("--config.data.image_size=8", "--config.data.mean=(0.5,0.5,0.5)", "--config.data.std=(0.25,0.25,0.25)"),
        *("--config.train.num_epochs=1", "--config.train.batch_size=8", "--config.eval.batch_size=6"),
    ]
    assert train_tool.main(args) == 0
    saved = (run / "config.json").read_bytes()
    replace_one_cat(root)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        train_tool.main([*args, "--config.train.num_epochs=2"])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()  # the changed folder's decoding is logged before it
    assert [line for line in lines if line.startswith("error: ")] == lines[-1:] and "Traceback" not in str(lines)
    assert lines[-1].startswith("error: data.files_digest=") and "the folder changed since the run began" in lines[-1]
    assert (run / "config.json").read_bytes() == saved


def test_a_folder_run_trains_and_its_tools_name_the_classes_without_the_folder(tmp_path, capsys):
    root = write_folder(tmp_path / "pets", train=8, test=2)
    archive = write_tar(root, tmp_path / "pets.tar.gz")
    run = tmp_path / "run"
    common = [f"--config.data.files_dir={archive}", "--config.data.image_size=0"]
    args = ["--workdir", str(run), "--config", str(REPO_ROOT / "configs/smoke.py"), *common]
    folder_keys = ["--config.data.dataset=folder", "--config.data.source=folder", "--config.train.num_epochs=1"]
    assert train_tool.main([*args, *folder_keys, "--config.train.batch_size=8", "--config.eval.batch_size=6"]) == 0
    saved = json.loads((run / "config.json").read_text())["data"]
    assert saved["class_names"] == ["cat", "dog", "eel"]
    assert saved["image_shape"] == [8, 8, 3] and saved["split_sizes"] == {"train": 24, "validation": 0, "test": 6}
    assert len(saved["mean"]) == len(saved["std"]) == 3
    capsys.readouterr()
    assert evaluate_tool.main(["--workdir", str(run)]) == 0
    report = json.loads((run / "eval" / "latest" / "report.json").read_text())
    assert [entry["class"] for entry in report["per_class"]] == ["cat", "dog", "eel"]
    assert [entry["examples"] for entry in report["per_class"]] == [2, 2, 2]
    picture = image(2, 99)
    picture.save(tmp_path / "query.png")
    archive.unlink()  # predicting and exporting need only the run: its config.json recorded the folder
    shutil.rmtree(root)
    capsys.readouterr()
    assert predict_tool.main(["--workdir", str(run), str(tmp_path / "query.png"), "--json"]) == 0
    [prediction] = json.loads(capsys.readouterr().out)
    assert {entry["class"] for entry in prediction["top_k"]} == {"cat", "dog", "eel"}
    assert export_tool.main(["--workdir", str(run), "--out", str(tmp_path / "model.bin"), "--platforms", "cpu"]) == 0
    assert json.loads((tmp_path / "model.bin.json").read_text())["class_names"] == ["cat", "dog", "eel"]


def test_a_bad_folder_ends_training_in_one_error_line(tmp_path, capsys):
    root = write_folder(tmp_path / "pets")
    (root / "train" / "fox").mkdir()
    argv = ["--workdir", str(tmp_path / "run"), "--config", str(REPO_ROOT / "configs/cifar10_jpeg.py")]
    with pytest.raises(SystemExit) as exit_info:
        train_tool.main([*argv, f"--config.data.files_dir={root}"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("error: ") and "train/fox/ holds no images" in error[0]
    assert not (tmp_path / "run").exists()


def test_the_cifar10_jpeg_config_without_its_archive_says_where_to_put_images(tmp_path, capsys):
    argv = ["--workdir", str(tmp_path / "run"), "--config", str(REPO_ROOT / "configs/cifar10_jpeg.py")]
    with pytest.raises(SystemExit):
        train_tool.main([*argv, f"--config.data.files_dir={tmp_path / 'shared/cifar10-jpeg.tar.gz'}"])
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "put a folder of images there" in error[0] and "train/<class>/" in error[0]


@pytest.mark.slow
@needs_cifar10_jpeg
def test_the_cifar10_jpeg_archive_holds_50000_and_10000_images_5000_and_1000_a_class():
    opened = data.open_folder(CIFAR10_JPEG)
    assert opened.info.class_names == data.DATASETS["cifar10"].class_names
    assert opened.info.image_shape == (32, 32, 3)
    for split, per_class in (("train", 5_000), ("test", 1_000)):
        labels = opened.split(split).labels
        np.testing.assert_array_equal(np.bincount(labels, minlength=10), [per_class] * 10)


def test_a_folders_validation_folder_is_the_runs_validation_split(tmp_path):
    root = write_folder(tmp_path / "pets", train=4, test=2, validation=3)
    opened = data.open_folder(root)
    assert opened.info.split_sizes == {"train": 12, "validation": 9, "test": 6}
    built = experiment.build(folder_config(root))
    config = built.config
    assert config.data.split_sizes.to_dict() == {"train": 12, "validation": 9, "test": 6}
    assert built.eval_splits == ("validation", "test")
    validation = data.config_loader(config.data, "validation", config.seed)(None)
    np.testing.assert_array_equal(validation.images, opened.split("validation").images)
    np.testing.assert_array_equal(np.bincount(validation.labels), [3, 3, 3])
    # validation/'s images are its own, none of train/'s.
    train = data.config_loader(config.data, "train", config.seed)(None)
    assert not {image.tobytes() for image in train.images} & {image.tobytes() for image in validation.images}
    # A holdout beside it is refused in one line: the folder's own validation split is the run's.
    with pytest.raises(configuration.ConfigError, match=r"has a validation/ folder \(9 images\).*validation_size=0"):
        experiment.build(folder_config(root, **{"data.validation_size": 0.25}))


def test_a_folder_without_validation_holds_one_out_of_train(tmp_path):
    root = write_folder(tmp_path / "pets", train=4, test=2)
    config = experiment.build(folder_config(root, **{"data.validation_size": 3.0})).config
    assert config.data.split_sizes.to_dict() == {"train": 9, "validation": 3, "test": 6}
    validation = data.config_loader(config.data, "validation", config.seed)(None)
    train = data.config_loader(config.data, "train", config.seed)(None)
    np.testing.assert_array_equal(np.bincount(validation.labels), [1, 1, 1])  # one of each class's four
    whole = data.open_folder(root).split("train")
    assert sorted(image.tobytes() for image in [*train.images, *validation.images]) == sorted(
        image.tobytes() for image in whole.images
    )
