"""A run's workdir: its restart modes (resume, fresh, finetune), the archive of a previous run, and `config.json`
with its record. Nothing is ever deleted: a previous run is moved to `DIR/archive/<time>/`. Whether a resume may go on
is `record.check_resume`'s to say.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from resnet_jax import atomic, configuration, parallel
from resnet_jax.configuration import ConfigError

logger = logging.getLogger(__name__)

RESTART_MODES = ("resume", "fresh", "finetune")
ARCHIVE_DIR = "archive"
CHECKPOINTS_DIR = "checkpoints"
LOCK_FILE = ".lock"  # held by the run that writes (resnet_jax.lock)
# Left in place by --fresh and --finetune, which move everything else of a previous run (its checkpoints, metrics,
# and what tools wrote from it: exports, evaluations, plots) into the archive.
KEPT_IN_PLACE = (ARCHIVE_DIR, LOCK_FILE)


class WorkdirError(RuntimeError):
    """The workdir cannot be written now (a full disk, a read-only filesystem); the message names it."""


def check_workdir(workdir: str | os.PathLike) -> Path:
    """The workdir must be a folder this process can write, or one it can create; nothing is created yet, so a run
    refused before it starts (offline, bad data) leaves no empty folder behind."""
    if not str(workdir).strip():
        raise ConfigError("--workdir is empty; give the folder for the run (it is created when missing)")
    path = Path(workdir).expanduser().absolute()
    atomic.check_names(path, "--workdir")
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--workdir={str(path)!r} is a file; give a folder (it is created when missing)")
    existing = next(parent for parent in (path, *path.parents) if parent.exists())
    if not existing.is_dir():
        raise ConfigError(f"--workdir={str(path)!r} cannot be created: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"--workdir={str(path)!r} is not writable; choose a folder you can write")
    return path


def create_workdir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"--workdir={str(path)!r} cannot be created: {error.strerror}") from error


def holds_run(workdir: Path) -> bool:
    """Whether `workdir` holds a run: an accepted one (its config.json) or saved weights. A start refused or stopped
    before it was accepted leaves only empty folders, which are no run to archive or fine-tune from."""
    checkpoints = workdir / CHECKPOINTS_DIR
    return (workdir / configuration.CONFIG_FILE).exists() or (checkpoints.is_dir() and any(checkpoints.iterdir()))


def archive_previous_run(workdir: Path) -> Path | None:
    """Moves a previous run (everything in `workdir` but its archive and lock) into workdir/archive/<time>/; returns
    that folder, or None when there was no run. Process 0 moves it; every process of a multi-process run gets the
    same folder."""
    present = sorted(path for path in workdir.iterdir() if path.name not in KEPT_IN_PLACE) if holds_run(workdir) else []
    # Process 0's view and clock decide, so that no process looks while another moves, and all name one folder.
    days, seconds, any_present = multihost_utils.broadcast_one_to_all(
        np.array([*divmod(int(time.time()), 86_400), len(present) > 0], np.int32)  # int32: jax's default width
    )
    if not any_present:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(int(days) * 86_400 + int(seconds)))
    target = workdir / ARCHIVE_DIR / stamp
    if jax.process_index() == 0:
        target.mkdir(parents=True)
        for path in present:
            shutil.move(str(path), str(target / path.name))
    parallel.barrier("resnet_jax:archived")
    return target


def prepare_workdir(workdir: Path, mode: str) -> Path | None:
    """Readies `workdir` for a run in `mode` (its config.json is written once start-up accepts the run: see
    `write_record`). Returns the archived run to fine-tune from (mode finetune), else None: a fresh run starts from a
    new initialisation, as in a new workdir."""
    if mode not in RESTART_MODES:
        raise ConfigError(f"restart mode {mode!r} is not known; allowed: {', '.join(RESTART_MODES)}")
    create_workdir(workdir)
    archived = archive_previous_run(workdir) if mode in ("fresh", "finetune") else None
    if archived is not None:
        logger.info("the previous run in %s is archived in %s", workdir, archived)
    source = None
    if mode == "finetune":
        if archived is None or not (archived / CHECKPOINTS_DIR).is_dir():
            raise ConfigError(
                f"--finetune: --workdir={str(workdir)!r} holds no checkpoint to start from{_newest(workdir)}"
            )
        source = archived
    return source


def _newest(workdir: Path) -> str:
    """`; its newest archived run is ...: --init-from it` where the archive holds one (a --finetune stopped before it
    began has archived the run it was to start from), else ""."""
    runs = sorted(path for path in (workdir / ARCHIVE_DIR).glob("*") if (path / CHECKPOINTS_DIR).is_dir())
    return f"; its newest archived run is {runs[-1]}: pass --init-from {runs[-1]} to start from it" if runs else ""


def write_record(config: ml_collections.ConfigDict, run_record: dict, workdir: Path) -> None:
    """config.json: the config the run runs with and its record (`resnet_jax.record`), replaced whole."""
    try:
        saved = {**config.to_dict(), configuration.RECORD_KEY: run_record}
        configuration.write_json(saved, workdir / configuration.CONFIG_FILE)
    except OSError as error:
        raise WorkdirError(
            f"cannot write {workdir / configuration.CONFIG_FILE}: {error.strerror or error}; free some space "
            "or choose another --workdir"
        ) from error
