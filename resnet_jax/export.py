"""Exporting a trained run's inference function with `jax.export`: weights folded in, the batch dimension
symbolic, normalisation included. The file is loaded with jax alone, without this package:

    exported = jax.export.deserialize(open("model.bin", "rb").read())
    logits = exported.call(uint8_images)  # (batch, H, W, C) in the network's input shape -> (batch, classes)

A JSON file beside it (`model.bin.json`) records the input shape, the class names and where the weights came from.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from resnet_jax.evaluate import (
    TOOL_ERRORS,
    TTA_CHOICES,
    RunError,
    TrainedRun,
    add_run_arguments,
    exit_on_tool_error,
    make_logits_fn,
    resolve_tta,
    restore_run,
)

# The artefact runs on CPUs and NVIDIA GPUs whichever of them exported it.
DEFAULT_PLATFORMS = ("cpu", "cuda")
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")


def export_run(
    run: TrainedRun, tta_flip: bool = False, platforms: Sequence[str] = DEFAULT_PLATFORMS
) -> jax.export.Exported:
    """`logits = f(uint8 images)` for any batch size, with the run's weights as constants."""
    # On the host, the weights become plain constants of the program rather than arrays placed on this mesh.
    logits_fn = make_logits_fn(run, tta_flip, variables=jax.device_get(run.variables))
    (batch,) = jax.export.symbolic_shape("batch")
    images = jax.ShapeDtypeStruct((batch, *run.input_shape), jnp.uint8)
    return jax.export.export(jax.jit(logits_fn), platforms=tuple(platforms))(images)


def describe_export(run: TrainedRun, exported: jax.export.Exported, tta_flip: bool) -> dict[str, Any]:
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
    """Writes the serialized function to `out_path` and its description to `out_path` + ".json"."""
    out_path = Path(out_path)
    if out_path.is_dir():
        raise RunError(f"--out {str(out_path)!r} is a folder; give a file name such as model.bin")
    exported = export_run(run, tta_flip, platforms)
    description_path = out_path.with_name(out_path.name + ".json")
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_bytes(exported.serialize())
        description_path.write_text(json.dumps(describe_export(run, exported, tta_flip), indent=2) + "\n")
    except OSError as error:
        raise RunError(f"cannot write {out_path}: {error.strerror or error}") from None
    return out_path, description_path


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m resnet_jax.export", description=__doc__.splitlines()[0])
    add_run_arguments(parser)
    parser.add_argument("--out", required=True, help="file to write, e.g. model.bin")
    parser.add_argument("--tta", choices=TTA_CHOICES, default=None, help="flip: average over the mirror image")
    parser.add_argument(
        "--platforms",
        default=",".join(DEFAULT_PLATFORMS),
        help=f"comma-separated, of {', '.join(PLATFORMS)} (default {','.join(DEFAULT_PLATFORMS)})",
    )
    args = parser.parse_args(argv)
    platforms = [name.strip() for name in args.platforms.split(",") if name.strip()]
    unknown = sorted(set(platforms) - set(PLATFORMS)) if platforms else ["(none)"]
    if unknown:
        parser.error(f"--platforms: {', '.join(unknown)} not known; choose from {', '.join(PLATFORMS)}")
    try:
        run = restore_run(args.workdir, args.checkpoint)
        tta_flip = resolve_tta(run, args.tta)
        out_path, description_path = write_export(run, args.out, tta_flip, platforms)
    except TOOL_ERRORS as error:
        exit_on_tool_error(error)
    print(
        f"exported {run.config.model.name} (checkpoint {run.step}) for {', '.join(platforms)} to {out_path} "
        f"({out_path.stat().st_size:,} bytes; input uint8 (batch, {', '.join(map(str, run.input_shape))})); "
        f"description in {description_path}"
    )


if __name__ == "__main__":
    main()
