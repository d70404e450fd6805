"""Every tool's files and flags: an output it cannot write, a damaged input and a usage error each end in one line
naming the path and the fix, exit status 2, no traceback; the tools' default outputs never share a file; the
figures and tables say what they show."""

import argparse
import errno
import importlib.metadata
import json
import re
import shutil
import subprocess

import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image

from resnet_jax import atomic, configuration, experiment, metrics, plots
from resnet_jax.metrics import MetricWriter
from resnet_jax.tools import common, compare, evaluate, export, models, predict, sweep
from resnet_jax.tools import data as data_tool
from resnet_jax.tools import main as tools_main
from resnet_jax.tools import plots as plots_tool
from tests.conftest import PYTHON, REPO_ROOT, subprocess_env
from tests.test_tools import built, new_state, run_dir  # noqa: F401 (the trained workdir's fixtures)


def one_line_error(main, argv, capsys) -> str:
    """The one `error: ` line a command ends in with exit status 2."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ")
    assert "Traceback" not in captured.err + captured.out
    return lines[0]


def metrics_workdir(path, config=None, rates=(0.1, 0.05)):
    """A workdir as far as the curves need: config.json (when given) and metrics.jsonl."""
    path.mkdir(parents=True)
    if config is not None:
        configuration.write_json(config, path / configuration.CONFIG_FILE)
    writer = MetricWriter(path, enabled=True)
    for epoch, rate in enumerate(rates, 1):
        writer.write(10 * epoch, epoch, {"train_loss": 1.0 / epoch, "learning_rate": rate, "train_accuracy": 0.5})
        writer.write(10 * epoch, epoch, {"test_loss": 0.5 / epoch, "test_accuracy": 0.6})
    writer.close()
    return path


@pytest.fixture
def smoke():
    return configuration.load_config_file(str(REPO_ROOT / "configs" / "smoke.py"))


# ---------------------------------------------------------------------------------------------------------------
# Damaged inputs.


@pytest.mark.parametrize(
    "saved", [[], {"model": []}, {"train": {"batch_size": "many"}}], ids=["list", "section", "value"]
)
@pytest.mark.parametrize("tool", ["evaluate", "predict", "export"])
def test_a_config_json_of_the_wrong_shape_is_named(tmp_path, capsys, saved, tool):
    (tmp_path / "config.json").write_text(json.dumps(saved))
    argv = {
        "evaluate": [],
        "predict": ["image.png"],
        "export": ["--out", str(tmp_path / "m.bin")],
    }[tool]
    main = {"evaluate": evaluate.main, "predict": predict.main, "export": export.main}[tool]
    message = one_line_error(main, ["--workdir", str(tmp_path), *argv], capsys)
    assert str(tmp_path / "config.json") in message
    assert "damaged" in message and "restore it" in message


def test_plots_and_compare_name_a_damaged_config_json(tmp_path, smoke, capsys):
    workdir = metrics_workdir(tmp_path / "run", smoke)
    (workdir / "config.json").write_text("[]")
    message = one_line_error(plots_tool.main, ["--workdir", str(workdir)], capsys)
    assert f"{workdir / 'config.json'} holds no config" in message
    message = one_line_error(compare.main, ["--runs", str(workdir), "--outdir", str(tmp_path / "c")], capsys)
    assert f"{workdir / 'config.json'} holds no config" in message
    assert not (tmp_path / "c").exists()


def tear_line(workdir, number):
    path = workdir / metrics.METRICS_FILE
    lines = path.read_text().splitlines(keepends=True)
    lines[number - 1] = lines[number - 1][:12] + "\n"
    path.write_text("".join(lines))


def test_a_torn_line_in_the_middle_of_metrics_jsonl_is_named_by_number(tmp_path, smoke, capsys):
    workdir = metrics_workdir(tmp_path / "run", smoke)
    tear_line(workdir, 2)
    message = one_line_error(plots_tool.main, ["--workdir", str(workdir)], capsys)
    assert f"{workdir / 'metrics.jsonl'} line 2 is not JSON" in message
    assert "delete or repair that line" in message
    message = one_line_error(compare.main, ["--runs", str(workdir)], capsys)
    assert f"{workdir / 'metrics.jsonl'} line 2 is not JSON" in message


def test_a_torn_last_line_is_left_out_as_a_kill_mid_write_leaves_it(tmp_path, smoke, capsys):
    workdir = metrics_workdir(tmp_path / "run", smoke)
    path = workdir / metrics.METRICS_FILE
    path.write_text(path.read_text() + '{"step": 30, "epo')
    assert len(metrics.read_metrics(workdir)) == 4
    assert plots_tool.main(["--workdir", str(workdir)]) == 0
    assert (workdir / plots.CURVES_FILE).is_file()


def test_a_metrics_line_that_is_not_a_record_is_named(tmp_path, smoke, capsys):
    workdir = metrics_workdir(tmp_path / "run", smoke)
    path = workdir / metrics.METRICS_FILE
    path.write_text("[1, 2]\n" + path.read_text())
    message = one_line_error(plots_tool.main, ["--workdir", str(workdir)], capsys)
    assert "line 1 is not a metrics record" in message


def test_a_study_database_that_is_not_sqlite_is_named(tmp_path, repo_root, capsys):
    (tmp_path / "study.db").write_text("not a database")
    argv = ["--config", str(repo_root / "configs" / "smoke.py"), "--workdir", str(tmp_path)]
    message = one_line_error(sweep.main, [*argv, "--grid", "optimizer.learning_rate=0.1,0.2"], capsys)
    assert f"{tmp_path / 'study.db'} is not a study database" in message
    assert "move it away" in message
    assert (tmp_path / "study.db").read_text() == "not a database"  # left as it was


# ---------------------------------------------------------------------------------------------------------------
# Outputs that cannot be written.


def test_plots_refuses_a_suffix_it_cannot_write_a_folder_and_a_path_under_a_file(tmp_path, smoke, capsys):
    workdir = metrics_workdir(tmp_path / "run", smoke)
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    argv = ["--workdir", str(workdir), "--out"]
    assert "must end in .png" in one_line_error(plots_tool.main, [*argv, str(tmp_path / "curves.xyz")], capsys)
    assert "is a folder; give a file name" in one_line_error(plots_tool.main, [*argv, str(tmp_path)], capsys)
    message = one_line_error(plots_tool.main, [*argv, str(a_file / "out.png")], capsys)
    assert f"{a_file} is a file, not a folder" in message
    assert plots_tool.main([*argv, str(tmp_path / "curves.svg")]) == 0
    assert (tmp_path / "curves.svg").read_text().lstrip().startswith("<?xml")


def test_a_write_the_filesystem_refuses_is_one_line(tmp_path, smoke, capsys, monkeypatch):
    workdir = metrics_workdir(tmp_path / "run", smoke)

    def refuse(self, path, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(Figure, "savefig", refuse)
    message = one_line_error(plots_tool.main, ["--workdir", str(workdir)], capsys)
    assert message == (
        f"error: cannot write {workdir / plots.CURVES_FILE} (Read-only file system); give --out a place you can write"
    )


def test_export_refuses_a_folder_and_a_path_under_a_file_before_restoring(tmp_path, capsys):
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    argv = ["--workdir", str(tmp_path / "no-run"), "--out"]  # no run: the output is checked first
    assert "is a folder" in one_line_error(export.main, [*argv, str(tmp_path)], capsys)
    assert f"{a_file} is a file, not a folder" in one_line_error(export.main, [*argv, str(a_file / "m.bin")], capsys)


def test_evaluate_refuses_an_existing_file_or_a_path_under_one_as_its_folder(run_dir, tmp_path, capsys):  # noqa: F811
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    argv = ["--workdir", str(run_dir), "--out"]
    assert f"--out {a_file} is a file; give a folder" in one_line_error(evaluate.main, [*argv, str(a_file)], capsys)
    message = one_line_error(evaluate.main, [*argv, str(a_file / "eval")], capsys)
    assert f"{a_file} is a file, not a folder" in message


def test_compare_refuses_an_outdir_that_is_a_file_before_measuring(tmp_path, capsys):
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    argv = ["--models", "resnet8_tiny", "--outdir", str(a_file)]
    assert f"--out {a_file} is a file" in one_line_error(compare.main, argv, capsys)


def test_compare_shows_its_measurements_when_it_cannot_save_them(tmp_path, capsys, monkeypatch):
    m = compare.measure.Measurement("resnet8_tiny", 5006, 0.002, 1.0, 100.0, 10.0, 2**20, None, "cpu", "cpu", 1, "0")
    monkeypatch.setattr(compare.measure, "measure_isolated", lambda config, repeats: m)

    def refuse(path, text):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(atomic, "write_text", refuse)
    argv = ["--models", "resnet8_tiny", "--outdir", str(tmp_path / "c"), "--batch", "2", "--steps", "1"]
    with pytest.raises(SystemExit) as exit_info:
        compare.main(argv)
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert "| resnet8_tiny | 5,006 |" in captured.out
    assert "Traceback" not in captured.err
    assert captured.err.strip().splitlines()[-1] == (  # after the progress log's lines
        f"error: cannot write {tmp_path / 'c' / compare.COMPARE_MD} (No space left on device); "
        "give --out a place you can write"
    )


def test_data_prepare_refuses_a_file_for_either_folder(tmp_path, capsys):
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    message = one_line_error(data_tool.main, ["prepare", "--manual-dir", str(a_file)], capsys)
    assert f"--manual-dir {a_file} is a file" in message
    argv = ["prepare", "--manual-dir", str(tmp_path), "--data-dir", str(a_file)]
    assert f"--data-dir {a_file} is a file" in one_line_error(data_tool.main, argv, capsys)


_READ_ONLY = """
mount --bind "$1" "$1" && mount -o remount,ro,bind "$1" || exit 77
shift
exec "$@"
"""


def run_on_a_read_only_folder(folder, *argv):
    """`argv` run with `folder` mounted read-only, in a user and mount namespace of its own (exit 77: the kernel
    does not allow one)."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare")
    command = ["unshare", "-rm", "sh", "-c", _READ_ONLY, "sh", str(folder), PYTHON, "-m", tools_main.__name__, *argv]
    completed = subprocess.run(
        command, capture_output=True, text=True, timeout=300, env=subprocess_env(JAX_PLATFORMS="cpu")
    )
    if completed.returncode == 77 or "unshare failed" in completed.stderr:
        pytest.skip(f"this kernel refuses a mount namespace: {completed.stderr.strip()}")
    return completed


@pytest.mark.parametrize(
    ("tool", "fix"),
    [("plots", "give --out a place you can write"), ("evaluate", "give --out a place you can write")],
)
def test_a_run_on_a_read_only_filesystem_gets_one_line(run_dir, tmp_path, tool, fix):  # noqa: F811
    workdir = tmp_path / "run"
    shutil.copytree(run_dir, workdir)
    completed = run_on_a_read_only_folder(workdir, tool, "--workdir", str(workdir))
    assert completed.returncode == 2, completed.stderr
    (line,) = completed.stderr.strip().splitlines()
    assert line.startswith(f"error: cannot write {'into ' if tool == 'plots' else ''}{workdir}"), line
    assert "ead-only" in line and line.endswith(fix)
    assert "Traceback" not in completed.stderr


# ---------------------------------------------------------------------------------------------------------------
# The conventions: --help everywhere, and a usage error in one line with status 2.

COMMANDS = [
    ["evaluate"],
    ["predict"],
    ["export"],
    ["plots"],
    ["models"],
    ["compare"],
    ["sweep"],
    ["data"],
    ["data", "info"],
    ["data", "download"],
    ["data", "prepare"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_has_help_and_refuses_an_unknown_flag_in_one_line(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        tools_main.main([*command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: resnet-jax {' '.join(command)}")
    message = one_line_error(tools_main.main, [*command, "--no-such-flag"], capsys)
    assert "--help lists the options" in message
    assert "usage:" not in message


def test_a_stray_argument_and_bad_values_are_one_line(capsys):
    assert "unrecognized arguments: stray" in one_line_error(models.main, ["stray"], capsys)
    assert "--image-size=0 must be at least 1" in one_line_error(models.main, ["--image-size", "0"], capsys)
    assert "unknown command 'evaluat'" in one_line_error(tools_main.main, ["evaluat"], capsys)


# ---------------------------------------------------------------------------------------------------------------
# Issue 25: outputs that never collide, figures and tables that say what they show.


def test_the_default_outputs_of_plots_and_compare_never_share_a_file(tmp_path, smoke, monkeypatch):
    first, second = (metrics_workdir(tmp_path / name, smoke) for name in ("fmnist", "fmnist_adam"))
    assert plots_tool.default_out([first]) == first / plots.CURVES_FILE
    assert plots_tool.default_out([first, second]) != plots_tool.default_out([second, first])
    monkeypatch.chdir(tmp_path)
    # Issue 36: inside the first run, never in the current folder; the list comma-separated, or (as before) not.
    assert plots_tool.main(["--workdir", f"{first},{second}"]) == 0
    written = {str(path.relative_to(tmp_path)) for path in tmp_path.rglob("*.png")}
    assert written == {"fmnist/plots/fmnist_vs_fmnist_adam.png"}
    assert plots_tool.main(["--workdir", str(second), str(first)]) == 0
    assert (second / "plots" / "fmnist_adam_vs_fmnist.png").is_file()
    # compare's default is its own folder inside the first run (never the plots' file), or runs/compare/.
    assert compare._parser().parse_args([]).out is None
    assert (compare.DEFAULT_OUTDIR, str(compare.MODELS_ONLY_OUTDIR)) == ("compare", "runs/compare")


def test_the_curves_say_which_loss_is_smoothed_or_mixed_and_put_decades_of_rates_on_a_log_axis(tmp_path, smoke):
    smoothed = configuration.apply_overrides(smoke, {"train.label_smoothing": 0.1})
    sgd = metrics_workdir(tmp_path / "sgd", smoothed, rates=(0.1, 0.05))
    adam = metrics_workdir(tmp_path / "adam", smoke, rates=(1e-3, 5e-4))
    loss, _, rate = plots.curves_figure([sgd]).axes
    assert [line.get_label() for line in loss.get_lines()] == ["train (label smoothing 0.1)", "test"]
    assert loss.get_title() == "Loss: train with label smoothing, evaluations without"
    assert rate.get_yscale() == "linear"  # one run's rates, within a decade
    loss, _, rate = plots.curves_figure([sgd, adam]).axes
    assert [line.get_label() for line in loss.get_lines()] == [
        "sgd train (label smoothing 0.1)",
        "sgd test",
        "adam train",
        "adam test",
    ]
    assert rate.get_yscale() == "log"
    assert "log scale" in rate.get_ylabel()
    loss, _, rate = plots.curves_figure([adam, metrics_workdir(tmp_path / "other", smoke, rates=(2e-3, 1e-3))]).axes
    assert (rate.get_yscale(), loss.get_title()) == ("linear", "Loss")
    mixed = configuration.apply_overrides(smoothed, {"augment.mixup_alpha": 0.2, "augment.cutmix_alpha": 1.0})
    loss, accuracy, _ = plots.curves_figure([metrics_workdir(tmp_path / "mixed", mixed, rates=(0.1, 0.05))]).axes
    assert loss.get_lines()[0].get_label() == "train (label smoothing 0.1, mixup 0.2, CutMix 1)"
    assert loss.get_title() == "Loss: train with label smoothing and mixing, evaluations without"
    assert accuracy.get_lines()[0].get_label() == "train (mixup 0.2, CutMix 1)"


def test_runs_that_logged_their_gradient_flow_get_a_panel_of_it(tmp_path, smoke):
    plain, residual = (metrics_workdir(tmp_path / name, smoke) for name in ("plain", "residual"))
    for workdir, scale in ((plain, 1e-3), (residual, 1.0)):
        writer = MetricWriter(workdir, enabled=True)
        for step in (10, 20):
            writer.write(
                step, step / 10, {"grad_norm/stem": scale * step, "grad_norm/stage1": 2.0, "grad_norm/head": 3.0}
            )
        writer.close()
    (flow,) = plots.curves_figure([plain]).axes[3:]
    assert [line.get_label() for line in flow.get_lines()] == ["stem", "stage1", "head"]
    np.testing.assert_allclose(flow.get_lines()[0].get_ydata(), [1e-2, 2e-2])
    assert flow.get_yscale() == "log"
    flow = plots.curves_figure([plain, residual]).axes[3]
    labels = [line.get_label() for line in flow.get_lines()]
    assert labels == [f"{run} {part}" for run in ("plain", "residual") for part in ("stem", "stage1", "head")]
    assert {line.get_color() for line in flow.get_lines()[:3]} == {"C0"}  # one colour per run, a style per part
    assert len({line.get_linestyle() for line in flow.get_lines()[:3]}) == 3


def labelled_ticks(axis) -> list[str]:
    """The tick labels drawn inside an axis' limits, major and minor."""
    axis.figure.draw_without_rendering()
    low, high = sorted(axis.get_view_interval())
    labels = [tick.label1.get_text() for tick in axis.get_major_ticks() + axis.get_minor_ticks()]
    locations = list(axis.get_majorticklocs()) + list(axis.get_minorticklocs())
    return [text for text, at in zip(labels, locations, strict=True) if text and low <= at <= high]


def test_the_compare_figure_labels_its_gflops_axis_without_runs():
    # ResNet-18 and -34: 0.97 and 2.0 GFLOPs, no power of ten between them.
    measurements = [
        compare.measure.Measurement(name, params, gflops, 1.0, rate, 1.0, None, None, "cpu", "cpu", 1, "0")
        for name, params, gflops, rate in (("resnet18", 11_173_962, 0.966, 900.0), ("resnet34", 21_282_122, 2.0, 500.0))
    ]
    gflops_axes, params_axes = compare.report.compare_figure(measurements, {}, "t").axes
    assert len(labelled_ticks(gflops_axes.xaxis)) >= 2
    assert len(labelled_ticks(params_axes.xaxis)) >= 2


def test_counts_are_written_with_their_plural():
    assert [common.plural(count, "device") for count in (1, 2, 0)] == ["1 device", "2 devices", "0 devices"]
    config = configuration.apply_overrides(experiment.base_config(), {"train.steps_per_call": 1})
    m = compare.measure.Measurement("resnet20", 1, 0.1, 1.0, 100.0, 10.0, None, None, "cpu", "cpu", 1, "0")
    markdown = compare.report.compare_markdown([m], {}, config, 5)
    assert "(cpu, 1 device, jax 0)" in markdown
    assert "(1 step per call" in markdown


def test_the_models_table_is_read_from_its_cache_the_second_time(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    models.print_registry_table(["resnet8", "resnet8_tiny"])
    measured = capsys.readouterr().out
    assert len(list((tmp_path / "resnet-jax" / "models").glob("*.json"))) == 2

    def no_lowering(*args, **kwargs):
        raise AssertionError("measured again")

    monkeypatch.setattr(models.models, "forward_flops", no_lowering)
    models.print_registry_table(["resnet8", "resnet8_tiny"])
    assert capsys.readouterr().out == measured
    with pytest.raises(AssertionError, match="measured again"):
        models.print_registry_table(["resnet8"], cache=False)
    with pytest.raises(AssertionError, match="measured again"):  # another input is another row
        models.print_registry_table(["resnet8"], image_shape=(28, 28, 1))


def test_a_reader_that_leaves_early_gets_no_traceback(tmp_path):
    # `resnet-jax models | head -3`: the pipe closes while rows are still coming.
    child = subprocess.Popen(
        [PYTHON, "-m", tools_main.__name__, "models"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=subprocess_env(JAX_PLATFORMS="cpu", XDG_CACHE_HOME=str(tmp_path)),
    )
    assert [child.stdout.readline() for _ in range(3)][2].startswith("| resnet8 |")
    child.stdout.close()
    assert child.wait(timeout=300) == 1
    assert "Traceback" not in child.stderr.read()
    child.stderr.close()


# ---------------------------------------------------------------------------------------------------------------
# Issue 36: one flag convention (defaults in every --help, --version everywhere), and `data info` on a folder.

EVERY_COMMAND = [[name] for name in tools_main.COMMANDS] + [["data", sub] for sub in ("info", "download", "prepare")]


def parser_of(command, monkeypatch):
    """The parser `resnet-jax COMMAND` builds (a subcommand's for `data info`), caught as it parses `--help`."""
    caught = []
    real = common.ArgumentParser.parse_known_args

    def catch(self, args=None, namespace=None):
        caught.append(self)
        return real(self, args, namespace)

    monkeypatch.setattr(common.ArgumentParser, "parse_known_args", catch)
    with pytest.raises(SystemExit):
        tools_main.main([*command, "--help"])
    monkeypatch.undo()
    return caught[-1]


@pytest.mark.parametrize("command", EVERY_COMMAND, ids=" ".join)
def test_every_option_with_a_default_shows_it_in_help(command, monkeypatch, capsys):
    parser = parser_of(command, monkeypatch)
    formatter = parser._get_formatter()
    shown = 0
    for action in parser._actions:
        quiet = action.nargs == 0 or action.required or action.default in (None, [], argparse.SUPPRESS)
        if not action.option_strings or quiet:
            continue
        text = formatter._expand_help(action)
        assert "default" in text, (command, action.option_strings, text)
        shown += 1
    help_text = " ".join(capsys.readouterr().out.split())
    if command == ["degradation"]:
        assert shown and "(default: 20,56)" in help_text and "(default: 3)" in help_text
    if command == ["data", "info"]:
        assert "default: cifar10, or folder with --source folder" in help_text


def exit_status(main, argv) -> int:
    """What a command returns, or the status it exits with (argparse's --version exits)."""
    try:
        return main(argv)
    except SystemExit as stop:
        return stop.code


@pytest.mark.parametrize("command", [[], *EVERY_COMMAND], ids=lambda command: " ".join(command) or "resnet-jax")
def test_resnet_jax_and_every_command_say_their_version(command, capsys):
    version = importlib.metadata.version("resnet-jax")
    assert exit_status(tools_main.main, [*command, "--version"]) == 0
    assert capsys.readouterr().out.strip() == f"resnet-jax {version}"


def pets_folder(root):
    """bird, cat and dog images of two sizes (a folder that needs --image-size), in train/ and test/."""
    rng = np.random.default_rng(0)
    for split, count in (("train", 4), ("test", 2)):
        for name in ("bird", "cat", "dog"):
            (root / split / name).mkdir(parents=True)
            for index in range(count):
                image = rng.integers(0, 256, (40 + index % 2, 40, 3), dtype=np.uint8)
                Image.fromarray(image).save(root / split / name / f"{index}.png")
    return root


def test_data_info_describes_a_folder_by_its_own_classes_and_flags(tmp_path, capsys):
    pets = pets_folder(tmp_path / "pets")
    for spelling in (["--source", "folder"], ["--dataset", "folder"], ["--dataset", "folder", "--source", "folder"]):
        assert data_tool.main(["info", *spelling, "--files-dir", str(pets), "--image-size", "64"]) == 0
        out = capsys.readouterr().out
        assert out.startswith(f"folder {pets}: 3 classes (bird, cat, dog), image shape (64, 64, 3)"), out
        assert "airplane" not in out and "cifar10" not in out
        histograms = re.findall(r"^    (bird|cat|dog) +(\d+)$", out, re.MULTILINE)
        assert histograms == [("bird", "4"), ("cat", "4"), ("dog", "4"), ("bird", "2"), ("cat", "2"), ("dog", "2")]
    # Images of two sizes: the fix names this command's flag, not the config key.
    assert exit_status(data_tool.main, ["info", "--source", "folder", "--files-dir", str(pets)]) == 2
    message = capsys.readouterr().err.strip().splitlines()[-1]  # after the folder's decoding, logged as it goes
    assert message.startswith("error: ") and "give --image-size to resize them" in message
    assert "data.image_size" not in message
    message = one_line_error(data_tool.main, ["info", "--dataset", "cifar10", "--source", "folder"], capsys)
    assert "not cifar10's; leave out --dataset" in message
    assert "needs --files-dir" in one_line_error(data_tool.main, ["info", "--dataset", "folder"], capsys)


def test_a_data_hint_keeps_the_training_overrides_it_gives_whole():
    # A hint that names both the training override and this command's flag: only the bare key becomes a flag.
    hint = "(training: --config.data.source=files --config.data.files_dir=DIR; data info: data.source, data.dataset)"
    assert data_tool.in_flags(hint) == (
        "(training: --config.data.source=files --config.data.files_dir=DIR; data info: --source, --dataset)"
    )


_NOISY_PREDICT = """
import sys
from absl import logging as absl_logging
from resnet_jax import inference
from resnet_jax.tools import main
restore = inference.restore_run
def noisy_restore(*args, **kwargs):
    absl_logging.warning("Variant folder has no dataset_info.json")
    return restore(*args, **kwargs)
inference.restore_run = noisy_restore
sys.exit(main.main(sys.argv[1:]))
"""


def test_library_chatter_stays_out_of_predict_and_sweep(run_dir, tmp_path, monkeypatch):  # noqa: F811
    # absl's warnings (tfds probing a folder it has not prepared) leaked twice into predict's output: a command run
    # as a person runs it, with a library warning on the way.
    image = tmp_path / "grey.png"
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(image)
    completed = subprocess.run(
        [PYTHON, "-c", _NOISY_PREDICT, "predict", "--workdir", str(run_dir), str(image)],
        capture_output=True,
        text=True,
        timeout=300,
        env=subprocess_env(JAX_PLATFORMS="cpu"),
    )
    assert completed.returncode == 0, completed.stderr
    assert "dataset_info.json" not in completed.stdout + completed.stderr
    assert completed.stdout.startswith(f"{image}: ")
    # Optuna's `[I ...]` line per trial: a sweep (and the degradation experiment, which runs one) keeps only warnings.
    import optuna

    optuna.logging.set_verbosity(optuna.logging.INFO)
    monkeypatch.setattr(sweep.run, "run_sweep", lambda *args: [])
    assert sweep.run_as_a_tool(None, str(tmp_path), None, top=1, name="sweep") == []
    assert optuna.logging.get_verbosity() == optuna.logging.WARNING


def test_default_outputs_go_inside_the_run_never_into_the_current_folder(run_dir, tmp_path, monkeypatch):  # noqa: F811
    workdir = tmp_path / "run"
    shutil.copytree(run_dir, workdir)
    here = tmp_path / "checkout"
    here.mkdir()
    monkeypatch.chdir(here)
    assert export.main(["--workdir", str(workdir), "--platforms", "cpu"]) == 0
    assert (workdir / "export" / "model.bin").is_file() and (workdir / "export" / "model.bin.json").is_file()
    assert plots_tool.main(["--workdir", f"{workdir},{run_dir}"]) == 0
    assert (workdir / "plots" / f"run_vs_{run_dir.name}.png").is_file()
    assert list(here.iterdir()) == []
    # No run there: nothing is created in its place.
    with pytest.raises(SystemExit):
        export.main(["--workdir", str(tmp_path / "no-run")])
    assert not (tmp_path / "no-run").exists()
