"""The experiment a config describes, assembled: `build(config, mesh)` checks the config once and gives the model,
optimizer, schedule, steps, shapes and split sizes, and `Experiment.lower_train_program()` the one train program that
the trainer, the tools and the benchmarks all run. No loop; `build` reads no data but an image folder not recorded
yet, and the data is read when a caller asks (`load_*_split`, `open_*`). `base_config()` gathers the sections' defaults.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Collection
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from resnet_jax import augment, checkpoint, configuration, data, finetune, models, optim, parallel, pipeline, steps
from resnet_jax.state import TrainState, lower_train_state

NONFINITE_POLICIES = ("stop", "skip")
TRAIN_DEFAULTS = {
    "batch_size": 128,  # global, over all devices
    "num_epochs": 0,
    "num_steps": 64_000,  # the run's length is this or num_epochs, the other 0 (both above 0 is refused)
    # Steps per call (one lax.scan on accelerators, which hides Python and launch overhead; on CPUs the steps are
    # dispatched one by one, as XLA:CPU runs convolutions far slower inside loops). 0: automatic, 50 on
    # accelerators, 1 on CPUs (where a call gains nothing and logs come sooner) and with the grain loader (a call's
    # batches are stacked on the host and sent whole: 50 ImageNet batches of 1024 would be 7.7 GB).
    "steps_per_call": 0,
    "log_every_steps": 100,
    "label_smoothing": 0.0,
    "ema_decay": 0.0,  # > 0 keeps an EMA of the weights and evaluates it
    "on_nonfinite": "stop",  # or "skip": drop steps with a NaN/Inf loss or gradient and go on
    # Log each stage's gradient norm and output standard deviation (`steps.stage_flow`); off saves their reductions.
    "gradient_flow": True,
}
EVAL_DEFAULTS = {"every_epochs": 1, "batch_size": 1000, "tta_flip": False}


def base_config() -> ml_collections.ConfigDict:
    """Every key a run reads, with the He et al. CIFAR-10 ResNet-20 recipe; configs/*.py start from this. Each
    section's defaults belong to the module that reads it."""
    sections = {
        "seed": 0,
        "model": models.DEFAULTS,
        "data": data.DEFAULTS,
        "augment": augment.DEFAULTS,
        "train": TRAIN_DEFAULTS,
        "optimizer": optim.OPTIMIZER_DEFAULTS,
        "finetune": finetune.DEFAULTS,
        "schedule": optim.SCHEDULE_DEFAULTS,
        "eval": EVAL_DEFAULTS,
        "checkpoint": checkpoint.DEFAULTS,
        "distributed": parallel.DEFAULTS,
    }
    return ml_collections.ConfigDict(
        {name: dict(section) if isinstance(section, dict) else section for name, section in sections.items()}
    )


def check_train_config(train_config: ml_collections.ConfigDict) -> None:
    configuration.check_positive("train.batch_size", train_config.batch_size, integer=True)
    configuration.check_at_least("train.num_steps", train_config.num_steps, 0, "0 trains for train.num_epochs")
    configuration.check_at_least("train.num_epochs", train_config.num_epochs, 0, "0 with train.num_steps > 0")
    if train_config.num_steps == 0 and train_config.num_epochs == 0:
        raise configuration.ConfigError(
            "train.num_steps=0 and train.num_epochs=0: the run has no length; give train.num_epochs or train.num_steps"
        )
    # One of them, or an override of the other (--config.train.num_epochs=3 on a 64k-step recipe) does nothing.
    if train_config.num_steps and train_config.num_epochs:
        raise configuration.ConfigError(
            f"train.num_steps={train_config.num_steps} and train.num_epochs={train_config.num_epochs} both set the "
            "run's length; set train.num_steps=0 to train by epochs, or train.num_epochs=0 to train by steps"
        )
    configuration.check_at_least("train.steps_per_call", train_config.steps_per_call, 0, "0 for automatic")
    configuration.check_positive("train.log_every_steps", train_config.log_every_steps, integer=True)
    configuration.check_in_range("train.label_smoothing", train_config.label_smoothing, 0.0, 1.0)
    configuration.check_in_range("train.ema_decay", train_config.ema_decay, 0.0, 1.0)
    configuration.check_choice("train.on_nonfinite", train_config.on_nonfinite, NONFINITE_POLICIES)
    configuration.check_choice("train.gradient_flow", train_config.gradient_flow, (False, True))


def as_read_now(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved config.json as this version reads it: one written when train.num_steps above 0 won over a
    train.num_epochs also above 0 trained by steps, which is now said with num_epochs 0 (both above 0 is refused);
    its data section as `data.saved_as_read_now` reads it."""
    train, data_section = saved.get("train"), saved.get("data")
    if isinstance(train, dict) and train.get("num_steps") and train.get("num_epochs"):
        saved = {**saved, "train": {**train, "num_epochs": 0}}
    if isinstance(data_section, dict):
        saved = {**saved, "data": data.saved_as_read_now(data_section)}
    return saved


def check_eval_config(eval_config: ml_collections.ConfigDict) -> None:
    configuration.check_positive("eval.batch_size", eval_config.batch_size, integer=True)
    configuration.check_at_least("eval.every_epochs", eval_config.every_epochs, 0, "0: only at the end of the run")
    configuration.check_choice("eval.tta_flip", eval_config.tta_flip, (False, True))


def check_config(config: ml_collections.ConfigDict) -> None:
    """The sections no builder checks as it reads them, each by its module, without devices, data or native code;
    one ConfigError line (`build` calls it, once a run, before a folder of images is read). The others are checked
    where they are read: `augment` by `augment.Augmentation.from_config` as `build` makes it (it needs the input
    shape), and `distributed` by `parallel.initialize_distributed`. What needs the run's length (schedule boundaries,
    warm-up) is checked by `optim.make_schedule`, and whether the kernels can run the dtype by `models.build_model`."""
    configuration.check_seed("seed", config.seed)
    models.check_config(config.model)
    data.check_config(config.data)
    check_train_config(config.train)
    optim.check_optimizer_config(config.optimizer)
    optim.check_schedule_config(config.schedule)
    check_eval_config(config.eval)
    checkpoint.check_config(config.checkpoint)
    finetune.check_config(config.finetune)


def summarize_eval(sums: dict[str, jax.Array], prefix: str = "test") -> dict[str, float]:
    """An evaluation's sums as means: `<prefix>_loss`, `_accuracy`, `_top5_accuracy` and `_examples`."""
    host = {key: float(value) for key, value in jax.device_get(sums).items()}
    count = max(host["count"], 1.0)
    return {
        f"{prefix}_loss": host["loss_sum"] / count,
        f"{prefix}_accuracy": host["correct"] / count,
        f"{prefix}_top5_accuracy": host["correct_top5"] / count,
        f"{prefix}_examples": host["count"],
    }


def chunk_sizes(
    steps_per_call: int, steps_per_epoch: int, total_steps: int, position: pipeline.DataPosition, step: int
) -> list[int]:
    """Every number of steps the loop runs in one call from `step` on, where the data stands at `position` (at most
    three distinct values), sorted."""
    # Each chunk must advance, or this loop (and the trainer's) would never end.
    if min(steps_per_call, steps_per_epoch, total_steps) < 1:
        raise ValueError(
            f"a train program of {steps_per_call} steps per call, {steps_per_epoch} an epoch and {total_steps} in "
            "all cannot run"
        )
    if not 0 <= position.step_in_epoch < steps_per_epoch:
        raise configuration.ConfigError(
            f"the run stopped at step {position.step_in_epoch} of an epoch, past this config's {steps_per_epoch} "
            "steps an epoch (was train.batch_size changed?); resume with the batch it ran with, or start over with "
            "--fresh"
        )
    sizes, in_epoch = set(), position.step_in_epoch
    while step < total_steps:
        count = min(steps_per_call, steps_per_epoch - in_epoch, total_steps - step)
        sizes.add(count)
        step, in_epoch = step + count, (in_epoch + count) % steps_per_epoch
    return sorted(sizes)


@dataclasses.dataclass
class Experiment:
    """Everything a run builds from its config before any data is read: what the trainer and every tool use."""

    config: ml_collections.ConfigDict
    mesh: jax.sharding.Mesh
    info: data.DatasetInfo
    input_shape: tuple[int, int, int]
    model: models.ResNet
    schedule: optax.Schedule
    tx: optax.GradientTransformationExtraArgs
    step_config: steps.StepConfig
    steps_per_epoch: int
    total_steps: int
    train_examples: int
    # ("train_eval", "validation", "test"): the train sample only with data.train_eval_size, validation only with
    # a validation split.
    eval_splits: tuple[str, ...]

    @property
    def eval_batch_per_device(self) -> int:
        """`eval.batch_size` over the devices, but no more than the largest evaluation split fills: rows past it
        would be padding, computed and thrown away (ImageNet's 1,000 on a folder of 200 images)."""
        largest = max((data.eval_split_size(self.config.data, split) for split in self.eval_splits), default=1)
        return max(1, math.ceil(min(self.config.eval.batch_size, largest) / self.mesh.devices.size))

    @property
    def steps_per_call(self) -> int:
        """`train.steps_per_call`, with 0 resolved for the mesh's platform (see TRAIN_DEFAULTS)."""
        if self.config.train.steps_per_call:
            return self.config.train.steps_per_call
        return 1 if self.mesh.devices.flat[0].platform == "cpu" or self.streamed else 50

    @property
    def log_every_steps(self) -> int:
        """The metric window the loop keeps: `train.log_every_steps` rounded up to whole calls of `steps_per_call`
        steps, as the loop reads the metrics between calls only (each epoch's end closes a window too)."""
        return math.ceil(self.config.train.log_every_steps / self.steps_per_call) * self.steps_per_call

    @property
    def stage_sums(self) -> tuple[str, ...]:
        """The metric window's gradient-flow keys (none with `train.gradient_flow` off)."""
        return steps.stage_sum_keys(models.stage_names(self.model)) if self.step_config.gradient_flow else ()

    def eval_split_rows(self, split: str = "test") -> tuple[int, int]:
        """A split's size, and its rows for evaluation: padded to whole global batches."""
        num_examples = data.eval_split_size(self.config.data, split)  # recorded by `build`
        global_batch = self.eval_batch_per_device * self.mesh.devices.size
        return num_examples, pipeline.eval_rows(num_examples, global_batch)

    def load_train_split(self) -> pipeline.DeviceSplit:
        """The training split on the mesh (this reads the data)."""
        loader = data.config_loader(self.config.data, "train", self.config.seed)
        return pipeline.put_split(loader, self.train_examples, self.train_examples, self.mesh)

    def load_eval_split(self, split: str = "test") -> tuple[pipeline.DeviceSplit, int]:
        """A split for evaluation, padded to whole global batches, on the mesh; and its true size (this reads)."""
        num_examples, rows = self.eval_split_rows(split)
        loader = data.config_loader(self.config.data, split, self.config.seed)
        return pipeline.put_split(loader, num_examples, rows, self.mesh), num_examples

    @property
    def streamed(self) -> bool:
        """Whether batches stream from files through Grain (`data.loader='grain'`) rather than from the devices."""
        return self.config.data.loader == "grain"

    def _local_batch(self, per_device: int) -> int:
        """A global batch's rows on this process's devices."""
        return per_device * sum(device.process_index == jax.process_index() for device in self.mesh.devices.flat)

    def open_listing(self) -> data.listing.Listing:
        """The grain loader's listing of the run's folder, checked against the run's record: one for all streams."""
        return data.config_listing(self.config.data)

    def open_train_stream(self, files: data.listing.Listing | None = None, start: int = 0) -> data.stream.TrainStream:
        """The grain loader's training batches of this process (its Grain workers start) from batch `start` on (one
        a step), from `files` (the run's listing; listed now when not given)."""
        per_device = self.config.train.batch_size // self.mesh.devices.size
        return data.config_train_stream(
            self.config.data,
            files or self.open_listing(),
            self.config.seed,
            self.train_examples,
            self._local_batch(per_device),
            self.steps_per_epoch,
            start,
        )

    def open_eval_stream(
        self, split: str = "test", files: data.listing.Listing | None = None
    ) -> data.stream.EvalStream:
        """The grain loader's padded, masked evaluation batches of this process for `split`, from `files` (the run's
        listing; listed now when not given)."""
        _, rows = self.eval_split_rows(split)
        local_batch = self._local_batch(self.eval_batch_per_device)
        return data.config_eval_stream(self.config.data, files or self.open_listing(), split, rows, local_batch)

    def fed_batch_shapes(self, steps: int, per_device: int) -> tuple[jax.ShapeDtypeStruct, jax.ShapeDtypeStruct]:
        """Shapes of `steps` stacked global batches of images and labels fed from the host (`steps` 0: one batch,
        unstacked), as `parallel.global_batches` places them."""
        batch = per_device * self.mesh.devices.size
        lead = (steps,) if steps else ()
        sharding = parallel.stacked_batch_sharded(self.mesh) if steps else parallel.batch_sharded(self.mesh)
        return (
            jax.ShapeDtypeStruct((*lead, batch, *self.input_shape), jnp.uint8, sharding=sharding),
            jax.ShapeDtypeStruct((*lead, batch), jnp.int32, sharding=sharding),
        )

    def lower_new_state(self) -> jax.stages.Lowered:
        """The init program, lowered: its `out_info` is the state's shapes, and `.compile()()` the state."""
        use_ema = self.config.train.ema_decay > 0
        return lower_train_state(self.model, self.tx, self.config.seed, self.input_shape, self.mesh, use_ema)

    def new_state(self) -> TrainState:
        return self.lower_new_state().compile()()

    def make_evaluate(self, tta_flip: bool | None = None, return_logits: bool = False) -> Callable:
        """`evaluate(variables, split) -> (sums, logits)` over every example of a padded split, in one dispatch."""
        flip = self.config.eval.tta_flip if tta_flip is None else tta_flip
        eval_step = steps.make_eval_step(self.step_config, self.model.apply, tta_flip=flip)
        return steps.make_evaluate(eval_step, self.mesh, self.eval_batch_per_device, return_logits)

    def make_evaluate_batch(self, tta_flip: bool | None = None, return_logits: bool = False) -> Callable:
        """`evaluate_batch(variables, sums, images, labels, mask) -> (sums, logits)` on one global batch fed from the
        host (`steps.evaluate_batches` runs a split's)."""
        flip = self.config.eval.tta_flip if tta_flip is None else tta_flip
        eval_step = steps.make_eval_step(self.step_config, self.model.apply, tta_flip=flip)
        return steps.make_evaluate_batch(eval_step, self.mesh, return_logits)

    def lower_fed_train_program(
        self,
        state: Any,
        chunks: Collection[int],
        scan: bool | None = None,
        compiler_options: dict[str, Any] | None = None,
    ) -> steps.TrainProgram:
        """`lower_train_program` for batches fed from the host (the grain loader): `train[n](state, totals, images,
        labels)` takes `n` stacked global batches (`fed_batch_shapes`), and there is no permutation program."""
        mesh = self.mesh
        scan = steps.scan_is_fast(mesh) if scan is None else scan
        window, learning_rate = self._lower_window_and_rate()
        train_step = steps.make_train_step(self.step_config)
        per_device = self.config.train.batch_size // mesh.devices.size
        train = {
            count: steps.lower_fed_train_steps(
                train_step,
                mesh,
                state,
                window.out_info,
                count,
                *self.fed_batch_shapes(count, per_device),
                scan,
                compiler_options,
            )
            for count in (sorted(chunks) if scan else [1])
        }
        return steps.TrainProgram(train, None, window, learning_rate, scan)

    def _lower_window_and_rate(self) -> tuple[jax.stages.Lowered, jax.stages.Lowered]:
        """The metric window's program (placed as the train programs give it back) and the logged rate's."""
        zero_totals = functools.partial(steps.zero_train_metrics, self.stage_sums)
        window = jax.jit(zero_totals, out_shardings=parallel.replicated(self.mesh)).lower()
        # The logged rate takes the step as a Python int, which jax makes a weakly typed int32.
        learning_rate = jax.jit(self.schedule).lower(jax.ShapeDtypeStruct((), jnp.int32, weak_type=True))
        return window, learning_rate

    def lower_train_program(
        self,
        state: Any,
        train_split: pipeline.DeviceSplit,
        chunks: Collection[int],
        scan: bool | None = None,
        compiler_options: dict[str, Any] | None = None,
    ) -> steps.TrainProgram:
        """The train program for `state` and `train_split` (arrays, or their shapes), lowered; `.compile()` gives
        the one the loop calls. `chunks` are the numbers of steps the loop runs in one call (`chunk_sizes`):
        scanned (`scan` defaults to `steps.scan_is_fast`), the program holds one for each; one step at a time, the
        one program of one step serves them all. `compiler_options` default as `steps.lower_train_steps`'s do (the
        tuned options for the mesh's platform; `{}` is XLA's own defaults)."""
        mesh, seed = self.mesh, self.config.seed
        scan = steps.scan_is_fast(mesh) if scan is None else scan
        rows_per_device = self.train_examples // mesh.devices.size

        def permutation(epoch: jax.Array) -> jax.Array:
            # The data key is derived inside: made eagerly, its four random ops would each compile on their own.
            data_key = jax.random.key_data(jax.random.fold_in(jax.random.key(seed), 1))
            return pipeline.epoch_permutation(data_key, epoch, rows_per_device, mesh)

        epoch = jax.ShapeDtypeStruct((), jnp.int32)
        # The shardings declared, so that the train programs are lowered for the permutation and the metric window
        # as they come (the window placed as the train programs give it back).
        shuffle = jax.jit(permutation, out_shardings=parallel.batch_sharded(mesh)).lower(epoch)
        window, learning_rate = self._lower_window_and_rate()
        train_step = steps.make_train_step(self.step_config)
        batch_per_device = self.config.train.batch_size // mesh.devices.size
        train = {
            count: steps.lower_train_steps(
                train_step,
                mesh,
                batch_per_device,
                state,
                window.out_info,
                train_split,
                shuffle.out_info,
                count,
                scan,
                compiler_options,
            )
            for count in (sorted(chunks) if scan else [1])
        }
        return steps.TrainProgram(train, shuffle, window, learning_rate, scan)


def build(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh | None = None) -> Experiment:
    """Checks the config, once, and builds model, optimizer, schedule and step settings; compiles nothing and reads
    no data, but for a folder of images that the config has not recorded yet (its classes and statistics: see
    `data.config_dataset_info`). `config` is left as it is: the experiment holds a copy, `Experiment.config`, which
    records the splits' sizes in `data.split_sizes` (and what a folder holds)."""
    config = config.copy_and_resolve_references()
    check_config(config)
    mesh = mesh or parallel.make_mesh()
    try:
        parallel.check_batch_divides(config.train.batch_size, mesh)
    except ValueError as error:
        raise configuration.ConfigError(str(error)) from None
    info = data.config_dataset_info(config.data)
    input_shape = data.config_input_shape(config.data)
    mean, std = data.config_normalization(config.data)
    model = models.build_model(config.model, info.num_classes)
    sizes = data.record_split_sizes(config.data)
    train_examples = pipeline.train_rows(sizes["train"], mesh)
    batch_per_device = config.train.batch_size // mesh.devices.size
    steps_per_epoch = train_examples // mesh.devices.size // batch_per_device
    if steps_per_epoch < 1:
        raise configuration.ConfigError(
            f"train.batch_size={config.train.batch_size} is larger than the training set ({train_examples} "
            f"examples{' on these devices' if mesh.devices.size > 1 else ''}); give at most {train_examples}"
        )
    total_steps = config.train.num_steps or config.train.num_epochs * steps_per_epoch
    schedule = optim.make_schedule(config.schedule, config.optimizer.learning_rate, total_steps, steps_per_epoch)
    step_config = steps.StepConfig(
        mean=mean,
        std=std,
        dtype=model.dtype,  # model.dtype=auto resolved once, by build_model
        augmentation=augment.Augmentation.from_config(config.augment, input_shape[0], config.train.batch_size),
        label_smoothing=config.train.label_smoothing,
        ema_decay=config.train.ema_decay,
        frozen_statistics=finetune.statistics_frozen(config.finetune),
        gradient_flow=config.train.gradient_flow,
    )
    return Experiment(
        config=config,
        mesh=mesh,
        info=info,
        input_shape=input_shape,
        model=model,
        schedule=schedule,
        tx=finetune.wrap_optimizer(optim.make_optimizer(config.optimizer, schedule), config.finetune),
        step_config=step_config,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        train_examples=train_examples,
        eval_splits=tuple(
            split
            for split, present in (
                (data.TRAIN_EVAL, config.data.train_eval_size > 0),
                (data.VALIDATION, sizes[data.VALIDATION] > 0),
                ("test", True),
            )
            if present
        ),
    )
