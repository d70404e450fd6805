"""PyTorch weight files read and written as numpy: `.safetensors` with the `safetensors` package alone, and
`.pth`/`.pt`/`.th` (torch.save's format) with PyTorch, imported only when such a file is met. A checkpoint that
wraps its weights (`{"state_dict": ...}`, kuangliu's `{"net": ...}`) or prefixes them (`module.`) is unwrapped.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from resnet_jax import atomic, errors
from resnet_jax.interop.layouts import InteropError

SAFETENSORS_SUFFIXES = (".safetensors",)
TORCH_SUFFIXES = (".pth", ".pt", ".th")
# Where training scripts put the state_dict inside a saved checkpoint dict.
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net")
DATA_PARALLEL_PREFIX = "module."
TORCH_INSTALL = "pip install torch (a CPU build: pip install torch==2.13.0)"
# The safetensors metadata key under which `convert --to` records the run a file came from (a JSON object: model,
# layout, classes, input shape and the data section), so that `convert --from` rebuilds the same run.
RUN_METADATA_KEY = "resnet_jax"


def _import_torch(path: Path, verb: str) -> Any:
    try:
        import torch
    except ImportError:
        raise InteropError(
            f"{verb} {path.name} needs PyTorch: {TORCH_INSTALL}, or use a .safetensors file, which needs none"
        ) from None
    return torch


def _check_suffix(path: Path) -> None:
    if path.suffix not in SAFETENSORS_SUFFIXES + TORCH_SUFFIXES:
        raise InteropError(
            f"{path} is not a weight file this reads: give a {', '.join(TORCH_SUFFIXES + SAFETENSORS_SUFFIXES)} file"
        )


def _reason(error: BaseException) -> str:
    text = errors.one_line(error) or type(error).__name__
    return text[:300]


def unwrap(loaded: Any, path: Path) -> dict[str, Any]:
    """The flat {key: tensor} of a loaded checkpoint: its state_dict, without DataParallel's `module.` prefix."""
    if isinstance(loaded, Mapping):
        for key in WRAPPER_KEYS:
            if isinstance(loaded.get(key), Mapping):
                loaded = loaded[key]
                break
    if not isinstance(loaded, Mapping) or not loaded:
        raise InteropError(f"{path} holds no state_dict (a dict of tensors), but {type(loaded).__name__}")
    if all(isinstance(key, str) and key.startswith(DATA_PARALLEL_PREFIX) for key in loaded):
        loaded = {key[len(DATA_PARALLEL_PREFIX) :]: value for key, value in loaded.items()}
    return dict(loaded)


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A weight file's state_dict as numpy arrays; any unreadable, foreign or truncated file is one InteropError."""
    path = Path(path)
    _check_suffix(path)
    if not path.is_file():
        raise InteropError(f"{path} is not a file")
    if path.suffix in SAFETENSORS_SUFFIXES:
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        try:
            return unwrap(load_file(path), path)
        except (SafetensorError, OSError, ValueError) as error:
            raise InteropError(f"{path} cannot be read as safetensors ({_reason(error)})") from None
    torch = _import_torch(path, "reading")
    try:
        # weights_only: a checkpoint's pickle runs no code of its own; tensors, dicts and numbers still load.
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises RuntimeError, UnpicklingError, EOFError... for a foreign file
        raise InteropError(f"{path} cannot be read by torch.load ({_reason(error)})") from None
    state_dict = unwrap(loaded, path)
    arrays = {}
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise InteropError(f"{path}: {key} holds a {type(value).__name__}, not a tensor")
        value = value.detach().cpu()
        # numpy has no bfloat16; float32 holds every bfloat16 and float16 value exactly.
        arrays[key] = (value.float() if value.dtype in (torch.bfloat16, torch.float16) else value).numpy()
    return arrays


def read_run_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """What `write_state_dict` recorded of the run a .safetensors file came from; {} for a file without it (any other
    writer's, or a .pth file, which keeps no metadata)."""
    path = Path(path)
    if path.suffix not in SAFETENSORS_SUFFIXES:
        return {}
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, "np") as handle:
            text = (handle.metadata() or {}).get(RUN_METADATA_KEY)
        recorded = json.loads(text) if text else {}
    except (SafetensorError, OSError, ValueError):  # read_state_dict names an unreadable file
        return {}
    return recorded if isinstance(recorded, dict) else {}


def write_state_dict(
    state_dict: Mapping[str, np.ndarray], path: str | os.PathLike, run_metadata: Mapping[str, Any] | None = None
) -> Path:
    """Writes a state_dict as `.safetensors` (no torch needed) or `.pth` (torch.save), through a temporary file,
    so that a failed write leaves no half file. `run_metadata` goes into a .safetensors file's metadata."""
    path = Path(path)
    _check_suffix(path)
    torch = None if path.suffix in SAFETENSORS_SUFFIXES else _import_torch(path, "writing")
    try:
        with atomic.replacing(path) as temporary:
            if torch is None:
                from safetensors.numpy import save_file

                metadata = {"format": "pt"}
                if run_metadata:
                    metadata[RUN_METADATA_KEY] = json.dumps(run_metadata, sort_keys=True)
                save_file(dict(state_dict), temporary, metadata=metadata)
            else:
                torch.save({key: torch.from_numpy(np.array(value)) for key, value in state_dict.items()}, temporary)
    except OSError as error:
        raise InteropError(
            f"cannot write {path} ({error.strerror or error}); give --to a place you can write"
        ) from None
    return path
