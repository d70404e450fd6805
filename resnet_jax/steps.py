"""The train and eval steps, pure functions of (state, batch), and the programs that run them on the mesh.

Augmentation and normalisation run inside the step, on the device. `lower_train_steps` runs several steps per
dispatch, gathering each batch from the device-resident split: in one `lax.scan` on accelerators, as asynchronous
per-step dispatches on the CPU; either way Python never waits between steps. `TrainProgram` holds a run's programs.
`evaluate_batches` feeds a streamed split's batches, from the host, to its evaluation program (the trainer's loop and
the tools' alike).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from resnet_jax import augment, models, optim
from resnet_jax.parallel import global_batches, global_replicated, replicated
from resnet_jax.pipeline import DeviceSplit, eval_batch, gather_batch
from resnet_jax.state import TrainState

Metrics = dict[str, jax.Array]
NO_NONFINITE_STEP = int(jnp.iinfo(jnp.int32).max)
# count, loss_sum and correct cover the applied steps; examples every step's batch (for images/s).
TRAIN_SUMS = ("loss_sum", "correct", "count", "examples", "grad_norm_sum", "steps", "nonfinite_steps")
# Per part of the network, over the applied steps: its gradients' L2 norm (stem, each stage, head) and its output's
# standard deviation (stem, each stage), as `grad_norm_sum/stage1`, `output_std_sum/stage1`, ...
STAGE_SUM_PREFIXES = ("grad_norm_sum/", "output_std_sum/")


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """What the steps need to know beyond the model: input statistics, augmentation, loss and EMA (built from the
    config by `experiment.build`)."""

    mean: Sequence[float]
    std: Sequence[float]
    dtype: Any
    augmentation: augment.Augmentation
    label_smoothing: float
    ema_decay: float
    frozen_statistics: bool  # a linear probe: BatchNorm in inference mode, its statistics kept
    gradient_flow: bool = True  # per-stage gradient norms and output spreads in the metrics (`stage_flow`)


def _tree_where(condition: jax.Array, new: Any, old: Any) -> Any:
    return jax.tree.map(lambda n, o: jnp.where(condition, n, o), new, old)


def make_train_step(config: StepConfig) -> Callable[[TrainState, jax.Array, jax.Array], tuple[TrainState, Metrics]]:
    """One optimizer step on a uint8 batch. A step whose loss or gradients are not finite changes nothing but
    the step counter, and is counted in the metrics (`nonfinite_steps`, `first_nonfinite_step`) but not in the
    loss or accuracy. The learning rate is the schedule's at `state.step`, so a dropped step shifts nothing."""

    def train_step(state: TrainState, images: jax.Array, labels: jax.Array) -> tuple[TrainState, Metrics]:
        step_key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        augment_key, dropout_key = jax.random.split(step_key)
        images = augment.augment_batch(augment_key, images, config.augmentation)
        inputs, label_weight = augment.normalize(images, config.mean, config.std), None
        if config.augmentation.mixes:
            # After normalisation, which is affine per channel and so commutes with both mixes: mixed in float32,
            # not rounded back to uint8 pixels (as timm's collate does), and rounded to the compute dtype once. Its
            # key comes from the replicated step key, so one lambda and box hold for the global batch on any mesh,
            # and folding it in leaves the crop, flip and dropout keys as they were.
            inputs, label_weight = augment.mix_batch(jax.random.fold_in(step_key, 1), inputs, config.augmentation)
        inputs = inputs.astype(config.dtype)

        def loss_fn(params):
            variables = {"params": params, "batch_stats": state.batch_stats}
            # The stages' output statistics come out of this forward pass: the gradient-flow metrics cost no other.
            mutable = [models.STAGE_STATS] if config.gradient_flow else []
            if not config.frozen_statistics:
                mutable.append("batch_stats")
            logits, updates = state.apply_fn(
                variables, inputs, train=not config.frozen_statistics, mutable=mutable, rngs={"dropout": dropout_key}
            )
            batch_stats = updates.get("batch_stats", state.batch_stats)
            if label_weight is None:
                losses = optim.cross_entropy(logits, labels, config.label_smoothing)
            else:
                partners = augment.paired(labels)
                losses = optim.mixed_cross_entropy(logits, labels, partners, label_weight, config.label_smoothing)
            return losses.mean(), (logits, batch_stats, updates.get(models.STAGE_STATS))

        (loss, (logits, batch_stats, stage_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = state.tx.update(grads, state.opt_state, state.params, step=state.step)
        params = jax.tree.map(jnp.add, state.params, updates)
        grad_norm = optim.global_norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        ema = state.ema
        if ema is not None:
            ema = _tree_where(
                finite,
                optim.ema_update(ema, {"params": params, "batch_stats": batch_stats}, config.ema_decay),
                ema,
            )
        new_state = state.replace(
            step=state.step + 1,
            params=_tree_where(finite, params, state.params),
            batch_stats=_tree_where(finite, batch_stats, state.batch_stats),
            opt_state=_tree_where(finite, opt_state, state.opt_state),
            ema=ema,
        )
        examples = jnp.asarray(labels.shape[0], jnp.float32)
        scored = labels if label_weight is None else augment.dominant_labels(labels, label_weight)
        metrics = {
            "loss_sum": jnp.where(finite, loss, 0.0) * examples,
            "correct": jnp.where(finite, jnp.sum(jnp.argmax(logits, -1) == scored), 0).astype(jnp.float32),
            "count": jnp.where(finite, examples, 0.0),
            "examples": examples,
            "grad_norm_sum": jnp.where(finite, grad_norm, 0.0),
            "steps": jnp.ones((), jnp.float32),
            "nonfinite_steps": (~finite).astype(jnp.float32),
            "first_nonfinite_step": jnp.where(finite, NO_NONFINITE_STEP, state.step),
        }
        flow = stage_flow(grads, stage_stats) if config.gradient_flow else {}
        return new_state, metrics | {key: jnp.where(finite, value, 0.0) for key, value in flow.items()}

    return train_step


def stage_flow(grads: Any, stage_stats: Any) -> Metrics:
    """One step's gradient flow, as window sums: each part's gradient L2 norm, grouped from the grads tree by
    module (`models.module_stages`), and each part's output standard deviation, as the model recorded it."""
    grad_sum, std_sum = STAGE_SUM_PREFIXES
    modules = collections.defaultdict(dict)
    for module, part in models.module_stages(grads).items():
        modules[part][module] = grads[module]
    norms = {grad_sum + part: optim.global_norm(tree) for part, tree in modules.items()}
    return norms | {std_sum + part: sown[0] for part, sown in stage_stats.items()}


def stage_sum_keys(stages: Sequence[str]) -> tuple[str, ...]:
    """The metric window's gradient-flow keys for a model of these parts (`models.stage_names`): what `stage_flow`
    gives."""
    grad_sum, std_sum = STAGE_SUM_PREFIXES
    return (*(grad_sum + part for part in (*stages, models.HEAD)), *(std_sum + part for part in stages))


def zero_train_metrics(stage_sums: Sequence[str] = ()) -> Metrics:
    """An empty metric window, to accumulate train steps into; `stage_sums` (`stage_sum_keys`) when the steps
    log the gradient flow."""
    totals = {key: jnp.zeros((), jnp.float32) for key in (*TRAIN_SUMS, *stage_sums)}
    return totals | {"first_nonfinite_step": jnp.asarray(NO_NONFINITE_STEP, jnp.int32)}


def _network_order(key: str) -> tuple[str, bool, bool, int]:
    """Sorts `grad_norm_sum/stage10` after `stage2`, the stem first and the head last (a fetched window's keys come
    sorted as text)."""
    prefix, part = key.split("/", 1)
    return prefix, part != models.STEM, part == models.HEAD, int(part[5:]) if part.startswith("stage") else 0


def stage_means(host: dict[str, float]) -> dict[str, float]:
    """A fetched window's per-part sums as means over its applied steps, in the network's order: `grad_norm/stem`,
    `grad_norm/stage1` ... `grad_norm/head`, then `output_std/stem` ..."""
    applied = host["steps"] - host["nonfinite_steps"]
    keys = sorted((key for key in host if key.startswith(STAGE_SUM_PREFIXES)), key=_network_order)
    return {key.replace("_sum/", "/"): host[key] / applied for key in keys}


def _accumulate(totals: Metrics, stacked: Metrics) -> Metrics:
    """Adds per-step metrics stacked along axis 0 to a window (keeping the earliest non-finite step)."""
    if totals.keys() != stacked.keys():
        raise ValueError(
            f"the metric window holds {sorted(totals)} but the train step gives {sorted(stacked)}: make the window "
            "with zero_train_metrics(stage_sum_keys(models.stage_names(model))) when the step logs the gradient flow"
        )
    return {
        key: jnp.minimum(total, jnp.min(stacked[key]))
        if key == "first_nonfinite_step"
        else total + jnp.sum(stacked[key], axis=0)
        for key, total in totals.items()
    }


# XLA:CPU's default YNNPACK fusions, less individual convolutions: those then run on Eigen, which computes this
# project's weight gradients faster (the train step takes 15-35% less time on 2 cores). LLVM at -O2 instead of -O3
# compiles the step 0.8 s faster and it runs as fast, to the bit (benchmarks/RESULTS.md).
CPU_TRAIN_COMPILER_OPTIONS = {
    "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE",
    "xla_backend_optimization_level": 2,
}


@functools.cache
def _cpu_options_supported() -> bool:
    """Whether this jaxlib knows `CPU_TRAIN_COMPILER_OPTIONS` (an unknown option fails the compile)."""
    probe = jnp.zeros(1, device=jax.devices("cpu")[0])
    try:
        jax.jit(jnp.negative).lower(probe).compile(CPU_TRAIN_COMPILER_OPTIONS)
    except jax.errors.JaxRuntimeError:  # "No such compile option", or a fusion type this XLA does not have
        return False
    return True


def train_compiler_options(mesh: Mesh) -> dict[str, Any] | None:
    """XLA options for the train step on this mesh's devices: `CPU_TRAIN_COMPILER_OPTIONS` on the CPU."""
    if mesh.devices.flat[0].platform == "cpu" and _cpu_options_supported():
        return CPU_TRAIN_COMPILER_OPTIONS
    return None


def scan_is_fast(mesh: Mesh) -> bool:
    """Whether a train step runs at full speed inside `lax.scan` on this mesh's devices.

    Not on the CPU: XLA:CPU (jax 0.10) rewrites convolutions for its fast kernels only outside loop bodies; the
    weight-gradient convolutions left inside a `while` fall to a naive loop, and a ResNet-20 step runs 35x slower
    in a scan than dispatched on its own (benchmarks/RESULTS.md).
    """
    return mesh.devices.flat[0].platform != "cpu"


@dataclasses.dataclass(frozen=True)
class TrainProgram:
    """A run's train programs. `train[n](state, totals, split, permutation, first_step) -> (state, totals)` runs
    steps `first_step .. first_step + n - 1` of an epoch in one dispatch and adds their metrics to the window
    `totals`; `permutation(epoch)` is each device's shuffle of its shard, `zero_totals()` an empty window and
    `learning_rate(step)` the schedule's rate.

    Scanned, `train` holds one program per chunk length the run dispatches; per step (see `scan_is_fast`), only
    `train[1]`, dispatched once for each step. Each program is a `jax.stages.Lowered` until `compile` makes it the
    `jax.stages.Compiled` that the loop calls: once compiled, nothing traces or compiles again.
    """

    train: dict[int, Any]
    permutation: Any  # None where batches are fed from the host (`lower_fed_train_steps`)
    zero_totals: Any
    learning_rate: Any
    scan: bool

    def programs(self) -> dict[str, Any]:
        """Each program by the name the start-up log gives its compile time."""
        train = {(f"train x{n}" if self.scan else "train step"): program for n, program in self.train.items()}
        shuffle = {} if self.permutation is None else {"permutation": self.permutation}
        return train | shuffle | {"metric window": self.zero_totals, "learning rate": self.learning_rate}

    def map(self, stage: Callable[[Any], Any]) -> TrainProgram:
        """This program with `stage` applied to each of its programs (start-up hands them to compile threads)."""
        return dataclasses.replace(
            self,
            train={n: stage(program) for n, program in self.train.items()},
            permutation=None if self.permutation is None else stage(self.permutation),
            zero_totals=stage(self.zero_totals),
            learning_rate=stage(self.learning_rate),
        )

    def compile(self) -> TrainProgram:
        """The program compiled, here and now (start-up compiles in threads instead)."""
        return self.map(lambda lowered: lowered.compile())


def lower_train_steps(
    train_step: Callable,
    mesh: Mesh,
    batch_per_device: int,
    state: Any,
    totals: Metrics,
    split: DeviceSplit,
    permutation: Any,
    num_steps: int = 1,
    scan: bool = False,
    compiler_options: dict[str, Any] | None = None,
) -> jax.stages.Lowered:
    """The program that runs steps `first_step .. first_step + num_steps - 1` of an epoch, each on its batch
    gathered from the device-resident `split` in the epoch's `permutation`, and adds their metrics to the window
    `totals`, with no host synchronisation: `(state, totals, split, permutation, first_step) -> (state, totals)`,
    lowered for these arguments (arrays or their shapes; `first_step` is an int32 scalar). The state and the
    window are donated, and the window is replicated, as the program's output is.

    Scanned, the steps run in one `lax.scan`; else the program is one step (`num_steps` 1), dispatched once per
    step. Both give the same state. `compiler_options` default to `train_compiler_options(mesh)`; `{}` compiles
    with XLA's own defaults.
    """
    if not scan and num_steps != 1:
        raise ValueError(f"a program of one step per dispatch runs 1 step, not {num_steps}; scan to run several")
    if compiler_options is None:
        compiler_options = train_compiler_options(mesh)

    def run_steps(state, totals, split: DeviceSplit, permutation, first_step):
        def step(state, index):
            images, labels = gather_batch(split, permutation, index, batch_per_device, mesh)
            return train_step(state, images, labels)

        if scan:
            state, stacked = jax.lax.scan(
                lambda state, offset: step(state, first_step + offset), state, jnp.arange(num_steps)
            )
        else:
            state, metrics = step(state, first_step)
            stacked = jax.tree.map(lambda value: value[None], metrics)
        return state, _accumulate(totals, stacked)

    step_inputs = (split, permutation, jax.ShapeDtypeStruct((), jnp.int32))
    return _lower_run_steps(run_steps, mesh, state, totals, step_inputs, compiler_options)


def lower_fed_train_steps(
    train_step: Callable,
    mesh: Mesh,
    state: Any,
    totals: Metrics,
    num_steps: int,
    images: jax.ShapeDtypeStruct,
    labels: jax.ShapeDtypeStruct,
    scan: bool = False,
    compiler_options: dict[str, Any] | None = None,
) -> jax.stages.Lowered:
    """`lower_train_steps` for batches fed from the host (the grain loader): `(state, totals, images, labels) ->
    (state, totals)` runs one step on each of `num_steps` stacked global batches, uint8 images (num_steps, batch, H,
    W, C) and int32 labels (num_steps, batch), sharded along the batch (`parallel.global_batches`)."""
    if not scan and num_steps != 1:
        raise ValueError(f"a program of one step per dispatch runs 1 step, not {num_steps}; scan to run several")
    if compiler_options is None:
        compiler_options = train_compiler_options(mesh)

    def run_steps(state, totals, images, labels):
        if scan:
            state, stacked = jax.lax.scan(lambda state, batch: train_step(state, *batch), state, (images, labels))
        else:
            state, metrics = train_step(state, images[0], labels[0])
            stacked = jax.tree.map(lambda value: value[None], metrics)
        return state, _accumulate(totals, stacked)

    return _lower_run_steps(run_steps, mesh, state, totals, (images, labels), compiler_options)


def _lower_run_steps(
    run_steps: Callable,
    mesh: Mesh,
    state: Any,
    totals: Metrics,
    step_inputs: tuple,
    compiler_options: dict[str, Any],
) -> jax.stages.Lowered:
    """`run_steps(state, totals, *step_inputs)` jitted with the state and metric window donated and replicated
    out, and lowered (the window placed as the programs give it back)."""
    sharding = replicated(mesh)
    window = jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding), totals)
    jitted = jax.jit(
        run_steps, donate_argnums=(0, 1), out_shardings=sharding, compiler_options=compiler_options or None
    )
    return jitted.lower(state, window, *step_inputs)


def make_eval_step(config: StepConfig, apply_fn: Callable, tta_flip: bool = False) -> Callable:
    """`eval_step(variables, images, labels, mask) -> (sums, logits)` on a uint8 batch; masked rows count nothing.

    With `tta_flip`, logits are the mean over each image and its mirror.
    """

    def eval_step(variables, images, labels, mask):
        inputs = augment.normalize(images, config.mean, config.std, config.dtype)
        logits = apply_fn(variables, inputs, train=False)
        if tta_flip:
            logits = (logits + apply_fn(variables, inputs[:, :, ::-1, :], train=False)) / 2
        weights = mask.astype(jnp.float32)
        top5 = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
        sums = {
            "loss_sum": jnp.sum(optim.cross_entropy(logits, labels) * weights),
            "correct": jnp.sum((jnp.argmax(logits, -1) == labels) * weights),
            "correct_top5": jnp.sum(jnp.any(top5 == labels[:, None], axis=-1) * weights),
            "count": jnp.sum(weights),
        }
        return sums, logits

    return eval_step


def make_evaluate(
    eval_step: Callable, mesh: Mesh, batch_per_device: int, return_logits: bool = False
) -> Callable[[Any, DeviceSplit], tuple[Metrics, jax.Array | None]]:
    """Returns `evaluate(variables, split) -> (sums, logits)` over EVERY example of a padded split, in one
    dispatch. Logits, when asked for, are stacked (batches, global_batch, classes); see
    `pipeline.eval_outputs_in_split_order`."""

    def evaluate(variables, split: DeviceSplit):
        num_batches = split.images.shape[0] // mesh.devices.size // batch_per_device

        def body(totals, index):
            images, labels, mask = eval_batch(split, index, batch_per_device, mesh)
            sums, logits = eval_step(variables, images, labels, mask)
            totals = jax.tree.map(jnp.add, totals, sums)
            return totals, (logits if return_logits else None)

        return jax.lax.scan(body, zero_eval_sums(), jnp.arange(num_batches))

    return jax.jit(evaluate)


def zero_eval_sums() -> Metrics:
    return {key: jnp.zeros((), jnp.float32) for key in ("loss_sum", "correct", "correct_top5", "count")}


def make_evaluate_batch(eval_step: Callable, mesh: Mesh, return_logits: bool = False) -> Callable:
    """`evaluate_batch(variables, sums, images, labels, mask) -> (sums, logits)`: one global batch fed from the host
    (the grain loader's padded, masked evaluation batches) added to the running sums, which stay on the devices; the
    batch's logits when asked for, else None."""

    def evaluate_batch(variables, sums, images, labels, mask):
        batch_sums, logits = eval_step(variables, images, labels, mask)
        return jax.tree.map(jnp.add, sums, batch_sums), (logits if return_logits else None)

    # Replicated, the logits a tool asks for come back whole to its host.
    return jax.jit(evaluate_batch, out_shardings=replicated(mesh))


def evaluate_batches(
    evaluate_batch: Callable, variables: Any, batches: Iterable[dict[str, np.ndarray]], mesh: Mesh
) -> tuple[Metrics, tuple[np.ndarray, np.ndarray, np.ndarray] | None]:
    """A split's sums over batches fed from the host (this process's rows of each global batch: uint8 `image`, int32
    `label`, bool `mask`, as the grain loader's `EvalStream.batches` gives them), added up on the devices as they
    come. With an `evaluate_batch` that returns logits, also every row's logits, label and mask, in the global
    batches' order (in one process, the padded split's)."""
    sums = {key: global_replicated(np.zeros((), np.float32), mesh) for key in jax.eval_shape(zero_eval_sums)}
    rows = []
    for batch in batches:
        fed = [global_batches(batch[key], mesh, stacked=False) for key in ("image", "label", "mask")]
        sums, logits = evaluate_batch(variables, sums, *fed)
        if logits is not None:
            rows.append((logits, *fed[1:]))
    if not rows:
        return sums, None
    logits, labels, mask = (np.concatenate(part) for part in zip(*jax.device_get(rows), strict=True))
    return sums, (logits, labels, mask)
