"""How parameters move: the optimizer and the learning-rate schedule from their config sections (their defaults and
checks live here), the weight-decay mask, the loss with label smoothing and mixed targets, and the EMA of weights,
all from optax.

Schedule boundaries and warm-up are given in epochs or fractions of the run, so a change of batch keeps the recipe.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from resnet_jax import configuration

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "piecewise", "cosine", "warmup_cosine", "onecycle")
WARMUP_MODES = ("linear", "constant")
BOUNDARY_UNITS = ("fraction", "epochs", "steps")

OPTIMIZER_DEFAULTS = {
    "name": "sgd",
    "learning_rate": 0.1,
    "momentum": 0.9,
    "nesterov": False,
    "weight_decay": 1e-4,
    "decay_all_params": False,  # True also decays BN parameters and biases
    "clip_grad_norm": 0.0,
    "b1": 0.9,
    "b2": 0.999,
    "eps": 1e-8,
}
SCHEDULE_DEFAULTS = {
    "name": "piecewise",
    # He et al.'s drops at 32k and 48k of 64k steps; in boundary_unit, so a change of batch keeps the recipe.
    "boundaries": (0.5, 0.75),
    "boundary_unit": "fraction",
    "decay_factor": 0.1,
    "warmup_epochs": 0.0,
    "warmup_mode": "linear",
    "warmup_factor": 0.0,
    "end_factor": 0.0,
    "pct_start": 0.3,
}


def check_optimizer_config(optimizer_config: ml_collections.ConfigDict) -> None:
    """Raises a one-line ConfigError for the first `optimizer` key that cannot work."""
    config = optimizer_config
    configuration.check_choice("optimizer.name", config.name, OPTIMIZERS)
    configuration.check_number("optimizer.learning_rate", config.learning_rate, 0, math.inf, "()")
    configuration.check_number("optimizer.momentum", config.momentum, 0, 1)
    for key in ("nesterov", "decay_all_params"):
        configuration.check_choice(f"optimizer.{key}", config[key], (False, True))
    if config.nesterov and config.name != "sgd":
        raise configuration.ConfigError(
            f"optimizer.nesterov=True applies to sgd only, and optimizer.name is {config.name!r}; set "
            f"optimizer.nesterov=false for {config.name}"
        )
    if config.nesterov and config.momentum == 0:
        raise configuration.ConfigError(
            "optimizer.nesterov=True needs momentum, and optimizer.momentum is 0; set optimizer.momentum above 0, "
            "or optimizer.nesterov=false"
        )
    configuration.check_number("optimizer.weight_decay", config.weight_decay, 0, 1)
    configuration.check_number("optimizer.clip_grad_norm", config.clip_grad_norm, 0, math.inf, fix=" (0: no clipping)")
    for key in ("b1", "b2"):
        configuration.check_number(f"optimizer.{key}", config[key], 0, 1)
    configuration.check_number("optimizer.eps", config.eps, 0, math.inf, "()")


def check_schedule_config(schedule_config: ml_collections.ConfigDict) -> None:
    """The `schedule` keys that can be checked without the run's length (`make_schedule` checks the rest)."""
    config = schedule_config
    configuration.check_choice("schedule.name", config.name, SCHEDULES)
    configuration.check_choice("schedule.warmup_mode", config.warmup_mode, WARMUP_MODES)
    configuration.check_choice("schedule.boundary_unit", config.boundary_unit, BOUNDARY_UNITS)
    unit = config.boundary_unit
    if not isinstance(config.boundaries, (tuple, list)) or not all(map(configuration.is_number, config.boundaries)):
        raise configuration.ConfigError(
            f"schedule.boundaries={config.boundaries!r} must be a list of numbers (in {unit}), e.g. 0.5,0.75"
        )
    boundaries = tuple(config.boundaries)
    if config.name == "piecewise":
        if any(b <= 0 for b in boundaries) or any(a >= b for a, b in itertools.pairwise(boundaries)):
            raise configuration.ConfigError(
                f"schedule.boundaries={boundaries} must be positive and increasing (in {unit})"
            )
        if unit == "fraction" and any(b >= 1 for b in boundaries):
            raise configuration.ConfigError(
                f"schedule.boundaries={boundaries} are fractions of the run and must be below 1; set "
                "schedule.boundary_unit=epochs or steps to give them so"
            )
    configuration.check_number("schedule.decay_factor", config.decay_factor, 0, math.inf, "()")
    configuration.check_number("schedule.warmup_epochs", config.warmup_epochs, 0, math.inf, fix=" (0: no warm-up)")
    configuration.check_number("schedule.warmup_factor", config.warmup_factor, 0, 1, "[]")
    configuration.check_number("schedule.end_factor", config.end_factor, 0, 1, "[]")
    configuration.check_number("schedule.pct_start", config.pct_start, 0, 1, "()")
    if config.warmup_epochs > 0:
        if config.name == "onecycle":
            raise configuration.ConfigError(
                f"schedule.warmup_epochs={config.warmup_epochs} does nothing under onecycle, which rises for "
                "schedule.pct_start of the run; set schedule.warmup_epochs=0"
            )
        if config.name == "warmup_cosine" and (config.warmup_mode != "linear" or config.warmup_factor != 0):
            raise configuration.ConfigError(
                f"schedule.warmup_mode={config.warmup_mode!r} / warmup_factor={config.warmup_factor} do nothing "
                "under warmup_cosine, which rises linearly from 0; use schedule.name=cosine to warm up so"
            )
        if config.warmup_mode == "constant" and config.warmup_factor == 0:
            raise configuration.ConfigError(
                "schedule.warmup_factor=0.0 with warmup_mode=constant holds the rate at 0 through the warm-up; "
                "give the fraction of the base rate to warm up at, e.g. 0.1"
            )


def _check_run_length(schedule_config: ml_collections.ConfigDict, total_steps: int, steps_per_epoch: int) -> None:
    """The `schedule` keys that relate to the run: warm-up shorter than it, each boundary a distinct step in it."""
    config = schedule_config
    epochs = total_steps / steps_per_epoch
    run = f"this run of {total_steps} steps ({epochs:g} epoch{'' if epochs == 1 else 's'} of {steps_per_epoch} steps)"
    warmup_steps = round(config.warmup_epochs * steps_per_epoch)
    if config.warmup_epochs > 0 and warmup_steps == 0:
        raise configuration.ConfigError(
            f"schedule.warmup_epochs={config.warmup_epochs} is less than half a step of {run}; give at least "
            f"{1 / steps_per_epoch:.3g} (one step), or 0 for no warm-up"
        )
    if warmup_steps >= total_steps:
        raise configuration.ConfigError(
            f"schedule.warmup_epochs={config.warmup_epochs} is {warmup_steps} steps, no shorter than {run}; give "
            f"fewer than {total_steps / steps_per_epoch:g}"
        )
    if config.name != "piecewise":
        return
    unit, boundaries = config.boundary_unit, tuple(config.boundaries)
    drops = [_to_steps(b, unit, total_steps, steps_per_epoch) for b in boundaries]
    inside = all(warmup_steps < drop < total_steps for drop in drops) and len(set(drops)) == len(drops)
    if not inside:
        scale = {"fraction": total_steps, "epochs": steps_per_epoch, "steps": 1}[unit]
        after = f", after the warm-up's {warmup_steps} steps" if warmup_steps else ""
        span = f"between {warmup_steps / scale:g} and {total_steps / scale:g}"
        fix = {
            "fraction": f"give fractions {span} a step apart, or train for longer",
            "epochs": f"give epochs {span}, or fractions of the run with schedule.boundary_unit=fraction",
            "steps": f"give steps {span}, or fractions of the run with schedule.boundary_unit=fraction",
        }[unit]
        raise configuration.ConfigError(
            f"schedule.boundaries={boundaries} ({unit}) fall on steps {tuple(drops)} of {run}: each must be a step "
            f"of its own inside the run{after}; {fix}"
        )


def _to_steps(value: float, unit: str, total_steps: int, steps_per_epoch: int) -> int:
    scale = {"fraction": total_steps, "epochs": steps_per_epoch, "steps": 1}[unit]
    return round(value * scale)


def make_schedule(
    schedule_config: ml_collections.ConfigDict, base_lr: float, total_steps: int, steps_per_epoch: int
) -> optax.Schedule:
    """The learning rate at each step of a run of `total_steps` (`steps_per_epoch` a pass over the data).

    - constant: `base_lr` throughout.
    - piecewise: multiply by `decay_factor` at each of `boundaries` (He et al.: x0.1 at 1/2 and 3/4 of the run).
    - cosine: cosine decay from `base_lr` to `base_lr * end_factor` over the run.
    - warmup_cosine: linear warm-up from 0 over `warmup_epochs`, then cosine decay.
    - onecycle: Smith's one-cycle (cosine up for `pct_start` of the steps, then down).
    Any schedule but onecycle may start with `warmup_epochs` of warm-up: "linear" from `base_lr * warmup_factor`,
    or "constant" at `base_lr * warmup_factor` (He et al.'s ResNet-110 warm-up at 0.01).

    The section's own keys are checked as the run is built (`check_schedule_config`); here, what needs the run's
    length.
    """
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or min(total_steps, steps_per_epoch) < 1:
        raise ValueError(f"a run of {total_steps} steps ({steps_per_epoch} an epoch) has no schedule")
    _check_run_length(schedule_config, total_steps, steps_per_epoch)
    name = schedule_config.name
    warmup_steps = round(schedule_config.warmup_epochs * steps_per_epoch)
    if name == "onecycle":
        return optax.cosine_onecycle_schedule(total_steps, base_lr, pct_start=schedule_config.pct_start)
    if name == "warmup_cosine":
        return optax.warmup_cosine_decay_schedule(
            0.0,
            base_lr,
            warmup_steps,
            max(total_steps, warmup_steps + 1),
            end_value=base_lr * schedule_config.end_factor,
        )
    # The main schedule is written over absolute steps; join_schedules hands it steps counted from the warm-up's
    # end, so shift them back.
    if name == "piecewise":
        unit = schedule_config.boundary_unit
        drops = [_to_steps(b, unit, total_steps, steps_per_epoch) for b in schedule_config.boundaries]
        main = optax.piecewise_constant_schedule(
            base_lr, {step - warmup_steps: schedule_config.decay_factor for step in drops}
        )
    elif name == "cosine":
        main = optax.cosine_decay_schedule(
            base_lr, max(total_steps - warmup_steps, 1), alpha=schedule_config.end_factor
        )
    else:
        main = optax.constant_schedule(base_lr)
    if warmup_steps <= 0:
        return main
    start = base_lr * schedule_config.warmup_factor
    if schedule_config.warmup_mode == "constant":
        warmup = optax.constant_schedule(start)
    else:
        warmup = optax.linear_schedule(start, base_lr, warmup_steps)
    return optax.join_schedules([warmup, main], [warmup_steps])


def decay_mask(params: Any) -> Any:
    """True for conv and dense kernels; False for BatchNorm scales and offsets and for biases."""
    return jax.tree_util.tree_map_with_path(lambda path, _: path[-1].key == "kernel", params)


def scale_by_schedule_at_step(schedule: optax.Schedule) -> optax.GradientTransformationExtraArgs:
    """Scales updates by `-schedule(step)`, `step` given to `update` (the train state's own step).

    optax's own schedules count the updates in the optimizer state, and a step dropped for non-finite values
    keeps the state it came from: its count would then lag the run by the steps dropped.
    """

    def init(params: Any) -> optax.EmptyState:
        del params
        return optax.EmptyState()

    def update(updates: Any, state: optax.EmptyState, params: Any = None, *, step: jax.Array, **extra: Any):
        del params, extra
        rate = -schedule(step)
        return jax.tree.map(lambda update: (rate * update).astype(update.dtype), updates), state

    return optax.GradientTransformationExtraArgs(init, update)


def make_optimizer(
    optimizer_config: ml_collections.ConfigDict, schedule: optax.Schedule
) -> optax.GradientTransformationExtraArgs:
    """SGD (momentum, Nesterov), Adam or AdamW at `schedule`'s rate, with weight decay and optional global-norm
    clipping. `update` takes the train state's step: `tx.update(grads, opt_state, params, step=step)`.

    For sgd and adam the weight decay is an L2 term added to the gradient, as in PyTorch's optimisers and the
    papers; adamw decouples it. Unless `decay_all_params`, BN parameters and biases are not decayed. The section is
    checked as the run is built (`check_optimizer_config`).
    """
    config = optimizer_config
    mask = None if config.decay_all_params else decay_mask
    parts = [optax.clip_by_global_norm(config.clip_grad_norm)] if config.clip_grad_norm > 0 else []
    if config.name == "adamw":
        parts += [optax.scale_by_adam(b1=config.b1, b2=config.b2, eps=config.eps)]
        parts += [optax.add_decayed_weights(config.weight_decay, mask)]
    else:
        if config.weight_decay > 0:
            parts.append(optax.add_decayed_weights(config.weight_decay, mask))
        if config.name == "sgd":
            if config.momentum:
                parts.append(optax.trace(decay=config.momentum, nesterov=config.nesterov))
        else:
            parts.append(optax.scale_by_adam(b1=config.b1, b2=config.b2, eps=config.eps))
    return optax.chain(*parts, scale_by_schedule_at_step(schedule))


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
    """Per-example softmax cross-entropy against integer labels, with optional label smoothing."""
    if label_smoothing == 0.0:
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype), label_smoothing)
    return optax.softmax_cross_entropy(logits, targets)


def mixed_cross_entropy(
    logits: jax.Array,
    labels: jax.Array,
    partner_labels: jax.Array,
    label_weight: jax.Array,
    label_smoothing: float = 0.0,
) -> jax.Array:
    """Per-example softmax cross-entropy against mixed soft targets: `label_weight` of each label's one-hot and the
    rest of its partner's, each label-smoothed (timm's `mixup_target`). Cross-entropy is linear in its target, so
    this is the same mix of the two losses, written so because where `label_weight` is 1 it is then `cross_entropy`
    to the bit."""
    own = cross_entropy(logits, labels, label_smoothing)
    return label_weight * own + (1 - label_weight) * cross_entropy(logits, partner_labels, label_smoothing)


def ema_update(average: Any, new: Any, decay: float) -> Any:
    """One step of an exponential moving average of a pytree: decay * average + (1 - decay) * new."""
    return optax.incremental_update(new, average, step_size=1.0 - decay)


def global_norm(tree: Any) -> jax.Array:
    return optax.tree.norm(tree).astype(jnp.float32)
