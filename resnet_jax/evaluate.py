"""Evaluating a trained run: restore a checkpoint of a workdir and score every example of a split with the
trainer's own eval step, then write the report, the confusion matrix and its heat map under `DIR/eval/`.

`restore_run` and `make_logits_fn` are shared with `predict` and `export`, so all three compute the same logits.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from resnet_jax import configuration, metrics, parallel, pipeline, plots, runtime, steps, trainer
from resnet_jax.checkpoint import Checkpointer, CheckpointError
from resnet_jax.configuration import ConfigError
from resnet_jax.data import DataError

CHECKPOINT_NAMES = ("latest", "best")
TTA_CHOICES = ("none", "flip")


class RunError(RuntimeError):
    """A workdir, checkpoint or input file the tools cannot use; the message is one line naming it and the fix."""


TOOL_ERRORS = (RunError, CheckpointError, ConfigError, DataError)


@dataclasses.dataclass
class TrainedRun:
    """A workdir's model restored from one checkpoint, with everything needed to run it."""

    workdir: Path
    config: ml_collections.ConfigDict
    experiment: trainer.Experiment
    checkpoint: str  # as asked for: "latest", "best" or a step
    step: int
    variables: Any  # the weights the trainer evaluates (the EMA when the run kept one), replicated on the mesh

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.experiment.info.class_names

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.experiment.input_shape


def checkpoint_argument(text: str) -> str:
    """argparse type for `--checkpoint`: latest, best or a step number."""
    if text in CHECKPOINT_NAMES or (text.isdigit() and int(text) >= 0):
        return text
    raise argparse.ArgumentTypeError(f"{text!r} is not latest, best or a step number")


def load_run_config(workdir: str | Path) -> ml_collections.ConfigDict:
    """The config a workdir was trained with (DIR/config.json)."""
    workdir = Path(workdir)
    if not workdir.is_dir():
        raise RunError(f"--workdir {str(workdir)!r} is not a folder; give the --workdir a training run used")
    path = workdir / configuration.CONFIG_FILE
    if not path.is_file():
        raise RunError(
            f"{workdir} has no {configuration.CONFIG_FILE}, so it is not a training workdir; "
            f"train one first: python train.py --workdir {workdir} --config configs/NAME.py"
        )
    try:
        return configuration.load_json(path)
    except (OSError, ValueError) as error:
        raise RunError(f"{path} cannot be read as JSON ({error}); it is damaged") from None


def _resolve_step(checkpointer: Checkpointer, checkpoint: str) -> int:
    available = checkpointer.steps()
    where = checkpointer.directory
    if not available:
        raise RunError(f"{where} holds no checkpoint; train first, or give the --workdir of a finished run")
    if checkpoint == "latest":
        return available[-1]
    if checkpoint == "best":
        best = checkpointer.best_step()
        if best is None:
            raise RunError(f"no checkpoint in {where} recorded a test accuracy; use --checkpoint latest")
        return best
    step = int(checkpoint)
    if step not in available:
        raise RunError(
            f"checkpoint step {step} is not in {where}; available: {', '.join(map(str, available))}, latest, best"
        )
    return step


def restore_run(workdir: str | Path, checkpoint: str = "latest", mesh: jax.sharding.Mesh | None = None) -> TrainedRun:
    """Rebuilds a workdir's model from its config.json and restores one checkpoint (latest, best or a step)."""
    workdir = Path(workdir)
    config = load_run_config(workdir)
    experiment = trainer.build_experiment(config, mesh)
    directory = workdir / "checkpoints"
    if not directory.is_dir():
        raise RunError(f"{workdir} holds no checkpoints/ folder; train first, or give the --workdir of a finished run")
    checkpointer = Checkpointer(directory, async_save=False, create=False)
    try:
        step = _resolve_step(checkpointer, checkpoint)
        # Shapes only: every array of the state comes from the checkpoint, so nothing is initialised or compiled.
        state = experiment.lower_new_state().out_info
        replicated = parallel.replicated(experiment.mesh)
        abstract = jax.tree.map(
            lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=replicated), state.checkpoint_tree()
        )
        try:
            tree, _ = checkpointer.restore(step, abstract)
        except Exception as error:  # orbax and tensorstore raise many types for damaged or mismatched files
            reason = str(error).splitlines()[0][:300] if str(error) else type(error).__name__
            raise CheckpointError(
                f"checkpoint {step} in {directory} cannot be restored into {config.model.name} ({reason}); "
                "pick another with --checkpoint"
            ) from None
    finally:
        checkpointer.close()
    state = state.replace_from_checkpoint(tree)
    return TrainedRun(workdir, config, experiment, checkpoint, step, state.eval_variables)


def resolve_tta(run: TrainedRun, tta: str | None) -> bool:
    """`--tta none|flip`; None follows the run's own `eval.tta_flip`, as the trainer's test numbers did."""
    return bool(run.config.eval.tta_flip) if tta is None else tta == "flip"


def make_logits_fn(run: TrainedRun, tta_flip: bool = False, variables: Any = None) -> Callable[[jax.Array], jax.Array]:
    """`logits(uint8 images in the input shape) -> float32 (batch, classes)`: the trainer's eval step, with its
    normalisation, on `variables` (default: the run's)."""
    eval_step = steps.make_eval_step(run.experiment.step_config, run.experiment.model.apply, tta_flip=tta_flip)
    variables = run.variables if variables is None else variables

    def logits(images: jax.Array) -> jax.Array:
        count = images.shape[0]
        return eval_step(variables, images, jnp.zeros((count,), jnp.int32), jnp.ones((count,), bool))[1]

    return logits


@dataclasses.dataclass
class Evaluation:
    """Every example of a split, scored: logits and labels in the split's order, and the trainer's summary."""

    split: str
    tta_flip: bool
    labels: np.ndarray  # int32 (N,)
    logits: np.ndarray  # float32 (N, classes)
    summary: dict[str, float]  # the trainer's summarize_eval: <split>_loss, <split>_accuracy, ...

    @property
    def num_examples(self) -> int:
        return len(self.labels)

    @property
    def accuracy(self) -> float:
        return self.summary[f"{self.split}_accuracy"]

    @property
    def loss(self) -> float:
        return self.summary[f"{self.split}_loss"]


def evaluate_split(run: TrainedRun, split: str = "test", tta_flip: bool = False) -> Evaluation:
    """Runs the trainer's evaluation, data parallel over the run's mesh, on every example of `split`."""
    experiment = run.experiment
    device_split, num_examples = experiment.load_eval_split(split)
    evaluate = experiment.make_evaluate(tta_flip=tta_flip, return_logits=True)
    sums, per_batch = evaluate(run.variables, device_split)
    logits = pipeline.eval_outputs_in_split_order(np.asarray(jax.device_get(per_batch)), experiment.mesh.devices.size)
    labels = np.asarray(jax.device_get(device_split.labels))
    return Evaluation(
        split,
        tta_flip,
        labels[:num_examples],
        logits[:num_examples].astype(np.float32),
        trainer.summarize_eval(sums, prefix=split),
    )


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts with true classes along rows and predicted classes along columns."""
    flat = np.bincount(labels * num_classes + predictions, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)


def build_report(run: TrainedRun, evaluation: Evaluation, matrix: np.ndarray) -> dict[str, Any]:
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
        "devices": int(run.experiment.mesh.devices.size),
        "accuracy": evaluation.accuracy,
        "loss": evaluation.loss,
        "top5_accuracy": evaluation.summary[f"{evaluation.split}_top5_accuracy"],
        "per_class": per_class,
    }


def output_dir(run: TrainedRun, split: str, tta_flip: bool) -> Path:
    """DIR/eval/<checkpoint>, with -<split> for a split other than test and -tta_flip with flip averaging."""
    name = run.checkpoint + ("" if split == "test" else f"-{split}") + ("-tta_flip" if tta_flip else "")
    return run.workdir / "eval" / name


def write_outputs(
    run: TrainedRun, evaluation: Evaluation, out_dir: str | Path | None = None
) -> tuple[dict[str, Any], dict[str, Path]]:
    """Writes report.json, confusion_matrix.csv and confusion_matrix.png; returns the report and the paths."""
    out_dir = Path(out_dir) if out_dir is not None else output_dir(run, evaluation.split, evaluation.tta_flip)
    out_dir.mkdir(parents=True, exist_ok=True)
    matrix = confusion_matrix(evaluation.labels, evaluation.logits.argmax(-1), len(run.class_names))
    report = build_report(run, evaluation, matrix)
    paths = {name: out_dir / name for name in ("report.json", "confusion_matrix.csv", "confusion_matrix.png")}
    paths["report.json"].write_text(json.dumps(report, indent=2) + "\n")
    with paths["confusion_matrix.csv"].open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["true \\ predicted", *run.class_names])
        writer.writerows([name, *map(int, row)] for name, row in zip(run.class_names, matrix, strict=True))
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
        f"{report['num_examples']} examples, tta {tta}, {report['devices']} device(s)",
        f"accuracy {report['accuracy']:.4f}  loss {report['loss']:.4f}  top-5 accuracy {report['top5_accuracy']:.4f}",
        "per-class accuracy:",
    ]
    width = max(len(entry["class"]) for entry in report["per_class"])
    for entry in report["per_class"]:
        accuracy = "   -  " if entry["accuracy"] is None else f"{entry['accuracy']:.4f}"
        lines.append(f"  {entry['class']:<{width}}  {accuracy}  ({entry['correct']}/{entry['examples']})")
    return "\n".join(lines)


def exit_on_tool_error(error: Exception) -> NoReturn:
    """Ends a tool's CLI with the error as one line on stderr and exit status 2."""
    print("error: " + " ".join(str(error).split()), file=sys.stderr)
    raise SystemExit(2)


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """--workdir and --checkpoint, as every tool on a trained run takes them."""
    parser.add_argument("--workdir", required=True, help="the workdir of a training run")
    parser.add_argument(
        "--checkpoint", type=checkpoint_argument, default="latest", help="latest (default), best or a step number"
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m resnet_jax.evaluate", description=__doc__.splitlines()[0])
    add_run_arguments(parser)
    parser.add_argument("--split", default="test", choices=("test", "train"))
    parser.add_argument(
        "--tta",
        choices=TTA_CHOICES,
        default=None,
        help="flip: average logits over each image and its mirror (default: the run's eval.tta_flip)",
    )
    parser.add_argument("--out", default=None, help="output folder (default: DIR/eval/<checkpoint>[-split][-tta_flip])")
    args = parser.parse_args(argv)
    runtime.setup_logging()
    try:
        run = restore_run(args.workdir, args.checkpoint)
        examples, _ = run.experiment.eval_split_rows(args.split)
        devices = run.experiment.mesh.devices.size
        with metrics.stage(f"scoring {examples:,} {args.split} examples on {devices} device(s), compile included"):
            evaluation = evaluate_split(run, args.split, resolve_tta(run, args.tta))
        report, paths = write_outputs(run, evaluation, args.out)
    except TOOL_ERRORS as error:
        exit_on_tool_error(error)
    print(format_report(report))
    print(f"wrote {', '.join(str(path) for path in paths.values())}")


if __name__ == "__main__":
    main()
