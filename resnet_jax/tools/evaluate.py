"""Scores one checkpoint of a training run on every example of a split, data parallel over every device, with the
trainer's own eval step. It prints accuracy, loss and per-class accuracy, and writes report.json,
confusion_matrix.csv and confusion_matrix.png under DIR/eval/<checkpoint>[-<split>][-tta_flip]/. Scoring test, a run
with a validation split is scored on it too: report.json's `splits` gives both.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from resnet_jax import atomic, data, inference, metrics, plots, runtime
from resnet_jax.inference import Evaluation, TrainedRun
from resnet_jax.tools import common, run_arguments

OUTPUT_FILES = ("report.json", "confusion_matrix.csv", "confusion_matrix.png")


def split_summary(evaluation: Evaluation) -> dict[str, Any]:
    return {
        "num_examples": evaluation.num_examples,
        "accuracy": evaluation.accuracy,
        "loss": evaluation.loss,
        "top5_accuracy": evaluation.top5_accuracy,
    }


def build_report(
    run: TrainedRun, evaluation: Evaluation, matrix: np.ndarray, others: Sequence[Evaluation] = ()
) -> dict[str, Any]:
    """report.json: where the weights came from, the split's accuracy, loss and top-5 accuracy, and each class's;
    `splits`: those of every split scored (`others` too: the validation split beside test)."""
    examples, correct = matrix.sum(axis=1), np.diag(matrix)
    per_class = [
        {
            "class": name,
            "index": index,
            "examples": int(examples[index]),
            "correct": int(correct[index]),
            "accuracy": float(correct[index] / examples[index]) if examples[index] else None,
        }
        for index, name in enumerate(run.class_names)
    ]
    return {
        "workdir": str(run.workdir),
        "checkpoint": run.checkpoint,
        "step": run.step,
        "model": run.config.model.name,
        "dataset": run.config.data.dataset,
        "split": evaluation.split,
        "tta_flip": evaluation.tta_flip,
        "num_examples": evaluation.num_examples,
        "devices": run.num_devices,
        "accuracy": evaluation.accuracy,
        "loss": evaluation.loss,
        "top5_accuracy": evaluation.top5_accuracy,
        "splits": {scored.split: split_summary(scored) for scored in (*others, evaluation)},
        "per_class": per_class,
    }


def output_dir(run: TrainedRun, split: str, tta_flip: bool, tag: str = "") -> Path:
    """DIR/eval/<checkpoint>, with -<split> for a split other than test, -tta_flip with flip averaging and `tag`
    (`-<name>`) for other data than the run's."""
    name = run.checkpoint + ("" if split == "test" else f"-{split}") + ("-tta_flip" if tta_flip else "") + tag
    return run.workdir / "eval" / name


def write_outputs(
    run: TrainedRun, evaluation: Evaluation, out_dir: str | Path | None = None, others: Sequence[Evaluation] = ()
) -> tuple[dict[str, Any], dict[str, Path]]:
    """Writes report.json, confusion_matrix.csv and confusion_matrix.png (of `evaluation`'s split); returns the
    report and the paths."""
    out_dir = Path(out_dir) if out_dir is not None else output_dir(run, evaluation.split, evaluation.tta_flip)
    out_dir.mkdir(parents=True, exist_ok=True)
    matrix = inference.confusion_matrix(evaluation.labels, evaluation.logits.argmax(-1), len(run.class_names))
    report = build_report(run, evaluation, matrix, others)
    paths = {name: out_dir / name for name in OUTPUT_FILES}
    atomic.write_text(paths["report.json"], json.dumps(report, indent=2) + "\n")
    table = io.StringIO(newline="")
    writer = csv.writer(table)
    writer.writerow(["true \\ predicted", *run.class_names])
    writer.writerows([name, *map(int, row)] for name, row in zip(run.class_names, matrix, strict=True))
    atomic.write_text(paths["confusion_matrix.csv"], table.getvalue())
    title = (
        f"{run.config.model.name} on {run.config.data.dataset} {evaluation.split}, step {run.step}: "
        f"accuracy {evaluation.accuracy:.4f}"
    )
    plots.write_confusion_matrix(matrix, run.class_names, paths["confusion_matrix.png"], title)
    return report, paths


def format_report(report: dict[str, Any]) -> str:
    tta = "flip" if report["tta_flip"] else "none"
    lines = [
        f"{report['workdir']}: checkpoint {report['step']} ({report['checkpoint']}), {report['split']} split, "
        f"{common.plural(report['num_examples'], 'example')}, tta {tta}, {common.plural(report['devices'], 'device')}",
        f"accuracy {report['accuracy']:.4f}  loss {report['loss']:.4f}  top-5 accuracy {report['top5_accuracy']:.4f}",
    ]
    lines += [
        f"{split} split: accuracy {scored['accuracy']:.4f}  loss {scored['loss']:.4f}  "
        f"top-5 accuracy {scored['top5_accuracy']:.4f} ({common.plural(scored['num_examples'], 'example')})"
        for split, scored in report["splits"].items()
        if split != report["split"]
    ]
    lines.append(f"per-class accuracy ({report['split']}):")
    width = max(len(entry["class"]) for entry in report["per_class"])
    for entry in report["per_class"]:
        accuracy = "   -  " if entry["accuracy"] is None else f"{entry['accuracy']:.4f}"
        lines.append(f"  {entry['class']:<{width}}  {accuracy}  ({entry['correct']}/{entry['examples']})")
    return "\n".join(lines)


def _score(args: argparse.Namespace, overrides: Sequence[str]) -> tuple[TrainedRun, list[Evaluation], Path]:
    """The run restored, its evaluations (the validation split first, where test is scored beside it) and the
    files' folder, checked before the long part: a folder it cannot write ends the command at once."""
    try:
        run = inference.restore_run(args.workdir, args.checkpoint, overrides=overrides)
        run_arguments.check_split(run, args.split)
        tta_flip = run_arguments.tta_flip(run, args.tta)
        tag = run_arguments.data_tag(run, overrides)
        out_dir = common.output_folder(args.out or output_dir(run, args.split, tta_flip, tag), "--out")
        also = [data.VALIDATION] if args.split == "test" and data.VALIDATION in run.experiment.eval_splits else []
        evaluations = []
        for split in (*also, args.split):
            examples, _ = run.experiment.eval_split_rows(split)
            with metrics.stage(
                f"scoring {examples:,} {split} examples on {common.plural(run.num_devices, 'device')}, compile included"
            ):
                evaluations.append(inference.evaluate_split(run, split, tta_flip))
    except run_arguments.ERRORS as error:
        common.fail(error)
    return run, evaluations, out_dir


def main(argv: Sequence[str] | None = None) -> int:
    parser = common.parser("evaluate", __doc__)
    run_arguments.add_run_arguments(parser, reads_data=True)
    parser.add_argument(
        "--split",
        default="test",
        choices=("test", data.VALIDATION, "train"),
        help="the split to score (default test; with a validation split, scored too)",
    )
    parser.add_argument(
        "--out",
        default=None,
        help="the folder of the files (default: DIR/eval/<checkpoint>[-split][-tta_flip][-<data>], <data> naming "
        "other data given by --config.data overrides)",
    )
    args, overrides = run_arguments.parse_run_args(parser, argv)
    runtime.setup_logging()
    # Writing into the run (DIR/eval/), it holds the run's lock from before the weights are read until the files are
    # written: no training of the run (whose --fresh archives it) starts in between, and none runs while it scores.
    with common.writing_into(args.out or args.workdir, [args.workdir]):
        run, evaluations, out_dir = _score(args, overrides)
        *others, evaluation = evaluations
        try:
            report, paths = write_outputs(run, evaluation, out_dir, others)
        except OSError as error:
            common.fail(common.cannot_write(error.filename or out_dir, error, "--out"))
    print(format_report(report))
    print(f"wrote {', '.join(str(path) for path in paths.values())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
