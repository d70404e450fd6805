"""A trained run's inference function as a `jax.export` artefact: weights folded in, the batch dimension
symbolic, normalisation included, so that jax alone (without this package) loads and runs it:

    exported = jax.export.deserialize(open("model.bin", "rb").read())
    logits = exported.call(uint8_images)  # (batch, H, W, C) in the network's input shape -> (batch, classes)

A JSON file beside it (`model.bin.json`) records the input shape, the class names and where the weights came from.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from resnet_jax import atomic
from resnet_jax.inference import RunError, TrainedRun, make_logits_fn

# The artefact runs on CPUs and NVIDIA GPUs whichever of them exported it.
DEFAULT_PLATFORMS = ("cpu", "cuda")
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")


def export_run(
    run: TrainedRun, tta_flip: bool = False, platforms: Sequence[str] = DEFAULT_PLATFORMS
) -> jax.export.Exported:
    """`logits = f(uint8 images)` for any batch size, with the run's weights as constants."""
    # The artefact must run wherever jax does, without this package's oneDNN extension: XLA's convolutions.
    xla_model = run.experiment.model.clone(conv_backend="xla", norm_backend="xla")
    run = dataclasses.replace(run, experiment=dataclasses.replace(run.experiment, model=xla_model))
    # On the host, the weights become plain constants of the program rather than arrays placed on this mesh.
    logits_fn = make_logits_fn(run, tta_flip, variables=jax.device_get(run.variables))
    (batch,) = jax.export.symbolic_shape("batch")
    images = jax.ShapeDtypeStruct((batch, *run.input_shape), jnp.uint8)
    return jax.export.export(jax.jit(logits_fn), platforms=tuple(platforms))(images)


def describe_export(run: TrainedRun, exported: jax.export.Exported, tta_flip: bool) -> dict[str, Any]:
    """What `model.bin.json` records: the input and output, the classes, the platforms and the weights' origin."""
    return {
        "input": {"shape": ["batch", *run.input_shape], "dtype": "uint8", "layout": "NHWC"},
        "output": {"shape": ["batch", len(run.class_names)], "dtype": "float32", "meaning": "logits"},
        "class_names": list(run.class_names),
        "platforms": list(exported.platforms),
        "tta_flip": tta_flip,
        "model": run.config.model.name,
        "dataset": run.config.data.dataset,
        "workdir": str(run.workdir),
        "checkpoint": run.checkpoint,
        "step": run.step,
    }


def write_export(
    run: TrainedRun, out_path: str | Path, tta_flip: bool = False, platforms: Sequence[str] = DEFAULT_PLATFORMS
) -> tuple[Path, Path]:
    """Writes the serialized function to `out_path` and its description to `out_path` + ".json", each atomically
    and both renamed into place only once both are written: a kill or a full disk leaves the previous pair whole."""
    out_path = Path(out_path)
    if out_path.is_dir():
        raise RunError(f"{out_path} is a folder; give a file name such as model.bin")
    description_path = out_path.with_name(out_path.name + ".json")
    atomic.check_names(description_path, "--out (its description)")  # before the export's minutes, not after
    exported = export_run(run, tta_flip, platforms)
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        with atomic.replacing(out_path) as model_file, atomic.replacing(description_path) as description_file:
            model_file.write_bytes(exported.serialize())
            description_file.write_text(json.dumps(describe_export(run, exported, tta_flip), indent=2) + "\n")
    except OSError as error:
        reason = error.strerror or error
        raise RunError(f"cannot write {out_path} ({reason}); give --out a place you can write") from None
    return out_path, description_path
