"""Architecture comparison: the table's figures come from the registry and the runs' own train program, and trained
runs add their accuracy."""

import json

import jax
import pytest

from resnet_jax import configuration, experiment, models
from resnet_jax.metrics import MetricWriter
from resnet_jax.tools import compare
from resnet_jax.tools import main as resnet_jax_main
from tests.test_folder import folder_config, write_folder


def table_rows(markdown: str) -> dict[str, dict[str, str]]:
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = [dict(zip(header, (c.strip() for c in line.strip("|").split("|")), strict=True)) for line in lines[2:]]
    return {row["model"]: row for row in rows}


def registry_params(name: str) -> int:
    return models.count_params(models.init_shapes(models.get_model(name))["params"])


def fake_run(
    workdir, model: str, accuracies, dataset: str = "cifar10", validation=None, seed=0, overrides=None, base=None
):
    """A trained workdir as the trainer leaves it: config.json and metrics.jsonl with train and eval records (test
    `accuracies`, and `validation` ones of the same evaluations when given); `base` is the config it starts from
    (default: base_config())."""
    config = experiment.base_config() if base is None else base.copy_and_resolve_references()
    config.model.name = model
    config.data.dataset = dataset
    config.seed = seed
    config = configuration.apply_overrides(config, overrides or {})
    workdir.mkdir(parents=True)
    (workdir / configuration.CONFIG_FILE).write_text(configuration.to_json(config))
    writer = MetricWriter(workdir, enabled=True)
    for epoch, accuracy in enumerate(accuracies, 1):
        writer.write(epoch * 10, epoch, {"train_loss": 1.0 / epoch, "images_per_second": 100.0})
        validated = {} if validation is None else {"validation_accuracy": validation[epoch - 1]}
        writer.write(epoch * 10, epoch, validated | {"test_accuracy": accuracy, "test_loss": 1.0})
    writer.close()
    return workdir


def measurement(model: str, **overrides) -> compare.measure.Measurement:
    values = dict(
        model=model,
        params=registry_params(model),
        gflops=0.1,
        compile_seconds=1.0,
        images_per_second=100.0,
        step_milliseconds=10.0,
        xla_step_bytes=2**20,
        peak_bytes=None,
        device_kind="cpu",
        platform="cpu",
        device_count=1,
        jax_version=jax.__version__,
    )
    return compare.measure.Measurement(**(values | overrides))


@pytest.mark.slow
def test_compare_of_two_tiny_models_times_the_train_step_and_counts_the_registrys_parameters(tmp_path):
    code = compare.main(
        [
            "--models",
            "resnet8_tiny,seed_resnet",
            "--batch",
            "4",
            "--steps",
            "2",
            "--repeats",
            "2",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    markdown = (tmp_path / compare.COMPARE_MD).read_text()
    rows = table_rows(markdown)
    assert list(rows) == ["resnet8_tiny", "seed_resnet"]
    for name, row in rows.items():
        assert int(row["params"].replace(",", "")) == registry_params(name)
        flops = models.forward_flops(models.get_model(name)) / 1e9
        assert float(row["GFLOPs/image"]) == pytest.approx(flops, abs=5e-4)
        assert float(row["train images/s"].replace(",", "")) > 0
        assert float(row["compile s"]) > 0
        # The device's own peak counter, where it keeps one (not the CPU).
        has_peak_counter = jax.devices()[0].memory_stats() is not None
        assert row["peak memory"].endswith("MiB") if has_peak_counter else row["peak memory"] == "n/a"
        assert row["XLA step memory"].endswith("MiB")
    assert f"on {jax.devices()[0].device_kind} (cpu, 1 device, jax {jax.__version__})" in markdown
    assert "(2 steps per call" in markdown
    assert "batch 4" in markdown
    assert (tmp_path / compare.COMPARE_PNG).stat().st_size > 10_000


def test_runs_of_one_model_show_the_spread_of_their_validation_and_test_accuracy_and_each_run(tmp_path):
    runs = [
        fake_run(tmp_path / "a", "resnet20", [0.5, 0.7, 0.6], validation=[0.55, 0.75, 0.65]),
        fake_run(tmp_path / "b", "resnet20", [0.6, 0.8, 0.8], validation=[0.6, 0.9, 0.85]),
        fake_run(tmp_path / "d", "resnet20", [0.6, 0.8, 0.9], validation=[0.6, 0.9, 0.95]),
        fake_run(tmp_path / "c", "resnet56", [0.4, 0.9]),
    ]
    accuracies, config = compare.accuracy.read_runs(runs)
    # Each run's last evaluation: the highest (0.7 in run a) would be chosen on test.
    assert accuracies["resnet20"] == compare.accuracy.RunAccuracy(
        workdirs=tuple(map(str, runs[:3])),
        validation=(0.65, 0.85, 0.95),
        test=(0.6, 0.8, 0.9),
        epochs=(3, 3, 3),
        model="resnet20",
    )
    assert accuracies["resnet56"] == compare.accuracy.RunAccuracy((str(runs[3]),), (None,), (0.9,), (2,), "resnet56")
    assert config.model.name == "resnet20"

    table = compare.report.compare_markdown(
        [measurement("resnet20"), measurement("resnet56"), measurement("resnet8_tiny")], accuracies, config, 5
    )
    rows = table_rows(table)
    # The mean ± the sample standard deviation of the three runs (min-max): validation 0.8167 ± 0.1528, test
    # 0.7667 ± 0.1528.
    assert (rows["resnet20"]["validation acc"], rows["resnet20"]["test acc"]) == (
        "0.8167 ± 0.1528 (0.6500-0.9500)",
        "0.7667 ± 0.1528 (0.6000-0.9000)",
    )
    assert (rows["resnet20"]["runs"], rows["resnet56"]["runs"]) == ("3", "1")
    assert (rows["resnet56"]["validation acc"], rows["resnet56"]["test acc"]) == ("n/a", "0.9000")  # one run
    assert rows["resnet8_tiny"]["test acc"] == ""  # measured, never trained
    assert rows["resnet20"]["peak memory"] == "n/a"
    assert "mean ± the standard deviation (min-max)" in table
    assert f"- resnet20: {runs[0]} validation 0.6500, test 0.6000, 3 epochs" in table
    assert f"- resnet20: {runs[1]} validation 0.8500, test 0.8000, 3 epochs" in table
    assert "- resnet56" not in table  # a model of one run is its row
    compare.report.plot_compare([measurement("resnet20"), measurement("resnet56")], accuracies, tmp_path / "c.png", "t")
    assert (tmp_path / "c.png").stat().st_size > 10_000


def test_runs_trained_differently_are_never_averaged_as_seeds_and_what_differs_is_said(tmp_path):
    sgd = [fake_run(tmp_path / f"sgd{seed}", "resnet20", [0.6 + seed / 10], seed=seed) for seed in (0, 1)]
    adam = fake_run(tmp_path / "adam", "resnet20", [0.3], overrides={"optimizer.name": "adam"})
    deeper = fake_run(tmp_path / "deep", "resnet56", [0.5], overrides={"optimizer.name": "adam"})
    accuracies, config = compare.accuracy.read_runs([*sgd, adam, deeper])
    # The two SGD seeds are one row; the Adam run of the same model is its own, named by the key that differs.
    assert set(accuracies) == {"resnet20 (optimizer.name=sgd)", "resnet20 (optimizer.name=adam)", "resnet56"}
    assert accuracies["resnet20 (optimizer.name=sgd)"].test == (0.6, 0.7)
    assert accuracies["resnet20 (optimizer.name=adam)"].test == (0.3,)
    differing = compare.accuracy.differences_besides_the_model([*sgd, adam, deeper])
    assert differing == ["optimizer.name"]
    table = compare.report.compare_markdown(
        [measurement("resnet20"), measurement("resnet56")], accuracies, config, 5, differing
    )
    rows = table_rows(table)
    assert rows["resnet20 (optimizer.name=sgd)"]["runs"] == "2"
    assert rows["resnet20 (optimizer.name=adam)"]["test acc"] == "0.3000"
    assert "also differ in optimizer.name" in table


@pytest.mark.slow
def test_runs_on_a_folder_of_images_are_timed_on_synthetic_images_of_its_shape_and_classes(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    pets = write_folder(tmp_path / "pets")  # 3 classes of 8x8 RGB images
    # Built as a run starts, which records the folder's classes, image shape, split sizes and statistics.
    recorded = experiment.build(folder_config(pets)).config
    run = fake_run(tmp_path / "run", "resnet8_tiny", [0.5], dataset="folder", base=recorded)
    pets.rename(tmp_path / "moved")  # the speed of a finished run is measured without its images
    out = tmp_path / "out"
    argv = ["--runs", str(run), "--batch", "4", "--steps", "2", "--repeats", "1", "--out", str(out)]
    assert compare.main(argv) == 0
    markdown = (out / compare.COMPARE_MD).read_text()
    assert "folder inputs 8x8x3, train step at batch 4" in markdown
    row = table_rows(markdown)["resnet8_tiny"]
    head_of_three = models.init_shapes(models.get_model("resnet8_tiny", num_classes=3), (8, 8, 3))["params"]
    assert row["params"] == f"{models.count_params(head_of_three):,}"
    assert (row["test acc"], row["runs"]) == ("0.5000", "1")
    [measured] = json.loads((out / compare.COMPARE_JSON).read_text())
    assert measured["images_per_second"] > 0 and measured["gflops"] > 0


def test_runs_on_different_datasets_or_without_a_config_are_refused(tmp_path):
    cifar = fake_run(tmp_path / "a", "resnet20", [0.5])
    fashion = fake_run(tmp_path / "b", "resnet20", [0.5], dataset="fashion_mnist")
    with pytest.raises(configuration.ConfigError, match="mixes datasets"):
        compare.accuracy.read_runs([cifar, fashion])
    (tmp_path / "empty").mkdir()
    with pytest.raises(configuration.ConfigError, match=r"holds no config\.json"):
        compare.accuracy.read_runs([tmp_path / "empty"])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--models", "resnet20,resnet9"], "--models: unknown resnet9"),
        ([], "give --models"),
        (["--models", "resnet20", "--batch", "0"], "must be positive"),
        (["--models", "resnet20", "--dtype", "float64"], "model.dtype='float64' is not known"),
        (["--models", "resnet20", "--dtype", "float16"], "model.dtype='float16' is not offered"),
        (["--models", "resnet20", "--batch", "many"], "argument --batch: invalid int value: 'many'"),
        (["--runs", "no/such/run"], "--runs 'no/such/run' holds no config.json"),
    ],
)
def test_bad_arguments_are_refused_in_one_line(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as stop:
        compare.main([*argv, "--out", str(tmp_path / "out")])
    assert stop.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ")
    assert message in error
    assert len(error.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_measurement_config_keeps_the_runs_data_shape_on_synthetic_data():
    base = experiment.base_config()
    base.data.dataset = "fashion_mnist"
    base.data.source = "files"
    base.data.image_size = 32
    config = compare.measure.measurement_config(base, "resnet56", batch=16, steps=3, dtype="bfloat16")
    assert (config.model.name, config.model.dtype) == ("resnet56", "bfloat16")
    assert (config.data.dataset, config.data.source, config.data.image_size) == ("fashion_mnist", "synthetic", 32)
    assert (config.train.batch_size, config.train.steps_per_call, config.data.synthetic_train_examples) == (16, 3, 48)
    assert base.model.name == "resnet20"  # the base is untouched
    experiment.check_config(config)
    assert json.loads(configuration.to_json(config))["train"]["num_steps"] == 3


def test_resnet_jax_compare_is_the_same_command(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        resnet_jax_main.main(["compare", "--models", "resnet9", "--out", str(tmp_path / "out")])
    assert stop.value.code == 2
    assert capsys.readouterr().err.startswith("error: --models: unknown resnet9; choose from resnet")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("steps", [1, 2, 3])
def test_a_measurement_of_a_few_steps_builds_from_any_recipe(steps):
    # The default recipe drops its rate at 1/2 and 3/4 of the run: a run of a few steps has no room for that.
    config = compare.measure.measurement_config(experiment.base_config(), "resnet8_tiny", 32, steps, None)
    assert experiment.build(config).total_steps == steps
