"""PyTorch interop: each layout's weights, drawn from the fixtures' seeds and written as torch would write them,
convert into this zoo and give torch's logits and BN statistics (tests/fixtures/*.npz, made by
make_torch_references.py); the convert tool makes a run the other tools read, writes it back bit-exact, and ends
a foreign file in one line. Where torch is installed, the same checks run against live torch, round trip included.
"""

import json
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import load_file, save_file

from resnet_jax import configuration, data, experiment, inference, models
from resnet_jax.interop import files, layouts, runs
from resnet_jax.onednn import backend
from resnet_jax.tools import convert as convert_tool
from resnet_jax.tools import evaluate as evaluate_tool
from resnet_jax.tools import features as features_tool
from tests.fixtures.references import CASES, draw_state_dict
from tests.test_tools import jitter, tiny_config, write_workdir

TINY_DATA = [
    "--dataset=synthetic",
    "--config.data.synthetic_train_examples=64",
    "--config.data.synthetic_test_examples=48",
    "--config.eval.batch_size=16",
]
# torchvision's deepest nets, whose compile alone takes tens of seconds on a CPU.
SLOW_CASES = {"torchvision_resnet101", "torchvision_resnet152"}
# Eval logits against torch's float32 ones (max relative error): two float32 computations that sum in different
# orders. Measured 1.1e-7 to 8.2e-7 on an Intel Xeon and 2.1e-7 to 1.2e-6 on an AMD EPYC (docs/pytorch.md, "How
# exact it is"); 3e-6 leaves 2.5 times the largest for other CPUs, while one layer converted wrong (ResNet-20 with
# a kernel's channels swapped, or flipped, or a BN's running mean dropped) is 1.7e-2 to 1.3e-1 off.
EVAL_TOLERANCE = 3e-6


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(np.asarray(actual, np.float64) - expected).max() / np.abs(expected).max())


def case_state_dict(case, num_classes=None):
    """The case's weights, drawn from its seed for the keys and shapes its layout gives the zoo model."""
    shapes = runs.expected_torch_keys(case.model, num_classes or case.num_classes, case.layout)
    return draw_state_dict(shapes, case.seed)


def cli_error(main, argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def bn_sample_counts(model, variables, images) -> dict[tuple[str, ...], int]:
    """Values per channel each BatchNorm normalised over in a train-mode pass, by module path."""
    _, state = model.apply(
        variables,
        images,
        train=True,
        mutable=["batch_stats", "intermediates"],
        capture_intermediates=lambda module, _: isinstance(module, nn.BatchNorm),
    )
    counts = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(state["intermediates"]):
        keys = tuple(str(getattr(key, "key", key)) for key in path)  # (*module path, "__call__", 0)
        counts[keys[:-2]] = int(np.prod(leaf.shape[:-1]))
    return counts


@pytest.mark.parametrize(
    "name", [pytest.param(name, marks=pytest.mark.slow) if name in SLOW_CASES else name for name in CASES]
)
def test_each_layout_converts_to_torchs_logits_and_back_bit_exact(name, tmp_path):
    case = CASES[name]
    reference = np.load(case.path)
    drawn = case_state_dict(case)
    path = tmp_path / "weights.safetensors"
    save_file(drawn, path)
    state_dict = files.read_state_dict(path)
    found = layouts.match(state_dict)
    assert (found.layout.name, found.model_name, found.num_classes) == (case.layout, case.model, case.num_classes)
    variables = layouts.to_variables(state_dict, found)
    model = models.get_model(case.model, num_classes=case.num_classes)
    images = jnp.asarray(reference["input"].transpose(0, 2, 3, 1))

    eval_logits = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images)
    assert relative_error(eval_logits, reference["eval_logits"]) <= EVAL_TOLERANCE
    train_logits, updated = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(
        variables, images
    )
    # Train-mode BN over a few values per channel (8 in a 64x64 input's last stage) amplifies float32 rounding
    # through a deep net: held to 1e-5 of torch's float64 logits, or to twice torch's own float32 error.
    torch_own = relative_error(reference["train_logits"], reference["train_logits_float64"])
    assert relative_error(train_logits, reference["train_logits_float64"]) <= max(1e-5, 2 * torch_own)
    if torch_own <= 2e-6:
        assert relative_error(train_logits, reference["train_logits"]) <= 1e-5

    back = layouts.to_state_dict(variables, found.layout)
    assert list(back) == sorted(drawn, key=layouts.torch_order)
    for key, value in drawn.items():
        assert back[key].dtype == value.dtype and np.array_equal(back[key], value), key

    if case.bn_stats:
        counts = bn_sample_counts(model, variables, images)
        table = layouts.entries(variables, found.layout)
        for entry in (entry for entry in table if entry.path[0] == "batch_stats"):
            ours, before = updated["batch_stats"], variables["batch_stats"]
            for key in entry.path[1:]:
                ours, before = ours[key], before[key]
            ours, expected = np.asarray(ours, np.float64), reference[f"bn/{entry.torch_key}"]
            if entry.path[-1] == "var":
                # torch's running variance takes the unbiased batch variance, Flax's the biased one: the same
                # update once the batch part is scaled by n / (n - 1).
                n = counts[entry.path[1:-1]]
                ours = 0.9 * before + (ours - 0.9 * before) * n / (n - 1)
            np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-6, err_msg=entry.torch_key)


def test_a_name_for_each_layout_and_the_first_misfit_key(tmp_path):
    drawn = case_state_dict(CASES["akamaster_resnet20"])
    assert layouts.match(drawn, "akamaster").model_name == "resnet20"
    with pytest.raises(layouts.InteropError, match=r"the kuangliu layout, .*match none"):
        layouts.match(drawn, "kuangliu")
    missing = {key: value for key, value in drawn.items() if key != "layer2.0.bn1.running_var"}
    with pytest.raises(
        layouts.InteropError, match=r"nearest, akamaster, as resnet20: missing layer2.0.bn1.running_var \(32,\)"
    ):
        layouts.match(missing)
    extra = drawn | {"layer2.0.shortcut.0.weight": np.zeros((32, 16, 1, 1), np.float32)}
    with pytest.raises(layouts.InteropError, match=r"unexpected layer2.0.shortcut.0.weight \(32, 16, 1, 1\)"):
        layouts.match(extra)
    wrong = drawn | {"layer1.0.conv1.weight": np.zeros((16, 16, 1, 1), np.float32)}
    with pytest.raises(
        layouts.InteropError, match=r"layer1.0.conv1.weight is \(16, 16, 1, 1\), expected \(16, 16, 3, 3\)"
    ):
        layouts.match(wrong)
    # Files from torch before 0.4.1 have no BN counters; they still fit.
    old = {key: value for key, value in drawn.items() if not key.endswith("num_batches_tracked")}
    assert layouts.match(old).model_name == "resnet20"


def test_a_data_parallel_checkpoint_is_unwrapped():
    drawn = case_state_dict(CASES["akamaster_resnet20"])
    wrapped = {"state_dict": {f"module.{key}": value for key, value in drawn.items()}, "best_prec1": 91.7}
    assert list(files.unwrap(wrapped, Path("model.th"))) == list(drawn)
    assert list(files.unwrap({"net": drawn, "acc": 95.0, "epoch": 200}, Path("ckpt.pth"))) == list(drawn)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """akamaster's ResNet-20, drawn from its case's seed, converted by the tool into a synthetic-data run."""
    folder = tmp_path_factory.mktemp("converted")
    drawn = case_state_dict(CASES["akamaster_resnet20"])
    save_file(drawn, folder / "resnet20.safetensors")
    convert_tool.main(["--from", str(folder / "resnet20.safetensors"), "--workdir", str(folder / "run"), *TINY_DATA])
    return folder, drawn


def test_a_converted_run_is_a_run_the_tools_read(converted, capsys):
    folder, drawn = converted
    record = json.loads((folder / "run" / "conversion.json").read_text())
    assert (record["layout"], record["model"], record["head"]) == ("akamaster", "resnet20", "converted")
    run = inference.restore_run(folder / "run")
    assert run.step == 0 and run.config.model.name == "resnet20"
    assert tuple(run.config.data.mean) == layouts.IMAGENET_MEAN  # as akamaster's trainer normalises
    expected = layouts.to_variables(drawn, layouts.match(drawn))
    for path, leaf in jax.tree_util.tree_leaves_with_path(jax.device_get(run.variables)):
        want = expected
        for key in path:
            want = want[key.key]
        assert np.array_equal(leaf, want), path
    capsys.readouterr()
    assert evaluate_tool.main(["--workdir", str(folder / "run"), "--out", str(folder / "eval")]) == 0
    assert "48 examples" in capsys.readouterr().out


def test_a_run_goes_out_bit_exact_as_safetensors(converted, capsys):
    folder, drawn = converted
    out = folder / "out.safetensors"
    assert convert_tool.main(["--workdir", str(folder / "run"), "--to", str(out)]) == 0
    assert "akamaster layout" in capsys.readouterr().out
    written = load_file(out)
    assert sorted(written) == sorted(drawn)
    for key, value in drawn.items():
        assert written[key].dtype == value.dtype and np.array_equal(written[key], value), key


def test_a_conversion_that_cannot_write_its_record_leaves_nothing_and_runs_again(tmp_path, capsys, monkeypatch):
    save_file(case_state_dict(CASES["akamaster_resnet20"]), tmp_path / "resnet20.safetensors")
    command = ["--from", str(tmp_path / "resnet20.safetensors"), "--workdir", str(tmp_path / "run"), *TINY_DATA]
    write_json = configuration.write_json

    def full_disk(config, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(configuration, "write_json", full_disk)
    with pytest.raises(SystemExit) as refused:
        convert_tool.main(command)
    assert refused.value.code == 2
    assert "No space left on device" in capsys.readouterr().err
    # Its weights and note are gone with it, so no half-run is taken for one; the same command then converts.
    assert sorted(path.name for path in (tmp_path / "run").iterdir()) == [".lock"]
    monkeypatch.setattr(configuration, "write_json", write_json)
    assert convert_tool.main(command) == 0
    assert inference.restore_run(tmp_path / "run").step == 0


def test_a_converted_run_records_what_it_runs_as_as_a_trained_run_does(tmp_path):
    save_file(case_state_dict(CASES["akamaster_resnet20"]), tmp_path / "resnet20.safetensors")
    asked = ["--config.model.dtype=auto", "--config.train.batch_size=32"]
    command = ["--from", str(tmp_path / "resnet20.safetensors"), "--workdir", str(tmp_path / "run"), *TINY_DATA]
    assert convert_tool.main([*command, *asked]) == 0
    saved = json.loads((tmp_path / "run" / configuration.CONFIG_FILE).read_text())
    # What 'auto' computes in and on here, as a run of this config starting here would record it.
    dtype = backend.auto_dtype("auto")
    conv, norm = backend.kernels("auto", "auto", dtype, "auto")
    ran = saved[configuration.RECORD_KEY]["ran"]
    assert saved["model"]["dtype"] == ran["model.dtype"] == jnp.dtype(dtype).name
    assert (ran["model.conv_backend"], ran["model.norm_backend"]) == (conv, norm)
    assert (ran["platform"], ran["devices"], ran["processes"]) == (jax.default_backend(), jax.device_count(), 1)
    assert ran["versions"]["jax"] == jax.__version__
    assert saved[configuration.RECORD_KEY]["asked"] == {
        "model.dtype": "auto",
        "model.conv_backend": "auto",
        "model.norm_backend": "auto",
    }
    assert (saved[configuration.RECORD_KEY]["changes"], saved[configuration.RECORD_KEY]["from_step"]) == ([], 0)
    # The splits' sizes, as a run records them when it starts; the training keys as asked, not the tools' copy's.
    assert saved["data"]["split_sizes"] == {"train": 64, "validation": 0, "test": 48}
    assert (saved["train"]["batch_size"], saved["schedule"]["name"]) == (32, experiment.base_config().schedule.name)
    # The tools read it as they read a trained run: in the dtype and on the kernels recorded.
    model = inference.restore_run(tmp_path / "run").experiment.model
    assert (model.dtype, model.conv_backend, model.norm_backend) == (dtype, conv, norm)


def test_a_head_of_another_class_count_starts_fresh_and_the_backbone_is_kept(tmp_path):
    drawn = case_state_dict(CASES["akamaster_resnet20"], num_classes=100)
    save_file(drawn, tmp_path / "cifar100.safetensors")
    convert_tool.main(
        ["--from", str(tmp_path / "cifar100.safetensors"), "--workdir", str(tmp_path / "run"), *TINY_DATA]
    )
    record = json.loads((tmp_path / "run" / "conversion.json").read_text())
    assert (record["head"], record["source_classes"], record["classes"]) == ("fresh", 100, 10)
    out, _, _ = runs.write_run_weights(tmp_path / "run", tmp_path / "back.safetensors")
    written = load_file(out)
    assert written["linear.weight"].shape == (10, 64)
    assert all(np.array_equal(written[key], drawn[key]) for key in drawn if not key.startswith("linear."))


@pytest.mark.parametrize(
    ("content", "name", "expected"),
    [
        (b"\x89PNG\r\n\x1a\n" + bytes(200), "weights.safetensors", "cannot be read as safetensors"),
        (None, "truncated.safetensors", "cannot be read as safetensors"),
        (b"{}", "weights.bin", "is not a weight file this reads"),
    ],
)
def test_a_foreign_or_truncated_file_is_one_line(tmp_path, capsys, content, name, expected):
    path = tmp_path / name
    if content is None:
        save_file(case_state_dict(CASES["seed_resnet"]), tmp_path / "whole.safetensors")
        content = (tmp_path / "whole.safetensors").read_bytes()[:5000]
    path.write_bytes(content)
    message = cli_error(convert_tool.main, ["--from", str(path), "--workdir", str(tmp_path / "run")], capsys)
    assert expected in message and str(path) in message
    assert not (tmp_path / "run").exists()


def test_a_file_that_fits_no_layout_names_its_key_in_one_line(tmp_path, capsys):
    drawn = case_state_dict(CASES["seed_resnet"])
    drawn["layer3.1.conv2.bias"] = np.zeros(7, np.float32)
    save_file(drawn, tmp_path / "odd.safetensors")
    message = cli_error(
        convert_tool.main, ["--from", str(tmp_path / "odd.safetensors"), "--workdir", str(tmp_path / "r")], capsys
    )
    assert "nearest, seed, as seed_resnet: layer3.1.conv2.bias is (7,), expected (64,)" in message


def test_a_plain_network_is_refused_both_ways_in_one_line(converted, tmp_path, capsys):
    # Its weights have resnet20's names and shapes: only the refusal keeps them from passing as resnet20's.
    folder, _ = converted
    into = ["--from", str(folder / "resnet20.safetensors"), "--workdir", str(tmp_path / "in"), *TINY_DATA]
    message = cli_error(convert_tool.main, [*into, "--config.model.name=plain20"], capsys)
    assert "plain20 is a plain network (no shortcuts)" in message
    assert not (tmp_path / "in").exists()
    plain_run = tmp_path / "plain_run"
    plain_run.mkdir()
    config = inference.load_run_config(folder / "run")
    config.model.name = "plain20"
    configuration.write_json(config, plain_run / configuration.CONFIG_FILE)
    out = ["--workdir", str(plain_run), "--to", str(tmp_path / "out.safetensors"), "--layout", "akamaster"]
    assert "plain20 is a plain network" in cli_error(convert_tool.main, out, capsys)
    with pytest.raises(layouts.InteropError, match="plain18 is a plain network"):
        runs.expected_torch_keys("plain18", 10, "kuangliu")


def test_a_pth_file_without_torch_names_the_install(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # as if torch were not installed
    path = tmp_path / "resnet20.th"
    path.write_bytes(b"PK\x03\x04")
    message = cli_error(convert_tool.main, ["--from", str(path), "--workdir", str(tmp_path / "run")], capsys)
    assert "pip install torch" in message and ".safetensors" in message


def test_features_are_what_the_head_reads_and_the_default_call_is_unchanged():
    model = models.get_model("resnet8_tiny", num_classes=5)
    images = jax.random.normal(jax.random.key(0), (3, 32, 32, 3))
    variables = model.init(jax.random.key(1), images, train=False)
    logits, features = model.apply(variables, images, train=False, return_features=True)
    assert list(features) == ["stem", "stage1", "stage2", "stage3", "pooled"]
    assert [features[f"stage{i}"].shape for i in (1, 2, 3)] == [(3, 32, 32, 4), (3, 16, 16, 8), (3, 8, 8, 16)]
    np.testing.assert_allclose(features["pooled"], features["stage3"].mean(axis=(1, 2)), rtol=1e-6)
    head = variables["params"]["head"]
    np.testing.assert_allclose(logits, features["pooled"] @ head["kernel"] + head["bias"], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(logits, model.apply(variables, images, train=False))


@pytest.mark.parametrize("suffix", [".npz", ".npy"])
def test_the_features_tool_writes_a_splits_embeddings_with_its_labels(converted, tmp_path, capsys, suffix):
    folder, _ = converted
    out = tmp_path / f"emb{suffix}"
    assert features_tool.main(["--workdir", str(folder / "run"), "--out", str(out)]) == 0
    if suffix == ".npz":
        stored = np.load(out)
        embeddings, labels = stored["features"], stored["labels"]
    else:
        embeddings, labels = np.load(out), np.load(tmp_path / "emb.labels.npy")
    run = inference.restore_run(folder / "run")
    evaluation = inference.evaluate_split(run, "test")
    assert embeddings.shape == (48, 64) and embeddings.dtype == np.float32
    np.testing.assert_array_equal(labels, evaluation.labels)
    head = jax.device_get(run.variables)["params"]["head"]
    np.testing.assert_allclose(embeddings @ head["kernel"] + head["bias"], evaluation.logits, rtol=1e-4, atol=1e-5)


def test_the_features_tool_names_the_layers_it_has(converted, tmp_path, capsys):
    folder, _ = converted
    argv = ["--workdir", str(folder / "run"), "--layer", "stage4", "--out", str(tmp_path / "e.npz")]
    assert "stem, stage1, stage2, stage3, pooled" in cli_error(features_tool.main, argv, capsys)


# --- live torch, where it is installed ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def torch_nets():
    pytest.importorskip("torch")
    from tests.fixtures import make_torch_references

    return make_torch_references


def live_cases(nets):
    names = ["akamaster_resnet20", "kuangliu_resnet18", "seed_resnet", "torchvision_resnet18", "torchvision_resnet50"]
    try:
        import torchvision  # noqa: F401
    except ImportError:
        names = [name for name in names if CASES[name].layout != "torchvision"]
    return [CASES[name] for name in names]


def test_live_torch_round_trip(torch_nets, tmp_path, capsys):
    import torch

    for case in live_cases(torch_nets):
        torch.manual_seed(case.seed)
        net = torch_nets.NETS[case.torch_net](case.num_classes)  # torch's own initialisation
        with torch.no_grad():  # BN statistics other than torch's 0 and 1, so that their mapping shows
            for module in net.modules():
                if isinstance(module, torch.nn.BatchNorm2d):
                    module.running_mean.normal_(0, 0.1)
                    module.running_var.uniform_(0.5, 2.0)
        net.eval()
        source = tmp_path / f"{case.name}.th"
        wrapped = (
            {"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}
            if case.layout == "akamaster"
            else net.state_dict()
        )
        torch.save(wrapped, source)
        run = tmp_path / case.name
        assert (
            convert_tool.main(["--from", str(source), "--workdir", str(run), *TINY_DATA, f"--layout={case.layout}"])
            == 0
        )
        restored = inference.restore_run(run)
        images = torch.randn(2, 3, case.image_size, case.image_size)
        with torch.no_grad():
            expected = net(images).numpy()
        model = models.get_model(case.model, num_classes=case.num_classes)
        ours = model.apply(restored.variables, jnp.asarray(images.numpy().transpose(0, 2, 3, 1)), train=False)
        assert relative_error(ours, expected) <= 1e-5, case.name
        for suffix in (".pth", ".safetensors"):
            out = tmp_path / f"{case.name}-back{suffix}"
            assert convert_tool.main(["--workdir", str(run), "--to", str(out)]) == 0
            fresh = torch_nets.NETS[case.torch_net](case.num_classes)
            loaded = (
                torch.load(out) if suffix == ".pth" else {k: torch.from_numpy(v) for k, v in load_file(out).items()}
            )
            fresh.load_state_dict(loaded, strict=True)
            for key, value in net.state_dict().items():
                assert torch.equal(fresh.state_dict()[key], value), (case.name, suffix, key)
    capsys.readouterr()


def test_live_torch_a_truncated_pth_is_one_line(torch_nets, tmp_path, capsys):
    import torch

    path = tmp_path / "resnet20.pth"
    torch.save(torch_nets.NETS["akamaster.resnet20"](10).state_dict(), path)
    path.write_bytes(path.read_bytes()[:3000])
    message = cli_error(convert_tool.main, ["--from", str(path), "--workdir", str(tmp_path / "run")], capsys)
    assert "cannot be read by torch.load" in message


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("layer1.0.bn1.weight", np.nan, "layer1.0.bn1.weight holds 1 NaN or infinite value"),
        ("linear.weight", np.inf, "linear.weight holds 1 NaN or infinite value"),
        ("layer1.0.bn2.running_var", -0.5, "layer1.0.bn2.running_var holds 1 negative variance"),
    ],
    ids=["nan", "inf", "negative-variance"],
)
def test_weights_no_network_could_run_are_refused_naming_the_tensor(tmp_path, capsys, key, value, expected):
    drawn = case_state_dict(CASES["seed_resnet"])
    drawn[key] = drawn[key].copy()
    drawn[key].flat[0] = value
    save_file(drawn, tmp_path / "bad.safetensors")
    argv = ["--from", str(tmp_path / "bad.safetensors"), "--workdir", str(tmp_path / "run"), *TINY_DATA]
    message = cli_error(convert_tool.main, argv, capsys)
    assert f"{tmp_path / 'bad.safetensors'}: {expected}" in message, message
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------------------------
# Issue 36: a run's weights go out and come back in as the same run; what no layout's code builds is refused going
# out; a converted run is scored on data one has.


def zoo_run(workdir, model, dataset="synthetic", **overrides):
    """A run of `model` as the trainer leaves one (config.json, a checkpoint at step 4), without training: its
    weights and BatchNorm statistics moved off their initial values, so that every leaf is its own. Returns the
    weights written, as numpy."""
    config = configuration.apply_overrides(
        tiny_config(),
        {
            "model.name": model,
            "data.dataset": dataset,
            "data.source": "synthetic",
            "data.image_size": 0,
            "data.synthetic_train_examples": 64,
            "data.synthetic_test_examples": 20,
            **overrides,
        },
    )
    built = experiment.build(config)
    state = built.new_state()
    batch_stats = jax.tree_util.tree_map_with_path(
        lambda path, leaf: leaf + 0.1 if "mean" in jax.tree_util.keystr(path) else leaf * 1.5, state.batch_stats
    )
    state = state.replace(params=jitter(state.params, seed=3), batch_stats=batch_stats)
    write_workdir(workdir, built.config, {4: state.checkpoint_tree()})
    return jax.device_get({"params": state.params, "batch_stats": state.batch_stats})


def assert_same_leaves(actual, expected):
    flat_actual = dict(jax.tree_util.tree_leaves_with_path(actual))
    flat_expected = dict(jax.tree_util.tree_leaves_with_path(expected))
    assert sorted(map(str, flat_actual)) == sorted(map(str, flat_expected))
    for path, leaf in flat_expected.items():
        assert np.array_equal(np.asarray(flat_actual[path]), np.asarray(leaf)), jax.tree_util.keystr(path)


@pytest.mark.parametrize(
    ("model", "dataset", "layout", "channels"),
    [
        ("resnet8_tiny", "synthetic", "akamaster", 3),
        ("resnet8", "fashion_mnist", "akamaster", 1),  # the README's first run: grey 28x28 images
        ("seed_resnet", "synthetic", "seed", 3),
        ("resnet18", "mnist", "kuangliu", 1),
    ],
)
def test_a_run_goes_out_and_comes_back_in_as_the_same_run(tmp_path, capsys, model, dataset, layout, channels):
    written = zoo_run(tmp_path / "run", model, dataset)
    out = tmp_path / "weights.safetensors"
    assert convert_tool.main(["--workdir", str(tmp_path / "run"), "--to", str(out)]) == 0
    said = capsys.readouterr().out
    assert f"{layout} layout" in said
    assert (f"conv1 takes {channels}-channel images" in said) == (channels != 3)
    assert load_file(out)["conv1.weight"].shape[1] == channels
    # Back in with no flag but the file: the dataset, its input and its normalisation come from the file.
    assert convert_tool.main(["--from", str(out), "--workdir", str(tmp_path / "back")]) == 0
    assert f"{model} on {dataset}, 10 classes, {channels}-channel input, head converted" in capsys.readouterr().out
    original, back = (inference.load_run_config(tmp_path / name).data for name in ("run", "back"))
    assert (back.dataset, back.source, back.image_size) == (dataset, "synthetic", 0)
    # The run's own normalisation (its dataset's), not the layout's training code's.
    info = data.DATASETS[dataset]
    assert tuple(back.mean) == info.mean and tuple(back.std) == info.std
    assert original.dataset == dataset
    run = inference.restore_run(tmp_path / "back")
    assert run.input_shape == (*info.image_shape[:2], channels)
    assert_same_leaves(jax.device_get(run.variables), written)


def test_a_file_without_the_runs_record_takes_its_channels_from_its_shapes(tmp_path, capsys):
    zoo_run(tmp_path / "run", "resnet8", "fashion_mnist")
    convert_tool.main(["--workdir", str(tmp_path / "run"), "--to", str(tmp_path / "recorded.safetensors")])
    bare = tmp_path / "bare.safetensors"
    save_file(load_file(tmp_path / "recorded.safetensors"), bare)  # the same tensors, no metadata (another writer)
    message = cli_error(convert_tool.main, ["--from", str(bare), "--workdir", str(tmp_path / "cifar")], capsys)
    assert "conv1 takes 1-channel images and cifar10's input has 3" in message and "--dataset fashion_mnist" in message
    assert not (tmp_path / "cifar").exists()
    argv = ["--from", str(bare), "--workdir", str(tmp_path / "grey"), "--dataset", "fashion_mnist"]
    assert convert_tool.main([*argv, "--config.data.source=synthetic"]) == 0
    assert inference.restore_run(tmp_path / "grey").input_shape == (32, 32, 1)  # the default image_size, padded


@pytest.mark.parametrize(
    ("model", "overrides", "layout", "expected"),
    [
        ("resnet8_tiny", {"model.shortcut": "B"}, None, "built with model.shortcut='B', and the akamaster layout"),
        ("preact_resnet18", {}, None, "preact_resnet18 has no PyTorch layout"),
        ("wrn16_8", {}, None, "wrn16_8 has no PyTorch layout"),
        ("resnet8_tiny", {}, "kuangliu", "the kuangliu layout's code builds resnet18"),
        ("resnet8_tiny", {}, "torchvision", "not resnet8_tiny; use its own, --layout akamaster"),
    ],
)
def test_a_model_no_layouts_code_builds_is_refused_on_the_way_out(tmp_path, capsys, model, overrides, layout, expected):
    # The config alone is refused: no weights are read for a run whose model cannot go out.
    (tmp_path / "run").mkdir()
    config = configuration.apply_overrides(tiny_config(), {"model.name": model, **overrides})
    configuration.write_json(config, tmp_path / "run" / configuration.CONFIG_FILE)
    out = tmp_path / "out.safetensors"
    argv = ["--workdir", str(tmp_path / "run"), "--to", str(out), *(["--layout", layout] if layout else [])]
    assert expected in cli_error(convert_tool.main, argv, capsys)
    assert not out.exists()


def class_folder(root, images, labels, classes):
    for split in ("train", "test"):
        for index, (image, label) in enumerate(zip(images, labels, strict=True)):
            folder = root / split / classes[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{index}.png")
    return root


def test_a_converted_run_is_evaluated_on_a_folder_of_images_by_an_override(tmp_path, capsys):
    zoo_run(tmp_path / "run", "resnet8_tiny")
    out = tmp_path / "weights.safetensors"
    convert_tool.main(["--workdir", str(tmp_path / "run"), "--to", str(out)])
    convert_tool.main(["--from", str(out), "--workdir", str(tmp_path / "back")])
    # Images of the run's 10 classes, one folder each, and labels the network gets both right and wrong.
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (30, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(30) % 10
    classes = [f"c{index}" for index in range(10)]
    pets = class_folder(tmp_path / "pets", images, labels, classes)
    capsys.readouterr()
    argv = ["--workdir", str(tmp_path / "back"), "--config.data.source=folder", f"--config.data.files_dir={pets}"]
    assert evaluate_tool.main(argv) == 0
    report = json.loads((tmp_path / "back" / "eval" / "latest-pets" / "report.json").read_text())
    # The expectation by hand: the converted weights applied to the images, normalised as the run was.
    run = inference.restore_run(tmp_path / "back")
    mean, std = (np.asarray(value, np.float32) for value in (run.config.data.mean, run.config.data.std))
    logits = run.experiment.model.apply(run.variables, (images / 255.0 - mean) / std, train=False)
    expected = float(np.mean(np.argmax(logits, -1) == labels))
    assert report["num_examples"] == 30 and report["accuracy"] == pytest.approx(expected)
    assert 0 < expected < 1
    # The run's own evaluation is left where it was, and a model override is refused in one line.
    assert not (tmp_path / "back" / "eval" / "latest").exists()
    capsys.readouterr()
    message = cli_error(evaluate_tool.main, [*argv, "--config.model.name=resnet20"], capsys)
    assert "take data.* and eval.* overrides only" in message
    # Data of another class count than the run's head is named, not scored.
    few = class_folder(tmp_path / "few", images[:6], labels[:6] % 3, classes)
    argv = ["--workdir", str(tmp_path / "back"), "--config.data.source=folder", f"--config.data.files_dir={few}"]
    with pytest.raises(SystemExit) as stop:
        evaluate_tool.main(argv)
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after the folder's decoding, logged as it goes
    assert stop.value.code == 2 and last.startswith("error: the run's head has 10 classes"), last


def pooled_by_hand(run, images):
    """The run's network's pooled features of uint8 images, normalised as the run was, in one call of the model."""
    mean, std = (np.asarray(value, np.float32) for value in (run.config.data.mean, run.config.data.std))
    inputs = (images.astype(np.float32) / 255.0 - mean) / std
    return np.asarray(run.experiment.model.apply(run.variables, inputs, train=False, return_features=True)[1]["pooled"])


@pytest.mark.parametrize("suffix", [".npz", ".npy"])
def test_the_features_tool_writes_each_batch_as_it_comes_and_its_file_only_once_whole(
    converted, tmp_path, monkeypatch, suffix
):
    # 48 test images in batches of 16, 64 features each: 4 KiB of float32 a batch.
    folder, _ = converted
    run = inference.restore_run(folder / "run")
    test = data.config_loader(run.config.data, "test", run.config.seed)(None)
    expected = pooled_by_hand(run, test.images)
    out = tmp_path / "out" / f"emb{suffix}"
    out.parent.mkdir()
    out.write_bytes(b"an earlier file")
    batch_bytes = 16 * 64 * 4
    calls, fail_at, make_program = [], [None], features_tool.feature_program

    def beside():
        return {path: path.read_bytes() for path in out.parent.iterdir() if path.name.startswith(".")}

    def watched(*args):
        program = make_program(*args)

        def call(variables, batch):
            done = len(calls)
            calls.append(done)
            if done == fail_at[0]:
                raise RuntimeError("stopped mid-way")
            # The batches computed so far are on disk beside the file, whose own name still holds the earlier one.
            assert out.read_bytes() == b"an earlier file"
            written = max(beside().values(), key=len, default=b"")
            assert len(written) >= done * batch_bytes
            streamed = np.frombuffer(written[len(written) - done * batch_bytes :], np.float32).reshape(-1, 64)
            np.testing.assert_allclose(streamed, expected[: 16 * done], rtol=1e-4, atol=1e-5)
            return program(variables, batch)

        return call

    monkeypatch.setattr(features_tool, "feature_program", watched)
    argv = ["--workdir", str(folder / "run"), "--out", str(out)]
    fail_at[0] = 2
    with pytest.raises(RuntimeError, match="stopped mid-way"):
        features_tool.main(argv)
    assert out.read_bytes() == b"an earlier file" and not beside()
    assert sorted(path.name for path in out.parent.iterdir()) == [out.name]
    calls.clear()
    fail_at[0] = None
    assert features_tool.main(argv) == 0
    assert len(calls) == 3 and not beside()
    if suffix == ".npz":
        stored = np.load(out)
        embeddings, labels = stored["features"], stored["labels"]
    else:
        embeddings, labels = np.load(out), np.load(tmp_path / "out" / "emb.labels.npy")
    assert embeddings.shape == (48, 64) and embeddings.dtype == np.float32
    np.testing.assert_allclose(embeddings, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(labels, test.labels)


@pytest.mark.parametrize("suffix", [".npz", ".npy"])
def test_features_written_in_blocks_read_back_whole_and_a_failed_write_leaves_the_old_file(tmp_path, suffix):
    rng = np.random.default_rng(0)
    blocks = [(rng.normal(size=(rows, 5)).astype(np.float32), rng.integers(0, 3, rows, np.int32)) for rows in (3, 0, 2)]
    out = tmp_path / f"emb{suffix}"
    with features_tool.writing(out, ["a", "b", "c"]) as add:
        assert [add(*block) for block in blocks] == [3, 3, 5]
    if suffix == ".npz":
        stored = np.load(out)
        features, labels = stored["features"], stored["labels"]
        assert list(stored["class_names"]) == ["a", "b", "c"]
    else:
        features, labels = np.load(out), np.load(tmp_path / "emb.labels.npy")
    np.testing.assert_array_equal(features, np.concatenate([block[0] for block in blocks]))
    np.testing.assert_array_equal(labels, np.concatenate([block[1] for block in blocks]))
    before = {path.name: path.read_bytes() for path in tmp_path.iterdir()}

    def interrupted():
        with features_tool.writing(out, ["a", "b", "c"]) as add:
            add(*blocks[0])
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        interrupted()
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir()} == before


def test_features_with_flip_tta_are_the_mean_of_the_image_and_its_mirror(converted, capsys):
    folder, _ = converted
    run = inference.restore_run(folder / "run")
    assert features_tool.main(["--workdir", str(folder / "run"), "--tta", "flip"]) == 0
    assert features_tool.main(["--workdir", str(folder / "run"), "--tta", "none"]) == 0
    # Without --out, each goes inside the run, named by what it holds.
    flipped = np.load(folder / "run" / "features" / "latest-test-pooled-tta_flip.npz")["features"]
    plain = np.load(folder / "run" / "features" / "latest-test-pooled.npz")["features"]
    # By hand: the network's pooled features of the (non-symmetric, random) images and of their mirrors.
    images = data.config_loader(run.config.data, "test", run.config.seed)(None).images
    assert not np.array_equal(images, images[:, :, ::-1])

    def pooled(batch):
        return pooled_by_hand(run, batch)

    np.testing.assert_allclose(plain, pooled(images), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(flipped, (pooled(images) + pooled(images[:, :, ::-1])) / 2, rtol=1e-4, atol=1e-5)
    assert np.abs(flipped - plain).max() > 1e-3
    assert "tta flip" in capsys.readouterr().out
