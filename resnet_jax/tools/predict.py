"""Predicts the classes of image files with a training run's weights. Each PNG or JPEG file is brought to the
dataset's images (grey or RGB, its native size) and padded like the training data, or for a run of the grain loader
centre cropped as its evaluation crops, then scored by the trainer's eval step; the top classes are printed with
their probabilities. A file that is missing or not an image is named on stderr, the others are still predicted,
and the exit status is then 2.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from resnet_jax import images, inference, runtime
from resnet_jax.inference import TrainedRun
from resnet_jax.tools import common, run_arguments


@dataclasses.dataclass
class Prediction:
    """The top-k classes of one image, or the reason it could not be read."""

    image: str
    top_k: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # {"class", "index", "probability"}
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"image": self.image, "error": self.error} if self.error else {"image": self.image, "top_k": self.top_k}


DEFAULT_TOP_K = 3  # classes listed per image unless --top-k says (every class of a run with fewer)


def predict_files(
    run: TrainedRun, paths: Sequence[str | Path], top_k: int | None = None, tta_flip: bool = False
) -> list[Prediction]:
    """The `top_k` classes (None: `DEFAULT_TOP_K`, or all of a run with fewer) with softmax probabilities for each
    file, in order. A file that cannot be read gets a Prediction with `error` set; the others are still predicted.
    A `top_k` outside 1 to the run's class count is a RunError, before any file is read: a list cut to the classes
    would not be what was asked."""
    names = run.class_names
    if top_k is None:
        top_k = min(DEFAULT_TOP_K, len(names))
    elif not 1 <= top_k <= len(names):
        raise inference.RunError(
            f"--top-k={top_k}: this run has {len(names)} classes; give 1 to {len(names)} (--top-k={len(names)} "
            "lists every class)"
        )
    predictions = [Prediction(str(path)) for path in paths]
    readable = {}
    for index, path in enumerate(paths):
        try:
            readable[index] = images.read_image(path, run.experiment.info, run.input_shape, run.experiment.streamed)
        except images.ImageError as error:
            predictions[index].error = str(error)
    if not readable:
        return predictions
    probabilities = inference.class_probabilities(run, np.stack(list(readable.values())), tta_flip)
    for index, row in zip(readable, probabilities, strict=True):
        best = np.argsort(-row, kind="stable")[:top_k]
        predictions[index].top_k = [
            {"class": names[label], "index": int(label), "probability": float(row[label])} for label in best
        ]
    return predictions


def format_predictions(predictions: Sequence[Prediction]) -> str:
    lines = []
    for prediction in predictions:
        if not prediction.error:
            ranked = "  ".join(f"{entry['class']} {entry['probability']:.3f}" for entry in prediction.top_k)
            lines.append(f"{prediction.image}: {ranked}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = common.parser("predict", __doc__)
    run_arguments.add_run_arguments(parser, reads_data=True)
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="PNG/JPEG files")
    parser.add_argument(
        "--top-k",
        type=int,
        help=f"how many classes to list per image, at most the run's (default {DEFAULT_TOP_K}, or every class of a "
        "run with fewer)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON list instead of text")
    args, overrides = run_arguments.parse_run_args(parser, argv)
    if args.top_k is not None and args.top_k < 1:
        parser.error(f"--top-k={args.top_k} must be at least 1")
    runtime.setup_logging()  # absl's warnings (a tfds folder not prepared) are not the predictions' business
    try:
        run = inference.restore_run(args.workdir, args.checkpoint, overrides=overrides)
        predictions = predict_files(run, args.images, args.top_k, run_arguments.tta_flip(run, args.tta))
    except run_arguments.ERRORS as error:
        common.fail(error)
    if args.json:
        print(json.dumps([prediction.to_dict() for prediction in predictions], indent=2))
    elif any(not prediction.error for prediction in predictions):
        print(format_predictions(predictions))
    failed = [prediction.error for prediction in predictions if prediction.error]
    for error in failed:
        print(f"error: {error}", file=sys.stderr)
    return common.BAD_INPUT if failed else 0


if __name__ == "__main__":
    sys.exit(main())
