"""A run's start-up: the state restored (or initialised, or fine-tuned), the data on the devices, and every program
the loop will call compiled ahead of time, side by side, while the data loads. `start` returns it all as `Ready`,
the compiled executables included: the loop calls them, and nothing traces or compiles once it runs.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax

from resnet_jax import checkpoint, finetune, models, parallel, pipeline, steps
from resnet_jax.experiment import Experiment, chunk_sizes
from resnet_jax.metrics import MetricsWriteError, MetricWriter
from resnet_jax.state import TrainState
from resnet_jax.steps import TrainProgram
from resnet_jax.workdir import CHECKPOINTS_DIR

if TYPE_CHECKING:
    from resnet_jax.data import stream

logger = logging.getLogger(__name__)

DATA_ITEM = "data"  # the grain loader's iterator state, an item of each checkpoint beside "state" and "meta"
STREAM_WORKERS = "data_workers"  # the meta's key of the Grain worker count whose iterator state the checkpoint holds
# The meta's key of the batch that stream began at: Grain's state counts batches from there (0 unless a resume with
# another worker count opened the stream at its step's batch).
STREAM_START = "data_start"
STREAM_PROCESSES = "data_processes"  # the meta's key of the process count whose iterator states the checkpoint holds


@dataclasses.dataclass
class Ready:
    """A run at the start of its loop: its data on the devices, its state initialised or restored, every program
    compiled, and the checkpointer and metric writer open (`close` closes them)."""

    state: TrainState
    position: pipeline.DataPosition
    # The evaluation of highest validation accuracy so far (`step`, `validation_accuracy`, `test_accuracy`); None
    # before one, and always for a run without a validation split.
    best: dict[str, float] | None
    restored_step: int  # the state's step: 0 when starting over or fine-tuning
    # On the devices, or with the grain loader (`Experiment.streamed`) this process's streams of batches.
    train_split: pipeline.DeviceSplit | stream.TrainStream
    eval_splits: dict[str, pipeline.DeviceSplit | stream.EvalStream]  # by name, as `Experiment.eval_splits`
    program: TrainProgram  # compiled
    # By split, as `eval_splits`: its compiled evaluation (`Experiment.make_evaluate`), one per padded split length;
    # streamed, the one program of one batch (`Experiment.make_evaluate_batch`).
    evaluations: dict[str, jax.stages.Compiled]
    checkpointer: checkpoint.Checkpointer
    writer: MetricWriter

    def close(self) -> None:
        """Closes the writer, the checkpointer and any streams (their Grain workers); the first error closing them is
        raised once all are tried."""
        errors = []
        streams = [split for split in (self.train_split, *self.eval_splits.values()) if hasattr(split, "close")]
        for resource in (self.writer, self.checkpointer, *streams):
            try:
                resource.close()
            except Exception as error:  # each must be tried: the other may still hold a save to finish
                errors.append(error)
        if errors:
            raise errors[0]

    def close_after(self, failure: BaseException) -> None:
        """Closes both after `failure` ended the run: an error closing them is logged, never raised over it."""
        try:
            self.close()
        except Exception as error:
            logger.warning("after %s, closing the run also failed: %s", type(failure).__name__, error)


def _log_window(experiment: Experiment) -> str:
    """`train metrics every 100 steps`, and where that is not what `train.log_every_steps` asked, why."""
    asked, window = experiment.config.train.log_every_steps, experiment.log_every_steps
    if asked == window:
        return f"train metrics every {window} steps"
    return (
        f"train metrics every {window} steps (train.log_every_steps={asked} rounded up to whole calls of "
        f"train.steps_per_call={experiment.steps_per_call})"
    )


def _timed_compile(lowered: Any) -> tuple[Any, float]:
    started = time.perf_counter()
    compiled = lowered.compile()
    return compiled, time.perf_counter() - started


def start(experiment: Experiment, workdir: Path) -> Ready:
    """Restores or initialises the state (a new run from the weights its `finetune.source` names, if any), loads the
    data and compiles every program the loop will call.

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
    opened: list[Any] = []  # the checkpointer, writer and streams: closed again if the start-up fails
    try:
        init_program = experiment.lower_new_state()
        initialized = compiler.submit(_timed_compile, init_program)
        abstract_state: TrainState = init_program.out_info
        split_rows = {split: experiment.eval_split_rows(split) for split in experiment.eval_splits}
        items = {}
        if experiment.streamed:
            from resnet_jax.data import stream  # Grain is imported by runs that stream only

            items = {DATA_ITEM: stream.checkpoint_handler()}
        checkpointer = checkpoint.Checkpointer(
            workdir / CHECKPOINTS_DIR, keep=config.checkpoint.keep, async_save=config.checkpoint.async_save, items=items
        )
        opened.append(checkpointer)
        position, best, step, weights = pipeline.DataPosition(), None, 0, None
        restored = checkpointer.restore_newest_good(checkpoint.abstract_tree(abstract_state.checkpoint_tree()))
        if restored is None and config.finetune.source:
            # A new run's first weights (a --finetune run's are the run it archived), read and checked against the
            # model's shapes here: weights it cannot use are refused before the data loads and the run is announced.
            weights = finetune.read_weights(config.finetune.source, abstract_state)
        if restored is not None:
            step, tree, meta = restored
            position = pipeline.DataPosition.from_dict(meta["position"])
            best = meta.get("best_validation")
            logger.info(
                "resumed from checkpoint %d (epoch %d, step %d of it)", step, position.epoch, position.step_in_epoch
            )
        # Lowering holds the GIL and compiling does not: lower here, compile in the threads.
        chunks = chunk_sizes(
            experiment.steps_per_call, experiment.steps_per_epoch, experiment.total_steps, position, step
        )
        # The loop's program.train[n], fed or resident: n steps of `train_step` (steps.make_train_step), compiled here.
        if experiment.streamed:
            lowered = experiment.lower_fed_train_program(abstract_state, chunks)
            train_compiles = lowered.map(functools.partial(compiler.submit, _timed_compile))
            batch = experiment.fed_batch_shapes(0, experiment.eval_batch_per_device)
            mask = jax.ShapeDtypeStruct(batch[1].shape, bool, sharding=batch[1].sharding)
            replicated = parallel.replicated(mesh)
            sums = jax.eval_shape(steps.zero_eval_sums)
            sums = jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=replicated), sums)
            evaluate_batch = experiment.make_evaluate_batch().lower(abstract_state.eval_variables, sums, *batch, mask)
            eval_compiles = {0: compiler.submit(_timed_compile, evaluate_batch)}  # one program for every split
            split_programs = dict.fromkeys(split_rows, 0)
        else:
            train_shapes = pipeline.abstract_split(experiment.train_examples, experiment.input_shape, mesh)
            lowered = experiment.lower_train_program(abstract_state, train_shapes, chunks)
            train_compiles = lowered.map(functools.partial(compiler.submit, _timed_compile))
            evaluate = experiment.make_evaluate()
            eval_compiles = {
                rows: compiler.submit(
                    _timed_compile,
                    evaluate.lower(
                        abstract_state.eval_variables, pipeline.abstract_split(rows, experiment.input_shape, mesh)
                    ),
                )
                for rows in sorted({rows for _, rows in split_rows.values()})  # one program per padded split length
            }
            split_programs = {split: rows for split, (_, rows) in split_rows.items()}
        data_started = time.perf_counter()
        if experiment.streamed:
            files = experiment.open_listing()
            # Grain restores an iterator state into the worker count that saved it only, and each process's into
            # the process count that saved them; with another, the stream starts at the batch the saved state stood
            # at: the step's (one batch a step).
            processes = jax.process_count()
            from_processes = restored is not None and meta.get(STREAM_PROCESSES, processes) != processes
            if from_processes:  # each process's shard is another part of the split now
                logger.warning(
                    "checkpoint %d holds the train stream of %d processes, and this run has %d: its shards differ, so "
                    "the batches from step %d on are not the ones the %d processes would have read",
                    step,
                    meta[STREAM_PROCESSES],
                    processes,
                    step,
                    meta[STREAM_PROCESSES],
                )
            from_step = from_processes or (
                restored is not None and meta.get(STREAM_WORKERS, config.data.workers) != config.data.workers
            )
            start = 0
            if restored is not None:  # Grain's saved state counts batches from the one its stream began at
                start = step if from_step else meta.get(STREAM_START, 0)
            train_split = experiment.open_train_stream(files, start=start)
            opened.append(train_split)
            if restored is not None and not from_step:
                checkpointer.restore_item(step, DATA_ITEM, train_split.restore_args())
            eval_splits = {}
            for split in experiment.eval_splits:
                eval_splits[split] = experiment.open_eval_stream(split, files)
                opened.append(eval_splits[split])
        else:
            train_split = experiment.load_train_split()
            eval_splits = {split: experiment.load_eval_split(split)[0] for split in experiment.eval_splits}
        data_seconds = time.perf_counter() - data_started
        logger.info(
            "%s (%s) on %s: %d train / %s examples, %s, %d steps/epoch, %d steps, %s",
            config.model.name,
            models.describe_computation(experiment.model),
            config.data.dataset,
            experiment.train_examples,
            " / ".join(f"{examples} {split}" for split, (examples, _) in split_rows.items()),
            "1 device" if mesh.devices.size == 1 else f"{mesh.devices.size} devices",
            experiment.steps_per_epoch,
            experiment.total_steps,
            _log_window(experiment),
        )
        # Process 0 alone opens the metric files: the others learn here whether it could, and stop with it.
        with parallel.stop_together("resnet_jax:metrics-opened", (MetricsWriteError,)):
            writer = MetricWriter(workdir)
        opened.append(writer)
        init_compiled, init_seconds = initialized.result()
        state = init_compiled()
        if restored is not None:
            state = state.replace_from_checkpoint(tree)
        elif weights is not None:
            state = finetune.start_weights(state, weights, config.finetune.source)
        program = train_compiles.map(lambda compiling: compiling.result()[0])
        evaluations = {split: eval_compiles[rows].result()[0] for split, rows in split_programs.items()}
        compile_seconds = (
            {"init": init_seconds}
            | {name: compiling.result()[1] for name, compiling in train_compiles.programs().items()}
            | {
                f"evaluation x{rows}" if rows else "evaluation batch": compiling.result()[1]
                for rows, compiling in eval_compiles.items()
            }
        )
        # Processes finish compiling at different times; the first cross-process step must not wait on a slow one
        # inside a collective with a short timeout (gloo's, on CPUs).
        parallel.barrier("resnet_jax:compiled")
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
    return Ready(state, position, best, step, train_split, eval_splits, program, evaluations, checkpointer, writer)
