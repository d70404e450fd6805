"""Optimisers, learning-rate schedules and the weight-decay mask, all from optax.

Also the loss (cross-entropy with optional label smoothing) and the EMA of weights, so that everything that
decides how parameters move lives in one place.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "piecewise", "cosine", "warmup_cosine", "onecycle")
WARMUP_MODES = ("linear", "constant")


def make_schedule(
    name: str,
    base_lr: float,
    total_steps: int,
    *,
    boundaries: Sequence[int] = (),
    decay_factor: float = 0.1,
    warmup_steps: int = 0,
    warmup_mode: str = "linear",
    warmup_factor: float = 0.0,
    end_factor: float = 0.0,
    pct_start: float = 0.3,
) -> optax.Schedule:
    """A learning-rate schedule over absolute steps.

    - constant: `base_lr` throughout.
    - piecewise: multiply by `decay_factor` at each of `boundaries` (He et al.: x0.1 at 32k and 48k).
    - cosine: cosine decay from `base_lr` to `base_lr * end_factor` over `total_steps`.
    - warmup_cosine: linear warm-up from 0 over `warmup_steps`, then cosine decay.
    - onecycle: Smith's one-cycle (cosine up for `pct_start` of the steps, then down).
    Any schedule but onecycle may start with `warmup_steps` of warm-up: "linear" from `base_lr * warmup_factor`,
    or "constant" at `base_lr * warmup_factor` (He et al.'s ResNet-110 warm-up at 0.01).
    """
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)}")
    if warmup_mode not in WARMUP_MODES:
        raise ValueError(f"unknown warm-up mode {warmup_mode!r}; choose one of {', '.join(WARMUP_MODES)}")
    if name == "onecycle":
        return optax.cosine_onecycle_schedule(total_steps, base_lr, pct_start=pct_start)
    if name == "warmup_cosine":
        return optax.warmup_cosine_decay_schedule(
            0.0, base_lr, warmup_steps, max(total_steps, warmup_steps + 1), end_value=base_lr * end_factor
        )
    # The main schedule is written over absolute steps; join_schedules hands it steps counted from the warm-up's
    # end, so shift them back.
    if name == "piecewise":
        main = optax.piecewise_constant_schedule(
            base_lr, {int(boundary) - warmup_steps: decay_factor for boundary in boundaries}
        )
    elif name == "cosine":
        main = optax.cosine_decay_schedule(base_lr, max(total_steps - warmup_steps, 1), alpha=end_factor)
    else:
        main = optax.constant_schedule(base_lr)
    if warmup_steps <= 0:
        return main
    if warmup_mode == "constant":
        warmup = optax.constant_schedule(base_lr * warmup_factor)
    else:
        warmup = optax.linear_schedule(base_lr * warmup_factor, base_lr, warmup_steps)
    return optax.join_schedules([warmup, main], [warmup_steps])


def decay_mask(params: Any) -> Any:
    """True for conv and dense kernels; False for BatchNorm scales and offsets and for biases."""
    return jax.tree_util.tree_map_with_path(lambda path, _: path[-1].key == "kernel", params)


def make_optimizer(
    name: str,
    learning_rate: optax.ScalarOrSchedule,
    *,
    momentum: float = 0.9,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    decay_all_params: bool = False,
    clip_grad_norm: float = 0.0,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
) -> optax.GradientTransformation:
    """SGD (momentum, Nesterov), Adam or AdamW, with weight decay and optional global-norm clipping.

    For sgd and adam the weight decay is an L2 term added to the gradient, as in PyTorch's optimisers and the
    papers; adamw decouples it. Unless `decay_all_params`, BN parameters and biases are not decayed.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    mask = None if decay_all_params else decay_mask
    parts = [optax.clip_by_global_norm(clip_grad_norm)] if clip_grad_norm > 0 else []
    if name == "adamw":
        parts.append(optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=mask))
        return optax.chain(*parts)
    if weight_decay > 0:
        parts.append(optax.add_decayed_weights(weight_decay, mask))
    if name == "sgd":
        parts.append(optax.sgd(learning_rate, momentum=momentum or None, nesterov=nesterov))
    else:
        parts.append(optax.adam(learning_rate, b1=b1, b2=b2, eps=eps))
    return optax.chain(*parts)


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
    """Per-example softmax cross-entropy against integer labels, with optional label smoothing."""
    if label_smoothing == 0.0:
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype), label_smoothing)
    return optax.softmax_cross_entropy(logits, targets)


def ema_update(average: Any, new: Any, decay: float) -> Any:
    """One step of an exponential moving average of a pytree: decay * average + (1 - decay) * new."""
    return optax.incremental_update(new, average, step_size=1.0 - decay)


def global_norm(tree: Any) -> jax.Array:
    return optax.tree.norm(tree).astype(jnp.float32)
