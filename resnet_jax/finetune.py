"""Starting from weights trained elsewhere: the config's `finetune` section (where the weights come from, what is
frozen, the backbone's learning rate), the optimizer that freezes or slows the backbone, and the first weights.
The head is the `head` Dense layer; everything else is the backbone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import ml_collections
import optax

from resnet_jax import checkpoint, configuration, interop, workdir
from resnet_jax.models import HEAD

FREEZE = ("none", "backbone", "all_but_head")
DEFAULTS = {
    # A run's workdir (its newest good checkpoint), or a PyTorch state_dict file; empty: a new initialisation.
    "source": "",
    # backbone: its weights stay, its BN statistics still follow the new data; all_but_head: a linear probe, the
    # backbone exactly as it came (BN in inference mode, statistics kept).
    "freeze": "none",
    "backbone_learning_rate_scale": 1.0,  # the backbone's rate, as a fraction of the head's
}


def check_config(finetune_config: ml_collections.ConfigDict) -> None:
    configuration.check_choice("finetune.freeze", finetune_config.freeze, FREEZE)
    scale = finetune_config.backbone_learning_rate_scale
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or scale < 0:
        raise configuration.ConfigError(
            f"finetune.backbone_learning_rate_scale={scale!r} must be 0 or more (1: the head's rate)"
        )


def check_source(source: str) -> None:
    """The weights a new run starts from exist. Checked as such a run starts, before anything compiles: a resume, or a
    tool reading the run, has them in the run's checkpoints, wherever the source went since."""
    if source and not Path(source).expanduser().exists():
        raise configuration.ConfigError(
            f"finetune.source={source!r} does not exist; give a run's workdir, a run made by resnet-jax convert, "
            "or a PyTorch state_dict file (.pth, .pt, .th, .safetensors)"
        )


def statistics_frozen(finetune_config: ml_collections.ConfigDict) -> bool:
    """Whether training leaves the backbone's BatchNorm in inference mode (a linear probe)."""
    return finetune_config.freeze == "all_but_head"


def parameter_groups(params: Any) -> Any:
    """ "head" or "backbone" for each parameter."""
    return jax.tree_util.tree_map_with_path(lambda path, _: HEAD if path[0].key == HEAD else "backbone", params)


def wrap_optimizer(
    tx: optax.GradientTransformationExtraArgs, finetune_config: ml_collections.ConfigDict
) -> optax.GradientTransformationExtraArgs:
    """`tx` for the head; for the backbone nothing (frozen) or `tx` at `backbone_learning_rate_scale` of its rate
    (a section checked as the run is built: `check_config`)."""
    scale = finetune_config.backbone_learning_rate_scale
    if finetune_config.freeze == "none" and scale == 1:
        return tx
    backbone = optax.set_to_zero() if finetune_config.freeze != "none" else optax.chain(tx, optax.scale(scale))
    return optax.multi_transform({HEAD: tx, "backbone": backbone}, parameter_groups)


def read_weights(source: str, abstract_state: Any) -> dict[str, Any]:
    """The weights `source` names, on the host (`{"params", "batch_stats"}`): a run's workdir (its newest good
    checkpoint; or its checkpoints folder), or a PyTorch `state_dict` file of one of `interop.LAYOUTS` (`.pth`,
    `.pt`, `.th`, `.safetensors`). Checked against the shapes and dtypes of the state they will start
    (`abstract_state`): a source that gives no weights, or none that fit, is a CheckpointRefused, before the run
    goes on to load its data (`start_weights` then puts them in)."""
    path = Path(source).expanduser()
    if path.suffix in interop.files.SAFETENSORS_SUFFIXES + interop.files.TORCH_SUFFIXES:
        try:
            state_dict = interop.read_state_dict(path)
            weights = interop.to_variables(state_dict, interop.match(state_dict))
        except interop.InteropError as error:
            raise checkpoint.CheckpointRefused(f"finetune.source={source!r}: {error}") from None
    else:
        run_checkpoints = path / workdir.CHECKPOINTS_DIR
        weights = checkpoint.newest_weights(run_checkpoints if run_checkpoints.is_dir() else path)
    checkpoint.fitting_weights(abstract_state.variables, weights, str(path))
    return weights


def start_weights(state: Any, weights: dict[str, Any], source: str) -> Any:
    """`state` with the weights `read_weights` read from `source` where they fit (`checkpoint.transplant_weights`)."""
    return checkpoint.transplant_weights(state, weights, str(Path(source).expanduser()))
