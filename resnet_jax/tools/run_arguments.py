"""The arguments of every tool on a trained run, defined once: `--workdir`, `--checkpoint latest|best|STEP`,
`--tta none|flip` and, for the tools that read data, `--config.data.KEY=VALUE` / `--config.eval.KEY=VALUE`
overrides (and the kernels', `--config.model.conv_backend` / `norm_backend`); what `--tta`'s default means, and the
errors those tools end in one line.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

from resnet_jax import data, images, inference
from resnet_jax.tools import common

TTA_CHOICES = ("none", "flip")
ERRORS = (*common.INPUT_ERRORS, inference.RunError, images.ImageError)


def checkpoint_argument(text: str) -> str:
    """argparse type for `--checkpoint`: latest, best or a step number."""
    if inference.is_checkpoint_name(text):
        return text
    raise argparse.ArgumentTypeError(f"{text!r} is not latest, best or a step number")


DATA_OVERRIDES = (
    "--config.data.KEY=VALUE and --config.eval.KEY=VALUE override the run's data and evaluation settings (the model "
    "is the run's), e.g. --config.data.source=folder --config.data.files_dir=~/pets to read a folder of class "
    "folders of images, or --config.data.source=files --config.data.files_dir=DIR for official files; other data is "
    "brought to the run's input shape and normalised as the run was. The model computes in the dtype and on the "
    "kernels the run recorded (XLA's, said in one line, where those cannot run here); "
    "--config.model.conv_backend=xla|onednn|auto and --config.model.norm_backend=... name others."
)


def add_run_arguments(parser: argparse.ArgumentParser, reads_data: bool = False) -> None:
    """The run's arguments; `reads_data`: the tool also takes `--config.data.*` / `--config.eval.*` overrides (read
    with `parse_run_args`), which its --help then explains."""
    if reads_data:
        parser.epilog = textwrap.fill(DATA_OVERRIDES, 100)
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


def parse_run_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """`argv` (default: the command line) parsed, and its `--config.KEY=VALUE` overrides as `KEY=VALUE` texts for
    `inference.restore_run`."""
    rest, overrides = common.split_config_overrides(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(rest)
    try:
        inference.check_reading_overrides(overrides)  # before any work
    except inference.RunError as error:
        common.fail(error)
    return args, overrides


def data_tag(run: inference.TrainedRun, overrides: Sequence[str]) -> str:
    """`-<name>` of the data that overrides put in place of the run's (a folder's or files' folder name, else the
    dataset), for default output names that keep the run's own results apart; "" for the run's own data."""
    if not overrides:
        return ""
    section, own = run.config.data, inference.load_run_config(run.workdir).data
    if all(section[key] == own[key] for key in ("dataset", "source", "files_dir", "data_dir")):
        return ""
    name = Path(section.files_dir).name.split(".")[0] if section.files_dir else section.dataset
    return "-" + ("".join(c if c.isalnum() or c in "_+-" else "-" for c in name) or section.dataset)


def check_split(run: inference.TrainedRun, split: str) -> None:
    """`--split` names a split the run (or the data given by overrides) has: a run that held no validation split out
    cannot be given one now (`--config.data.validation_size` would score rows it trained on)."""
    if split == data.VALIDATION and data.VALIDATION not in run.experiment.eval_splits:
        raise inference.RunError(
            "--split validation: this run has no validation split (it held none out of train); score --split test "
            "or --split train"
        )


def tta_flip(run: inference.TrainedRun, tta: str | None) -> bool:
    """`--tta`; its default follows the run's own `eval.tta_flip`, as the run's test numbers did."""
    return bool(run.config.eval.tta_flip) if tta is None else tta == "flip"
