"""A run's workdir: its restart modes (resume, fresh, finetune), the archive of a previous run, `config.json`, and
the identity check that never lets a different model or data run mix into it. Nothing is ever deleted: a previous
run is moved to `DIR/archive/<time>/`.
"""

from __future__ import annotations

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

RESTART_MODES = ("resume", "fresh", "finetune")
ARCHIVE_DIR = "archive"
CHECKPOINTS_DIR = "checkpoints"
# What a run writes in its workdir; --fresh and --finetune move these into the archive.
RUN_FILES = (
    configuration.CONFIG_FILE,
    "metrics.jsonl",
    CHECKPOINTS_DIR,
    "checkpoints_damaged",
    "tensorboard",
    "curves.png",
    "eval",
)


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


def archive_previous_run(workdir: Path) -> Path | None:
    """Moves a previous run's files into workdir/archive/<time>/; returns that folder, or None when there was no
    run. Process 0 moves them; every process of a multi-process run gets the same folder."""
    present = [workdir / name for name in RUN_FILES if (workdir / name).exists()]
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


def check_identity(config: ml_collections.ConfigDict, workdir: Path) -> None:
    """Refuses a workdir whose run trained another model or on other data (keys both configs have)."""
    config_path = workdir / configuration.CONFIG_FILE
    if not config_path.exists():
        return
    try:
        previous = configuration.read_json(config_path)
    except (OSError, ValueError) as error:
        raise ConfigError(
            f"{config_path} is damaged ({error}), so this run cannot be checked against it; delete it to resume "
            "with the config given, or pass --fresh to archive the run and start over"
        ) from None
    current = config.to_dict()
    # A key that one of the two configs lacks was added or removed by another version of resnet-jax: not a change.
    shared = configuration.flatten(previous).keys() & configuration.flatten(current).keys()
    differences = [
        line for line in configuration.identity_differences(previous, current) if line.split(":", 1)[0] in shared
    ]
    if differences:
        raise ConfigError(
            f"--workdir={str(workdir)!r} holds a run with a different model/data config "
            f"({'; '.join(differences)}); pass --fresh to archive it and start over, --finetune to start from "
            "its weights, or use another workdir"
        )


def prepare_workdir(config: ml_collections.ConfigDict, workdir: Path, mode: str) -> Path | None:
    """Readies `workdir` for a run in `mode` and writes its config.json. Returns the checkpoints to fine-tune from
    (mode finetune), else None: a fresh run starts from a new initialisation, as in a new workdir."""
    if mode not in RESTART_MODES:
        raise ConfigError(f"restart mode {mode!r} is not known; allowed: {', '.join(RESTART_MODES)}")
    create_workdir(workdir)
    if mode == "resume":
        check_identity(config, workdir)
    archived = archive_previous_run(workdir) if mode in ("fresh", "finetune") else None
    source = None
    if mode == "finetune":
        if archived is None or not (archived / CHECKPOINTS_DIR).is_dir():
            raise ConfigError(f"--finetune: --workdir={str(workdir)!r} holds no checkpoint to start from")
        source = archived / CHECKPOINTS_DIR
    if jax.process_index() == 0:
        try:
            configuration.write_json(config, workdir / configuration.CONFIG_FILE)
        except OSError as error:
            raise WorkdirError(
                f"cannot write {workdir / configuration.CONFIG_FILE}: {error.strerror or error}; free some space "
                "or choose another --workdir"
            ) from error
    return source
