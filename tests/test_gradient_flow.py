"""The gradient-flow metrics of the train step: each part's gradient norm is the norm of its gradients as jax.grad
computes them, each stage's output spread is the std of that stage's output as a separate forward pass captures
it, for every kind of network in the zoo, under a linear probe, and identical on eight devices; and switching them
off changes nothing but the metrics."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax import augment, models, optim, steps
from resnet_jax.parallel import make_mesh
from resnet_jax.state import lower_train_state
from tests.conftest import optimizer, step_config

IMAGE_SHAPE = (16, 16, 3)
BATCH = 8


def batch(seed: int = 0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (BATCH, *IMAGE_SHAPE), dtype=np.uint8)
    return jnp.asarray(images), jnp.asarray(rng.integers(0, 10, BATCH, dtype=np.int32))


def no_augmentation(**overrides) -> steps.StepConfig:
    # The step's inputs are then the normalised batch, which the checks below feed to the model themselves.
    return dataclasses.replace(step_config(crop_padding=0, flip=False), **overrides)


def new_state(model, **kwargs):
    return lower_train_state(model, optimizer(0.1), 0, IMAGE_SHAPE, make_mesh(), **kwargs).compile()()


def inputs_of(config: steps.StepConfig, images):
    return augment.normalize(images, config.mean, config.std, config.dtype)


def three_stages(**kwargs) -> models.ResNet:
    return models.ResNet(stage_sizes=(2, 1, 1), block_cls=models.BasicBlock, widths=(4, 8, 8), shortcut="A", **kwargs)


def test_part_norms_are_the_norms_of_jax_grad_grouped_by_module():
    model, config = three_stages(), no_augmentation()
    state = new_state(model)
    images, labels = batch()
    _, metrics = jax.jit(steps.make_train_step(config))(state, images, labels)

    def loss(params):
        logits, _ = model.apply(
            {"params": params, "batch_stats": state.batch_stats},
            inputs_of(config, images),
            train=True,
            mutable=["batch_stats"],
        )
        return optim.cross_entropy(logits, labels).mean()

    grads = jax.device_get(jax.grad(loss)(state.params))
    by_hand = {
        "stem": ["stem_conv", "stem_bn"],
        "stage1": ["stage1_block1", "stage1_block2"],
        "stage2": ["stage2_block1"],
        "stage3": ["stage3_block1"],
        "head": ["head"],
    }
    squares = {
        part: sum(float(np.sum(np.square(leaf))) for module in modules for leaf in jax.tree.leaves(grads[module]))
        for part, modules in by_hand.items()
    }
    for part, square in squares.items():
        np.testing.assert_allclose(float(metrics[f"grad_norm_sum/{part}"]), np.sqrt(square), rtol=1e-4, err_msg=part)
    # The parts cover every parameter once: their squares add up to the global norm's.
    np.testing.assert_allclose(sum(squares.values()), float(metrics["grad_norm_sum"]) ** 2, rtol=1e-4)


def test_output_spreads_are_the_stds_of_the_captured_stage_outputs():
    model, config = three_stages(), no_augmentation()
    state = new_state(model)
    images, labels = batch(1)
    _, metrics = jax.jit(steps.make_train_step(config))(state, images, labels)
    (_, features), captured = model.apply(
        state.variables,
        inputs_of(config, images),
        train=True,
        return_features=True,
        capture_intermediates=True,
        mutable=["batch_stats", "intermediates"],
    )
    blocks = captured["intermediates"]
    outputs = {
        "stem": features["stem"],  # conv-BN-ReLU, no module of its own to capture
        "stage1": blocks["stage1_block2"]["__call__"][0],
        "stage2": blocks["stage2_block1"]["__call__"][0],
        "stage3": blocks["stage3_block1"]["__call__"][0],
    }
    for part, output in outputs.items():
        np.testing.assert_allclose(float(metrics[f"output_std_sum/{part}"]), float(jnp.std(output)), rtol=1e-5)
    assert {key for key in metrics if "/" in key} == set(steps.stage_sum_keys(models.stage_names(model)))


ZOO = ["resnet8_tiny", "resnet18", "resnet50_imagenet", "preact_resnet18", "wrn16_8", "seed_resnet", "plain20"]


@pytest.mark.parametrize("name", ZOO)
def test_every_kind_of_network_gives_the_keys_of_its_metric_window(name):
    # Traced only (eval_shape): the keys and shapes, for CIFAR's 3 stages and ImageNet-style 4, pre-activation,
    # bottleneck, wide, biased and plain networks.
    model = models.get_model(name)
    state = lower_train_state(model, optimizer(0.1), 0, IMAGE_SHAPE, make_mesh()).out_info
    images = jax.ShapeDtypeStruct((BATCH, *IMAGE_SHAPE), jnp.uint8)
    labels = jax.ShapeDtypeStruct((BATCH,), jnp.int32)
    _, metrics = jax.eval_shape(steps.make_train_step(step_config()), state, images, labels)
    window = steps.zero_train_metrics(steps.stage_sum_keys(models.stage_names(model)))
    assert set(metrics) == set(window)
    assert all(metrics[key].shape == () for key in window)


def test_a_preactivation_nets_last_stage_is_measured_after_its_final_bn():
    model = models.ResNet(stage_sizes=(1, 1), block_cls=models.PreActBasicBlock, widths=(4, 8))
    config = no_augmentation()
    state = new_state(model)
    images, labels = batch(2)
    _, metrics = jax.jit(steps.make_train_step(config))(state, images, labels)
    (_, features), _ = model.apply(
        state.variables, inputs_of(config, images), train=True, return_features=True, mutable=["batch_stats"]
    )
    np.testing.assert_allclose(float(metrics["output_std_sum/stage2"]), float(jnp.std(features["stage2"])), rtol=1e-5)
    assert models.module_stages(state.params)["final_bn"] == "stage2"


def test_a_linear_probe_measures_its_frozen_forward_pass_and_keeps_the_statistics():
    model, config = three_stages(), no_augmentation(frozen_statistics=True)
    state = new_state(model, use_ema=True)
    images, labels = batch(3)
    trained, metrics = jax.jit(steps.make_train_step(config))(state, images, labels)
    _, features = model.apply(state.variables, inputs_of(config, images), train=False, return_features=True)
    for part in models.stage_names(model):
        np.testing.assert_allclose(float(metrics[f"output_std_sum/{part}"]), float(jnp.std(features[part])), rtol=1e-5)
    chex.assert_trees_all_equal(trained.batch_stats, state.batch_stats)
    assert float(metrics["grad_norm_sum/head"]) > 0


def test_switching_the_metrics_off_changes_nothing_but_the_metrics():
    model = three_stages(dropout_rate=0.2)
    images, labels = batch(4)
    on = jax.jit(steps.make_train_step(no_augmentation()))(new_state(model), images, labels)
    off = jax.jit(steps.make_train_step(no_augmentation(gradient_flow=False)))(new_state(model), images, labels)
    chex.assert_trees_all_close(on[0].params, off[0].params, rtol=1e-6, atol=1e-7)
    chex.assert_trees_all_close(on[0].batch_stats, off[0].batch_stats, rtol=1e-6, atol=1e-7)
    assert {key for key in on[1] if "/" not in key} == set(off[1])
    assert not any("/" in key for key in off[1])


def test_a_dropped_step_adds_nothing_to_the_part_sums():
    model = three_stages()
    images, labels = batch(5)
    _, metrics = jax.jit(steps.make_train_step(no_augmentation()))(new_state(model), images, labels.at[0].set(10))
    assert float(metrics["nonfinite_steps"]) == 1
    assert all(float(metrics[key]) == 0 for key in steps.stage_sum_keys(models.stage_names(model)))


def test_window_means_divide_by_the_applied_steps_in_the_networks_order():
    sums = {"grad_norm_sum/stage10": 4.0, "grad_norm_sum/head": 1.0, "grad_norm_sum/stage2": 8.0}
    sums |= {"grad_norm_sum/stem": 2.0, "output_std_sum/stem": 2.0}
    host = dict(sorted(sums.items())) | {"steps": 5.0, "nonfinite_steps": 1.0, "loss_sum": 3.0}
    means = steps.stage_means(host)
    assert list(means) == [f"grad_norm/{part}" for part in ("stem", "stage2", "stage10", "head")] + ["output_std/stem"]
    assert means == {key.replace("_sum/", "/"): value / 4 for key, value in sums.items()}


def test_a_window_without_the_parts_is_refused_when_the_step_gives_them():
    stacked = {"loss_sum": jnp.zeros(1), "grad_norm_sum/stem": jnp.zeros(1)}
    with pytest.raises(ValueError, match=r"make the window with zero_train_metrics\(stage_sum_keys"):
        steps._accumulate(steps.zero_train_metrics(), stacked)
