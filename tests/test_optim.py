"""How parameters move, against figures worked out by hand: which parameters weight decay reaches, SGD's momentum
and Nesterov's, Adam's L2 term against AdamW's decoupled decay, gradient clipping, the EMA, and each schedule's
warm-up, ends and drops."""

import chex
import jax.numpy as jnp
import ml_collections
import pytest

from resnet_jax import optim
from tests.conftest import optimizer

# A block's parameters as flax names them: a conv kernel, BatchNorm's scale and offset, a dense head with a bias.
PARAMS = {
    "Conv_0": {"kernel": jnp.full((2,), 2.0)},
    "BatchNorm_0": {"scale": jnp.full((2,), 2.0), "bias": jnp.full((2,), 2.0)},
    "head": {"kernel": jnp.full((2,), 2.0), "bias": jnp.full((2,), 2.0)},
}


def updates(tx, grads, params, steps=1):
    """The updates of `steps` steps of `tx` with the same gradients and parameters."""
    state = tx.init(params)
    history = []
    for step in range(steps):
        update, state = tx.update(grads, state, params, step=jnp.int32(step))
        history.append(update)
    return history


@pytest.mark.parametrize("decay_all_params", [False, True])
def test_weight_decay_reaches_kernels_and_not_batchnorm_or_biases_unless_asked(decay_all_params):
    # Zero gradients, rate 1, no momentum: each update is -weight_decay * parameter where decay applies, else 0.
    tx = optimizer(1.0, momentum=0.0, weight_decay=0.1, decay_all_params=decay_all_params)
    zeros = {module: {name: jnp.zeros(2) for name in part} for module, part in PARAMS.items()}
    (update,) = updates(tx, zeros, PARAMS)
    decayed, kept = jnp.full((2,), -0.2), jnp.full((2,), -0.2 if decay_all_params else 0.0)
    chex.assert_trees_all_close(
        update,
        {
            "Conv_0": {"kernel": decayed},
            "BatchNorm_0": {"scale": kept, "bias": kept},
            "head": {"kernel": decayed, "bias": kept},
        },
    )


@pytest.mark.parametrize(("nesterov", "expected"), [(False, (1.0, 1.9, 2.71)), (True, (1.9, 2.71, 3.439))])
def test_sgd_momentum_and_nesterov_accumulate_as_pytorch_does(nesterov, expected):
    # A constant gradient g at momentum 0.9: the buffer is g, 1.9 g, 2.71 g; Nesterov steps by g + 0.9 * buffer.
    params = {"w": jnp.zeros(1)}
    tx = optimizer(1.0, momentum=0.9, nesterov=nesterov, weight_decay=0.0)
    history = updates(tx, {"w": jnp.ones(1)}, params, steps=3)
    chex.assert_trees_all_close([float(u["w"][0]) for u in history], [-e for e in expected], rtol=1e-6)


def test_adam_adds_weight_decay_to_the_gradient_and_adamw_decouples_it():
    # Adam's first step moves each parameter against its gradient's sign (bias-corrected m / sqrt(v)), at rate 1.
    # Adam takes the sign of g + 0.1 * p = -0.5 + 0.2: a step of +1. AdamW the sign of g alone, then 0.1 * p against
    # it: -(-1 + 0.2) = +0.8. (Float32's bias correction leaves Adam's step a few parts in a million short of 1.)
    params, grads = {"w": jnp.full((1,), 2.0)}, {"w": jnp.full((1,), -0.5)}
    (adam,) = updates(optimizer(1.0, name="adam", weight_decay=0.1, decay_all_params=True), grads, params)
    (adamw,) = updates(optimizer(1.0, name="adamw", weight_decay=0.1, decay_all_params=True), grads, params)
    assert float(adam["w"][0]) == pytest.approx(1.0, rel=1e-4)
    assert float(adamw["w"][0]) == pytest.approx(0.8, rel=1e-4)


def test_gradients_are_clipped_to_the_global_norm():
    # Gradients (3, 4) have norm 5: clipped to norm 1 they are (0.6, 0.8); below the bound they pass unchanged.
    params, grads = {"a": jnp.zeros(1), "b": jnp.zeros(1)}, {"a": jnp.full((1,), 3.0), "b": jnp.full((1,), 4.0)}
    (clipped,) = updates(optimizer(1.0, momentum=0.0, weight_decay=0.0, clip_grad_norm=1.0), grads, params)
    chex.assert_trees_all_close(clipped, {"a": jnp.full((1,), -0.6), "b": jnp.full((1,), -0.8)}, rtol=1e-6)
    (unclipped,) = updates(optimizer(1.0, momentum=0.0, weight_decay=0.0, clip_grad_norm=10.0), grads, params)
    chex.assert_trees_all_close(unclipped, {"a": jnp.full((1,), -3.0), "b": jnp.full((1,), -4.0)}, rtol=1e-6)


def test_the_ema_moves_a_tenth_of_the_way_at_decay_0_9():
    average = optim.ema_update({"w": jnp.zeros(2)}, {"w": jnp.full((2,), 10.0)}, 0.9)
    chex.assert_trees_all_close(average, {"w": jnp.full((2,), 1.0)})


def schedule(total_steps=100, steps_per_epoch=10, **overrides):
    """The schedule of base rate 0.1 over a run of `total_steps`, from the default section with `overrides`."""
    section = ml_collections.ConfigDict(optim.SCHEDULE_DEFAULTS | overrides)
    rate = optim.make_schedule(section, 0.1, total_steps, steps_per_epoch)
    return lambda step: float(rate(step))


@pytest.mark.parametrize(
    ("overrides", "rates"),
    [
        # A linear warm-up over 1 epoch (10 steps) from 0, then constant.
        ({"name": "constant", "warmup_epochs": 1.0}, {0: 0.0, 5: 0.05, 10: 0.1, 99: 0.1}),
        # He et al.'s ResNet-110 warm-up: a constant 0.01 until the main schedule starts.
        (
            {"name": "constant", "warmup_epochs": 1.0, "warmup_mode": "constant", "warmup_factor": 0.1},
            {0: 0.01, 9: 0.01, 10: 0.1},
        ),
        # After a warm-up, the drops stay at their own steps of the run: 1/2 and 3/4 of 100.
        ({"warmup_epochs": 1.0}, {5: 0.05, 49: 0.1, 50: 0.01, 74: 0.01, 75: 0.001}),
        # Cosine from 0.1 to 0.1 * end_factor: 0.1 * (0.1 + 0.9 * (1 + cos(pi t / T)) / 2).
        ({"name": "cosine", "end_factor": 0.1}, {0: 0.1, 50: 0.055, 100: 0.01}),
        # Linear from 0 to 0.1 over 20 steps, then cosine down to 0.1 * end_factor at step 100.
        ({"name": "warmup_cosine", "warmup_epochs": 2.0, "end_factor": 0.2}, {10: 0.05, 20: 0.1, 60: 0.06, 100: 0.02}),
        # optax's one-cycle: up from 0.1 / 25 to 0.1 at 30% of the run, down to 0.1 / 25 / 1e4 at its end.
        ({"name": "onecycle", "pct_start": 0.3}, {0: 0.004, 30: 0.1, 100: 4e-7}),
    ],
    ids=["linear warm-up", "constant warm-up", "drops after warm-up", "cosine", "warmup_cosine", "onecycle"],
)
def test_each_schedule_at_the_steps_worked_out_by_hand(overrides, rates):
    rate = schedule(**overrides)
    assert {step: rate(step) for step in rates} == pytest.approx(rates, rel=1e-5, abs=1e-9)
