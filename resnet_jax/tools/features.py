"""Writes a split's embeddings: every example through a run's network (its EMA when it kept one), in split order,
as the pooled vector its head reads (or a stage's map, averaged over space, with --layer), with the labels. With
--tta flip, each example's features are the mean of the image's and its mirror's (the head then reads the mean of
their logits, as evaluate's --tta flip scores). A streamed run's split is read as its evaluation read it (centre
crops, files that cannot be decoded left out), batch by batch.

--out emb.npz holds `features` (N, D) float32, `labels` (N,) int32 and `class_names`; --out emb.npy holds the
features, and emb.labels.npy beside it the labels. The default is DIR/features/<checkpoint>-<split>-<layer>[-tta_flip]
.npz.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax import atomic, augment, data, inference, metrics, runtime
from resnet_jax.tools import common, run_arguments

SUFFIXES = (".npz", ".npy")


def layer_names(run: inference.TrainedRun) -> tuple[str, ...]:
    """The layers a run's network returns features at: stem, stage1..N and pooled."""
    return ("stem", *(f"stage{index + 1}" for index in range(len(run.experiment.model.stage_sizes))), "pooled")


def feature_program(run: inference.TrainedRun, layer: str = "pooled", tta_flip: bool = False) -> Callable:
    """`features(variables, uint8 batch) -> float32 (B, D)`, jitted: the features at `layer` (maps averaged over
    space); with `tta_flip`, the mean of each image's and its mirror's. Made once, it compiles once per batch shape."""
    step_config, model = run.experiment.step_config, run.experiment.model

    def at_layer(variables, inputs):
        value = model.apply(variables, inputs, train=False, return_features=True)[1][layer]
        return (value if value.ndim == 2 else jnp.mean(value, axis=(1, 2))).astype(jnp.float32)

    @jax.jit
    def features(variables, batch):
        inputs = augment.normalize(batch, step_config.mean, step_config.std, step_config.dtype)
        value = at_layer(variables, inputs)
        if tta_flip:  # the mirror as evaluate's flip TTA takes it: along the width
            value = (value + at_layer(variables, inputs[:, :, ::-1, :])) / 2
        return value

    return features


def embed(
    run: inference.TrainedRun,
    images: np.ndarray,
    layer: str = "pooled",
    tta_flip: bool = False,
    program: Callable | None = None,
) -> np.ndarray:
    """float32 (N, D) features of uint8 images at `layer`, `eval.batch_size` at a time (`program`: a
    `feature_program` of the same layer and flip, to reuse its compilation)."""
    program = program or feature_program(run, layer, tta_flip)
    batch = max(1, min(int(run.config.eval.batch_size), len(images)))
    chunks = []
    for start in range(0, len(images), batch):
        part = images[start : start + batch]
        # The last batch is padded to the others' size, so that one program serves every batch.
        padded = np.concatenate([part, np.zeros((batch - len(part), *part.shape[1:]), part.dtype)])
        chunks.append(np.asarray(jax.device_get(program(run.variables, padded)))[: len(part)])
    return np.concatenate(chunks)


def embed_stream(
    run: inference.TrainedRun, split: str, layer: str = "pooled", tta_flip: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """A streamed run's (`data.loader=grain`) `split`, embedded batch by batch as its evaluation reads it: each image
    centre cropped (`crops.eval_image`), files that cannot be decoded left out; and the labels of those kept. Only
    the features are held, never the split's images."""
    program = feature_program(run, layer, tta_flip)
    eval_stream = run.experiment.open_eval_stream(split)
    features, labels = [], []
    try:
        for batch in eval_stream.batches():
            kept = batch["mask"]
            features.append(embed(run, batch["image"], layer, tta_flip, program)[kept])
            labels.append(batch["label"][kept])
    finally:
        eval_stream.close()
    return np.concatenate(features), np.concatenate(labels)


def labels_file(out: Path) -> Path:
    """Where the labels of `out` (a .npy file of features) go: emb.npy -> emb.labels.npy."""
    return out.with_name(out.stem + ".labels.npy")


def write(out: Path, features: np.ndarray, labels: np.ndarray, class_names: Sequence[str]) -> list[Path]:
    out.parent.mkdir(parents=True, exist_ok=True)
    # Through files of the same suffix: numpy adds .npz or .npy to a name that lacks it.
    if out.suffix == ".npz":
        with atomic.replacing(out) as temporary:
            np.savez(temporary, features=features, labels=labels, class_names=np.asarray(class_names))
        return [out]
    labels_path = labels_file(out)
    with atomic.replacing(out) as temporary, atomic.replacing(labels_path) as temporary_labels:
        np.save(temporary, features)
        np.save(temporary_labels, labels)
    return [out, labels_path]


def default_out(run: inference.TrainedRun, split: str, layer: str, tta_flip: bool, tag: str = "") -> Path:
    """DIR/features/<checkpoint>-<split>-<layer>[-tta_flip][-<other data>].npz: inside the run, one file per choice."""
    name = f"{run.checkpoint}-{split}-{layer}" + ("-tta_flip" if tta_flip else "") + tag
    return run.workdir / "features" / f"{name}.npz"


def _embed(
    args: argparse.Namespace, overrides: Sequence[str], out: Path | None
) -> tuple[inference.TrainedRun, Path, bool, tuple[np.ndarray, np.ndarray]]:
    """The run restored, the file to write (`out`, else the default inside the run, checked before the long part),
    whether flips are averaged, and the split's features and labels."""
    try:
        run = inference.restore_run(args.workdir, args.checkpoint, overrides=overrides)
        if args.layer not in layer_names(run):
            raise inference.RunError(
                f"--layer {args.layer!r}: {run.config.model.name} has {', '.join(layer_names(run))}"
            )
        run_arguments.check_split(run, args.split)
        tta_flip = run_arguments.tta_flip(run, args.tta)
        if out is None:
            tag = run_arguments.data_tag(run, overrides)
            out = common.output_file(default_out(run, args.split, args.layer, tta_flip, tag), "--out")
        config = run.config.data
        data.fetch_if_asked(config)
        num_examples = data.config_split_size(config, args.split)
        with metrics.stage(f"embedding {num_examples:,} {args.split} examples at {args.layer}, compile included"):
            if run.experiment.streamed:
                features, labels = embed_stream(run, args.split, args.layer, tta_flip)
            else:
                split = data.config_loader(config, args.split, run.config.seed)(slice(0, num_examples))
                features, labels = embed(run, split.images, args.layer, tta_flip), split.labels
    except run_arguments.ERRORS as error:
        common.fail(error)
    return run, out, tta_flip, (features, labels)


def main(argv: Sequence[str] | None = None) -> int:
    parser = common.parser("features", __doc__)
    run_arguments.add_run_arguments(parser, reads_data=True)
    parser.add_argument("--split", default="test", choices=("test", "validation", "train"), help="the split to embed")
    parser.add_argument("--layer", default="pooled", help="pooled, stem or stageN: where to read features")
    parser.add_argument(
        "--out",
        default=None,
        help="file to write: emb.npz, or emb.npy (+ emb.labels.npy) (default: "
        "DIR/features/<checkpoint>-<split>-<layer>[-tta_flip].npz)",
    )
    args, overrides = run_arguments.parse_run_args(parser, argv)
    out = None
    if args.out is not None:
        out = Path(args.out)
        if out.suffix not in SUFFIXES:
            parser.error(f"--out {args.out}: give a {' or '.join(SUFFIXES)} file")
        out = common.output_file(out, "--out")  # a name, folder or permission it cannot write: said before the work
        if out.suffix == ".npy":
            common.output_file(labels_file(out), "--out (its labels)")
    runtime.setup_logging()
    # Writing into the run (DIR/features/), it holds the run's lock from before the weights are read until the file
    # is written, as evaluate does.
    with common.writing_into(args.out or args.workdir, [args.workdir]):
        run, out, tta_flip, (features, labels) = _embed(args, overrides, out)
        try:
            paths = write(out, features, labels, run.class_names)
        except OSError as error:
            common.fail(f"cannot write {out}: {error.strerror or error}")
    print(
        f"wrote {features.shape[0]:,} x {features.shape[1]} {args.layer} features (tta "
        f"{'flip' if tta_flip else 'none'}) and their labels to {', '.join(map(str, paths))}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
