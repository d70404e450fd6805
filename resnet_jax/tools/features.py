"""Writes a split's embeddings: every example through a run's network (its EMA when it kept one), in split order,
as the pooled vector its head reads (or a stage's map, averaged over space, with --layer), with the labels. With
--tta flip, each example's features are the mean of the image's and its mirror's (the head then reads the mean of
their logits, as evaluate's --tta flip scores). A streamed run's split is read as its evaluation read it (centre
crops, files that cannot be decoded left out), batch by batch.

--out emb.npz holds `features` (N, D) float32, `labels` (N,) int32 and `class_names`; --out emb.npy holds the
features, and emb.labels.npy beside it the labels. The default is DIR/features/<checkpoint>-<split>-<layer>[-tta_flip]
.npz. Each batch's features go to disk as they are computed (memory holds one batch, never the split's), under a
temporary name beside the file, which takes the file's name only once whole.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Iterator, Sequence
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
) -> Iterator[np.ndarray]:
    """float32 (B, D) features of uint8 images at `layer`, batch by batch of `eval.batch_size`, in order (`program`:
    a `feature_program` of the same layer and flip, to reuse its compilation)."""
    program = program or feature_program(run, layer, tta_flip)
    batch = max(1, min(int(run.config.eval.batch_size), len(images)))
    for start in range(0, len(images), batch):
        part = images[start : start + batch]
        # The last batch is padded to the others' size, so that one program serves every batch.
        padded = np.concatenate([part, np.zeros((batch - len(part), *part.shape[1:]), part.dtype)])
        yield np.asarray(jax.device_get(program(run.variables, padded)))[: len(part)]


def embed_split(
    run: inference.TrainedRun, split: data.SplitArrays, layer: str = "pooled", tta_flip: bool = False
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """A split read into memory (the device loader's), embedded batch by batch: each batch's features and labels."""
    done = 0
    for features in embed(run, split.images, layer, tta_flip):
        yield features, split.labels[done : done + len(features)]
        done += len(features)


def embed_stream(
    run: inference.TrainedRun, split: str, layer: str = "pooled", tta_flip: bool = False
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """A streamed run's (`data.loader=grain`) `split`, embedded batch by batch as its evaluation reads it: each
    batch's features and labels, each image centre cropped (`crops.eval_image`), files that cannot be decoded left
    out. The split's images are never held, only one batch of them."""
    program = feature_program(run, layer, tta_flip)
    eval_stream = run.experiment.open_eval_stream(split)
    try:
        for batch in eval_stream.batches():
            kept = batch["mask"]
            yield np.concatenate(list(embed(run, batch["image"], layer, tta_flip, program)))[kept], batch["label"][kept]
    finally:
        eval_stream.close()


def labels_file(out: Path) -> Path:
    """Where the labels of `out` (a .npy file of features) go: emb.npy -> emb.labels.npy."""
    return out.with_name(out.stem + ".labels.npy")


class NpyRows:
    """A .npy file written block of rows by block as they come, never held whole, as a context: its header says 0
    rows until the block ends, when the count is written in place (numpy pads a header so that its first axis can
    change in place); a block that raises leaves the file as it stands, for its owner to remove."""

    def __init__(self, path: Path):
        self.path, self.count = path, 0
        self._row: tuple[np.dtype, tuple[int, ...]] | None = None
        self._offset = 0

    def __enter__(self) -> NpyRows:
        self._file = open(self.path, "wb")  # closed by __exit__
        return self

    def append(self, rows: np.ndarray) -> None:
        if self._row is None:
            self._row = (rows.dtype, rows.shape[1:])
            self._offset = self._header()
        self._file.write(np.ascontiguousarray(rows, self._row[0]).tobytes())
        self._file.flush()  # handed to the system as it comes, not kept in a buffer of this process
        self.count += len(rows)

    def _header(self) -> int:
        """Writes the header at the file's start for the rows written so far; returns where the data begins."""
        dtype, shape = self._row
        self._file.seek(0)
        header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": (self.count, *shape)}
        np.lib.format.write_array_header_1_0(self._file, header)
        return self._file.tell()

    def __exit__(self, error_type: type[BaseException] | None, *_: object) -> None:
        with self._file:
            if error_type is None and self._header() != self._offset:  # needs one `append` at least
                raise ValueError(f"{self.path}: the .npy header changed length when its row count was written")


@contextlib.contextmanager
def _scratch(near: Path) -> Iterator[Path]:
    """A temporary .npy file beside `near`, removed when the block ends."""
    path = atomic.temporary_path(near.with_suffix(".npy"))
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def writing(out: Path, class_names: Sequence[str]) -> Iterator[Callable[[np.ndarray, np.ndarray], int]]:
    """Yields `add(features, labels)`, which writes a batch's rows to disk as they come and returns the rows written
    so far; when the block ends, `out` (a .npz; or a .npy, with `labels_file(out)`) takes its place whole. Until then
    the rows go to temporary files beside it, so that a run that fails or is stopped leaves `out` as it was (and,
    except when killed, nothing beside it). Memory holds one batch: a .npz is made from its .npy parts in chunks."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        if out.suffix == ".npz":
            temporary = stack.enter_context(atomic.replacing(out))
            features_path, labels_path = stack.enter_context(_scratch(out)), stack.enter_context(_scratch(out))
        else:
            features_path = stack.enter_context(atomic.replacing(out))
            labels_path = stack.enter_context(atomic.replacing(labels_file(out)))
        with NpyRows(features_path) as features, NpyRows(labels_path) as labels:

            def add(batch_features: np.ndarray, batch_labels: np.ndarray) -> int:
                features.append(batch_features)
                labels.append(batch_labels)
                return features.count

            yield add
        if out.suffix == ".npz":
            # Read back through a memory map: np.savez copies each array into the archive 16 MiB at a time.
            stored = {"features": np.load(features_path, mmap_mode="r"), "labels": np.load(labels_path, mmap_mode="r")}
            np.savez(temporary, **stored, class_names=np.asarray(class_names))


def default_out(run: inference.TrainedRun, split: str, layer: str, tta_flip: bool, tag: str = "") -> Path:
    """DIR/features/<checkpoint>-<split>-<layer>[-tta_flip][-<other data>].npz: inside the run, one file per choice."""
    name = f"{run.checkpoint}-{split}-{layer}" + ("-tta_flip" if tta_flip else "") + tag
    return run.workdir / "features" / f"{name}.npz"


def _prepare(
    args: argparse.Namespace, overrides: Sequence[str], out: Path | None
) -> tuple[inference.TrainedRun, Path, bool, int, Iterator[tuple[np.ndarray, np.ndarray]]]:
    """The run restored, the file to write (`out`, else the default inside the run, checked before the long part),
    whether flips are averaged, the split's size, and its features and labels, batch by batch as they are computed."""
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
        if run.experiment.streamed:
            batches = embed_stream(run, args.split, args.layer, tta_flip)
        else:
            split = data.config_loader(config, args.split, run.config.seed)(slice(0, num_examples))
            batches = embed_split(run, split, args.layer, tta_flip)
    except run_arguments.ERRORS as error:
        common.fail(error)
    return run, out, tta_flip, num_examples, batches


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
        run, out, tta_flip, num_examples, batches = _prepare(args, overrides, out)
        written, width = 0, 0
        try:
            stage = f"embedding {num_examples:,} {args.split} examples at {args.layer}, compile included"
            with metrics.stage(stage), writing(out, run.class_names) as add:
                for features, labels in batches:
                    written, width = add(features, labels), features.shape[1]
        except run_arguments.ERRORS as error:
            common.fail(error)
        except OSError as error:
            common.fail(f"cannot write {out}: {error.strerror or error}")
    paths = [out] if out.suffix == ".npz" else [out, labels_file(out)]
    print(
        f"wrote {written:,} x {width} {args.layer} features (tta {'flip' if tta_flip else 'none'}) and their labels "
        f"to {', '.join(map(str, paths))}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
