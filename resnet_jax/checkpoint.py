"""Checkpoints with orbax: asynchronous saves, the last N kept plus the best by validation accuracy, restores that
survive damage, and the weight transplant that starts a run from another one's weights. A checkpoint holds the train
state's arrays (`state`) and a small JSON record (`meta`: data position, the best evaluation, state format).
"""

from __future__ import annotations

import errno
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from resnet_jax import best, configuration, errors, parallel

# A failed save's temporary folders: removed up to this many times, this long apart, until they stay gone.
UNFINISHED_SAVE_REMOVALS = 5
UNFINISHED_SAVE_SETTLE_SECONDS = 0.2
# The metric a save records for the kept best (`best.score` ranks by it): a run without a validation split keeps none.
BEST_METRIC = best.VALIDATION_ACCURACY
DEFAULTS = {"every_epochs": 1, "keep": 3, "async_save": True}
# The train state's layout in `meta["state_format"]`. 2: the learning rate is applied at the state's step by a
# stateless transform (earlier checkpoints kept optax's schedule count in the optimizer state).
STATE_FORMAT = 2
# Errors that say the storage could not be read just now, not that the checkpoint is damaged.
TRANSIENT_ERRNOS = {errno.EIO, errno.EAGAIN, errno.ETIMEDOUT, errno.EACCES, errno.EPERM, errno.ESTALE, errno.EBUSY}
# Errors that say this code cannot read a sound checkpoint (an incompatible orbax or project version).
VERSION_ERRORS = (TypeError, AttributeError, ImportError, NameError, NotImplementedError)

logger = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """No usable checkpoint, or one that cannot be written; the message names what and why."""


class CheckpointRefused(CheckpointError):
    """Sound weights that this command cannot use as asked (another state's layout, no weights that fit): bad
    input, fixed by changing the command, where a CheckpointError alone is storage that failed."""


def check_config(checkpoint_config: ml_collections.ConfigDict) -> None:
    configuration.check_positive("checkpoint.every_epochs", checkpoint_config.every_epochs, integer=True)
    configuration.check_positive("checkpoint.keep", checkpoint_config.keep, integer=True)
    configuration.check_choice("checkpoint.async_save", checkpoint_config.async_save, (False, True))


class Checkpointer:
    """Saves and restores `{"state": pytree, "meta": json}` under `directory` with an orbax CheckpointManager, and
    with `items`, more items by their orbax handlers (the grain loader's iterator state, as "data")."""

    def __init__(
        self,
        directory: str | Path,
        keep: int = 3,
        async_save: bool = True,
        create: bool = True,
        items: dict[str, Any] | None = None,
    ):
        self.directory = Path(directory).absolute()
        policy = checkpoint_managers.AnyPreservationPolicy(
            [
                checkpoint_managers.LatestN(n=keep),
                checkpoint_managers.BestN(get_metric_fn=best.score, n=1, keep_checkpoints_without_metrics=False),
            ]
        )
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policy,
            # best_fn also makes orbax write each step's metrics to disk, so the best survives a restart.
            best_fn=best.score,
            best_mode="max",
            enable_async_checkpointing=async_save,
            create=create,
            # A save cut short (kill -9, full disk) leaves a *.orbax-checkpoint-tmp folder: never a checkpoint.
            cleanup_tmp_directories=create,
        )
        handlers = {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler(), **(items or {})}
        self._save_failed = False
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def best_step(self) -> int | None:
        """The step with the highest validation accuracy among the checkpoints that recorded one (`best.score`); None
        when none did (a run without a validation split)."""
        step = self.manager.best_step()
        return step if step is not None and BEST_METRIC in (self.manager.metrics(step) or {}) else None

    def save(
        self,
        step: int,
        state_tree: Any,
        meta: dict[str, Any],
        metrics: dict[str, float] | None = None,
        items: dict[str, Any] | None = None,
    ) -> None:
        """Starts an asynchronous save; the previous one is finished first. A step already saved is skipped.
        `items` are the save arguments of the items the checkpointer was made with."""
        # orbax would finish the previous save inside its save and raise that save's failure from there, unreported.
        self.wait()
        if step in self.manager.all_steps():
            return
        meta = meta | {"state_format": STATE_FORMAT}
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state_tree), meta=ocp.args.JsonSave(meta), **(items or {})
        )
        try:
            self.manager.save(step, args=args, metrics=metrics)
        except OSError as error:
            raise CheckpointError(f"cannot write checkpoint {step} under {self.directory}: {error}") from error

    def wait(self) -> None:
        """Blocks until pending saves are on disk; raises a clear error when one failed (disk full, read-only)."""
        # orbax logs a failed save's traceback before it raises the error, which this reports once, in one line.
        absl_logger, tracebacks = logging.getLogger("absl"), _DropTracebacks()
        absl_logger.addFilter(tracebacks)
        try:
            self.manager.wait_until_finished()
        except Exception as error:
            self._save_failed = True
            raise CheckpointError(
                f"saving a checkpoint under {self.directory} failed: {errors.one_line(error)}. Earlier "
                f"checkpoints are untouched: {self.last_good()}."
            ) from error
        finally:
            absl_logger.removeFilter(tracebacks)

    def _remove_unfinished_saves(self) -> None:
        """Deletes the temporary folders of saves that failed (once orbax's writers have stopped): orbax never
        makes a checkpoint of them. Writes it abandoned can still land for a moment after it stops (tensorstore
        finishes them), so the folders are removed until they stay gone."""
        if jax.process_index() != 0:
            return
        for _ in range(UNFINISHED_SAVE_REMOVALS):
            if not self.directory.is_dir() or not ocp.path.step.tmp_checkpoints(self.directory):
                return
            for name in ocp.path.step.tmp_checkpoints(self.directory):
                shutil.rmtree(self.directory / name, ignore_errors=True)
            time.sleep(UNFINISHED_SAVE_SETTLE_SECONDS)

    def complete_steps(self) -> list[int]:
        """The steps whose checkpoints are complete on disk (orbax gives a save its step's name once it is)."""
        if not self.directory.is_dir():
            return []
        return sorted(int(path.name) for path in self.directory.iterdir() if path.name.isdigit())

    def last_good(self) -> str:
        """Where the run stands after a failure, for its one line: `the last good checkpoint is N`."""
        complete = self.complete_steps()
        return f"the last good checkpoint is {complete[-1]}" if complete else "no checkpoint was completed"

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
        """Restores one step into `abstract_state`'s shapes and shardings (None: as saved, on one local device)."""
        if abstract_state is None:
            # As saved, but onto this process's first device, whatever topology wrote it.
            device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
            abstract_state = jax.tree.map(
                lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=device),
                self.manager.item_metadata(step)["state"],
            )
        args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore())
        restored = self.manager.restore(step, args=args)
        return restored.state, dict(restored.meta)

    def restore_item(self, step: int, name: str, args: Any) -> None:
        """Restores one of the items the checkpointer was made with (its restore arguments `args`); a checkpoint
        without it is refused in one line."""
        if not (self.directory / str(step) / name).is_dir():
            raise CheckpointRefused(
                f"checkpoint {step} in {self.directory} holds no {name!r} item (it was written by a run that did not "
                f"save one), so this run cannot resume from it: pass --fresh to start over"
            )
        self.manager.restore(step, args=ocp.args.Composite(**{name: args}))

    def restore_meta(self, step: int) -> dict[str, Any]:
        return dict(self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta)

    def _check_restorable(self, step: int, abstract_state: Any) -> None:
        """Refuses, in one line that says how to go on, a sound checkpoint that holds another kind of state."""
        if self.restore_meta(step).get("state_format", 1) != STATE_FORMAT:
            raise CheckpointRefused(
                f"checkpoint {step} in {self.directory} was written by an earlier resnet-jax whose optimizer state is "
                "laid out differently, so it cannot resume: pass --finetune to start from its weights, or --fresh "
                "to start over (resnet-jax evaluate, predict and export still read it)"
            )
        saved = self.manager.item_metadata(step)["state"]
        if _layout(saved) != _layout(abstract_state):
            raise CheckpointRefused(
                f"checkpoint {step} in {self.directory} holds a different train state than this config builds "
                f"(leaves per part: saved {_layout(saved)}, now {_layout(abstract_state)}): the optimizer or "
                "train.ema_decay changed. Restore the old setting, or pass --fresh or --finetune."
            )

    def restore_newest_good(self, abstract_state: Any) -> tuple[int, Any, dict[str, Any]] | None:
        """Restores the newest checkpoint that reads back whole into `abstract_state` (None: as saved), or returns
        None when there is none.

        Only damage (missing, truncated or garbled files) makes a checkpoint be skipped, with a warning naming it,
        and set aside in `checkpoints_damaged/`. A read that fails for a passing reason (an I/O error), or because
        this code cannot read it (another orbax version), or a sound checkpoint of another kind of state, stops
        with a CheckpointError that leaves everything in place.
        """
        skipped = []
        for step in reversed(self.steps()):
            try:
                if abstract_state is not None:
                    self._check_restorable(step, abstract_state)
                state, meta = self.restore(step, abstract_state)
            except CheckpointError:
                raise
            except Exception as error:  # orbax and tensorstore raise many types for damaged files
                reason = error_reason(error)
                if _is_transient(error) or isinstance(error, VERSION_ERRORS):
                    raise CheckpointError(
                        f"checkpoint {step} in {self.directory} could not be read ({type(error).__name__}: {reason}); "
                        "nothing was moved. Check the storage and the installed orbax version, then run again."
                    ) from error
                logger.warning("checkpoint %d in %s is unreadable and was skipped: %s", step, self.directory, reason)
                skipped.append(step)
                continue
            if skipped:
                self._set_aside(skipped)
                logger.warning(
                    "resuming from checkpoint %d; damaged checkpoint(s) %s were moved to %s",
                    step,
                    skipped,
                    self.damaged_directory,
                )
            return step, state, meta
        if skipped:
            raise CheckpointError(
                f"every checkpoint under {self.directory} ({skipped}) failed to restore; they are left in place. "
                "Move the folder away to start fresh."
            )
        return None

    @property
    def damaged_directory(self) -> Path:
        return self.directory.parent / f"{self.directory.name}_damaged"

    def _set_aside(self, steps: list[int]) -> None:
        """Moves damaged checkpoints out of the manager's way (a retrained step must be savable again)."""
        if jax.process_index() == 0:
            self.damaged_directory.mkdir(parents=True, exist_ok=True)
            for step in steps:
                source = self.directory / str(step)
                target = self.damaged_directory / str(step)
                suffix = 1
                while target.exists():
                    target, suffix = self.damaged_directory / f"{step}.{suffix}", suffix + 1
                source.rename(target)
        # The other processes reload only once process 0 has moved every folder.
        parallel.barrier("resnet_jax:damaged-set-aside")
        self.manager.reload()

    def close(self) -> None:
        try:
            self.manager.close()
        finally:
            if self._save_failed:
                self._remove_unfinished_saves()


class _DropTracebacks(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.exc_info is None


def error_reason(error: BaseException) -> str:
    """The first line of an error, without the spec dump and the bound-method pointer tensorstore appends to it."""
    first = str(error).splitlines()[0] if str(error) else type(error).__name__
    for appendix in (" [tensorstore_spec=", " [source locations=", " See full TensorStore details"):
        first = first.split(appendix)[0]
    return first[:400]


def _is_transient(error: BaseException) -> bool:
    """An OS-level failure to read that may pass (I/O error, permissions, a stale network mount), anywhere in the
    chain of causes orbax and tensorstore wrap it in."""
    while error is not None:
        if isinstance(error, (PermissionError, TimeoutError)):
            return True
        if isinstance(error, OSError) and not isinstance(error, FileNotFoundError) and error.errno in TRANSIENT_ERRNOS:
            return True
        error = error.__cause__ or error.__context__
    return False


def newest_weights(directory: Path) -> dict[str, Any]:
    """`{"params", "batch_stats"}` of the newest good checkpoint under `directory`, as saved, on the host: the
    averaged weights when the run kept an EMA (what its evaluations scored)."""
    restored = Checkpointer(directory, async_save=False, create=False).restore_newest_good(None)
    if restored is None:
        raise CheckpointRefused(f"no readable checkpoint in {directory} to start from")
    _, tree, _ = restored
    return jax.device_get(tree.get("ema") or {"params": tree["params"], "batch_stats": tree["batch_stats"]})


def fitting_weights(variables: Any, weights: dict[str, Any], origin: str) -> tuple[dict[str, Any], list[str]]:
    """The leaves of `weights` (`{"params", "batch_stats"}`, from `origin`) that fit `variables` (a model's, as arrays
    or their shapes and dtypes), by path: those whose path and shape agree; and a line for each of the model's that
    none fits. Weights of which none fits, or whose dtype cannot become the model's, are a CheckpointRefused."""
    saved = {jax.tree_util.keystr(path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(weights)}
    fits, fresh = {}, []
    for path, new in jax.tree_util.tree_leaves_with_path(variables):
        name = jax.tree_util.keystr(path)
        old = saved.get(name)
        if old is None or tuple(old.shape) != tuple(new.shape):
            fresh.append(f"{name} {tuple(new.shape)} (saved: {'none' if old is None else tuple(old.shape)})")
        elif not np.can_cast(np.asarray(old).dtype, new.dtype, casting="same_kind"):
            raise CheckpointRefused(f"{origin}: {name} holds {np.asarray(old).dtype}, which cannot become {new.dtype}")
        else:
            fits[name] = old
    if not fits:
        raise CheckpointRefused(f"{origin}: no parameter fits this model; check the model name, or start over")
    return fits, fresh


def transplant_weights(state: Any, weights: dict[str, Any], origin: str) -> Any:
    """`state` with `weights` (`{"params", "batch_stats"}`, from `origin`) wherever a parameter's path and shape
    agree (`fitting_weights`); the rest keep their fresh initialisation, each named in a warning (a head for another
    class count is one). An EMA of `state` starts from the same weights."""
    fits, fresh = fitting_weights(state.variables, weights, origin)

    def pick(path, new):
        old = fits.get(jax.tree_util.keystr(path))
        if old is None:
            return new
        # Each process holds the whole array; it fills its own devices' shards of the global one.
        host = np.asarray(old, new.dtype)
        return jax.make_array_from_callback(new.shape, new.sharding, lambda index: host[index])

    variables = jax.tree_util.tree_map_with_path(pick, state.variables)
    for line in fresh:
        logger.warning("fine-tune: %s starts fresh", line)
    logger.info("fine-tune: %d arrays taken from %s, %d start fresh", len(fits), origin, len(fresh))
    state = state.replace(params=variables["params"], batch_stats=variables["batch_stats"])
    return state.replace(ema=variables) if state.ema is not None else state


def _layout(tree: Any) -> dict[str, int]:
    """Leaves per top-level part of a state tree: what tells one kind of train state from another."""
    return {key: len(jax.tree.leaves(part)) for key, part in tree.items()}


def abstract_tree(tree: Any) -> Any:
    """Shapes, dtypes and shardings of a pytree of arrays: what a restore fills in."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
