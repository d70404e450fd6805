"""Predicting the classes of image files with a trained run: PNG/JPEG files are read with Pillow, brought to the
dataset's input shape the way the training data was, and scored by the trainer's eval step.

`python -m resnet_jax.predict --workdir DIR IMAGE [IMAGE ...] [--top-k 3] [--json]`
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from resnet_jax import data
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


def read_image(path: str | Path, info: data.DatasetInfo, input_shape: Sequence[int]) -> np.ndarray:
    """One file as a uint8 image of `input_shape` (H, W, C), prepared as the dataset's images were: grey or RGB
    as the dataset is, resized to its native size, then padded/repeated as `data.to_input_shape` does.

    Raises RunError naming the file when it is missing or not an image.
    """
    path = Path(path)
    height, width, native_channels = info.image_shape
    try:
        with Image.open(path) as opened:
            image = ImageOps.exif_transpose(opened).convert("L" if native_channels == 1 else "RGB")
            if image.size != (width, height):
                image = image.resize((width, height), Image.Resampling.BICUBIC)
            pixels = np.asarray(image, np.uint8)
    except FileNotFoundError:
        raise RunError(f"{path}: no such file") from None
    except UnidentifiedImageError:
        raise RunError(f"{path}: not an image Pillow can read (PNG, JPEG, ...)") from None
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise RunError(f"{path}: cannot be read as an image ({error})") from None
    pixels = pixels.reshape(height, width, native_channels)
    input_height, _, channels = input_shape
    return data.to_input_shape(pixels[None], input_height, channels)[0]


@dataclasses.dataclass
class Prediction:
    """The top-k classes of one image, or the reason it could not be read."""

    image: str
    top_k: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # {"class", "index", "probability"}
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"image": self.image, "error": self.error} if self.error else {"image": self.image, "top_k": self.top_k}


def predict_files(
    run: TrainedRun, paths: Sequence[str | Path], top_k: int = 3, tta_flip: bool = False
) -> list[Prediction]:
    """Top-k classes with softmax probabilities for each file, in order. A file that cannot be read gets a
    Prediction with `error` set; the others are still predicted."""
    predictions = [Prediction(str(path)) for path in paths]
    images = {}
    for index, path in enumerate(paths):
        try:
            images[index] = read_image(path, run.experiment.info, run.input_shape)
        except RunError as error:
            predictions[index].error = str(error)
    if not images:
        return predictions
    logits_fn = jax.jit(make_logits_fn(run, tta_flip))
    batch = max(1, int(run.config.eval.batch_size))
    order = list(images)
    names = run.class_names
    top_k = max(1, min(top_k, len(names)))
    for start in range(0, len(order), batch):
        chunk = order[start : start + batch]
        logits = np.asarray(jax.device_get(logits_fn(np.stack([images[index] for index in chunk]))), np.float64)
        probabilities = np.exp(logits - logits.max(-1, keepdims=True))
        probabilities /= probabilities.sum(-1, keepdims=True)
        for index, row in zip(chunk, probabilities, strict=True):
            best = np.argsort(-row, kind="stable")[:top_k]
            predictions[index].top_k = [
                {"class": names[label], "index": int(label), "probability": float(row[label])} for label in best
            ]
    return predictions


def format_predictions(predictions: Sequence[Prediction]) -> str:
    lines = []
    for prediction in predictions:
        if prediction.error:
            continue
        ranked = "  ".join(f"{entry['class']} {entry['probability']:.3f}" for entry in prediction.top_k)
        lines.append(f"{prediction.image}: {ranked}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m resnet_jax.predict", description=__doc__.splitlines()[0])
    add_run_arguments(parser)
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="PNG/JPEG files")
    parser.add_argument("--top-k", type=int, default=3, help="how many classes to list per image (default 3)")
    parser.add_argument("--tta", choices=TTA_CHOICES, default=None, help="flip: average over the mirror image")
    parser.add_argument("--json", action="store_true", help="print one JSON list instead of text")
    args = parser.parse_args(argv)
    if args.top_k < 1:
        parser.error(f"--top-k={args.top_k} must be at least 1")
    try:
        run = restore_run(args.workdir, args.checkpoint)
        predictions = predict_files(run, args.images, args.top_k, resolve_tta(run, args.tta))
    except TOOL_ERRORS as error:
        exit_on_tool_error(error)
    if args.json:
        print(json.dumps([prediction.to_dict() for prediction in predictions], indent=2))
    elif any(not prediction.error for prediction in predictions):
        print(format_predictions(predictions))
    failed = [prediction.error for prediction in predictions if prediction.error]
    for error in failed:
        print(f"error: {error}", file=sys.stderr)
    if failed:
        raise SystemExit(2)


if __name__ == "__main__":
    main()
