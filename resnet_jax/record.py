"""What a run records beside the config it was asked (config.json's `record`): what that config ran as here (dtype,
kernels, devices, processes, library versions, the loop's steps per call and metric window) and every change accepted
on a resume, with its step. And the resume check (`check_resume`): same model, data and training, or refused. A
resume trains what the run trained, from the weights it started from; it may be made longer, its kernels or devices
may change when asked, and how it is scored, logged and saved may change: every such change is recorded.
"""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from resnet_jax import configuration, experiment, models, onednn, optim
from resnet_jax.configuration import ConfigError
from resnet_jax.onednn import library

# And oneDNN, whichever build is in. Grain orders and reads a streamed run's batches; Pillow decodes and resizes a
# folder's images (either loader).
VERSIONED = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "grain", "pillow")
# Where the data is read or fetched from, not what it is: moving the files does not make another run.
LOCATION_KEYS = ("data.files_dir", "data.data_dir", "data.download", "data.download_mirror")
# Recorded as a run starts (0 until then): a run written before they were recorded is not another run.
RECORDED_KEYS = ("data.split_sizes.",)
# What a run scores, and the digests of its draws (checked as the data is read), not what it trains on.
SCORING_KEYS = ("data.train_eval_size", "data.split_digests.")
KERNEL_KEYS = ("model.conv_backend", "model.norm_backend")
LENGTH_KEYS = ("train.num_epochs", "train.num_steps")
# How the grain loader reads: the same batches with any value (a resume with another worker count starts the stream
# at the step's batch, not from Grain's saved state); a change is recorded with the step it holds from.
LOADER_KEYS = ("data.workers", "data.per_worker_buffer_size")
# What a run trains on and with: a change here on resume would make the record lie.
TRAINING_SECTIONS = ("seed", "model", "data", "augment", "train", "optimizer", "schedule", "finetune")
# Keys of those sections that do not change what is trained: where data is read from, how often things are logged
# and scored, what is recorded as the run starts, the kernels (`KERNEL_KEYS`, checked against the record), the run's
# length (`LENGTH_KEYS`, which may grow) and how the loader reads (`LOADER_KEYS`). A resume may change them, and
# every key of the other sections (`eval`, `checkpoint`), as long as each change is recorded with its step (all but
# `NOT_RECORDED`: see `_changes`): evaluated with flip TTA from step 16 on, say.
NOT_TRAINING = (
    *LOCATION_KEYS,
    *SCORING_KEYS,
    *RECORDED_KEYS,
    *KERNEL_KEYS,
    *LENGTH_KEYS,
    *LOADER_KEYS,
    "train.log_every_steps",
    "train.steps_per_call",
    "train.gradient_flow",
    # What a non-finite step does: with "stop" none was ever applied, so "skip" from here on (the step a run stopped
    # at, resumed) trains the same steps until one is dropped, and each drop is in metrics.jsonl.
    "train.on_nonfinite",
    "finetune.source",  # the weights a run started from: a resume restores its own (`_check_source`)
)
# Keys that a resume may change without a record: where files are read from, how the processes find each other (each
# process has its own id; their count is in the record's `ran`), and what the run records as it starts or as it
# reads its data (the split sizes, the draws' digests). `finetune.source` is kept as it was (`resolved`).
NOT_RECORDED = (*LOCATION_KEYS, *RECORDED_KEYS, "data.split_digests.", "distributed.", "finetune.source")
# The sections a config.json holds as JSON objects (the seed is a number, the record is checked on its own).
SECTIONS = (*TRAINING_SECTIONS[1:], "eval", "checkpoint", "distributed")
RESTART_HINT = (
    "pass --fresh to archive it and start over, --finetune to start from its weights, or use another --workdir"
)


def read_previous(workdir: Path) -> dict[str, Any] | None:
    """The saved config.json of the run in `workdir` (None when there is none); a damaged one is one line."""
    path = workdir / configuration.CONFIG_FILE
    if not path.exists():
        return None
    try:
        saved = configuration.read_json(path)
    except (OSError, ValueError) as error:
        saved, problem = None, str(error)
    else:
        problem = "" if isinstance(saved, dict) else f"it holds a JSON {type(saved).__name__}, not a config"
        if not problem:  # the sections after the seed are JSON objects
            not_sections = [key for key in SECTIONS if not isinstance(saved.get(key, {}), dict)]
            problem = f"its {not_sections[0]!r} is not a section" if not_sections else _record_problem(saved)
    if problem:
        raise ConfigError(
            f"{path} is damaged ({problem}), so this run cannot be checked against it; delete it to resume with the "
            "config given, or pass --fresh to archive the run and start over"
        )
    return experiment.as_read_now(saved)


def _is_step(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _record_problem(saved: dict[str, Any]) -> str:
    """What is wrong with the shape of a saved config's `record` ("" where nothing is, or where there is none: a run
    begun by a resnet-jax that kept none). Each part is optional (an earlier record had no `from_step`)."""
    if configuration.RECORD_KEY not in saved:
        return ""
    record = saved[configuration.RECORD_KEY]
    if not isinstance(record, dict):
        return f"its 'record' is a JSON {type(record).__name__}, not an object"
    for part, kind, shape in (("asked", dict, "an object"), ("ran", dict, "an object"), ("changes", list, "a list")):
        if part in record and not isinstance(record[part], kind):
            return f"its record's {part!r} is a JSON {type(record[part]).__name__}, not {shape}"
    if "from_step" in record and not _is_step(record["from_step"]):
        return f"its record's 'from_step' is {record['from_step']!r}, not a step"
    for change in record.get("changes", []):
        if not (isinstance(change, dict) and isinstance(change.get("key"), str) and _is_step(change.get("step"))):
            return f"its record's 'changes' holds {json.dumps(change)[:80]}, not a change with its key and step"
    return ""


def _recorded(previous: dict[str, Any] | None) -> dict[str, Any]:
    record = (previous or {}).get(configuration.RECORD_KEY)
    return record if isinstance(record, dict) else {}


def resolved(config: ml_collections.ConfigDict, previous: dict[str, Any] | None) -> ml_collections.ConfigDict:
    """A copy of `config` as this run computes it: `model.dtype=auto` becomes the dtype the run recorded (a resume),
    else what auto picks here; a resume keeps the digests of its validation and train_eval draws, so that another
    draw is refused when the data is read (and so is a folder whose files are not the ones the run recorded), and the
    weights the run started from (`finetune.source`), which a resume need not name again."""
    config = config.copy_and_resolve_references()
    saved_model = (previous or {}).get("model", {})
    if config.model.dtype == "auto":
        recorded = saved_model.get("dtype") if isinstance(saved_model, dict) else None
        config.model.dtype = (
            recorded if recorded in models.DTYPES else jnp.dtype(models.resolve_dtype(config.model)).name
        )
    saved_files = (previous or {}).get("data", {}).get("files_digest")
    if isinstance(saved_files, str) and not config.data.files_digest:
        config.data.files_digest = saved_files  # either loader refuses a resume on other files
    saved_digests = (previous or {}).get("data", {}).get("split_digests", {})
    for split, digest in saved_digests.items() if isinstance(saved_digests, dict) else ():
        if split in config.data.split_digests and isinstance(digest, str) and not config.data.split_digests[split]:
            config.data.split_digests[split] = digest
    saved_finetune = (previous or {}).get("finetune", {})
    saved_source = saved_finetune.get("source") if isinstance(saved_finetune, dict) else None
    if isinstance(saved_source, str) and saved_source and not config.finetune.source:
        config.finetune.source = saved_source  # the weights it started from: its record says so on every resume
    return config


def _versions() -> dict[str, str | None]:
    found = {}
    for name in VERSIONED:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    found["onednn"] = library.onednn_version() if library.installed_distributions() else None
    return found


def what_ran(model: models.ResNet) -> dict[str, Any]:
    """How this process runs the built `model`: its dtype and kernels, the devices and processes, the versions."""
    device = jax.devices()[0]
    return {
        "model.dtype": jnp.dtype(model.dtype).name,
        "model.conv_backend": getattr(model, "conv_backend", "xla"),
        "model.norm_backend": getattr(model, "norm_backend", "xla"),
        "platform": device.platform,
        "device_kind": device.device_kind,
        "devices": jax.device_count(),
        "processes": jax.process_count(),
        "versions": _versions(),
    }


def what_the_loop_runs(built: experiment.Experiment) -> dict[str, int]:
    """How the training loop runs the `built` run: the steps of one call (`train.steps_per_call`, 0 resolved for the
    platform) and the metric window it keeps (`train.log_every_steps` rounded up to whole calls)."""
    return {"train.steps_per_call": built.steps_per_call, "train.log_every_steps": built.log_every_steps}


def _training_keys(saved: dict[str, Any]) -> dict[str, Any]:
    flat = configuration.flatten({key: saved[key] for key in TRAINING_SECTIONS if key in saved})
    return {key: value for key, value in flat.items() if not key.startswith(NOT_TRAINING)}


def _show(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (str, list, dict)) else repr(value)


def training_differences(previous: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The keys, sorted, in which two saved configs differ in what they train."""
    old, new = _training_keys(previous), _training_keys(current)
    # A key one of the two lacks was added or removed by another version of resnet-jax: not a change.
    changed = sorted(key for key in old.keys() & new.keys() if old[key] != new[key])
    # Not yet recorded by the run (split sizes before they were recorded; a dtype stored as "auto" before it was
    # resolved; a folder's files digest, which the device loader did not record before): nothing to hold the resume
    # to.
    unrecorded = {
        key
        for key in changed
        if (key.startswith(RECORDED_KEYS) and old[key] == 0)
        or (key == "model.dtype" and old[key] == "auto")
        or (key == "data.files_digest" and old[key] == "")
    }
    return [key for key in changed if key not in unrecorded]


def _check_training_keys(previous: dict[str, Any], config: ml_collections.ConfigDict, workdir: Path) -> None:
    changed = training_differences(previous, config.to_dict())
    if changed:
        old, new = _training_keys(previous), _training_keys(config.to_dict())
        first = changed[0]
        more = f" (and {len(changed) - 1} more: {', '.join(changed[1:])})" if len(changed) > 1 else ""
        raise ConfigError(
            f"--workdir={str(workdir)!r} holds a run trained with {first}={_show(old[first])}, and this config says "
            f"{_show(new[first])}{more}; a resume trains what the run trained: {RESTART_HINT}"
        )


def _check_source(previous: dict[str, Any], config: ml_collections.ConfigDict, workdir: Path) -> None:
    """A resume goes on from the run's own checkpoints: it keeps the weights the run started from (`resolved` fills
    them in where none are named), and naming other ones is refused, since nothing would be taken from them."""
    saved_finetune = previous.get("finetune", {})
    if "source" not in saved_finetune:  # a config.json written before the key existed
        return
    before, now = saved_finetune["source"], config.finetune.source
    if before != now:
        started = f"from finetune.source={_show(before)}" if before else "from a new initialisation"
        raise ConfigError(
            f"--workdir={str(workdir)!r} holds a run that started {started}, and this config says "
            f"finetune.source={_show(now)}; a resume goes on from the run's own checkpoints and takes no other "
            "weights: resume without --init-from (or --config.finetune.source), pass --fresh with it to archive the "
            "run and start from those weights, or use another --workdir"
        )


def _changes(previous: dict[str, Any], config: ml_collections.ConfigDict) -> list[str]:
    """Every key, sorted, whose value this resume changes outside what is trained (`_check_training_keys` refused a
    change there) and outside `NOT_RECORDED`: how the run is scored (`eval.*`, the train sample's size), logged,
    dispatched and saved (`checkpoint.*`), the kernels asked for, its length and the loader's workers. Each is
    recorded with the step from which it holds. A key one of the two configs lacks (another resnet-jax) is none."""
    old = configuration.flatten({key: value for key, value in previous.items() if key != configuration.RECORD_KEY})
    new = configuration.flatten(config.to_dict())
    trained = _training_keys(previous).keys()
    return sorted(
        key
        for key in old.keys() & new.keys()
        if old[key] != new[key] and key not in trained and not key.startswith(NOT_RECORDED)
    )


def _check_kernels(record: dict[str, Any], asked: ml_collections.ConfigDict, ran: dict[str, Any]) -> list[str]:
    """The kernels a resume runs on: the recorded ones, unless asked for by name (a change, recorded); 'auto' that
    picks others here is refused in one line naming the override."""
    recorded_ran = record.get("ran", {})
    changed = [key for key in KERNEL_KEYS if recorded_ran.get(key) not in (None, ran[key])]
    # BatchNorm's 'auto' follows the convolutions: naming either one is asking for the change.
    if not changed or any(asked.model[key.split(".", 1)[1]] != "auto" for key in changed):
        return changed
    key = changed[0]
    before, now = recorded_ran[key], ran[key]
    why = onednn.library.dtype_unavailable_reason(models.DTYPES[ran["model.dtype"]]) if before == "onednn" else ""
    raise ConfigError(
        f"{key}: this run computed on {before}, and here 'auto' picks {now}{f' ({why})' if why else ''}; resume "
        f"with --config.{key}={now} to go on with {now}'s kernels (the change is recorded), or on a machine that "
        f"runs {before}'s"
    )


def _schedule_rates(config: ml_collections.ConfigDict, total_steps: int, steps_per_epoch: int, upto: int):
    schedule = optim.make_schedule(config.schedule, config.optimizer.learning_rate, total_steps, steps_per_epoch)
    return np.asarray(jax.jit(jax.vmap(schedule))(jnp.arange(upto)))


def _check_length(
    previous: dict[str, Any], config: ml_collections.ConfigDict, steps_per_epoch: int, total_steps: int
) -> str:
    """A run may be made longer, never shorter (the change is recorded as any other: `_changes`); a line saying what
    a longer run does to a schedule that follows the run's length ("" where the rate up to the old end stays as it
    was)."""
    saved_train = previous.get("train", {})
    keys = [key for key in LENGTH_KEYS if key.split(".")[1] in saved_train]
    changed = [key for key in keys if saved_train[key.split(".")[1]] != config.train[key.split(".")[1]]]
    if not changed:
        return ""
    old_steps = saved_train.get("num_steps", 0) or saved_train.get("num_epochs", 0) * steps_per_epoch
    what = ", ".join(
        f"{key} {_show(saved_train[key.split('.')[1]])} -> {_show(config.train[key.split('.')[1]])}" for key in changed
    )
    if total_steps < old_steps:
        raise ConfigError(
            f"{what} makes this run of {old_steps} steps shorter ({total_steps}); a resume may only make it longer: "
            f"{RESTART_HINT}"
        )
    if total_steps == old_steps:
        return ""
    old_config = configuration.from_saved(previous, config)
    before = _schedule_rates(old_config, old_steps, steps_per_epoch, old_steps)
    after = _schedule_rates(config, total_steps, steps_per_epoch, old_steps)
    if np.allclose(before, after, rtol=1e-6, atol=0.0):
        return ""
    last = old_steps - 1
    return (
        f"{what} reshapes this run's learning-rate schedule ({config.schedule.name} follows the run's length): at "
        f"step {last}, the old end, the rate was {before[last]:.3g} and is now {after[last]:.3g}; the change is "
        "recorded in config.json (--fresh starts the longer run over instead)"
    )


def check_resume(
    previous: dict[str, Any] | None,
    asked: ml_collections.ConfigDict,
    config: ml_collections.ConfigDict,
    ran: dict[str, Any],
    steps_per_epoch: int,
    total_steps: int,
    workdir: Path,
) -> tuple[list[str], str]:
    """Refuses, in one line, a resume that would train something else than the run in `workdir` recorded (or name
    other weights to start from); returns the keys whose accepted change the record will carry (the kernels that run,
    and every changed key outside what is trained: see `_changes`), and a line to show where a longer run reshapes
    its schedule ("" otherwise)."""
    if previous is None:
        return [], ""
    _check_training_keys(previous, config, workdir)
    _check_source(previous, config, workdir)
    kernels = _check_kernels(_recorded(previous), asked, ran)
    reshaped = _check_length(previous, config, steps_per_epoch, total_steps)
    return kernels + [key for key in _changes(previous, config) if key not in kernels], reshaped


def describe_changes(previous: dict[str, Any], config: ml_collections.ConfigDict, keys: list[str]) -> str:
    """`train.num_epochs 1 -> 2; model.conv_backend onednn -> xla` for the log."""
    flat_old = configuration.flatten(previous)
    flat_new = configuration.flatten(config.to_dict())
    return "; ".join(f"{key} {_show(flat_old.get(key))} -> {_show(flat_new.get(key))}" for key in keys)


def make_record(
    previous: dict[str, Any] | None,
    asked: ml_collections.ConfigDict,
    config: ml_collections.ConfigDict,
    ran: dict[str, Any],
    changed: list[str],
    step: int,
) -> dict[str, Any]:
    """The `record` config.json keeps: what was asked where the run resolved it, what ran (now), the list of
    accepted changes, each with the step from which it holds (the kernels, the devices and versions, the length), and
    `from_step`, the first step the record covers: a run begun by a resnet-jax that kept no record, or whose
    config.json was deleted, is recorded from the step it was resumed at, since what ran before it is not known."""
    record = _recorded(previous)
    changes = list(record.get("changes", []))
    old_ran = record.get("ran", {})
    flat_old, flat_new = configuration.flatten(previous or {}), configuration.flatten(config.to_dict())
    for key in changed:  # a kernel whose key is unchanged (BatchNorm's 'auto' follows the convolutions) is in `ran`
        if flat_old.get(key) != flat_new.get(key):
            changes.append({"step": step, "key": key, "from": flat_old.get(key), "to": flat_new.get(key)})
    flat_ran_old, flat_ran_new = configuration.flatten(old_ran), configuration.flatten(ran)
    for key in sorted(flat_ran_new):
        if old_ran and flat_ran_old.get(key) != flat_ran_new[key]:
            changes.append({"step": step, "key": f"ran.{key}", "from": flat_ran_old.get(key), "to": flat_ran_new[key]})
    asked_values = {key: configuration.flatten(asked.to_dict())[key] for key in ("model.dtype", *KERNEL_KEYS)}
    from_step = record.get("from_step", 0) if record else step
    return {"asked": record.get("asked", asked_values), "ran": ran, "changes": changes, "from_step": from_step}
