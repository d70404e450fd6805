"""The model zoo: shapes, BatchNorm state, shortcuts, mixed precision and published parameter counts; its config
section checked without native code; and the `models` tool that lists it."""

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax import experiment, models
from resnet_jax.onednn import library
from resnet_jax.tools import models as models_tool
from tests.conftest import load_config

PUBLISHED_PARAMS = {
    "resnet20": 269_722,
    "resnet32": 464_154,
    "resnet44": 658_586,
    "resnet56": 853_018,
    "resnet110": 1_727_962,
    "resnet1202": 19_421_274,
    "resnet18": 11_173_962,
    "resnet34": 21_282_122,
    "resnet50": 23_520_842,
    "resnet101": 42_512_970,
    "resnet152": 58_156_618,
    "wrn28_10": 36_479_194,
    "wrn40_4": 8_949_210,
}


def tiny(block_cls=models.BasicBlock, **kwargs) -> models.ResNet:
    defaults = dict(stage_sizes=(1, 1), block_cls=block_cls, widths=(4, 8), num_classes=5)
    return models.ResNet(**{**defaults, **kwargs})


def init(model: nn.Module, image_shape=(8, 8, 3), batch=2, seed=0):
    images = jax.random.normal(jax.random.key(seed), (batch, *image_shape))
    return model.init(jax.random.key(1), images, train=False), images


@pytest.mark.parametrize(("name", "published"), sorted(PUBLISHED_PARAMS.items()))
def test_parameter_counts_match_published_figures(name, published):
    shapes = models.init_shapes(models.get_model(name, num_classes=10))
    assert models.count_params(shapes["params"]) == published


def test_resnet8_is_the_cifar_family_with_one_block_per_stage():
    # Not in He et al.'s table; counted by hand: stem conv + BN 464, stage 1 4,672, stage 2 13,952 (no projection
    # with option A), stage 3 55,552, head 650.
    shapes = models.init_shapes(models.get_model("resnet8", num_classes=10))
    assert models.count_params(shapes["params"]) == 464 + 4_672 + 13_952 + 55_552 + 650 == 75_290
    assert sorted(name for name in shapes["params"] if name.startswith("stage")) == [
        "stage1_block1",
        "stage2_block1",
        "stage3_block1",
    ]


def test_shortcut_b_adds_exactly_the_projection_parameters():
    a = models.count_params(models.init_shapes(models.get_model("resnet20"))["params"])
    b = models.count_params(models.init_shapes(models.get_model("resnet20", shortcut="B"))["params"])
    assert b - a == 2_752


def test_every_registered_model_builds_with_any_class_count():
    for name in models.MODEL_REGISTRY:
        shapes = models.init_shapes(models.get_model(name, num_classes=7))
        assert shapes["params"]["head"]["kernel"].shape[-1] == 7, name


@pytest.mark.parametrize(
    "block_cls",
    [models.BasicBlock, models.BottleneckBlock, models.PreActBasicBlock, models.PreActBottleneckBlock],
)
@pytest.mark.parametrize("stem", ["cifar", "imagenet"])
def test_output_shape_and_dtype(block_cls, stem):
    model = tiny(block_cls, stem=stem)
    variables, images = init(model, image_shape=(16, 16, 3), batch=3)
    logits = model.apply(variables, images, train=False)
    chex.assert_shape(logits, (3, 5))
    chex.assert_type(logits, jnp.float32)
    chex.assert_tree_all_finite(logits)


def test_variable_collections_are_exactly_params_and_batch_stats():
    for block_cls in (models.BasicBlock, models.PreActBottleneckBlock):
        variables, _ = init(tiny(block_cls))
        assert set(variables) == {"params", "batch_stats"}


def test_batch_stats_update_in_training_and_not_in_eval():
    model = tiny()
    variables, images = init(model)
    _, updates = model.apply(variables, images * 3 + 1, train=True, mutable=["batch_stats"])
    changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), variables["batch_stats"], updates["batch_stats"])
    assert all(jax.tree.leaves(changed))
    # Eval mode must not even request the collection as mutable, and must use the running averages.
    eval_logits = model.apply(variables, images, train=False)
    again, state = model.apply(variables, images, train=False, mutable=["batch_stats"])
    chex.assert_trees_all_equal(state["batch_stats"], variables["batch_stats"])
    chex.assert_trees_all_close(again, eval_logits)


def test_train_mode_batchnorm_uses_batch_statistics():
    model = tiny()
    variables, images = init(model, batch=4)
    scaled = images * 5.0  # running stats are at init (0, 1): eval mode sees the scale, train mode removes it
    train_logits, _ = model.apply(variables, scaled, train=True, mutable=["batch_stats"])
    base_logits, _ = model.apply(variables, images, train=True, mutable=["batch_stats"])
    eval_logits = model.apply(variables, scaled, train=False)
    assert not np.allclose(eval_logits, base_logits, atol=1e-2)
    # The stem conv is linear without bias, so its output scales by 5, which batch statistics divide out.
    chex.assert_trees_all_close(train_logits, base_logits, atol=1e-3)


@pytest.mark.parametrize("block_cls", [models.BasicBlock, models.BottleneckBlock])
def test_zero_last_bn_scale_makes_the_block_an_identity_map(block_cls):
    conv = functools.partial(nn.Conv, use_bias=False)
    norm = functools.partial(nn.BatchNorm, use_running_average=False, momentum=0.9)
    features = 8 if block_cls is models.BasicBlock else 2  # bottleneck outputs 4x: 8 channels in and out
    block = block_cls(features=features, conv=conv, norm=norm, zero_init_last=True)
    # Post-ReLU activations are non-negative: that is what a block receives inside a ResNet.
    x = jax.nn.relu(jax.random.normal(jax.random.key(0), (2, 6, 6, 8)))
    variables = block.init(jax.random.key(1), x)
    y, _ = block.apply(variables, x, mutable=["batch_stats"])
    chex.assert_trees_all_close(y, x)
    # And the zero really is what makes it so: a non-zero scale changes the output.
    variables = jax.tree_util.tree_map_with_path(
        lambda path, leaf: jnp.ones_like(leaf) if "scale" in jax.tree_util.keystr(path) else leaf, variables
    )
    y, _ = block.apply(variables, x, mutable=["batch_stats"])
    assert not np.allclose(y, x, atol=1e-3)


@pytest.mark.parametrize(
    ("block_cls", "last"),
    [
        (models.BasicBlock, ("BatchNorm", "scale")),
        (models.BottleneckBlock, ("BatchNorm", "scale")),
        # A pre-activation branch ends in a conv, not a BN: its kernel starts at zero.
        (models.PreActBasicBlock, ("Conv", "kernel")),
        (models.PreActBottleneckBlock, ("Conv", "kernel")),
    ],
    ids=lambda value: getattr(value, "__name__", None),
)
def test_zero_init_residual_option_reaches_every_block(block_cls, last):
    module, leaf = last
    for zero_init in (True, False):
        params = init(tiny(block_cls, zero_init_residual=zero_init))[0]["params"]
        for block in ("stage1_block1", "stage2_block1"):
            name = max((k for k in params[block] if k.startswith(f"{module}_")), key=lambda k: int(k.split("_")[1]))
            value = np.asarray(params[block][name][leaf])
            assert (not value.any()) is zero_init, (block, name, zero_init)


def test_option_a_adds_no_parameters_and_pads_channels():
    count = lambda shortcut: models.count_params(init(tiny(shortcut=shortcut))[0]["params"])  # noqa: E731
    with_a, with_b = count("A"), count("B")
    # Stage 2 of tiny() doubles 4 -> 8 channels: B adds a 4x8 1x1 conv and an 8-channel BN.
    assert with_b - with_a == 4 * 8 + 2 * 8
    x = jnp.arange(2 * 4 * 4 * 3, dtype=jnp.float32).reshape(2, 4, 4, 3)
    y = models.shortcut_a(x, features=7, strides=2)
    chex.assert_shape(y, (2, 2, 2, 7))
    chex.assert_trees_all_equal(y[..., 2:5], x[:, ::2, ::2, :])
    chex.assert_trees_all_equal(y[..., :2], jnp.zeros((2, 2, 2, 2)))
    chex.assert_trees_all_equal(y[..., 5:], jnp.zeros((2, 2, 2, 2)))


def test_bfloat16_compute_keeps_float32_params_and_statistics():
    model = tiny(dtype=jnp.bfloat16)
    variables, images = init(model)
    chex.assert_trees_all_equal_dtypes(variables, jax.tree.map(lambda x: x.astype(jnp.float32), variables))
    logits, updates = model.apply(variables, images, train=True, mutable=["batch_stats"])
    chex.assert_type(logits, jnp.float32)
    for leaf in jax.tree.leaves(updates):
        chex.assert_type(leaf, jnp.float32)
    # The convolutions really ran in bf16: the result differs from float32 by bf16 rounding, not more.
    f32_logits, _ = tiny().apply(variables, images, train=True, mutable=["batch_stats"])
    assert not np.array_equal(logits, f32_logits)
    chex.assert_trees_all_close(logits, f32_logits, atol=0.1, rtol=0.1)


def test_seed_resnet_follows_the_article():
    params = models.init_shapes(models.get_model("seed_resnet"))["params"]
    assert set(k for k in params if k.startswith("stage")) == {f"stage{s}_block{b}" for s in (1, 2, 3) for b in (1, 2)}
    assert "bias" in params["stage1_block1"]["Conv_0"]  # PyTorch's nn.Conv2d default
    assert "shortcut_conv" in params["stage2_block1"]
    assert params["head"]["kernel"].shape == (64, 10)


def test_unknown_model_and_dtype_name_the_choices():
    with pytest.raises(ValueError, match=r"unknown model 'resnet21'.*resnet20"):
        models.get_model("resnet21")
    with pytest.raises(ValueError, match=r"unknown dtype 'float8'.*bfloat16"):
        models.get_dtype("float8")


class AskedTheExtension(Exception):
    """Raised in place of every question to the oneDNN extension: loading it, its kernels, its dtypes."""


@pytest.mark.parametrize("dtype", ["auto", "float32", "bfloat16"])
def test_checking_a_config_never_loads_native_code_and_building_its_model_asks_once(dtype, monkeypatch):
    def asked(*args):
        raise AskedTheExtension

    for name in ("unavailable_reason", "dtypes", "dtype_unavailable_reason", "_library"):
        monkeypatch.setattr(library, name, asked)
    on_onednn = {"model.conv_backend": "onednn", "model.norm_backend": "onednn"}
    config = load_config("smoke", **{"model.dtype": dtype, **on_onednn})
    experiment.check_config(config)
    with pytest.raises(AskedTheExtension):
        models.build_model(config.model, 10)


def test_forward_flops_counts_the_convolutions():
    model = tiny(stage_sizes=(1,), widths=(4,), block_cls=models.BasicBlock)
    flops = models.forward_flops(model, (8, 8, 3))
    # A 3x3 conv with padding 1 on an 8x8 map has 22 in-bounds taps per axis (the edges lose one each), and XLA
    # counts only those: 2 FLOPs per MAC for the stem (3->4) and two 4->4 convs. BN, ReLU and the head add a little.
    conv_flops = 2 * 22 * 22 * (3 * 4 + 2 * 4 * 4)
    assert conv_flops <= flops < conv_flops * 1.2


def test_registry_table_prints_the_counts_of_each_model(capsys):
    models_tool.print_registry_table(["resnet8", "resnet20"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[:2] == ["| model | params | forward GFLOPs / image |", "|---|---:|---:|"]
    rows = [line.strip("|").split("|") for line in lines[2:]]
    assert [(name.strip(), params.strip()) for name, params, _ in rows] == [
        ("resnet8", "75,290"),
        ("resnet20", "269,722"),
    ]
    flops = [float(value) for *_, value in rows]
    assert 0 < flops[0] < flops[1]


def test_a_model_summary_has_no_terminal_colours_and_says_what_its_total_counts(capsys):
    assert models_tool.main(["--model", "resnet8", "--image-size", "8"]) == 0
    out = capsys.readouterr().out
    assert "\x1b[" not in out
    assert "stage1_block1" in out
    assert out.strip().splitlines()[-1].startswith("75,290 parameters, without BatchNorm's running statistics")


def test_models_tool_errors_are_one_line(capsys):
    for argv, reason in ((["--model", "resnet21"], "unknown model 'resnet21'"), (["--channels", "2"], "1 or 3")):
        with pytest.raises(SystemExit) as exit_info:
            models_tool.main(argv)
        assert exit_info.value.code == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert line.startswith("error: ")
        assert reason in line


def test_models_tool_description_is_whole_sentences(capsys):
    with pytest.raises(SystemExit):
        models_tool.main(["--help"])
    description = " ".join(models_tool.__doc__.split())
    assert description.endswith(".")
    assert description in " ".join(capsys.readouterr().out.split())


def _without_shortcuts(tree):
    """A parameter tree less its shortcut projections (`shortcut_conv`, `shortcut_bn`)."""
    if not isinstance(tree, dict):
        return tree
    return {key: _without_shortcuts(value) for key, value in tree.items() if not key.startswith("shortcut_")}


@pytest.mark.parametrize(("plain", "twin"), sorted(models.RESIDUAL_TWINS.items()))
def test_a_plain_net_is_its_residual_twin_less_the_projections(plain, twin):
    plain_shapes = models.init_shapes(models.get_model(plain))["params"]
    twin_shapes = models.init_shapes(models.get_model(twin))["params"]
    chex.assert_trees_all_equal_shapes_and_dtypes(plain_shapes, _without_shortcuts(twin_shapes))
    projections = models.count_params(twin_shapes) - models.count_params(_without_shortcuts(twin_shapes))
    # Option A shortcuts (the CIFAR family) hold no parameters; ResNet-18/34's three 1x1 conv + BN projections,
    # 64->128, 128->256 and 256->512, hold 173,824.
    expected = 0 if plain[len("plain") :] in ("20", "32", "44", "56", "110") else 8_448 + 33_280 + 132_096
    assert projections == expected
    assert models.count_params(plain_shapes) == models.count_params(twin_shapes) - expected
    assert models.get_model(plain).stage_sizes == models.get_model(twin).stage_sizes


def test_plain_nets_are_registered_and_listed_against_their_twins(capsys):
    assert [name for name in models.MODEL_REGISTRY if name.startswith("plain")] == [
        "plain20",
        "plain32",
        "plain44",
        "plain56",
        "plain110",
        "plain18",
        "plain34",
    ]
    models_tool.print_registry_table(["resnet20", "plain20", "resnet8"])
    tail = capsys.readouterr().out.strip().splitlines()[-3:]
    assert tail[0].startswith("| plain network | params | residual twin |")
    assert tail[-1] == "| plain20 | 269,722 | resnet20 | 269,722 | 0 |"


def _conv(x, kernel, strides):
    return jax.lax.conv_general_dilated(
        x, kernel, (strides,) * 2, [(1, 1)] * 2, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def _bn(y, params, stats):
    return (y - stats["mean"]) / jnp.sqrt(stats["var"] + 1e-5) * params["scale"] + params["bias"]


@pytest.mark.parametrize(("strides", "features", "residual"), [(1, 4, True), (1, 4, False), (2, 8, False)])
def test_a_plain_block_is_the_conv_bn_relu_path_alone(strides, features, residual):
    conv = functools.partial(nn.Conv, use_bias=False)
    norm = functools.partial(nn.BatchNorm, use_running_average=True)
    block = models.BasicBlock(features=features, conv=conv, norm=norm, strides=strides, residual=residual)
    x = jax.nn.relu(jax.random.normal(jax.random.key(0), (2, 8, 8, 4)))
    variables = block.init(jax.random.key(1), x)
    # Statistics and affine parameters away from their initial 0 and 1, so that every BN does something.
    variables = jax.tree.map(
        lambda leaf: (
            jax.random.uniform(jax.random.key(leaf.size), leaf.shape, minval=0.5, maxval=1.5) * leaf
            + jax.random.uniform(jax.random.key(leaf.size + 1), leaf.shape, minval=0.1, maxval=0.3)
        ),
        variables,
    )
    params, stats = variables["params"], variables["batch_stats"]
    assert sorted(params) == ["BatchNorm_0", "BatchNorm_1", "Conv_0", "Conv_1"]  # no projection, even at stride 2
    branch = _conv(x, params["Conv_0"]["kernel"], strides)
    branch = jax.nn.relu(_bn(branch, params["BatchNorm_0"], stats["BatchNorm_0"]))
    branch = _bn(_conv(branch, params["Conv_1"]["kernel"], 1), params["BatchNorm_1"], stats["BatchNorm_1"])
    expected = jax.nn.relu(branch + x if residual else branch)
    chex.assert_shape(expected, (2, 8 // strides, 8 // strides, features))
    chex.assert_trees_all_close(block.apply(variables, x, train=False), expected, rtol=1e-5, atol=1e-5)


def _moved_batchnorms(variables):
    """`variables` with BatchNorm's statistics and affine parameters away from their initial 0 and 1, so that every BN
    does something; the convolutions' kernels as initialised (of either sign)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: (
            leaf
            if jax.tree_util.keystr(path).endswith("['kernel']")
            else jax.random.uniform(jax.random.key(leaf.size), leaf.shape, minval=0.5, maxval=1.5) * leaf
            + jax.random.uniform(jax.random.key(leaf.size + 1), leaf.shape, minval=0.1, maxval=0.3)
        ),
        variables,
    )


@pytest.mark.parametrize(("strides", "features"), [(1, 4), (2, 8)], ids=["identity", "projection"])
def test_a_preactivation_block_is_bn_relu_conv_twice_plus_its_shortcut(strides, features):
    # He et al. 2016: x -> BN-ReLU -> conv -> BN-ReLU -> conv, plus x; where the shape changes, a 1x1 projection of
    # the pre-activated input (both papers' code), with no BN of its own.
    conv = functools.partial(nn.Conv, use_bias=False)
    norm = functools.partial(nn.BatchNorm, use_running_average=True)
    block = models.PreActBasicBlock(features=features, conv=conv, norm=norm, strides=strides, shortcut="B")
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 4))  # a block's input here is a sum, of either sign
    variables = _moved_batchnorms(block.init(jax.random.key(1), x))
    params, stats = variables["params"], variables["batch_stats"]
    preact = jax.nn.relu(_bn(x, params["BatchNorm_0"], stats["BatchNorm_0"]))
    branch = jax.nn.relu(
        _bn(_conv(preact, params["Conv_0"]["kernel"], strides), params["BatchNorm_1"], stats["BatchNorm_1"])
    )
    branch = _conv(branch, params["Conv_1"]["kernel"], 1)
    if strides == 1:
        assert "shortcut_conv" not in params
        shortcut = x
    else:
        shortcut = preact[:, ::strides, ::strides] @ params["shortcut_conv"]["kernel"][0, 0]
    expected = branch + shortcut  # no ReLU after the sum
    assert float(expected.min()) < 0  # where a ReLU after the sum would show
    chex.assert_shape(expected, (2, 8 // strides, 8 // strides, features))
    chex.assert_trees_all_close(block.apply(variables, x, train=False), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("block_cls", [models.BottleneckBlock, models.PreActBasicBlock, models.PreActBottleneckBlock])
def test_every_block_drops_its_shortcut_when_plain(block_cls):
    residual, plain = init(tiny(block_cls, shortcut="B")), init(tiny(block_cls, shortcut="B", residual=False))
    assert "shortcut_conv" in residual[0]["params"]["stage2_block1"]
    assert not any("shortcut" in name for name in plain[0]["params"]["stage2_block1"])
    logits = tiny(block_cls, residual=False).apply(plain[0], plain[1], train=False)
    chex.assert_shape(logits, (2, 5))
    chex.assert_tree_all_finite(logits)


def test_plain20_forward_shapes_and_no_identity_path():
    plain, twin = models.get_model("plain20"), models.get_model("resnet20")
    variables, images = init(twin, image_shape=(32, 32, 3), batch=2)
    logits, features = plain.apply(variables, images, train=False, return_features=True)
    chex.assert_shape(logits, (2, 10))
    chex.assert_shape(
        [features["stage1"], features["stage2"], features["stage3"]], [(2, 32, 32, 16), (2, 16, 16, 32), (2, 8, 8, 64)]
    )
    # The same weights (the trees agree: option A holds none): only the missing shortcuts change the output.
    assert not np.allclose(logits, twin.apply(variables, images, train=False), atol=1e-3)


def test_zero_init_residual_is_refused_on_a_plain_net():
    with pytest.raises(ValueError, match="only path"):
        init(tiny(residual=False, zero_init_residual=True))
