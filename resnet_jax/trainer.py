"""The training loop: epochs of on-device steps, full evaluation, metrics, checkpoints, resume and pre-emption.

`train_and_evaluate(config, workdir)` is the whole run. It resumes from the newest complete checkpoint in
`workdir`, so re-running the same command after a kill continues where the last checkpoint left off.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import json
import logging
import math
import shutil
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.experimental import multihost_utils
from orbax.checkpoint import multihost as orbax_multihost

from resnet_jax import checkpoint as checkpoint_lib
from resnet_jax import configuration, data, models, optim, parallel, pipeline, steps
from resnet_jax.metrics import MetricWriter, Progress
from resnet_jax.state import TrainState, lower_train_state

logger = logging.getLogger(__name__)

RESTART_MODES = ("resume", "fresh", "finetune")


class TrainingError(RuntimeError):
    """The run cannot go on (non-finite values, a failed save); the message says what and where things stand."""


class Preempted(Exception):
    """Raised after SIGTERM/SIGINT once the state is saved; the same command resumes."""


@dataclasses.dataclass
class Experiment:
    """Everything a run builds from its config before the loop: used by the trainer and the tools."""

    config: ml_collections.ConfigDict
    mesh: jax.sharding.Mesh
    info: data.DatasetInfo
    input_shape: tuple[int, int, int]
    model: Any
    schedule: optax.Schedule
    step_config: steps.StepConfig
    steps_per_epoch: int
    total_steps: int
    train_examples: int

    @property
    def eval_batch_per_device(self) -> int:
        return max(1, math.ceil(self.config.eval.batch_size / self.mesh.devices.size))

    def eval_split_rows(self, split: str = "test") -> tuple[int, int]:
        """A split's size, and its rows for evaluation: padded to whole global batches."""
        num_examples = _split_size(self.config, split)
        global_batch = self.eval_batch_per_device * self.mesh.devices.size
        return num_examples, pipeline.eval_rows(num_examples, global_batch)

    def load_eval_split(self, split: str = "test") -> tuple[pipeline.DeviceSplit, int]:
        """A split for evaluation, padded to whole global batches, on the mesh; and its true size."""
        num_examples, rows = self.eval_split_rows(split)
        _fetch_official_files_if_asked(self.config)
        return pipeline.put_split(_loader(self.config, split), num_examples, rows, self.mesh), num_examples

    def lower_new_state(self) -> jax.stages.Lowered:
        """The init program, lowered: its `out_info` is the state's shapes, and `.compile()()` the state."""
        tx = optim.make_optimizer(
            self.config.optimizer.name,
            self.schedule,
            momentum=self.config.optimizer.momentum,
            nesterov=self.config.optimizer.nesterov,
            weight_decay=self.config.optimizer.weight_decay,
            decay_all_params=self.config.optimizer.decay_all_params,
            clip_grad_norm=self.config.optimizer.clip_grad_norm,
            b1=self.config.optimizer.b1,
            b2=self.config.optimizer.b2,
            eps=self.config.optimizer.eps,
        )
        use_ema = self.config.train.ema_decay > 0
        return lower_train_state(self.model, tx, self.config.seed, self.input_shape, self.mesh, use_ema)

    def new_state(self) -> TrainState:
        return self.lower_new_state().compile()()

    def make_evaluate(self, tta_flip: bool | None = None, return_logits: bool = False) -> Callable:
        flip = self.config.eval.tta_flip if tta_flip is None else tta_flip
        eval_step = steps.make_eval_step(self.step_config, self.model.apply, tta_flip=flip)
        return steps.make_evaluate(eval_step, self.mesh, self.eval_batch_per_device, return_logits)


def _fetch_official_files_if_asked(config: ml_collections.ConfigDict) -> None:
    """Downloads the official files `data.files_dir` lacks when `data.download` is set (a no-op once they are
    there). Every process fetches for itself, into its own part file: processes that share the folder never write
    one file, and each renames only a verified copy into place."""
    if config.data.source == "files" and config.data.get("download", False):
        part_suffix = ".part" if jax.process_count() == 1 else f".part{jax.process_index()}"
        mirror = config.data.get("download_mirror", "") or None
        data.fetch_official_files(config.data.dataset, config.data.files_dir, mirror, part_suffix)


def _loader(config: ml_collections.ConfigDict, split: str) -> Callable[[slice], data.SplitArrays]:
    """Reads given rows of a split, as the config says."""
    return lambda rows: data.load_split(
        config.data.dataset,
        split,
        rows=rows,
        source=config.data.source,
        files_dir=config.data.files_dir or None,
        data_dir=config.data.data_dir or None,
        image_size=config.data.image_size or None,
        channels=config.data.channels or None,
        synthetic_examples=config.data[f"synthetic_{split}_examples"],
        seed=config.seed,
    )


def _split_size(config: ml_collections.ConfigDict, split: str) -> int:
    return data.split_size(
        config.data.dataset,
        split,
        source=config.data.source,
        data_dir=config.data.data_dir or None,
        synthetic_examples=config.data[f"synthetic_{split}_examples"],
    )


def build_experiment(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh | None = None) -> Experiment:
    """Validates the config and builds model, schedule and step settings (no data is read, nothing compiles)."""
    configuration.validate(config)
    mesh = mesh or parallel.make_mesh()
    try:
        parallel.check_batch_divides(config.train.batch_size, mesh)
    except ValueError as error:
        raise configuration.ConfigError(str(error)) from None
    info = data.get_dataset_info(config.data.dataset)
    input_shape = data.input_shape(info, config.data.image_size or None, config.data.channels or None)
    mean, std = data.normalization(info, input_shape[-1], config.data.mean or None, config.data.std or None)
    overrides = {"dtype": config.model.dtype, "zero_init_residual": config.model.zero_init_residual}
    if config.model.shortcut:
        overrides["shortcut"] = config.model.shortcut
    if config.model.dropout_rate:
        overrides["dropout_rate"] = config.model.dropout_rate
    model = models.get_model(config.model.name, num_classes=info.num_classes, **overrides)
    train_examples = pipeline.train_rows(_split_size(config, "train"), mesh)
    steps_per_epoch = train_examples // mesh.devices.size // (config.train.batch_size // mesh.devices.size)
    if steps_per_epoch == 0:
        raise configuration.ConfigError(
            f"train.batch_size={config.train.batch_size} is larger than the training set ({train_examples})"
        )
    total_steps = config.train.num_steps or config.train.num_epochs * steps_per_epoch
    schedule = optim.make_schedule(
        config.schedule.name,
        config.optimizer.learning_rate,
        total_steps,
        boundaries=tuple(config.schedule.boundaries),
        decay_factor=config.schedule.decay_factor,
        warmup_steps=config.schedule.warmup_steps,
        warmup_mode=config.schedule.warmup_mode,
        warmup_factor=config.schedule.warmup_factor,
        end_factor=config.schedule.end_factor,
        pct_start=config.schedule.pct_start,
    )
    step_config = steps.StepConfig(
        mean=mean,
        std=std,
        dtype=models.get_dtype(config.model.dtype),
        crop_padding=config.augment.crop_padding,
        pad_mode=config.augment.pad_mode,
        flip=config.augment.flip,
        cutout_size=config.augment.cutout_size,
        label_smoothing=config.train.label_smoothing,
        ema_decay=config.train.ema_decay,
    )
    return Experiment(
        config, mesh, info, input_shape, model, schedule, step_config, steps_per_epoch, total_steps, train_examples
    )


def config_steps_per_call(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> int:
    """`train.steps_per_call`, with 0 resolved for the mesh's platform (see configuration.base_config)."""
    if config.train.steps_per_call:
        return config.train.steps_per_call
    return 1 if mesh.devices.flat[0].platform == "cpu" else 50


def summarize_eval(sums: dict[str, jax.Array], prefix: str = "test") -> dict[str, float]:
    host = {key: float(value) for key, value in jax.device_get(sums).items()}
    count = max(host["count"], 1.0)
    return {
        f"{prefix}_loss": host["loss_sum"] / count,
        f"{prefix}_accuracy": host["correct"] / count,
        f"{prefix}_top5_accuracy": host["correct_top5"] / count,
        f"{prefix}_examples": host["count"],
    }


def _timed_compile(lowered: Any) -> tuple[Any, float]:
    started = time.perf_counter()
    compiled = lowered.compile()
    return compiled, time.perf_counter() - started


def _wait_for_all_processes(name: str, timeout_s: int = 3600) -> None:
    """A barrier through JAX's coordination service (no device collectives, so no collective timeouts)."""
    if jax.process_count() > 1:
        orbax_multihost.get_barrier_sync_fn()(key=name, timeout_ms=timeout_s * 1000)


class _StopRequests:
    """Turns SIGTERM/SIGINT into a flag the loop checks at step boundaries (the old handlers come back after)."""

    def __init__(self):
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self):
        # Python lets only the main thread set handlers; elsewhere signals keep their default meaning.
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signal_name = signal.Signals(signum).name

    def requested(self, agree: bool = True) -> bool:
        """Whether to stop here. With several processes all must stop at the same step, so the flag is combined
        across them, but only where `agree` (at points every process reaches: log windows and epoch ends)."""
        local = self.signal_name is not None
        if jax.process_count() == 1:
            return local
        if not agree:
            return False
        return bool(np.any(multihost_utils.process_allgather(np.asarray(local))))

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def _archive_previous_run(workdir: Path) -> Path | None:
    """Moves a previous run's files into workdir/archive/<time>/ (nothing is deleted); returns that folder, or None
    when there was no run. Process 0 moves them; every process of a multi-process run gets the same folder."""
    names = [configuration.CONFIG_FILE, "metrics.jsonl", "checkpoints", "checkpoints_damaged", "tensorboard"]
    names += ["curves.png", "eval"]
    present = [workdir / name for name in names if (workdir / name).exists()]
    # Process 0's view and clock decide, so that no process looks while another moves, and all name one folder.
    days, seconds, any_present = multihost_utils.broadcast_one_to_all(
        np.array([*divmod(int(time.time()), 86_400), len(present) > 0], np.int32)  # int32: jax's default width
    )
    if not any_present:
        return None
    target = workdir / "archive" / time.strftime("%Y%m%d-%H%M%S", time.localtime(int(days) * 86_400 + int(seconds)))
    if jax.process_index() == 0:
        target.mkdir(parents=True)
        for path in present:
            shutil.move(str(path), str(target / path.name))
    _wait_for_all_processes("resnet_jax:archived")
    return target


def _prepare_workdir(config: ml_collections.ConfigDict, workdir: Path, mode: str) -> Path | None:
    """Refuses to mix a different model/data run into `workdir`; archives it for fresh/finetune. Returns the
    archived checkpoint folder (finetune's source) or None."""
    config_path = workdir / configuration.CONFIG_FILE
    if mode == "resume" and config_path.exists():
        try:
            previous = json.loads(config_path.read_text())
        except (OSError, ValueError) as error:
            raise configuration.ConfigError(
                f"{config_path} is damaged ({error}), so this run cannot be checked against it; delete it to resume "
                "with the config given, or pass --fresh to archive the run and start over"
            ) from None
        differences = configuration.identity_differences(previous, config.to_dict())
        if differences:
            raise configuration.ConfigError(
                f"--workdir={str(workdir)!r} holds a run with a different model/data config "
                f"({'; '.join(differences)}); pass --fresh to archive it and start over, --finetune to start from "
                "its weights, or use another workdir"
            )
    archived = _archive_previous_run(workdir) if mode in ("fresh", "finetune") else None
    if mode == "finetune" and (archived is None or not (archived / "checkpoints").exists()):
        raise configuration.ConfigError(f"--finetune: --workdir={str(workdir)!r} holds no checkpoint to start from")
    if jax.process_index() == 0:
        configuration.write_json(config, config_path)
    return archived / "checkpoints" if archived is not None else None


def _finetune_start(state: TrainState, source: Path) -> TrainState:
    """Takes params and batch_stats from the newest good checkpoint in `source` wherever shapes agree."""
    restored = checkpoint_lib.Checkpointer(source, async_save=False, create=False).restore_newest_good(None)
    if restored is None:
        raise configuration.ConfigError(f"--finetune: no readable checkpoint in {source}")
    _, tree, _ = restored

    def pick(new, old, path=""):
        if new.shape == old.shape:
            # Each process holds the whole restored array; it fills its own devices' shards of the global one.
            host = np.asarray(old, new.dtype)
            return jax.make_array_from_callback(new.shape, new.sharding, lambda index: host[index])
        logger.warning(
            "fine-tune: %s has shape %s in the checkpoint, %s now; it starts fresh", path, old.shape, new.shape
        )
        return new

    params = jax.tree_util.tree_map_with_path(
        lambda p, n, o: pick(n, o, jax.tree_util.keystr(p)), state.params, tree["params"]
    )
    stats = jax.tree.map(pick, state.batch_stats, tree["batch_stats"])
    return state.replace(params=params, batch_stats=stats)


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str | Path,
    mode: str = "resume",
    on_evaluation: Callable[[int, dict[str, float]], None] | None = None,
) -> dict[str, float]:
    """Trains and evaluates `config` in `workdir`; returns the final metrics.

    `on_evaluation(epoch, metrics)` is called after each evaluation, once its checkpoint is started; an exception
    it raises ends the run there (a sweep prunes a trial this way). Raises `Preempted` after a SIGTERM/SIGINT once
    a checkpoint is saved, `TrainingError` when training cannot go on, and `ConfigError` / `DataError` on bad
    input, all before anything is lost.
    """
    if mode not in RESTART_MODES:
        raise configuration.ConfigError(f"restart mode {mode!r} is not known; allowed: {', '.join(RESTART_MODES)}")
    configuration.validate(config)
    workdir = configuration.check_workdir(workdir)
    parallel.initialize_distributed(
        config.distributed.coordinator_address, config.distributed.num_processes, config.distributed.process_id
    )
    experiment = build_experiment(config)
    # Before the workdir is touched (a --fresh or --finetune run archives the old run) and before anything compiles:
    # offline, the run stops in seconds and the same command can be run again.
    _fetch_official_files_if_asked(config)
    finetune_source = _prepare_workdir(config, workdir, mode)
    loop = _TrainLoop(experiment, on_evaluation)
    ready = _start_up(experiment, loop, workdir, finetune_source)
    # Records past the restored step (or all, starting over) came from a run that was cut short: they log again.
    ready.writer.truncate_after(ready.restored_step)
    try:
        results = loop.run(ready)
    finally:
        ready.writer.close()
        ready.checkpointer.close()
    if jax.process_index() == 0:
        from resnet_jax import plots

        plots.write_curves(workdir, workdir / "curves.png")
    return results


@dataclasses.dataclass
class _Ready:
    """A run at the start of its loop: its data on the devices, its state initialised or restored, every program
    compiled."""

    state: TrainState
    position: pipeline.DataPosition
    best_accuracy: float
    restored_step: int  # the state's step: 0 when starting over or fine-tuning
    train_split: pipeline.DeviceSplit
    test_split: pipeline.DeviceSplit
    checkpointer: checkpoint_lib.Checkpointer
    writer: MetricWriter


def _start_up(experiment: Experiment, loop: _TrainLoop, workdir: Path, finetune_source: Path | None) -> _Ready:
    """Restores or initialises the state, loads the data and compiles every program `loop` will call.

    Programs compile from shapes alone, and XLA compiles without holding the GIL: the init program compiles while
    this thread restores a checkpoint, and the train and evaluation programs while it loads the data and opens the
    metric writer. On the CPU the programs also compile side by side. An accelerator's compiles take turns, since
    each autotunes its kernels by timing them on the device (the data upload can still add noise to those timings).
    """
    started = time.perf_counter()
    config, mesh = experiment.config, experiment.mesh
    on_cpu = mesh.devices.flat[0].platform == "cpu"
    compiler = concurrent.futures.ThreadPoolExecutor(
        max_workers=4 if on_cpu else 1, thread_name_prefix="resnet_jax-compile"
    )
    opened: list[checkpoint_lib.Checkpointer | MetricWriter] = []  # closed again if the start-up fails
    try:
        init_program = experiment.lower_new_state()
        initialized = compiler.submit(_timed_compile, init_program)
        abstract_state: TrainState = init_program.out_info
        test_examples, test_rows = experiment.eval_split_rows("test")
        checkpointer = checkpoint_lib.Checkpointer(
            workdir / "checkpoints", keep=config.checkpoint.keep, async_save=config.checkpoint.async_save
        )
        opened.append(checkpointer)
        position, best_accuracy, step = pipeline.DataPosition(), -1.0, 0
        restored = checkpointer.restore_newest_good(checkpoint_lib.abstract_tree(abstract_state.checkpoint_tree()))
        if restored is not None:
            step, tree, meta = restored
            position = pipeline.DataPosition.from_dict(meta["position"])
            best_accuracy = meta.get("best_test_accuracy", best_accuracy)
            logger.info(
                "resumed from checkpoint %d (epoch %d, step %d of it)", step, position.epoch, position.step_in_epoch
            )
        programs = loop.compile_programs(
            compiler,
            abstract_state,
            pipeline.abstract_split(experiment.train_examples, experiment.input_shape, mesh),
            pipeline.abstract_split(test_rows, experiment.input_shape, mesh),
            position,
            step,
        )
        data_started = time.perf_counter()
        train_split = pipeline.put_split(
            _loader(config, "train"), experiment.train_examples, experiment.train_examples, mesh
        )
        test_split = pipeline.put_split(_loader(config, "test"), test_examples, test_rows, mesh)
        data_seconds = time.perf_counter() - data_started
        logger.info(
            "%s on %s: %d train / %d test examples, %d devices, %d steps/epoch, %d steps",
            config.model.name,
            config.data.dataset,
            experiment.train_examples,
            test_examples,
            mesh.devices.size,
            experiment.steps_per_epoch,
            experiment.total_steps,
        )
        writer = MetricWriter(workdir)
        opened.append(writer)
        init_compiled, init_seconds = initialized.result()
        state = init_compiled()
        if restored is not None:
            state = state.replace_from_checkpoint(tree)
        elif finetune_source is not None:
            state = _finetune_start(state, finetune_source)
        compile_seconds = {"init": init_seconds} | {name: done.result()[1] for name, done in programs.items()}
        # Processes finish compiling at different times; the first cross-process step must not wait on a slow one
        # inside a collective with a short timeout (gloo's, on CPUs).
        _wait_for_all_processes("resnet_jax:compiled")
    except BaseException:
        for resource in reversed(opened):
            resource.close()
        raise
    finally:
        compiler.shutdown(cancel_futures=True)
    logger.info(
        "start-up took %.1f s, data %.1f s; compile seconds (%s): %s",
        time.perf_counter() - started,
        data_seconds,
        "side by side" if on_cpu else "one at a time",
        ", ".join(f"{name} {seconds:.1f}" for name, seconds in compile_seconds.items()),
    )
    return _Ready(state, position, best_accuracy, step, train_split, test_split, checkpointer, writer)


class _TrainLoop:
    """The epoch loop's moving parts; `run` is the loop itself."""

    def __init__(self, experiment: Experiment, on_evaluation: Callable[[int, dict[str, float]], None] | None):
        self.experiment = experiment
        self.on_evaluation = on_evaluation
        self.config = experiment.config
        mesh = experiment.mesh
        batch_per_device = self.config.train.batch_size // mesh.devices.size
        self.train_loop = steps.make_train_loop(steps.make_train_step(experiment.step_config), mesh, batch_per_device)
        self.evaluate = experiment.make_evaluate()
        rows_per_device = experiment.train_examples // mesh.devices.size
        seed = self.config.seed

        def permutation(epoch: jax.Array) -> jax.Array:
            # The data key is derived inside: made eagerly, its four random ops would each compile on their own.
            data_key = jax.random.key_data(jax.random.fold_in(jax.random.key(seed), 1))
            return pipeline.epoch_permutation(data_key, epoch, rows_per_device, mesh)

        # Its sharding declared, so that its abstract value (to compile the loop ahead of time) carries it.
        self.permutation = jax.jit(permutation, out_shardings=parallel.batch_sharded(mesh))
        self.progress = Progress(experiment.total_steps, experiment.steps_per_epoch)
        # Placed like the loop's outputs, so that feeding them back in never retraces the loop.
        self.zero_totals = jax.jit(steps.zero_train_metrics, out_shardings=parallel.replicated(mesh))
        # One program for the logged learning rate, not a dozen eager ops (each compiled on its first use).
        self.learning_rate = jax.jit(experiment.schedule)
        self.steps_per_call = config_steps_per_call(self.config, mesh)

    def _epoch_float(self, step: int) -> float:
        return step / self.experiment.steps_per_epoch

    def _log_train(self, totals, step: int, window_start: float, epoch: int) -> dict[str, float]:
        host = {key: float(value) for key, value in jax.device_get(totals).items()}
        seconds = time.perf_counter() - window_start
        values = {}
        trained_steps = host["steps"] - host["nonfinite_steps"]
        if trained_steps > 0:
            values["train_loss"] = host["loss_sum"] / (host["count"] * trained_steps / host["steps"])
            values["train_accuracy"] = host["correct"] / host["count"]
            values["grad_norm"] = host["grad_norm_sum"] / trained_steps
        values["learning_rate"] = float(self.learning_rate(step - 1))
        values["images_per_second"] = host["count"] / seconds
        if host["nonfinite_steps"]:
            first = int(host["first_nonfinite_step"])
            values["nonfinite_steps"] = host["nonfinite_steps"]
            if self.config.train.on_nonfinite == "stop":
                self.writer.write(step, self._epoch_float(step), values)
                latest = self.checkpointer.latest_step()
                kept = (
                    "no checkpoint was saved yet"
                    if latest is None
                    else f"the last checkpoint, step {latest}, is intact"
                )
                raise TrainingError(
                    f"non-finite loss or gradient at step {first} (epoch {epoch + 1}); stopped without applying it, "
                    f"and {kept} in {self.checkpointer.directory}. Lower the learning rate, set "
                    "optimizer.clip_grad_norm, or set train.on_nonfinite=skip to drop such steps."
                )
            logger.warning(
                "skipped %d step(s) with non-finite values, the first at step %d", host["nonfinite_steps"], first
            )
        self.writer.write(step, self._epoch_float(step), values)
        self.progress.window(step, values)
        return values

    def _save(self, state: TrainState, step: int, position: pipeline.DataPosition, best: float, metrics=None):
        meta = {"position": position.to_dict(), "best_test_accuracy": best, "step": step}
        self.checkpointer.save(step, state.checkpoint_tree(), meta, metrics)

    def _chunk_sizes(self, position: pipeline.DataPosition, step: int) -> set[int]:
        """Every `num_steps` the loop will dispatch from here on (at most three distinct values)."""
        sizes, in_epoch = set(), position.step_in_epoch
        while step < self.experiment.total_steps:
            count = min(
                self.steps_per_call, self.experiment.steps_per_epoch - in_epoch, self.experiment.total_steps - step
            )
            sizes.add(count)
            step, in_epoch = step + count, (in_epoch + count) % self.experiment.steps_per_epoch
        return sizes

    def compile_programs(
        self,
        compiler: concurrent.futures.Executor,
        state: TrainState,
        train_split: pipeline.DeviceSplit,
        test_split: pipeline.DeviceSplit,
        position: pipeline.DataPosition,
        step: int,
    ) -> dict[str, concurrent.futures.Future]:
        """Lowers, here, every program the run will call from `step` on, and compiles each in `compiler`'s threads:
        the train loop (for each chunk length when it scans), the evaluation, the epoch permutation and the metric
        window. Returns their futures by name; each gives `(compiled, seconds)`.

        The arguments may be abstract (`jax.ShapeDtypeStruct`s with shardings), and here every other one is: a
        program compiled from shapes serves every later call with those shapes. Lowering holds the GIL and
        compiling does not, so the lowering is done here, unslowed by the threads' Python.
        """
        scalar = jax.ShapeDtypeStruct((), jnp.int32)
        permutation = jax.eval_shape(self.permutation, scalar)
        totals = jax.eval_shape(self.zero_totals)
        counts = sorted(self._chunk_sizes(position, step))
        scan = self.train_loop.scan

        def train(count: int) -> Callable[[], Any]:
            return functools.partial(self.train_loop.lower, state, totals, train_split, permutation, scalar, count)

        # Stepping one dispatch at a time, every chunk length runs the same one-step program: compile it once.
        lowerings = {
            (f"train x{count}" if scan else "train step"): train(count) for count in counts[: None if scan else 1]
        }
        lowerings |= {
            "evaluation": functools.partial(self.evaluate.lower, state.eval_variables, test_split),
            "permutation": functools.partial(self.permutation.lower, scalar),
            "metric window": self.zero_totals.lower,
        }
        return {name: compiler.submit(_timed_compile, lower()) for name, lower in lowerings.items()}

    def run(self, ready: _Ready) -> dict[str, float]:
        self.checkpointer, self.writer = ready.checkpointer, ready.writer
        self.train_split, self.test_split = ready.train_split, ready.test_split
        state, position, best_accuracy = ready.state, ready.position, ready.best_accuracy
        experiment, config = self.experiment, self.config
        steps_per_epoch, total_steps = experiment.steps_per_epoch, experiment.total_steps
        step = ready.restored_step  # the state's own step: a fine-tune starts at 0
        last_eval: dict[str, float] = {}
        with _StopRequests() as stop:
            epoch = position.epoch
            while step < total_steps:
                permutation = self.permutation(jnp.int32(epoch))
                in_epoch = position.step_in_epoch if epoch == position.epoch else 0
                self.progress.start_epoch(epoch, step, in_epoch)
                totals, window_start, next_log = self.zero_totals(), time.perf_counter(), step
                next_log += config.train.log_every_steps
                while in_epoch < steps_per_epoch and step < total_steps:
                    count = min(self.steps_per_call, steps_per_epoch - in_epoch, total_steps - step)
                    state, totals = self.train_loop(
                        state, totals, self.train_split, permutation, jnp.int32(in_epoch), count
                    )
                    in_epoch += count
                    step += count
                    self.progress.advance(count)
                    epoch_done = in_epoch == steps_per_epoch or step == total_steps
                    log_now = step >= next_log or epoch_done
                    if log_now:
                        self._log_train(totals, step, window_start, epoch)
                        totals, window_start = self.zero_totals(), time.perf_counter()
                        next_log = step + config.train.log_every_steps
                    if not epoch_done and stop.requested(agree=log_now):
                        self._save(state, step, pipeline.DataPosition(epoch, in_epoch), best_accuracy)
                        self.checkpointer.wait()
                        raise Preempted(f"{stop.signal_name}: saved checkpoint {step}; run the same command to resume")
                self.progress.close()
                if in_epoch == steps_per_epoch:
                    epoch, in_epoch = epoch + 1, 0
                position = pipeline.DataPosition(epoch, in_epoch)
                finished = step >= total_steps
                metrics = None
                if finished or epoch % config.eval.every_epochs == 0:
                    sums, _ = self.evaluate(state.eval_variables, self.test_split)
                    last_eval = summarize_eval(sums)
                    best_accuracy = max(best_accuracy, last_eval["test_accuracy"])
                    self.writer.write(step, self._epoch_float(step), last_eval | {"best_test_accuracy": best_accuracy})
                    logger.info(
                        "epoch %d step %d: test accuracy %.4f, loss %.4f",
                        epoch,
                        step,
                        last_eval["test_accuracy"],
                        last_eval["test_loss"],
                    )
                    metrics = {checkpoint_lib.BEST_METRIC: last_eval["test_accuracy"]}
                stopping = stop.requested()
                if finished or epoch % config.checkpoint.every_epochs == 0 or stopping:
                    self._save(state, step, position, best_accuracy, metrics)
                if metrics is not None and self.on_evaluation is not None:
                    self.on_evaluation(epoch, last_eval)
                if stopping and not finished:
                    self.checkpointer.wait()
                    raise Preempted(f"{stop.signal_name}: saved checkpoint {step}; run the same command to resume")
        self.checkpointer.wait()
        if not last_eval:
            sums, _ = self.evaluate(state.eval_variables, self.test_split)
            last_eval = summarize_eval(sums)
        return last_eval | {"best_test_accuracy": max(best_accuracy, last_eval["test_accuracy"]), "step": step}
