"""The arguments of every tool on a trained run, defined once: `--workdir`, `--checkpoint latest|best|STEP` and
`--tta none|flip`, what `--tta`'s default means, and the errors those tools end in one line.
"""

from __future__ import annotations

import argparse

from resnet_jax import images, inference
from resnet_jax.tools import common

TTA_CHOICES = ("none", "flip")
ERRORS = (*common.INPUT_ERRORS, inference.RunError, images.ImageError)


def checkpoint_argument(text: str) -> str:
    """argparse type for `--checkpoint`: latest, best or a step number."""
    if inference.is_checkpoint_name(text):
        return text
    raise argparse.ArgumentTypeError(f"{text!r} is not latest, best or a step number")


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", required=True, help="the workdir of a training run")
    parser.add_argument(
        "--checkpoint",
        type=checkpoint_argument,
        default="latest",
        help="latest (default), best (the highest validation accuracy the run recorded) or a step number",
    )
    parser.add_argument(
        "--tta",
        choices=TTA_CHOICES,
        default=None,
        help="flip: average the logits of each image and its mirror (default: the run's eval.tta_flip)",
    )


def tta_flip(run: inference.TrainedRun, tta: str | None) -> bool:
    """`--tta`; its default follows the run's own `eval.tta_flip`, as the run's test numbers did."""
    return bool(run.config.eval.tta_flip) if tta is None else tta == "flip"
