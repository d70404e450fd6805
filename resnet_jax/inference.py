"""A trained run put back to work: a workdir's config and one checkpoint's weights restored onto a mesh, the logits
function that evaluation, prediction and export share (the trainer's own eval step), and the scoring of every
example of a split. The tools on a trained run build on this module; it prints nothing and parses no flags.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from resnet_jax import configuration, data, experiment, models, parallel, pipeline, record, steps
from resnet_jax.checkpoint import Checkpointer, CheckpointError, error_reason
from resnet_jax.onednn import library
from resnet_jax.workdir import CHECKPOINTS_DIR

logger = logging.getLogger(__name__)

CHECKPOINT_NAMES = ("latest", "best")
# The sections a trained run's tools let `--config.KEY=VALUE` override: the data to read, and how to score it. The
# model and its training are the run's own, but for the kernels it computes on (`record.KERNEL_KEYS`): the run's
# recorded ones unless named.
READING_SECTIONS = ("data", "eval")
# The `data` keys that name another dataset: what the run recorded of its own (a folder's classes and files, the
# splits' sizes and draws) no longer holds, and the run's holdouts are not drawn from it.
_OTHER_DATA_KEYS = ("dataset", "source", "files_dir", "data_dir")


class RunError(RuntimeError):
    """A workdir, checkpoint or input file the tools cannot use; the message is one line naming it and the fix."""


@dataclasses.dataclass
class TrainedRun:
    """A workdir's model restored from one checkpoint, with everything needed to run it."""

    workdir: Path
    config: ml_collections.ConfigDict  # as the run was trained
    experiment: experiment.Experiment
    checkpoint: str  # as asked for: "latest", "best" or a step
    step: int
    variables: Any  # the weights the trainer evaluated (the EMA when the run kept one), replicated on the mesh

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.experiment.info.class_names

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.experiment.input_shape

    @property
    def num_devices(self) -> int:
        return int(self.experiment.mesh.devices.size)


def is_checkpoint_name(text: str) -> bool:
    """Whether `text` names a checkpoint: latest, best or a step number."""
    return text in CHECKPOINT_NAMES or (text.isdigit() and int(text) >= 0)


def _read_saved(workdir: str | Path) -> tuple[Path, dict[str, Any]]:
    """A workdir's config.json as saved, and its path; a RunError naming what is wrong with either."""
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
        return path, configuration.read_json(path)
    except (OSError, ValueError) as error:
        raise RunError(f"{path} cannot be read as JSON ({error}); it is damaged: restore it from a copy") from None


def _saved_config(path: Path, saved: Any) -> ml_collections.ConfigDict:
    defaults = experiment.base_config()
    sections = [name for name, value in defaults.items() if isinstance(value, ml_collections.ConfigDict)]
    if not isinstance(saved, dict) or any(not isinstance(saved.get(name, {}), dict) for name in sections):
        raise RunError(
            f"{path} holds no config (a JSON object of sections: {', '.join(sections)}); it is damaged: restore it "
            "from a copy, or train the run again"
        )
    try:
        return configuration.from_saved(experiment.as_read_now(saved), defaults)
    except (TypeError, ValueError) as error:  # ml_collections refuses a value of another type than the key's
        raise RunError(f"{path} holds a value of the wrong type ({error}); it is damaged: restore it") from None


def load_run_config(workdir: str | Path) -> ml_collections.ConfigDict:
    """The config a workdir was trained with: its config.json over today's defaults, so that a run written before
    a key existed still loads (the key takes its default)."""
    return _saved_config(*_read_saved(workdir))


def _recorded_ran(saved: Any) -> dict[str, Any]:
    """What config.json's record says the run ran as (`record.what_ran`); {} for a run that kept no record."""
    run_record = saved.get(configuration.RECORD_KEY) if isinstance(saved, dict) else None
    ran = run_record.get("ran") if isinstance(run_record, dict) else None
    return ran if isinstance(ran, dict) else {}


def _onednn_unavailable(key: str, dtype: Any) -> str:
    """Why oneDNN's kernel of `key` (a `record.KERNEL_KEYS` key) cannot compute in `dtype` in this process, as
    `models.build_model` would refuse it ("" where it can)."""
    if jax.default_backend() != "cpu":
        return f"oneDNN runs on CPUs only, and this machine computes on {jax.default_backend()}"
    if key == "model.norm_backend" and jax.device_count() != 1:
        return f"oneDNN's BatchNorm needs one CPU device, and there are {jax.device_count()}"
    return library.dtype_unavailable_reason(dtype)


def as_recorded(
    config: ml_collections.ConfigDict, ran: dict[str, Any], named: Sequence[str] = ()
) -> ml_collections.ConfigDict:
    """A copy of a run's `config` that computes as its record says the run did (`ran`, `record.what_ran`): in the
    dtype it resolved, on the kernels it ran, but for the `record.KERNEL_KEYS` in `named` (overrides given to the tool,
    which win; naming the convolutions' leaves BatchNorm to follow them, as its 'auto' does).

    Recorded kernels that cannot run here (oneDNN's, where the extension is not built, has no kernels for the dtype,
    or the devices are not one CPU) give way to XLA's, said in one log line: the same weights, so the results differ
    in the last bits only. A run that kept no record computes as its config says."""
    config = config.copy_and_resolve_references()
    if ran.get("model.dtype") in models.DTYPES:
        config.model.dtype = ran["model.dtype"]
    if "model.conv_backend" in named and "model.norm_backend" not in named:
        config.model.norm_backend, named = "auto", [*named, "model.norm_backend"]
    # None for a dtype the model section refuses, in one line, as the run is built.
    dtype = models.resolve_dtype(config.model) if config.model.dtype in ("auto", *models.DTYPES) else None
    fallen = {}
    for key in record.KERNEL_KEYS:
        setting = ran.get(key)
        if key in named or setting not in ("xla", "onednn"):
            continue
        reason = _onednn_unavailable(key, dtype) if setting == "onednn" and dtype is not None else ""
        if reason:
            fallen[key], setting = reason, "xla"
        config.model[key.split(".", 1)[1]] = setting
    if fallen:
        what = " and ".join("convolutions" if key == "model.conv_backend" else "BatchNorm" for key in fallen)
        logger.warning(
            "this run computed its %s on onednn, which cannot run here (%s); computing on xla instead: the same "
            "weights, so the results may differ in the last bits (--config.%s=xla asks for it by name)",
            what,
            "; ".join(dict.fromkeys(fallen.values())),
            next(iter(fallen)),
        )
    return config


def check_reading_overrides(overrides: Sequence[str]) -> list[str]:
    """The keys of `key=value` overrides, each of `READING_SECTIONS` or `record.KERNEL_KEYS`; else a RunError naming the
    first that is not."""
    keys = [text.split("=", 1)[0].strip() for text in overrides]
    outside = next(
        (key for key in keys if key.split(".", 1)[0] not in READING_SECTIONS and key not in record.KERNEL_KEYS), None
    )
    if outside is not None:
        raise RunError(
            f"--config.{outside}: a trained run's tools take data.* and eval.* overrides only (the data to read and "
            "how to score it), and the kernels to compute on (model.conv_backend, model.norm_backend); the model and "
            "its training are the run's"
        )
    return keys


def with_reading_overrides(config: ml_collections.ConfigDict, overrides: Sequence[str]) -> ml_collections.ConfigDict:
    """A run's config with `section.key=value` overrides of `READING_SECTIONS` (and `record.KERNEL_KEYS`) applied: other
    data to score.

    The network still sees its input as it was trained: unless the overrides set them, other data is brought to the
    run's input shape (`data.image_size`, `data.channels`) and normalised with the run's mean and std, with nothing
    held out of it. `data.source=folder` alone is enough for a folder (it is also the dataset)."""
    if not overrides:
        return config
    keys = check_reading_overrides(overrides)
    try:  # what the network was trained on, when the run's own data section can still say it
        shape, (mean, std) = data.config_input_shape(config.data), data.config_normalization(config.data)
    except (data.DataError, configuration.ConfigError):
        shape, mean, std = None, None, None
    config = configuration.apply_override_texts(config, list(overrides))
    given = {key.split(".", 1)[1] for key in keys if key.startswith("data.")}
    section = config.data
    if not given & set(_OTHER_DATA_KEYS):
        redrawn = sorted(given & {"validation_seed", "validation_size"})
        if redrawn:
            raise RunError(
                f"--config.data.{redrawn[0]}: this run's validation split is the rows it held out of train, and "
                "another draw would score rows it trained on; score the run's own (--split validation) or other data"
            )
        return config
    if data.FOLDER in (section.source, section.dataset) and not {"source", "dataset"} <= given:
        section.source = section.dataset = data.FOLDER
    defaults = data.DEFAULTS
    for key in ("class_names", "image_shape", "validation_size", "train_eval_size", "files_digest"):
        if key not in given:
            section[key] = defaults[key]
    section.split_sizes.update(defaults["split_sizes"])
    section.split_digests.update(defaults["split_digests"])
    if shape is not None:
        section.image_size = shape[0] if "image_size" not in given else section.image_size
        section.channels = shape[-1] if "channels" not in given else section.channels
    if mean is not None and not given & {"mean", "std"}:
        section.mean, section.std = tuple(mean), tuple(std)
    return config


def build_for_inference(
    config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh | None = None
) -> experiment.Experiment:
    """`experiment.build` for a run's tools on any device count: inference takes no training batch, so the copy
    it builds from trains with one example per device, and only `eval.batch_size` meets the mesh.

    Nor does it take a learning rate: the copy's schedule is a constant one. Its steps are one example each, so the
    run's own schedule measured on them (a warm-up in epochs against `train.num_steps`) would refuse a run that
    trained, and the optimizer state a converted run starts from does not depend on the schedule. Nor does it mix
    images (Mixup and CutMix need two in a batch)."""
    mesh = mesh or parallel.make_mesh()
    for_inference = {
        "train.batch_size": int(mesh.devices.size),
        "schedule.name": "constant",
        "schedule.warmup_epochs": 0.0,
        "augment.mixup_alpha": 0.0,
        "augment.cutmix_alpha": 0.0,
    }
    return experiment.build(configuration.apply_overrides(config, for_inference), mesh)


def resolve_checkpoint(checkpointer: Checkpointer, checkpoint: str) -> int:
    """The step that `checkpoint` (latest, best or a step number) names among the saved ones.

    best is the checkpoint the run's checkpointer ranked highest by its recorded validation accuracy
    (`checkpoint.BEST_METRIC`); a run without a validation split has none.
    """
    available = checkpointer.steps()
    where = checkpointer.directory
    if not available:
        raise RunError(f"{where} holds no checkpoint; train first, or give the --workdir of a finished run")
    if checkpoint == "latest":
        return available[-1]
    if checkpoint == "best":
        best = checkpointer.best_step()
        if best is None:
            raise RunError(
                f"no checkpoint in {where} recorded a validation accuracy to rank it by (the run had no validation "
                "split); use --checkpoint latest or a step"
            )
        return best
    if not is_checkpoint_name(checkpoint):
        raise RunError(f"--checkpoint {checkpoint!r} is not latest, best or a step number")
    step = int(checkpoint)
    if step not in available:
        names = ["latest", "best"] if checkpointer.best_step() is not None else ["latest"]
        raise RunError(f"checkpoint step {step} is not in {where}; available: {', '.join(map(str, available + names))}")
    return step


def _path_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    """Each leaf's shape by its path, written `params/stage1_block1/Conv_0/kernel`."""
    return {
        "/".join(str(getattr(key, "key", key)) for key in path): tuple(leaf.shape)
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
    }


def _first_mismatch(saved: Any, expected: Any) -> str | None:
    """The first weight (in path order) whose path or shape differs between a checkpoint and the model."""
    saved_shapes, expected_shapes = _path_shapes(saved), _path_shapes(expected)
    for path, shape in expected_shapes.items():
        if path not in saved_shapes:
            return f"{path} {shape} is not in the checkpoint"
        if saved_shapes[path] != shape:
            return f"{path} is {saved_shapes[path]} in the checkpoint but {shape} in the model"
    extra = next((path for path in saved_shapes if path not in expected_shapes), None)
    return None if extra is None else f"the checkpoint holds {extra} {saved_shapes[extra]}, which the model lacks"


def _replicate(tree: Any, mesh: jax.sharding.Mesh) -> Any:
    """Host arrays as arrays replicated on every device of `mesh` (of every process: each gives the same copy)."""
    sharding = parallel.replicated(mesh)
    return jax.tree.map(
        lambda leaf: jax.make_array_from_callback(leaf.shape, sharding, lambda index: leaf[index]), tree
    )


def restore_run(
    workdir: str | Path,
    checkpoint: str = "latest",
    mesh: jax.sharding.Mesh | None = None,
    overrides: Sequence[str] = (),
) -> TrainedRun:
    """Rebuilds a workdir's model from its config.json and restores the weights of one checkpoint (latest, best or
    a step number), replicated on `mesh` (default: every device). `overrides` (`data.KEY=VALUE`, `eval.KEY=VALUE`)
    point it at other data (`with_reading_overrides`); the model computes in the dtype and on the kernels the run's
    record says it ran, or those `model.conv_backend` / `model.norm_backend` overrides name (`as_recorded`).

    Only the weights are taken: the checkpoint is read as it was saved, so one whose optimizer state has another
    layout (an optimizer of another release, another optimizer) still loads. Weights that do not fit the config's
    model end in a CheckpointError naming the first parameter that differs.
    """
    workdir = Path(workdir)
    path, saved = _read_saved(workdir)
    config = _saved_config(path, saved)
    classes = _run_classes(config)
    config = with_reading_overrides(config, overrides)
    named = [key for key in check_reading_overrides(overrides) if key in record.KERNEL_KEYS]
    config = as_recorded(config, _recorded_ran(saved), named)
    built = build_for_inference(config, mesh)
    if overrides:
        _check_same_classes(built, classes)
    directory = workdir / CHECKPOINTS_DIR
    if not directory.is_dir():
        raise RunError(
            f"{workdir} holds no {CHECKPOINTS_DIR}/ folder; train first, or give the --workdir of a finished run"
        )
    checkpointer = Checkpointer(directory, async_save=False, create=False)
    try:
        step = resolve_checkpoint(checkpointer, checkpoint)
        try:
            tree, _ = checkpointer.restore(step, None)
        except Exception as error:  # orbax and tensorstore raise many types for damaged files
            raise CheckpointError(
                f"checkpoint {step} in {directory} cannot be read ({error_reason(error)}); pick another with "
                "--checkpoint"
            ) from None
    finally:
        checkpointer.close()
    # The weights the run's evaluations scored: its EMA when it kept one, as `TrainState.eval_variables` says.
    expected = models.init_shapes(built.model, built.input_shape)
    if config.train.ema_decay > 0:
        saved, expected = {"ema": tree.get("ema")}, {"ema": expected}
    else:
        saved = {part: tree.get(part) for part in expected}
    problem = _first_mismatch(saved, expected)
    if problem:
        raise CheckpointError(
            f"checkpoint {step} in {directory} does not fit {config.model.name} as config.json builds it: {problem}"
        )
    variables = saved.get("ema", saved)
    return TrainedRun(workdir, config, built, checkpoint, step, _replicate(jax.device_get(variables), built.mesh))


def _run_classes(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """The classes a run's head scores, as its config names them (a folder's recorded, else the registry's)."""
    if config.data.class_names:
        return tuple(config.data.class_names)
    info = data.DATASETS.get(config.data.dataset)
    return info.class_names if info else ()


def _check_same_classes(built: experiment.Experiment, run_classes: Sequence[str]) -> None:
    """Other data than the run's must have as many classes as its head (scored by index: its classes' order is
    the run's); a head of another count is refused in one line."""
    if not run_classes or len(run_classes) == built.info.num_classes:
        return
    raise RunError(
        f"the run's head has {len(run_classes)} classes ({', '.join(run_classes)}) and the data given has "
        f"{built.info.num_classes} ({', '.join(built.info.class_names)}); give data of the run's classes, in its order"
    )


def make_logits_fn(run: TrainedRun, tta_flip: bool = False, variables: Any = None) -> Callable[[jax.Array], jax.Array]:
    """`logits(uint8 images in the input shape) -> float32 (batch, classes)`: the trainer's eval step, with its
    normalisation, on `variables` (default: the run's)."""
    eval_step = steps.make_eval_step(run.experiment.step_config, run.experiment.model.apply, tta_flip=tta_flip)
    variables = run.variables if variables is None else variables

    def logits(images: jax.Array) -> jax.Array:
        count = images.shape[0]
        return eval_step(variables, images, jnp.zeros((count,), jnp.int32), jnp.ones((count,), bool))[1]

    return logits


def class_probabilities(run: TrainedRun, images: np.ndarray, tta_flip: bool = False) -> np.ndarray:
    """Softmax probabilities (N, classes), float64, of N >= 1 uint8 images in the input shape, scored
    `eval.batch_size` at a time."""
    logits_fn = jax.jit(make_logits_fn(run, tta_flip))
    batch = max(1, int(run.config.eval.batch_size))
    chunks = [jax.device_get(logits_fn(images[start : start + batch])) for start in range(0, len(images), batch)]
    logits = np.concatenate(chunks).astype(np.float64)
    probabilities = np.exp(logits - logits.max(-1, keepdims=True))
    return probabilities / probabilities.sum(-1, keepdims=True)


@dataclasses.dataclass
class Evaluation:
    """Every example of a split (a streamed run's that could be decoded), scored: logits and labels in the split's
    order, and the trainer's summary."""

    split: str
    tta_flip: bool
    labels: np.ndarray  # int32 (N,)
    logits: np.ndarray  # float32 (N, classes)
    summary: dict[str, float]  # experiment.summarize_eval: <split>_loss, <split>_accuracy, ...

    @property
    def num_examples(self) -> int:
        return len(self.labels)

    @property
    def accuracy(self) -> float:
        return self.summary[f"{self.split}_accuracy"]

    @property
    def loss(self) -> float:
        return self.summary[f"{self.split}_loss"]

    @property
    def top5_accuracy(self) -> float:
        return self.summary[f"{self.split}_top5_accuracy"]


def evaluate_split(run: TrainedRun, split: str = "test", tta_flip: bool = False) -> Evaluation:
    """Runs the trainer's evaluation, data parallel over the run's mesh, on every example of `split`. A streamed run
    (`data.loader=grain`) is scored through its own evaluation stream, as its evaluations were: each image centre
    cropped by `crops.eval_image`, and files that cannot be decoded left out."""
    built = run.experiment
    if built.streamed:
        eval_stream = built.open_eval_stream(split)
        try:
            evaluate_batch = built.make_evaluate_batch(tta_flip, return_logits=True)
            sums, (logits, labels, kept) = steps.evaluate_batches(
                evaluate_batch, run.variables, eval_stream.batches(), built.mesh
            )
        finally:
            eval_stream.close()
    else:
        data.fetch_if_asked(built.config.data)  # a CIFAR run's official files, on a machine that has not got them yet
        device_split, num_examples = built.load_eval_split(split)
        evaluate = built.make_evaluate(tta_flip=tta_flip, return_logits=True)
        sums, per_batch = evaluate(run.variables, device_split)
        logits = pipeline.eval_outputs_in_split_order(np.asarray(jax.device_get(per_batch)), run.num_devices)
        labels = np.asarray(jax.device_get(device_split.labels))
        kept = np.arange(len(labels)) < num_examples
    return Evaluation(
        split, tta_flip, labels[kept], logits[kept].astype(np.float32), experiment.summarize_eval(sums, prefix=split)
    )


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts with true classes along rows and predicted classes along columns."""
    flat = np.bincount(labels * num_classes + predictions, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)
