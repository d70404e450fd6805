"""Weights moved between a PyTorch file and a run's workdir. A converted run is an ordinary workdir: `config.json`
with its record (`resnet_jax.record`), as a trained run's, one checkpoint at step 0 in the current state format
(fresh optimizer state), and `conversion.json` saying where its weights came from, so that evaluate, predict, export,
train (which resumes it) and a fine-tune read it as is.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from resnet_jax import atomic, configuration, data, experiment, inference, lock, models, pipeline, record
from resnet_jax.checkpoint import Checkpointer
from resnet_jax.interop import files, layouts
from resnet_jax.interop.layouts import InteropError, Match
from resnet_jax.workdir import CHECKPOINTS_DIR, WorkdirError, write_record

CONVERSION_FILE = "conversion.json"
DEFAULT_DATASET = "cifar10"  # of a file that does not say which dataset its weights were trained on
NORMALIZATION_KEYS = ("mean", "std")
OTHER_DATA_KEYS = ("source", "files_dir", "data_dir")  # where a dataset is read from


def _recorded_data(recorded: Mapping[str, Any], found: Match) -> dict[str, Any]:
    """The `data` section a file recorded of its run (`run_metadata`), when it is of this very model; else {}."""
    section = recorded.get("data")
    if recorded.get("model") != found.model_name or not isinstance(section, dict):
        return {}
    return section


def _readable_here(section: Mapping[str, Any]) -> bool:
    """Whether a recorded source can be read on this machine: official files must be here unless they are downloaded
    (a `folder` run's recorded classes serve the tools without its folder)."""
    if section.get("source") == "files" and not section.get("download"):
        return bool(section.get("files_dir")) and Path(str(section["files_dir"])).expanduser().is_dir()
    return True


def _set_data(config: ml_collections.ConfigDict, values: Mapping[str, Any]) -> None:
    """The recorded keys this release's `data` section has (a key of another release is left out)."""
    for key, value in values.items():
        if key not in config.data or key in NORMALIZATION_KEYS:
            continue
        if isinstance(value, dict):
            config.data[key].update({part: value[part] for part in value if part in config.data[key]})
        elif isinstance(value, list):
            config.data[key] = tuple(value)
        else:
            config.data[key] = value


def converted_config(
    found: Match, dataset: str | None, overrides: Sequence[str] = (), recorded: Mapping[str, Any] | None = None
) -> ml_collections.ConfigDict:
    """`experiment.base_config()` for the matched model on `dataset`, with `key=value` overrides applied last.

    A file that `write_run_weights` wrote (`recorded`: its metadata) comes back as its run was: its dataset (unless
    `dataset` names another), source, input shape and normalisation. Any other file is normalised as its layout's
    own training code normalised (three-channel data). Grey data meets a file whose first conv takes RGB by being
    repeated to three channels; RGB data meets a grey file not at all, and is refused in one line."""
    kept = _recorded_data(recorded or {}, found)
    config = experiment.base_config()
    config.model.name = found.model_name
    config.data.dataset = dataset or kept.get("dataset") or DEFAULT_DATASET
    if kept.get("dataset") == config.data.dataset:
        # The run's data as it read it. Official files that are not on this machine leave the source as default;
        # data that the overrides name instead (another folder) leaves out what the run recorded of its own.
        unread = () if _readable_here(kept) else ("source", "files_dir")
        if {text.split("=", 1)[0].strip() for text in overrides} & {f"data.{key}" for key in OTHER_DATA_KEYS}:
            unread = (*unread, "class_names", "image_shape", "split_sizes", "split_digests")
        _set_data(config, {key: value for key, value in kept.items() if key not in unread})
    config = configuration.apply_override_texts(config, list(overrides))
    layouts.check_has_shortcuts(config.model.name)
    data.check_config(config.data)
    channels = data.config_input_shape(config.data)[-1]
    if channels != found.channels:
        if found.channels == 1 or any(text.startswith("data.channels=") for text in overrides):
            raise InteropError(
                f"the file's conv1 takes {found.channels}-channel images and {config.data.dataset}'s input has "
                f"{channels}; convert it with data of {found.channels}-channel images (--dataset fashion_mnist or "
                "mnist for grey ones, or a folder with --config.data.channels=1)"
            )
        config.data.channels = found.channels  # grey images repeated to RGB, as the file's first conv takes
        data.check_config(config.data)
    if not config.data.mean and not config.data.std:
        # The weights' own normalisation: the one their run recorded, else their layout's (RGB data).
        if len(kept.get("mean", ())) == channels and len(kept.get("std", ())) == channels:
            config.data.mean, config.data.std = tuple(kept["mean"]), tuple(kept["std"])
        elif found.channels == 3:
            config.data.mean, config.data.std = found.layout.mean, found.layout.std
    return config


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fresh_head(variables: dict[str, Any], fresh: dict[str, Any]) -> dict[str, Any]:
    params = dict(variables["params"]) | {"head": jax.device_get(fresh["params"]["head"])}
    return {"params": params, "batch_stats": variables["batch_stats"]}


def _refuse_a_run(workdir: Path) -> None:
    if (workdir / configuration.CONFIG_FILE).exists() or (workdir / CHECKPOINTS_DIR).exists():
        raise InteropError(f"{workdir} already holds a run; convert into a new folder")


def write_converted_run(
    source: str | os.PathLike,
    workdir: str | os.PathLike,
    dataset: str | None = None,
    layout_name: str | None = None,
    overrides: Sequence[str] = (),
) -> dict[str, Any]:
    """Converts a weight file into a new run in `workdir`; returns what `conversion.json` records.

    `dataset` None: the one the file recorded (a file `write_run_weights` wrote), else cifar10. When the file's head
    has another class count than the dataset, the head starts fresh (from the config's seed) and the backbone is
    kept: `conversion.json`'s `head` says "fresh" instead of "converted".
    """
    source, workdir = Path(source), Path(workdir)
    atomic.check_names(workdir, "--workdir")
    _refuse_a_run(workdir)
    state_dict = files.read_state_dict(source)
    recorded = files.read_run_metadata(source)
    if layout_name is None and recorded.get("layout") in layouts.LAYOUTS:
        layout_name = recorded["layout"]
    try:
        found = layouts.match(state_dict, layout_name)
        config = converted_config(found, dataset, overrides, recorded)
    except InteropError as error:
        raise InteropError(f"{source}: {error}") from None
    # Built as the tools build a run (no training batch to fit), with the optimizer state a resume starts from; in
    # the dtype and on the kernels a run of this config starts on here, which config.json records as a trainer's does.
    asked, config = config, record.resolved(config, None)
    built = inference.build_for_inference(config)
    config.data = built.config.data  # with what a run records as it starts: its splits' sizes, a folder's classes
    run_record = record.make_record(None, asked, config, record.what_ran(built.model), [], 0)
    state = built.new_state()
    try:
        variables = layouts.to_variables(state_dict, found)
    except InteropError as error:
        raise InteropError(f"{source}: {error}") from None
    head = "converted"
    if found.num_classes != built.info.num_classes:
        variables, head = _fresh_head(variables, state.variables), "fresh"
    expected = jax.tree.map(np.shape, state.variables)
    if jax.tree.map(np.shape, variables) != expected:
        raise InteropError(
            f"{source}: the converted weights do not fit {config.model.name} as the config builds it (an override "
            "changed the model?)"
        )
    placed = jax.tree.map(lambda new, old: jax.device_put(new, old.sharding), variables, state.variables)
    state = state.replace(**placed)
    if state.ema is not None:
        state = state.replace(ema=placed)
    conversion = {
        "source": str(source.absolute()),
        "sha256": _sha256(source),
        "layout": found.layout.name,
        "model": found.model_name,
        "source_classes": found.num_classes,
        "classes": built.info.num_classes,
        "channels": found.channels,
        "dataset": config.data.dataset,
        "source_run": recorded.get("workdir"),  # the run a file written by `convert --to` came from
        "head": head,
        "keys": len(state_dict),
    }
    try:
        # Locked only now, so that a refused conversion leaves no folder behind.
        with lock.hold(workdir):
            _refuse_a_run(workdir)  # again: a run may have been started there while this one converted
            try:
                checkpointer = Checkpointer(workdir / CHECKPOINTS_DIR, keep=config.checkpoint.keep, async_save=False)
                try:
                    meta = {"position": pipeline.DataPosition().to_dict(), "step": 0}
                    checkpointer.save(0, state.checkpoint_tree(), meta | {"conversion": conversion})
                    checkpointer.wait()
                finally:
                    checkpointer.close()
                atomic.write_text(workdir / CONVERSION_FILE, json.dumps(conversion, indent=2) + "\n")
                # Last: a config.json says the run is whole. Written as the trainer writes a run's, with its record.
                write_record(config, run_record, workdir)
            except BaseException:
                # What this conversion wrote into the folder it found empty, so that the same command can run again.
                shutil.rmtree(workdir / CHECKPOINTS_DIR, ignore_errors=True)
                (workdir / CONVERSION_FILE).unlink(missing_ok=True)
                raise
    except OSError as error:
        raise InteropError(f"cannot write the converted run into {workdir}: {error.strerror or error}") from None
    except WorkdirError as error:
        raise InteropError(str(error)) from None
    return conversion


def layout_of_run(config: ml_collections.ConfigDict, layout_name: str | None = None) -> layouts.Layout:
    """The layout a run's weights go out in (the one named, else its model's own), refused in one line when that
    layout's code cannot build the model as the run built it: a plain network, a model of no layout or of another,
    or shortcuts other than the layout's."""
    name = config.model.name
    layouts.check_has_shortcuts(name)
    if layout_name is not None and layout_name not in layouts.LAYOUTS:
        raise InteropError(f"unknown layout {layout_name!r}; choose one of {', '.join(layouts.LAYOUTS)}")
    layout = layouts.LAYOUTS[layout_name] if layout_name else layouts.layout_for_model(name)
    layouts.check_layout_holds(name, layout)
    own = models.get_model(name).shortcut
    if config.model.shortcut and config.model.shortcut != own:
        raise InteropError(
            f"{name} was built with model.shortcut={config.model.shortcut!r}, and the {layout.name} layout's code "
            f"builds it with shortcut {own!r} ({'parameter-free' if own == 'A' else '1x1 projections'}); no torch "
            "class of it would load these weights"
        )
    return layout


def run_metadata(run: inference.TrainedRun, layout: layouts.Layout) -> dict[str, Any]:
    """What a weight file records of its run, for `converted_config` to build the same run again: the model, layout,
    classes, input shape and the data section (its normalisation as the run applied it)."""
    section = run.config.data
    mean, std = data.config_normalization(section)
    recorded = json.loads(json.dumps(section.to_dict(), default=list)) | {"mean": list(mean), "std": list(std)}
    return {
        "model": run.config.model.name,
        "layout": layout.name,
        "classes": len(run.class_names),
        "class_names": list(run.class_names),
        "input_shape": list(run.input_shape),
        "step": run.step,
        "workdir": str(run.workdir.absolute()),
        "data": recorded,
    }


def run_state_dict(
    workdir: str | os.PathLike, checkpoint: str = "latest", layout_name: str | None = None
) -> tuple[dict[str, np.ndarray], layouts.Layout, inference.TrainedRun]:
    """A run's evaluated weights (its EMA when it kept one) as a torch state_dict in `layout_name` (default: the
    layout its model is written in), and the run they came from."""
    layout = layout_of_run(inference.load_run_config(Path(workdir)), layout_name)
    run = inference.restore_run(workdir, checkpoint)
    variables = jax.device_get(run.variables)
    state_dict = layouts.to_state_dict(variables, layout, batches_tracked=run.step)
    # What the layout's code builds, for these classes and input channels: the file must be exactly that.
    expected = layouts.expected_keys(run.config.model.name, len(run.class_names), layout, run.input_shape[-1])
    problem = layouts.first_misfit(state_dict, expected)
    if problem:
        raise InteropError(
            f"{run.config.model.name} as this run built it does not fit the {layout.name} layout: {problem}"
        )
    return state_dict, layout, run


def write_run_weights(
    workdir: str | os.PathLike, out: str | os.PathLike, checkpoint: str = "latest", layout_name: str | None = None
) -> tuple[Path, layouts.Layout, inference.TrainedRun]:
    """Writes a run's weights to `out` (.safetensors or .pth) in a torch layout; what `run_state_dict` says. A
    .safetensors file also records the run (`run_metadata`), so that `write_converted_run` brings it back as it was."""
    atomic.check_names(out, "--to")  # before the run is restored, not after
    state_dict, layout, run = run_state_dict(workdir, checkpoint, layout_name)
    return files.write_state_dict(state_dict, out, run_metadata(run, layout)), layout, run


def expected_torch_keys(model_name: str, num_classes: int, layout_name: str | None = None) -> Mapping[str, Any]:
    """The torch keys and shapes a zoo model's state_dict has in a layout (default: the model's own)."""
    layout = layouts.LAYOUTS[layout_name] if layout_name else layouts.layout_for_model(model_name)
    models.get_model(model_name)  # an unknown name fails here, in one line
    return layouts.expected_keys(model_name, num_classes, layout)
