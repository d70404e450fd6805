"""Checkpoints with orbax: asynchronous saves, the last N kept plus the best, and restores that survive damage.

A checkpoint holds the train state's arrays (`state`) and a small JSON record (`meta`: data position, epoch,
metrics). Restoring walks back from the newest step past any checkpoint that fails to read, and deletes nothing.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from resnet_jax import configuration

BEST_METRIC = "test_accuracy"
DEFAULTS = {"every_epochs": 1, "keep": 3, "async_save": True}

logger = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """No usable checkpoint, or one that cannot be written; the message names what and why."""


def check_config(checkpoint_config: ml_collections.ConfigDict) -> None:
    configuration.check_positive("checkpoint.every_epochs", checkpoint_config.every_epochs, integer=True)
    configuration.check_positive("checkpoint.keep", checkpoint_config.keep, integer=True)
    configuration.check_choice("checkpoint.async_save", checkpoint_config.async_save, (False, True))


class Checkpointer:
    """Saves and restores `{"state": pytree, "meta": json}` under `directory` with an orbax CheckpointManager."""

    def __init__(self, directory: str | Path, keep: int = 3, async_save: bool = True, create: bool = True):
        self.directory = Path(directory).absolute()
        policy = checkpoint_managers.AnyPreservationPolicy(
            [
                checkpoint_managers.LatestN(n=keep),
                checkpoint_managers.BestN(
                    get_metric_fn=lambda metrics: metrics[BEST_METRIC], n=1, keep_checkpoints_without_metrics=False
                ),
            ]
        )
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policy,
            # best_fn also makes orbax write each step's metrics to disk, so the best survives a restart.
            best_fn=lambda metrics: metrics[BEST_METRIC],
            best_mode="max",
            enable_async_checkpointing=async_save,
            create=create,
            # A save cut short (kill -9, full disk) leaves a *.orbax-checkpoint-tmp folder: never a checkpoint.
            cleanup_tmp_directories=create,
        )
        handlers = {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def best_step(self) -> int | None:
        """The step with the highest test accuracy among the checkpoints that recorded one."""
        return self.manager.best_step()

    def save(self, step: int, state_tree: Any, meta: dict[str, Any], metrics: dict[str, float] | None = None) -> None:
        """Starts an asynchronous save; the previous one is finished first. A step already saved is skipped."""
        if step in self.manager.all_steps():
            return
        args = ocp.args.Composite(state=ocp.args.StandardSave(state_tree), meta=ocp.args.JsonSave(meta))
        try:
            self.manager.save(step, args=args, metrics=metrics)
        except OSError as error:
            raise CheckpointError(f"cannot write checkpoint {step} under {self.directory}: {error}") from error

    def wait(self) -> None:
        """Blocks until pending saves are on disk; raises a clear error when one failed (disk full, read-only)."""
        try:
            self.manager.wait_until_finished()
        except Exception as error:
            raise CheckpointError(
                f"saving a checkpoint under {self.directory} failed: {error}. Earlier checkpoints are untouched."
            ) from error

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

    def restore_newest_good(self, abstract_state: Any) -> tuple[int, Any, dict[str, Any]] | None:
        """Restores the newest checkpoint that reads back whole, or returns None when there is none.

        A checkpoint that fails to restore (a truncated or missing file) is skipped with a warning naming it and
        set aside; nothing is deleted. One that reads but holds another kind of state (the optimizer or the EMA
        setting changed) stops the restore with an error instead: it is not damaged.
        """
        skipped = []
        for step in reversed(self.steps()):
            try:
                saved = self.manager.item_metadata(step)["state"]
                if abstract_state is not None and _layout(saved) != _layout(abstract_state):
                    raise CheckpointError(
                        f"checkpoint {step} in {self.directory} holds a different train state than this config builds "
                        f"(leaves per part: saved {_layout(saved)}, now {_layout(abstract_state)}): the optimizer or "
                        "train.ema_decay changed. Restore the old setting, or pass --fresh or --finetune."
                    )
                state, meta = self.restore(step, abstract_state)
            except CheckpointError:
                raise
            except Exception as error:  # orbax and tensorstore raise many types for damaged files
                reason = str(error).splitlines()[0][:300] if str(error) else type(error).__name__
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
        self.manager.reload()

    def close(self) -> None:
        self.manager.close()


def _layout(tree: Any) -> dict[str, int]:
    """Leaves per top-level part of a state tree: what tells one kind of train state from another."""
    return {key: len(jax.tree.leaves(part)) for key, part in tree.items()}


def abstract_tree(tree: Any) -> Any:
    """Shapes, dtypes and shardings of a pytree of arrays: what a restore fills in."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
