"""oneDNN's convolutions and BatchNorm (resnet_jax/onednn/) against XLA's: outputs and gradients over strides,
paddings, kernels, channels and batches, in float32 and bfloat16; the primitive cache; the library checked before it
is loaded; the models on either backend; a batch-sharded jit; a run resumed on the other backend. Skipped, with the
reason, where the extension is not built, unless RESNET_JAX_REQUIRE_ONEDNN=1 (CI) makes that an error."""

import _ctypes
import functools
import json
import os
import shutil
import subprocess

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax import configuration, experiment, export, inference, models, onednn
from resnet_jax.onednn import library
from tests.conftest import PYTHON, REPO_ROOT, load_config, run_multidevice_probe, subprocess_env, train_command

# CI sets this where the extension must run (x86-64 Linux): a skip there would pass broken C++ as green.
REQUIRE = "RESNET_JAX_REQUIRE_ONEDNN"
if os.environ.get(REQUIRE) == "1" and not onednn.available():
    pytest.fail(f"{REQUIRE}=1 and oneDNN's kernels cannot run: {onednn.unavailable_reason()}", pytrace=False)
pytestmark = pytest.mark.skipif(not onednn.available(), reason=onednn.unavailable_reason())
# bfloat16 where oneDNN has kernels for it on this CPU (none on an AVX2-only one, which the dtype tests below cover).
DTYPES = [
    pytest.param(jnp.float32, id="float32"),
    pytest.param(
        jnp.bfloat16,
        id="bfloat16",
        marks=pytest.mark.skipif(
            jnp.bfloat16 not in library.dtypes(), reason="oneDNN has no bfloat16 kernels for this CPU"
        ),
    ),
]

DIMENSIONS = ("NHWC", "HWIO", "NHWC")
# (batch, size, in channels, out channels, kernel, stride, padding): every kernel and stride the models use, their
# explicit pads and flax's strings, channels 1 -> 16 -> 64 -> 512 (the wide ones at small sizes), batches 1 to 128.
CASES = {
    "1->16 3x3/1 pad 1": (2, 12, 1, 16, 3, 1, ((1, 1), (1, 1))),
    "16->16 3x3/1 SAME batch 128": (128, 8, 16, 16, 3, 1, "SAME"),
    "16->64 3x3/2 pad 1": (4, 9, 16, 64, 3, 2, ((1, 1), (1, 1))),
    "16->32 3x3/2 SAME (asymmetric)": (3, 8, 16, 32, 3, 2, "SAME"),
    "64->64 1x1/1 VALID batch 1": (1, 6, 64, 64, 1, 1, "VALID"),
    "64->128 1x1/2 VALID": (2, 7, 64, 128, 1, 2, "VALID"),
    "3->16 7x7/2 pad 3": (2, 15, 3, 16, 7, 2, ((3, 3), (3, 3))),
    "64->512 3x3/1 pad 1": (2, 4, 64, 512, 3, 1, ((1, 1), (1, 1))),
    "512->512 3x3/2 pad 1": (1, 4, 512, 512, 3, 2, ((1, 1), (1, 1))),
}
# Relative to the largest magnitude of XLA's result: float32 to a few ulps of the sum; bfloat16 to its rounding
# (8 bits of mantissa), against XLA in float32 on the same bfloat16 inputs, since oneDNN accumulates bfloat16 in
# float32 (XLA's own bfloat16 bias gradient, a bfloat16 sum over the batch, is further off than that).
TOLERANCE = {jnp.float32: 1e-5, jnp.bfloat16: 1e-2}


def xla_conv(x, w, bias, stride, padding):
    y = jax.lax.conv_general_dilated(x, w, (stride, stride), padding, dimension_numbers=DIMENSIONS)
    return y if bias is None else y + bias.astype(y.dtype)


def onednn_conv(x, w, bias, stride, padding):
    return onednn.conv2d(x, w, (stride, stride), padding, bias)


def output_and_gradients(conv, x, w, bias, dy, stride, padding):
    y, pullback = jax.vjp(lambda x, w, bias: conv(x, w, bias, stride, padding), x, w, bias)
    return y, *pullback(dy)


def assert_close_relative(actual, expected, tolerance, floor=1e-6):
    """Within `tolerance` of the largest magnitude of `expected`, or `floor` for a gradient that is zero but for
    rounding (a conv bias before BatchNorm)."""
    actual, expected = np.asarray(actual, np.float32), np.asarray(expected, np.float32)
    chex.assert_shape(actual, expected.shape)
    assert float(np.max(np.abs(actual - expected))) <= max(tolerance * float(np.max(np.abs(expected))), floor)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_bias", [False, True], ids=["no bias", "bias"])
@pytest.mark.parametrize("case", list(CASES))
def test_output_and_both_gradients_equal_xla(case, with_bias, dtype):
    batch, size, cin, cout, kernel, stride, padding = CASES[case]
    rng = np.random.default_rng(len(case))
    x = jnp.asarray(rng.standard_normal((batch, size, size, cin)), dtype)
    w = jnp.asarray(rng.standard_normal((kernel, kernel, cin, cout)) / np.sqrt(kernel * kernel * cin), dtype)
    bias = jnp.asarray(rng.standard_normal(cout), dtype) if with_bias else None
    y_shape = jax.eval_shape(lambda: xla_conv(x, w, bias, stride, padding)).shape
    dy = jnp.asarray(rng.standard_normal(y_shape), dtype)
    in_float32 = jax.tree.map(lambda array: array.astype(jnp.float32), (x, w, bias, dy))
    run = jax.jit(output_and_gradients, static_argnums=(0, 5, 6))
    expected = run(xla_conv, *in_float32, stride, padding)
    actual = run(onednn_conv, x, w, bias, dy, stride, padding)
    for a, e in zip(actual, expected, strict=True):
        if e is not None:  # the bias gradient of a conv without one
            assert a.dtype == dtype
            assert_close_relative(a, e, TOLERANCE[dtype])


def test_the_lax_drop_in_runs_on_onednn_only_what_onednn_takes():
    x, w = jnp.ones((2, 8, 8, 4)), jnp.ones((3, 3, 4, 8))
    lowered = jax.jit(lambda x, w: onednn.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=DIMENSIONS))
    assert "resnet_jax_onednn_conv_forward" in lowered.lower(x, w).as_text()
    dilated = jax.jit(
        lambda x, w: onednn.conv_general_dilated(
            x, w, (1, 1), "SAME", rhs_dilation=(2, 2), dimension_numbers=DIMENSIONS
        )
    )
    assert "resnet_jax_onednn_conv" not in dilated.lower(x, w).as_text()
    expected = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", rhs_dilation=(2, 2), dimension_numbers=DIMENSIONS)
    chex.assert_trees_all_close(dilated(x, w), expected)
    nchw = jax.jit(lambda x, w: onednn.conv_general_dilated(x, w, (1, 1), "SAME"))
    assert "resnet_jax_onednn_conv" not in nchw.lower(jnp.ones((2, 4, 8, 8)), jnp.ones((8, 4, 3, 3))).as_text()


def test_primitives_are_built_once_per_pass_and_shape():
    x, w = jnp.ones((3, 5, 5, 7)), jnp.ones((3, 3, 7, 6))
    gradient = jax.jit(jax.grad(lambda x, w: jnp.sum(onednn.conv2d(x, w, (1, 1), "SAME") ** 2), (0, 1)))
    grads = lambda x, w: jax.block_until_ready(gradient(x, w))  # noqa: E731  (the count is read after the run)
    before = library.cached_primitives()
    first = grads(x, w)
    assert library.cached_primitives() == before + 3  # forward, backward-data, backward-weights
    second = grads(x * 2, w)
    assert library.cached_primitives() == before + 3
    chex.assert_trees_all_close(second[1], first[1] * 4)
    if jnp.bfloat16 in library.dtypes():  # not on an AVX2-only CPU
        grads(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16))
        assert library.cached_primitives() == before + 6


# (batch, size, channels): channels 1 -> 16 -> 64 -> 512, batches 1 to 128, a 1x1 map.
BATCH_NORM_CASES = {
    "batch 1, 1 channel": (1, 5, 1),
    "16 channels": (3, 6, 16),
    "batch 128, 64 channels": (128, 2, 64),
    "512 channels at 1x1": (8, 1, 512),
}


def flax_batch_norm(x, scale, shift, relu):
    variables = {"params": {"scale": scale, "bias": shift}, "batch_stats": {"mean": scale * 0, "var": scale * 0}}
    y, updates = nn.BatchNorm(use_running_average=False, momentum=0.0).apply(variables, x, mutable=["batch_stats"])
    stats = updates["batch_stats"]  # momentum 0: the batch's own statistics
    return (nn.relu(y) if relu else y), stats["mean"], stats["var"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("relu", [False, True], ids=["alone", "with ReLU"])
@pytest.mark.parametrize("case", list(BATCH_NORM_CASES))
def test_batch_norm_its_statistics_and_its_three_gradients_equal_flax(case, relu, dtype):
    batch, size, channels = BATCH_NORM_CASES[case]
    rng = np.random.default_rng(len(case))
    x = jnp.asarray(rng.standard_normal((batch, size, size, channels)) * 3 + 1, dtype)
    scale = jnp.asarray(rng.uniform(0.5, 1.5, channels), jnp.float32)
    shift = jnp.asarray(rng.standard_normal(channels), jnp.float32)
    dy = jnp.asarray(rng.standard_normal(x.shape), dtype)

    def output_and_gradients(norm, x, scale, shift, dy):
        (y, mean, var), pullback = jax.vjp(norm, x, scale, shift)
        return (y, mean, var, *pullback((dy, jnp.zeros_like(mean), jnp.zeros_like(var))))

    ours = functools.partial(onednn.batch_norm, epsilon=1e-5, relu=relu)
    actual = jax.jit(output_and_gradients, static_argnums=0)(ours, x, scale, shift, dy)
    in_float32 = jax.tree.map(lambda array: array.astype(jnp.float32), (x, scale, shift, dy))
    flax_norm = functools.partial(flax_batch_norm, relu=relu)
    expected = jax.jit(output_and_gradients, static_argnums=0)(flax_norm, *in_float32)
    for name, a, e in zip(("y", "mean", "var", "dx", "dscale", "dshift"), actual, expected, strict=True):
        assert a.dtype == (dtype if name in ("y", "dx") else jnp.float32), name
        # A batch of one pixel per channel normalises to exactly 0: its output and input gradient are rounding.
        assert_close_relative(a, e, TOLERANCE[dtype], floor=1e-3 if batch * size * size == 1 else 1e-6)


def test_epsilons_that_print_alike_each_get_their_own_primitive():
    # std::to_string prints both as "0.000000": a cache keyed on that text ran the second with the first's epsilon.
    # A variance of about 1e-7 makes each epsilon move the output by tens of percent.
    x = np.random.default_rng(0).standard_normal((2, 3, 3, 4)).astype(np.float32) * np.float32(3e-4)
    for epsilon in (1e-7, 4e-7):
        y, _, variance = onednn.batch_norm(jnp.asarray(x), jnp.ones(4), jnp.zeros(4), epsilon=epsilon)
        x64 = x.astype(np.float64)
        expected_variance = x64.var(axis=(0, 1, 2))
        expected = (x64 - x64.mean(axis=(0, 1, 2))) / np.sqrt(expected_variance + np.float32(epsilon))
        np.testing.assert_allclose(variance, expected_variance, rtol=1e-4)
        np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)


def test_batch_norm_statistics_are_not_differentiated_and_the_module_keeps_flax_s_variables():
    x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 3, 3, 8)), jnp.float32)
    mean_gradient = jax.grad(lambda x: jnp.sum(onednn.batch_norm(x, jnp.ones(8), jnp.zeros(8))[1]))(x)
    chex.assert_trees_all_equal(mean_gradient, jnp.zeros_like(x))
    ours, flax_s = onednn.BatchNorm(momentum=0.9), nn.BatchNorm(use_running_average=False, momentum=0.9)
    variables = flax_s.init(jax.random.key(0), x)
    chex.assert_trees_all_equal(ours.init(jax.random.key(0), x), variables)
    (y, updates), (expected_y, expected_updates) = (
        norm.apply(variables, x, mutable=["batch_stats"]) for norm in (ours, flax_s)
    )
    chex.assert_trees_all_close((y, updates), (expected_y, expected_updates), rtol=1e-5, atol=1e-6)
    trained = {**variables, **updates}
    evaluated = onednn.BatchNorm(use_running_average=True).apply(trained, x)
    chex.assert_trees_all_equal(evaluated, nn.BatchNorm(use_running_average=True).apply(trained, x))


def test_the_primitive_cache_keeps_its_capacity_and_drops_the_least_recently_used():
    held, capacity = library.held_primitives()
    # Batch sizes no other test uses, one BatchNorm primitive pair each (the workspace query builds it).
    build = lambda n: library.batch_norm_workspace_bytes((10_000 + n, 1, 1, 3), False)  # noqa: E731
    for n in range(capacity):  # fills BatchNorm's cache with these alone
        build(n)
    full = library.held_primitives()[0]
    build(0)  # used again: now the most recent, so the next new shape drops shape 1 instead
    built = library.cached_primitives()
    build(capacity)
    assert library.cached_primitives() == built + 1
    assert library.held_primitives()[0] == full <= held + capacity
    build(0)
    assert library.cached_primitives() == built + 1
    build(1)
    assert library.cached_primitives() == built + 2


# The library broken each way a checkout meets one: cut short (a full disk, an interrupted copy), empty, another file
# in its place, unreadable. Loading either truncation kills the process that maps it with SIGBUS.
BROKEN = {
    "truncated to 4 kB": (lambda path: path.write_bytes(library.LIBRARY.read_bytes()[:4096]), "is truncated"),
    "truncated to 100 kB": (lambda path: path.write_bytes(library.LIBRARY.read_bytes()[:100_000]), "is truncated"),
    "empty": (lambda path: path.write_bytes(b""), "is empty"),
    "a text file": (lambda path: path.write_text("not a library\n" * 1000), "invalid ELF header"),
    "another shared library": (lambda path: shutil.copyfile(_ctypes.__file__, path), "not this project's"),
    "unreadable": (lambda path: (shutil.copyfile(library.LIBRARY, path), path.chmod(0)), "cannot be read"),
}


# Runs argv[1:] without root's reading of any file: CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH dropped from the bounding
# set before the exec, so that the program meets a chmod 000 file as any user would. A launcher of its own, since
# JAX's threads make forking the test process itself unsafe.
WITHOUT_ROOT_S_FILE_ACCESS = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
for capability in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
    if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
        sys.exit(f"cannot drop root's file access here (errno {ctypes.get_errno()})")
os.execv(sys.argv[1], sys.argv[1:])
"""
# A child process that builds the smoke config's model with `argv[1]` as the library and `argv[2]`'s sources.
BUILD_MODEL_WITH_LIBRARY = """
import sys
from pathlib import Path
from resnet_jax.onednn import library
library.LIBRARY, library.SOURCE = Path(sys.argv[1]), Path(sys.argv[2])
from resnet_jax import models
from tests.conftest import load_config
model = models.build_model(load_config("smoke").model, 10)
print(model.conv_backend, model.norm_backend)
"""


def build_model_with_library(path, sources, launcher=()) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*launcher, PYTHON, "-c", BUILD_MODEL_WITH_LIBRARY, str(path), str(sources)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=subprocess_env(),
        check=False,
    )


def assert_fell_back_to_xla_in_one_warning(done, path, problem):
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "xla xla"
    [line] = [line for line in done.stderr.splitlines() if "oneDNN" in line]
    assert line.startswith(f"warning: oneDNN's kernels are off: {path} ")
    assert problem in line
    assert line.endswith("; rebuild it with python -m resnet_jax.onednn.build")


@pytest.mark.parametrize("broken", list(BROKEN))
def test_a_broken_library_is_found_before_loading_and_runs_fall_back_in_one_warning(broken, tmp_path):
    path = tmp_path / library.LIBRARY.name
    make, problem = BROKEN[broken]
    make(path)
    as_root = broken == "unreadable" and os.geteuid() == 0
    done = build_model_with_library(path, library.SOURCE, [PYTHON, "-c", WITHOUT_ROOT_S_FILE_ACCESS] if as_root else [])
    if "cannot drop root's file access here" in done.stderr:  # a container that keeps root from dropping it
        pytest.skip(done.stderr.strip().splitlines()[-1])
    assert_fell_back_to_xla_in_one_warning(done, path, problem)


def test_a_library_built_from_other_sources_is_stale(tmp_path):
    sources = tmp_path / "sources"
    shutil.copytree(library.SOURCE, sources, ignore=shutil.ignore_patterns("*.so*", "*.py", "__pycache__"))
    with (sources / "conv.cc").open("a") as file:
        file.write("// edited after the build\n")
    path = tmp_path / library.LIBRARY.name
    shutil.copyfile(library.LIBRARY, path)
    assert library.library_problem(path, library.source_stamp(library.SOURCE)) == ""
    assert_fell_back_to_xla_in_one_warning(build_model_with_library(path, sources), path, "is stale")


def test_a_sound_library_is_probed_once_and_the_verdict_kept_by_its_hash(tmp_path, monkeypatch):
    path = tmp_path / library.LIBRARY.name
    shutil.copyfile(library.LIBRARY, path)
    stamp = library.source_stamp(library.SOURCE)
    assert library.library_problem(path, stamp) == ""
    with monkeypatch.context() as patch:
        patch.setattr(subprocess, "run", lambda *args, **kwargs: pytest.fail("probed again"))
        assert library.library_problem(path, stamp) == ""
        assert "is stale" in library.library_problem(path, "0" * 64)
    path.write_bytes(path.read_bytes()[:4096])  # another file under the same name is probed afresh
    assert "is truncated" in library.library_problem(path, stamp)


def test_ci_s_switch_turns_an_unusable_extension_into_an_error_instead_of_skips():
    done = subprocess.run(
        [PYTHON, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_onednn.py", "-k", "the_switch"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=subprocess_env(RESNET_JAX_ONEDNN="0", **{REQUIRE: "1"}),
        check=False,
    )
    assert done.returncode != 0
    assert f"{REQUIRE}=1 and oneDNN's kernels cannot run: RESNET_JAX_ONEDNN=0 turns oneDNN off" in done.stdout


# The CIFAR family (option A), conv biases and 1x1 projections (the seed's net), the 7x7/2 ImageNet stem.
MODELS = {
    "resnet8_tiny": {},
    "seed_resnet": {},
    "resnet8_tiny imagenet stem, shortcut B": {"stem": "imagenet", "shortcut": "B"},
    "preact_resnet18 narrow": {"widths": (4, 8, 8, 8)},
    "resnet50 bottlenecks, two stages": {"stage_sizes": (1, 1), "widths": (4, 8)},
}


@pytest.mark.parametrize("name", list(MODELS))
def test_a_model_on_onednn_has_xla_s_parameters_outputs_and_gradients(name):
    images = jnp.asarray(np.random.default_rng(0).standard_normal((4, 16, 16, 3)), jnp.float32)
    on_xla = models.get_model(name.split()[0], conv_backend="xla", **MODELS[name])
    on_onednn = models.get_model(name.split()[0], conv_backend="onednn", norm_backend="onednn", **MODELS[name])
    variables = on_xla.init(jax.random.key(0), images, train=False)
    chex.assert_trees_all_equal_shapes_and_dtypes(variables, on_onednn.init(jax.random.key(0), images, train=False))

    def loss(model, params):
        logits, _ = model.apply({**variables, "params": params}, images, mutable=["batch_stats"])
        return jnp.sum(jax.nn.log_softmax(logits)[:, 0]), logits

    (_, expected), expected_grads = jax.value_and_grad(lambda p: loss(on_xla, p), has_aux=True)(variables["params"])
    (_, actual), actual_grads = jax.value_and_grad(lambda p: loss(on_onednn, p), has_aux=True)(variables["params"])
    chex.assert_trees_all_close(actual, expected, rtol=1e-4, atol=1e-5)
    # The whole gradient within 1% of its norm. Not float32's few ulps per layer, which the primitives' tests above
    # hold them to: a ReLU input within rounding of zero flips between backends and moves every gradient upstream of
    # it (in ResNet-20 on this batch, 1e-5 of noise in the images moves a stage-1 kernel's gradient by 0.85% of its
    # largest entry on XLA alone), while a wrong pass would be off by its whole size.
    chex.assert_trees_all_equal_shapes_and_dtypes(actual_grads, expected_grads)
    flat_actual, flat_expected = (
        jnp.concatenate([leaf.ravel() for leaf in jax.tree.leaves(tree)]) for tree in (actual_grads, expected_grads)
    )
    assert float(jnp.linalg.norm(flat_actual - flat_expected)) <= 1e-2 * float(jnp.linalg.norm(flat_expected))


def test_auto_puts_convolutions_and_batch_norm_on_onednn_here_and_batch_norm_only_on_one_device(monkeypatch):
    config = load_config("smoke")
    model = models.build_model(config.model, 10)
    assert (model.conv_backend, model.norm_backend) == ("onednn", "onednn")
    on_xla = models.build_model(load_config("smoke", **{"model.conv_backend": "xla"}).model, 10)
    assert (on_xla.conv_backend, on_xla.norm_backend) == ("xla", "xla")
    monkeypatch.setattr(jax, "device_count", lambda: 8)
    assert models.build_model(config.model, 10).norm_backend == "xla"
    forced = load_config("smoke", **{"model.norm_backend": "onednn"})
    with pytest.raises(configuration.ConfigError, match=r"model.norm_backend='onednn' needs one CPU device.* 8 cpu"):
        models.build_model(forced.model, 10)


def test_a_backend_that_cannot_run_is_refused_in_one_line_when_the_model_is_built(monkeypatch):
    monkeypatch.setattr(library, "unavailable_reason", lambda: "the oneDNN extension is not built; build it with X")
    for key in ("conv_backend", "norm_backend"):
        config = load_config("smoke", **{f"model.{key}": "onednn"})
        models.check_config(config.model)  # the config is sound; this machine's kernels are the build's to ask
        with pytest.raises(
            configuration.ConfigError, match=rf"model.{key}='onednn' cannot run model.dtype='float32': .* build it with"
        ):
            models.build_model(config.model, 10)
    model = models.build_model(load_config("smoke").model, 10)
    assert (model.conv_backend, model.norm_backend) == ("xla", "xla")


def test_a_dtype_without_kernels_on_this_cpu_stays_on_xla_under_auto_and_is_refused_when_forced(monkeypatch):
    monkeypatch.setattr(library, "dtypes", lambda: (jnp.float32,))
    bfloat16 = load_config("smoke", **{"model.dtype": "bfloat16"})
    model = models.build_model(bfloat16.model, 10)
    assert (model.conv_backend, model.norm_backend) == ("xla", "xla")
    assert models.build_model(load_config("smoke").model, 10).conv_backend == "onednn"
    for key in ("conv_backend", "norm_backend"):
        forced = load_config("smoke", **{"model.dtype": "bfloat16", f"model.{key}": "onednn"})
        with pytest.raises(configuration.ConfigError, match=rf"model.{key}='onednn' .* no bfloat16 kernels for this"):
            models.build_model(forced.model, 10)
    with pytest.raises(RuntimeError, match="oneDNN convolutions cannot run: oneDNN has no bfloat16 kernels"):
        onednn.conv2d(jnp.ones((1, 4, 4, 8), jnp.bfloat16), jnp.ones((3, 3, 8, 8), jnp.bfloat16))


def test_auto_dtype_is_bfloat16_where_onednn_has_bfloat16_kernels_and_float32_on_xla_cpu(monkeypatch):
    auto = load_config("smoke", **{"model.dtype": "auto"})
    monkeypatch.setattr(library, "dtypes", lambda: (jnp.float32, jnp.bfloat16))
    monkeypatch.setattr(library, "dtype_unavailable_reason", lambda dtype: "")
    assert models.build_model(auto.model, 10).dtype == jnp.bfloat16
    assert experiment_dtype(auto) == jnp.bfloat16
    # An AVX2-only CPU: oneDNN has float32 kernels only, and float32 on them beats bfloat16 on XLA.
    monkeypatch.setattr(library, "dtypes", lambda: (jnp.float32,))
    model = models.build_model(auto.model, 10)
    assert (model.dtype, model.conv_backend, model.norm_backend) == (jnp.float32, "onednn", "onednn")
    assert experiment_dtype(auto) == jnp.float32
    # On XLA's CPU convolutions bfloat16 was measured no faster than float32 (benchmarks/RESULTS.md): float32.
    on_xla = load_config("smoke", **{"model.dtype": "auto", "model.conv_backend": "xla"})
    monkeypatch.setattr(library, "dtypes", lambda: (jnp.float32, jnp.bfloat16))
    assert models.build_model(on_xla.model, 10).dtype == jnp.float32


def experiment_dtype(config) -> jnp.dtype:
    return experiment.build(config).step_config.dtype


def test_an_avx2_cpu_has_float32_kernels_only_so_bfloat16_trains_on_xla_and_auto_picks_float32():
    # oneDNN limited to AVX2, as on the AVX2-only AMD EPYC seen: it builds no bfloat16 convolution or BatchNorm there.
    code = (
        "import json, jax.numpy as jnp\n"
        "from resnet_jax import models\n"
        "from resnet_jax.onednn import library\n"
        "from tests.conftest import load_config\n"
        "model = models.build_model(load_config('smoke', **{'model.dtype': 'bfloat16'}).model, 10)\n"
        "auto = models.build_model(load_config('smoke', **{'model.dtype': 'auto'}).model, 10)\n"
        "print(json.dumps({'dtypes': [jnp.dtype(d).name for d in library.dtypes()],\n"
        "                  'bfloat16': [model.conv_backend, model.norm_backend],\n"
        "                  'auto': [jnp.dtype(auto.dtype).name, auto.conv_backend]}))\n"
    )
    done = subprocess.run(
        [PYTHON, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO_ROOT,
        env=subprocess_env(ONEDNN_MAX_CPU_ISA="AVX2"),
    )
    assert json.loads(done.stdout.splitlines()[-1]) == {
        "dtypes": ["float32"],
        "bfloat16": ["xla", "xla"],
        "auto": ["float32", "onednn"],
    }


def test_the_switch_turns_it_off_in_a_child_process():
    code = "from resnet_jax import onednn; print(onednn.unavailable_reason())"
    done = subprocess.run(
        [PYTHON, "-c", code], capture_output=True, text=True, check=True, env=subprocess_env(RESNET_JAX_ONEDNN="0")
    )
    assert done.stdout.strip() == "RESNET_JAX_ONEDNN=0 turns oneDNN off"


@pytest.fixture(scope="module")
def sharded() -> dict:
    return run_multidevice_probe("tests.onednn_sharding_probe")


def test_a_batch_sharded_jit_runs_each_shard_on_onednn_without_gathering(sharded):
    assert sharded["devices"] == 8
    # Forward, backward-data and backward-weights, each on a shard of 2 of the 16 images.
    assert sharded["onednn"]["custom_call_batches"] == [2, 2, 2]
    assert sharded["onednn"]["all_gathers"] == 0
    assert sharded["onednn"]["dx_batch_axes"] == sharded["xla"]["dx_batch_axes"]
    np.testing.assert_allclose(sharded["onednn"]["value"], sharded["xla"]["value"], rtol=1e-5)
    for actual, expected in zip(sharded["onednn"]["grads"], sharded["xla"]["grads"], strict=True):
        np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_a_run_resumes_on_the_other_backend_and_exports_xla_s_convolution(tmp_path):
    workdir = tmp_path / "run"
    for backend, epochs in (("xla", 1), ("onednn", 2)):
        command = train_command(workdir, "smoke", f"model.conv_backend={backend}", f"train.num_epochs={epochs}")
        subprocess.run(command, capture_output=True, text=True, check=True, cwd=REPO_ROOT, env=subprocess_env())
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [record["epoch"] for record in records if "test_accuracy" in record] == [1, 2]
    run = inference.restore_run(workdir)
    assert run.config.model.conv_backend == "onednn"
    assert run.experiment.model.conv_backend == "onednn"
    exported = export.export_run(run, platforms=("cpu",))
    assert "resnet_jax_onednn" not in exported.mlir_module()
    images = np.zeros((3, *run.input_shape), np.uint8)
    chex.assert_trees_all_close(
        exported.call(images), jax.jit(inference.make_logits_fn(run))(images), rtol=1e-4, atol=1e-5
    )
