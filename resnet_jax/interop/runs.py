"""Weights moved between a PyTorch file and a run's workdir. A converted run is an ordinary workdir: `config.json`,
one checkpoint at step 0 in the current state format (fresh optimizer state), and `conversion.json` saying where
its weights came from, so that evaluate, predict, export, train (which resumes it) and a fine-tune read it as is.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from resnet_jax import atomic, configuration, data, experiment, inference, lock, models, pipeline
from resnet_jax.checkpoint import Checkpointer
from resnet_jax.interop import files, layouts
from resnet_jax.interop.layouts import InteropError, Match
from resnet_jax.workdir import CHECKPOINTS_DIR

CONVERSION_FILE = "conversion.json"


def converted_config(found: Match, dataset: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """`experiment.base_config()` for the matched model on `dataset`, normalised as the layout's own training code
    normalised its inputs (three-channel data), with `key=value` overrides applied last."""
    config = experiment.base_config()
    config.model.name = found.model_name
    config.data.dataset = dataset
    config = configuration.apply_override_texts(config, list(overrides))
    layouts.check_has_shortcuts(config.model.name)
    data.check_config(config.data)
    if not config.data.mean and not config.data.std and data.config_input_shape(config.data)[-1] == 3:
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
    dataset: str,
    layout_name: str | None = None,
    overrides: Sequence[str] = (),
) -> dict[str, Any]:
    """Converts a weight file into a new run in `workdir`; returns what `conversion.json` records.

    When the file's head has another class count than `dataset`, the head starts fresh (from the config's seed)
    and the backbone is kept: `conversion.json`'s `head` says "fresh" instead of "converted".
    """
    source, workdir = Path(source), Path(workdir)
    atomic.check_names(workdir, "--workdir")
    _refuse_a_run(workdir)
    state_dict = files.read_state_dict(source)
    try:
        found = layouts.match(state_dict, layout_name)
    except InteropError as error:
        raise InteropError(f"{source}: {error}") from None
    config = converted_config(found, dataset, overrides)
    # Built as the tools build a run (no training batch to fit), with the optimizer state a resume starts from.
    built = inference.build_for_inference(config)
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
    record = {
        "source": str(source.absolute()),
        "sha256": _sha256(source),
        "layout": found.layout.name,
        "model": found.model_name,
        "source_classes": found.num_classes,
        "classes": built.info.num_classes,
        "head": head,
        "keys": len(state_dict),
    }
    try:
        # Locked only now, so that a refused conversion leaves no folder behind.
        with lock.hold(workdir):
            _refuse_a_run(workdir)  # again: a run may have been started there while this one converted
            configuration.write_json(config, workdir / configuration.CONFIG_FILE)
            checkpointer = Checkpointer(workdir / CHECKPOINTS_DIR, keep=config.checkpoint.keep, async_save=False)
            try:
                meta = {"position": pipeline.DataPosition().to_dict(), "step": 0}
                checkpointer.save(0, state.checkpoint_tree(), meta | {"conversion": record})
                checkpointer.wait()
            finally:
                checkpointer.close()
            atomic.write_text(workdir / CONVERSION_FILE, json.dumps(record, indent=2) + "\n")
    except OSError as error:
        raise InteropError(f"cannot write the converted run into {workdir}: {error.strerror or error}") from None
    return record


def run_state_dict(
    workdir: str | os.PathLike, checkpoint: str = "latest", layout_name: str | None = None
) -> tuple[dict[str, np.ndarray], layouts.Layout, inference.TrainedRun]:
    """A run's evaluated weights (its EMA when it kept one) as a torch state_dict in `layout_name` (default: the
    layout its model is written in), and the run they came from."""
    layouts.check_has_shortcuts(inference.load_run_config(Path(workdir)).model.name)
    run = inference.restore_run(workdir, checkpoint)
    if layout_name is not None and layout_name not in layouts.LAYOUTS:
        raise InteropError(f"unknown layout {layout_name!r}; choose one of {', '.join(layouts.LAYOUTS)}")
    layout = layouts.LAYOUTS[layout_name] if layout_name else layouts.layout_for_model(run.config.model.name)
    variables = jax.device_get(run.variables)
    return layouts.to_state_dict(variables, layout, batches_tracked=run.step), layout, run


def write_run_weights(
    workdir: str | os.PathLike, out: str | os.PathLike, checkpoint: str = "latest", layout_name: str | None = None
) -> tuple[Path, layouts.Layout, inference.TrainedRun]:
    """Writes a run's weights to `out` (.safetensors or .pth) in a torch layout; what `run_state_dict` says."""
    atomic.check_names(out, "--to")  # before the run is restored, not after
    state_dict, layout, run = run_state_dict(workdir, checkpoint, layout_name)
    return files.write_state_dict(state_dict, out), layout, run


def expected_torch_keys(model_name: str, num_classes: int, layout_name: str | None = None) -> Mapping[str, Any]:
    """The torch keys and shapes a zoo model's state_dict has in a layout (default: the model's own)."""
    layout = layouts.LAYOUTS[layout_name] if layout_name else layouts.layout_for_model(model_name)
    models.get_model(model_name)  # an unknown name fails here, in one line
    return layouts.expected_keys(model_name, num_classes, layout)
