"""Files written whole or not at all: a write that fails or is killed half way leaves the old file whole, a name of
255 bytes (the most a file system allows) writes, and a longer one is one line in every tool that writes."""

import errno
import os
import re
import signal
import subprocess
import textwrap
from types import SimpleNamespace

import pytest

from resnet_jax import atomic, export, metrics
from resnet_jax.tools import convert, evaluate, features, plots, sweep
from resnet_jax.tools import export as export_tool
from resnet_jax.tools import train as train_tool
from tests.conftest import PYTHON, REPO_ROOT, subprocess_env
from tests.test_tool_inputs import metrics_workdir, one_line_error, smoke  # noqa: F401 (a fixture)
from tests.test_tools import built, new_state, run_dir  # noqa: F401 (the trained workdir's fixtures)

LONGEST = "a" * 251 + ".png"  # 255 bytes
# 255 bytes of two-byte characters and one ASCII one: a temporary name cut inside a character would not decode.
LONGEST_UTF8 = "ü" * 125 + "a.png"


def hidden_files(folder):
    return sorted(name for name in os.listdir(folder) if name.startswith("."))


@pytest.mark.parametrize("name", [LONGEST, LONGEST_UTF8, "x.png"], ids=["255-ascii", "255-utf8", "short"])
def test_a_name_of_up_to_255_bytes_is_written_through_a_temporary_within_255(tmp_path, name):
    assert len(os.fsencode(name)) <= 255
    temporary = atomic.temporary_path(tmp_path / name)
    assert len(os.fsencode(temporary.name)) <= 255
    assert temporary.parent == tmp_path and temporary.name.startswith(".") and temporary.suffix == ".png"
    atomic.write_text(tmp_path / name, "new")
    assert (tmp_path / name).read_text() == "new"
    assert hidden_files(tmp_path) == []


def test_two_long_names_that_share_their_start_get_different_temporaries(tmp_path):
    first, second = (
        atomic.temporary_path(tmp_path / ("b" * 250 + "1")),
        atomic.temporary_path(tmp_path / ("b" * 250 + "2")),
    )
    assert first.name.split(".")[1] != second.name.split(".")[1]


def test_a_write_that_fails_half_way_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "report.md"
    path.write_text("old report")

    def write_half():
        with atomic.replacing(path) as temporary:
            temporary.write_text("half a rep")
            raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        write_half()
    assert path.read_text() == "old report"
    assert hidden_files(tmp_path) == []


def test_a_folder_takes_its_place_whole_and_a_failed_one_leaves_nothing(tmp_path):
    entry = tmp_path / "cache" / "entry"

    def write(content, fail=False):
        with atomic.replacing_folder(entry) as partial:
            (partial / "info.json").write_text(content)
            if fail:
                raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        write("half", fail=True)
    assert not entry.exists() and hidden_files(entry.parent) == []
    write("first")
    assert (entry / "info.json").read_text() == "first"
    # A second writer of the same entry (another process that decoded it too) finds it there and leaves it as it is.
    with pytest.raises(OSError, match="Directory not empty|File exists"):  # ENOTEMPTY or EEXIST
        write("second")
    assert (entry / "info.json").read_text() == "first" and hidden_files(entry.parent) == []


def test_a_process_killed_mid_write_leaves_the_old_file_whole(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{"old": true}')
    child = textwrap.dedent(
        f"""
        import os, signal, sys
        from resnet_jax import atomic
        with atomic.replacing(sys.argv[1]) as temporary, open(temporary, "wb") as handle:
            handle.write(b'{{"new"')
            handle.flush()
            os.kill(os.getpid(), signal.{signal.SIGKILL.name})
        """
    )
    done = subprocess.run([PYTHON, "-c", child, str(path)], cwd=REPO_ROOT, env=subprocess_env(), timeout=120)
    assert done.returncode == -signal.SIGKILL
    assert path.read_text() == '{"old": true}'


def test_an_export_that_fails_half_way_leaves_the_previous_model_and_description(tmp_path, monkeypatch):
    model, description = tmp_path / "model.bin", tmp_path / "model.bin.json"
    model.write_bytes(b"old model")
    description.write_text("old description")
    monkeypatch.setattr(export, "export_run", lambda *args: SimpleNamespace(serialize=lambda: b"new model"))

    def full_disk(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(export, "describe_export", full_disk)
    with pytest.raises(export.RunError, match=f"cannot write {model} \\(No space left on device\\)"):
        export.write_export(None, model)
    assert (model.read_bytes(), description.read_text()) == (b"old model", "old description")
    assert hidden_files(tmp_path) == []


def test_plots_writes_a_figure_of_a_255_byte_name(tmp_path, smoke):  # noqa: F811
    workdir = metrics_workdir(tmp_path / "run", smoke)
    assert plots.main(["--workdir", str(workdir), "--out", str(tmp_path / LONGEST)]) == 0
    assert (tmp_path / LONGEST).read_bytes().startswith(b"\x89PNG")


def test_convert_writes_weights_to_a_255_byte_name(run_dir, tmp_path):  # noqa: F811
    out = tmp_path / ("w" * 243 + ".safetensors")
    assert convert.main(["--workdir", str(run_dir), "--to", str(out)]) == 0
    assert out.stat().st_size > 0 and hidden_files(tmp_path) == []


TOO_LONG = "a" * 252 + ".png"  # 256 bytes


@pytest.mark.parametrize(
    ("main", "argv", "flag"),
    [
        (train_tool.main, ["--config", str(REPO_ROOT / "configs/smoke.py"), "--workdir", "{long}"], "--workdir"),
        (evaluate.main, ["--workdir", "{run}", "--out", "{long}"], "--out"),
        (export_tool.main, ["--workdir", "{run}", "--out", "{long}"], "--out"),
        (export_tool.main, ["--workdir", "{run}", "--out", "{long}/model.bin"], "--out"),
        (plots.main, ["--workdir", "{run}", "--out", "{long}"], "--out"),
        (convert.main, ["--workdir", "{run}", "--to", "{long}.safetensors"], "--to"),
        (convert.main, ["--from", "{run}/w.safetensors", "--workdir", "{long}"], "--workdir"),
        (
            sweep.main,
            ["--config", str(REPO_ROOT / "configs/smoke.py"), "--workdir", "{long}", "--grid", "seed=1"],
            "--workdir",
        ),
        (features.main, ["--workdir", "{run}", "--out", "{long}.npz"], "--out"),
        # emb.npy's labels go to emb.labels.npy: 250 bytes of name become 257.
        (features.main, ["--workdir", "{run}", "--out", "{dir}/" + "e" * 246 + ".npy"], "--out (its labels)"),
    ],
    ids=[
        "train",
        "evaluate",
        "export",
        "export-folder",
        "plots",
        "convert-to",
        "convert-from",
        "sweep",
        "features",
        "features-labels",
    ],
)
def test_a_name_over_255_bytes_is_one_line_in_every_tool(run_dir, tmp_path, capsys, main, argv, flag):  # noqa: F811
    long = str(tmp_path / TOO_LONG)
    argv = [arg.format(long=long, run=run_dir, dir=tmp_path) for arg in argv]
    message = one_line_error(main, argv, capsys)
    assert message.startswith(f"error: {flag} {tmp_path}/"), message
    assert re.search(r"is 2[5-9][0-9] bytes, over the 255 a file name may have; give a shorter name$", message), message
    assert os.listdir(tmp_path) == []  # refused before anything was written


def test_a_resume_drops_the_later_metrics_records_in_one_replacement(tmp_path):
    writer = metrics.MetricWriter(tmp_path, enabled=True)
    for step in (4, 8, 12):
        writer.write(step, step / 4, {"train_loss": 1.0 / step})
    writer.close()
    resumed = metrics.MetricWriter(tmp_path, enabled=True)
    resumed.truncate_after(8)
    resumed.close()
    assert [record["step"] for record in metrics.read_metrics(tmp_path)] == [4, 8]
    assert hidden_files(tmp_path) == []
