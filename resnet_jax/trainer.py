"""The training loop: epochs of on-device steps, evaluation, metrics, checkpoints, the non-finite policy and
pre-emption. `train_and_evaluate(config, workdir)` is the whole run; re-running the same command after a kill
resumes from the newest complete checkpoint.
"""

from __future__ import annotations

import logging
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
from jax.experimental import multihost_utils

from resnet_jax import checkpoint, data, experiment, finetune, lock, parallel, pipeline, record, startup, steps
from resnet_jax.best import best_values, better_best
from resnet_jax.configuration import ConfigError
from resnet_jax.metrics import MetricsError, MetricsWriteError, Progress
from resnet_jax.state import TrainState
from resnet_jax.workdir import WorkdirError, check_workdir, prepare_workdir, write_record

logger = logging.getLogger(__name__)

VALIDATION_ACCURACY = f"{data.VALIDATION}_accuracy"


class TrainingError(RuntimeError):
    """The run cannot go on: its values turned non-finite; the message says at which step, and what is kept."""


class Preempted(Exception):
    """Raised after SIGTERM/SIGINT once the state is saved; the same command resumes."""


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


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str | Path,
    mode: str = "resume",
    on_evaluation: Callable[[int, dict[str, float]], None] | None = None,
) -> dict[str, float]:
    """Trains and evaluates `config` in `workdir` (restart `mode`: resume, fresh or finetune); returns the final
    metrics: each split's (`validation_*` when the run has one, `test_*`), the step, and with a validation split
    `best_validation_accuracy` and `test_accuracy_at_best_validation` (see `best_values`).

    `on_evaluation(epoch, metrics)` is called after each evaluation, once its checkpoint is started; an exception
    it raises ends the run there (a sweep prunes a trial this way). Raises `Preempted` after a SIGTERM/SIGINT once
    a checkpoint is saved, `TrainingError` when its values turn non-finite, `CheckpointError` / `MetricsWriteError` /
    `WorkdirError` when a write fails (a full disk), and `ConfigError` / `DataError` / `MetricsError` on bad input,
    all before anything is lost.
    """
    if mode == "finetune" and config.finetune.source:
        raise ConfigError(
            f"--finetune starts from the weights of the run in --workdir, and finetune.source="
            f"{config.finetune.source!r} (--init-from) names others; give one: drop --init-from (or pass "
            "--config.finetune.source=) to start from the workdir's run, or --fresh instead of --finetune to archive "
            "it and start from the weights named"
        )
    path = check_workdir(workdir)
    parallel.initialize_distributed(config.distributed)
    previous = record.read_previous(path) if mode == "resume" else None
    # Built from the config as this run computes it (checked there, once); `built.config` is that config with what
    # the run records as it starts (the splits' sizes, and the draws' digests as the data is read).
    built = experiment.build(record.resolved(config, previous))
    asked, config = config, built.config
    ran = record.what_ran(built.model) | record.what_the_loop_runs(built)
    if previous is None:  # a new run, which reads the weights it starts from
        finetune.check_source(config.finetune.source)
    changed, reshaped = record.check_resume(
        previous, asked, config, ran, built.steps_per_epoch, built.total_steps, path
    )
    # Before the workdir is touched (a --fresh or --finetune run archives the old run) and before anything compiles:
    # offline, the run stops in seconds and the same command can be run again. Each process fetches into its own
    # part file, so processes that share the folder never write one file.
    data.fetch_if_asked(config.data, ".part" if jax.process_count() == 1 else f".part{jax.process_index()}")
    created = not path.exists()
    with lock.hold(path):  # one writer per workdir, from before a --fresh run archives the old one
        if mode == "resume" and record.read_previous(path) != previous:
            raise ConfigError(f"the run in {path} changed while this one started; run the same command again")
        if reshaped:
            logger.warning("%s", reshaped)
        try:
            archived = prepare_workdir(path, mode)
            if archived is not None:  # --finetune: the record names the archived run as the weights it starts from
                config.finetune.source = str(archived)
            ready = startup.start(built, path)
        except BaseException:
            # Refused in start-up (a --finetune with no run to start from, weights that cannot be read, data that
            # fails), a run leaves no folder it made, as one refused before it; removed while locked, so that no
            # other run can have begun in it. Process 0 made it (lock.hold), and removes it once every process has
            # stopped using it: a process that never comes (stopped elsewhere) leaves it in place.
            if parallel.all_reached("resnet_jax:refused") and created and jax.process_index() == 0:
                shutil.rmtree(path, ignore_errors=True)
            raise
        try:
            # Process 0 alone reads and writes these: the others learn here whether it could, and stop with it.
            with parallel.stop_together("resnet_jax:accepted", (MetricsError, MetricsWriteError, WorkdirError)):
                # Records past the restored step (or all, starting over) came from a run cut short: they log again. A
                # damaged metrics.jsonl refuses the run here, before its record is written.
                ready.writer.truncate_after(ready.restored_step)
                # The run is accepted: its record says what was asked, what runs, and what changed from which step.
                if jax.process_index() == 0:
                    if changed:
                        described = record.describe_changes(previous, config, changed)
                        logger.info("resumed with %s, from step %d", described, ready.restored_step)
                    run_record = record.make_record(previous, asked, config, ran, changed, ready.restored_step)
                    write_record(config, run_record, path)
            try:
                results = _Loop(built, ready, on_evaluation, mode).run()
            except MetricsWriteError as error:  # a full disk: the line says what became of the checkpoints too
                ready.checkpointer.wait()
                raise MetricsWriteError(
                    f"{error}; {ready.checkpointer.last_good()} in {ready.checkpointer.directory}"
                ) from error
        except BaseException as failure:
            ready.close_after(failure)
            raise
        ready.close()
    return results


class _Loop:
    """The epoch loop over a ready run; `run` is the loop itself, calling the programs start-up compiled."""

    def __init__(
        self,
        built: experiment.Experiment,
        ready: startup.Ready,
        on_evaluation: Callable[[int, dict[str, float]], None] | None,
        mode: str,
    ):
        self.config, self.ready, self.on_evaluation = built.config, ready, on_evaluation
        # The same command with --fresh or --finetune would archive the checkpoint it is told to resume from.
        self.resume_hint = (
            "run the same command to resume" if mode == "resume" else f"run the same command without --{mode} to resume"
        )
        self.mesh, self.streamed = built.mesh, built.streamed
        self.program, self.checkpointer, self.writer = ready.program, ready.checkpointer, ready.writer
        self.steps_per_call, self.log_every_steps = built.steps_per_call, built.log_every_steps
        self.steps_per_epoch, self.total_steps = built.steps_per_epoch, built.total_steps
        self.progress = Progress(built.total_steps, built.steps_per_epoch)

    def _log_train(self, totals: dict[str, jax.Array], step: int, window_start: float, epoch: int) -> None:
        host = {key: float(value) for key, value in jax.device_get(totals).items()}
        values = {}
        if host["count"] > 0:  # a window of only dropped steps has no loss
            values["train_loss"] = host["loss_sum"] / host["count"]
            values["train_accuracy"] = host["correct"] / host["count"]
            values["grad_norm"] = host["grad_norm_sum"] / (host["steps"] - host["nonfinite_steps"])
            values |= steps.stage_means(host)
        values["learning_rate"] = float(self.program.learning_rate(step - 1))
        values["images_per_second"] = host["examples"] / (time.perf_counter() - window_start)
        if host["nonfinite_steps"]:
            first = int(host["first_nonfinite_step"])
            values["nonfinite_steps"] = host["nonfinite_steps"]
            if self.config.train.on_nonfinite == "stop":
                self.writer.write(step, step / self.steps_per_epoch, values)
                latest = self.checkpointer.latest_step()
                kept = (
                    "no checkpoint was saved yet"
                    if latest is None
                    else f"the last checkpoint, step {latest}, is intact"
                )
                raise TrainingError(
                    f"non-finite loss or gradient at step {first} (epoch {epoch + 1}); stopped without applying it, "
                    f"and {kept} in {self.checkpointer.directory}. Resume with --config.train.on_nonfinite=skip to "
                    "drop such steps (recorded), or start over (--fresh) with a lower learning rate or "
                    "optimizer.clip_grad_norm."
                )
            logger.warning(
                "skipped %d step(s) with non-finite values, the first at step %d", host["nonfinite_steps"], first
            )
        self.writer.write(step, step / self.steps_per_epoch, values)
        self.progress.window(step, values)

    def _save(self, state: TrainState, step: int, position: pipeline.DataPosition, best: dict | None, metrics=None):
        meta = {"position": position.to_dict(), "step": step} | ({"best_validation": best} if best else {})
        items = None
        if self.streamed:  # the iterator's state is the position: it goes beside the train state
            items = {startup.DATA_ITEM: self.ready.train_split.save_args()}
            meta[startup.STREAM_WORKERS] = self.config.data.workers
            meta[startup.STREAM_START] = self.ready.train_split.start
            meta[startup.STREAM_PROCESSES] = jax.process_count()
        self.checkpointer.save(step, state.checkpoint_tree(), meta, metrics, items)

    def _preempted(self, stop: _StopRequests, state, step, position, best) -> Preempted:
        self._save(state, step, position, best)
        self.checkpointer.wait()
        return Preempted(f"{stop.signal_name}: saved checkpoint {step}; {self.resume_hint}")

    def _evaluate(self, state: TrainState) -> dict[str, float]:
        """Every evaluation split's metrics, `validation_*` and `test_*`."""
        values = {}
        for split, device_split in self.ready.eval_splits.items():
            evaluate, variables = self.ready.evaluations[split], state.eval_variables
            if self.streamed:
                sums, _ = steps.evaluate_batches(evaluate, variables, device_split.batches(), self.mesh)
            else:
                sums, _ = evaluate(variables, device_split)
            values |= experiment.summarize_eval(sums, prefix=split)
        return values

    def run(self) -> dict[str, float]:
        """Steps, logs, evaluations and checkpoints, epoch by epoch, to the run's end (or a stop); the final
        metrics."""
        ready, program, config = self.ready, self.program, self.config
        state, position, best = ready.state, ready.position, ready.best
        step = ready.restored_step  # the state's own step: a fine-tune starts at 0
        last_eval: dict[str, float] = {}
        with _StopRequests() as stop:
            epoch = position.epoch
            while step < self.total_steps:
                permutation = None if self.streamed else program.permutation(jnp.int32(epoch))
                in_epoch = position.step_in_epoch if epoch == position.epoch else 0
                self.progress.start_epoch(epoch, step, in_epoch)
                totals, window_start = program.zero_totals(), time.perf_counter()
                next_log = step + self.log_every_steps
                while in_epoch < self.steps_per_epoch and step < self.total_steps:
                    count = min(self.steps_per_call, self.steps_per_epoch - in_epoch, self.total_steps - step)
                    # Scanned, one call runs the chunk; else each step is a call of its own (dispatched without
                    # waiting, as the chunk's are).
                    per_call = count if program.scan else 1
                    # program.train[n] runs n steps of `train_step` (steps.make_train_step), lowered by
                    # Experiment.lower_train_program (lower_fed_train_program when streamed), compiled in startup.start.
                    for first in range(in_epoch, in_epoch + count, per_call):
                        if self.streamed:  # the next batches from the host, while the devices run the last ones
                            images, labels = ready.train_split.take(per_call)
                            fed = (
                                parallel.global_batches(images, self.mesh),
                                parallel.global_batches(labels, self.mesh),
                            )
                            state, totals = program.train[per_call](state, totals, *fed)
                        else:
                            state, totals = program.train[per_call](
                                state, totals, ready.train_split, permutation, jnp.int32(first)
                            )
                    in_epoch, step = in_epoch + count, step + count
                    self.progress.advance(count)
                    epoch_done = in_epoch == self.steps_per_epoch or step == self.total_steps
                    log_now = step >= next_log or epoch_done
                    if log_now:
                        self._log_train(totals, step, window_start, epoch)
                        totals, window_start = program.zero_totals(), time.perf_counter()
                        next_log = step + self.log_every_steps
                    if not epoch_done and stop.requested(agree=log_now):
                        raise self._preempted(stop, state, step, pipeline.DataPosition(epoch, in_epoch), best)
                self.progress.close()
                if in_epoch == self.steps_per_epoch:
                    epoch, in_epoch = epoch + 1, 0
                position = pipeline.DataPosition(epoch, in_epoch)
                finished = step >= self.total_steps
                evaluated = finished or (config.eval.every_epochs > 0 and epoch % config.eval.every_epochs == 0)
                metrics = None
                if evaluated:
                    last_eval = self._evaluate(state)
                    best = better_best(best, last_eval, step)
                    self.writer.write(step, step / self.steps_per_epoch, last_eval | best_values(best))
                    logger.info("epoch %d step %d: %s", epoch, step, describe_evaluation(last_eval))
                    if VALIDATION_ACCURACY in last_eval:  # the kept best follows validation; without it, none is kept
                        metrics = {checkpoint.BEST_METRIC: last_eval[VALIDATION_ACCURACY]}
                stopping = stop.requested()
                # A new best is saved whatever checkpoint.every_epochs says, so that the kept best is the best.
                new_best = metrics is not None and best is not None and best["step"] == step
                if finished or epoch % config.checkpoint.every_epochs == 0 or stopping or new_best:
                    self._save(state, step, position, best, metrics)
                if evaluated and self.on_evaluation is not None:
                    self.on_evaluation(epoch, last_eval)
                if stopping and not finished:
                    self.checkpointer.wait()
                    raise Preempted(f"{stop.signal_name}: saved checkpoint {step}; {self.resume_hint}")
        self.checkpointer.wait()
        if not last_eval:  # a finished run resumed: its last evaluation again
            last_eval = self._evaluate(state)
            best = better_best(best, last_eval, step)
        return last_eval | best_values(best) | {"step": step}


def describe_evaluation(values: dict[str, float]) -> str:
    """`validation accuracy 0.9012, loss 0.2810; test accuracy 0.8990, loss 0.2901` (the splits evaluated; the
    train sample first, as `train_eval`)."""
    return "; ".join(
        f"{split} accuracy {values[f'{split}_accuracy']:.4f}, loss {values[f'{split}_loss']:.4f}"
        for split in (data.TRAIN_EVAL, data.VALIDATION, "test")
        if f"{split}_accuracy" in values
    )
