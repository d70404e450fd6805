"""Run configuration: the `--config` file's check, validation before anything compiles, and the comparison with a
workdir's earlier run. Every problem is reported as one `ConfigError` line that names the key (or the file), the bad
value and what is allowed.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import traceback
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_collections

from resnet_jax import augment, data, models, optim

CONFIG_FILE = "config.json"
# The parts of a config that define what is trained on what: a workdir never silently mixes two of them.
IDENTITY_SECTIONS = ("model", "data")
# Where the data is read or fetched from, not what it is: moving the files does not make another run.
LOCATION_KEYS = ("data.files_dir", "data.data_dir", "data.download", "data.download_mirror")
NONFINITE_POLICIES = ("stop", "skip")


class ConfigError(ValueError):
    """A config value that cannot work; the message is one line naming key, value and what is allowed."""


def _choice(key: str, value: Any, allowed: Any) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not known; allowed: {', '.join(map(str, allowed))}")


def _positive(key: str, value: Any, integer: bool = False) -> None:
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or value <= 0:
        raise ConfigError(f"{key}={value!r} must be a positive {'integer' if integer else 'number'}")


def _in_range(key: str, value: Any, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value < high:
        raise ConfigError(f"{key}={value!r} must be in [{low}, {high})")


def check_config_argument(argv: Sequence[str]) -> None:
    """`check_config_file` on the file of `argv`'s `--config`, if it has one, before absl loads it."""
    config_file = _config_file_argument(argv)
    if config_file is not None:
        check_config_file(config_file)


def _config_file_argument(argv: Sequence[str]) -> str | None:
    """The file of the last `--config=PATH` or `--config PATH` in `argv` (absl's last one wins), or None."""
    found, args = None, iter(argv[1:])
    for arg in args:
        if arg == "--":
            break
        for prefix in ("--config", "-config"):
            if arg == prefix:
                found = next(args, "")
            elif arg.startswith(f"{prefix}="):
                found = arg[len(prefix) + 1 :]
    return found


def _one_line(error: BaseException) -> str:
    return f"{type(error).__name__}: {' '.join(str(error).split())}".rstrip(": ")


def _line_in(path: str, error: BaseException) -> str:
    """` (line N)` of the deepest frame of `error`'s traceback that ran in the file at `path`, if any."""
    lines = [frame.lineno for frame in traceback.extract_tb(error.__traceback__) if frame.filename == path]
    return f" (line {lines[-1]})" if lines else ""


def check_config_file(argument: str) -> None:
    """Loads a `--config` file as `ml_collections.config_flags` will (`PATH` or `PATH:ARG`, `get_config(ARG)`) and
    raises a one-line ConfigError naming the file and the fix when that cannot give a ConfigDict.

    config_flags would report these as a traceback, or not until the config is first read, or not at all (a dict
    from get_config fails later, in validation, as an AttributeError).
    """
    path, *args = argument.split(":", 1)
    flag, example = f"--config={argument}", "give the path of a config file, e.g. --config=configs/smoke.py"
    if not path or not os.path.exists(path):
        raise ConfigError(f"{flag}: no such file; {example}")
    if not os.path.isfile(path):
        raise ConfigError(f"{flag}: a folder, not a file; {example}")
    loader = importlib.machinery.SourceFileLoader("resnet_jax_config_file", path)
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
    try:
        loader.exec_module(module)
    except SyntaxError as error:
        if error.filename != path:  # in a module the file imports
            raise ConfigError(f"{flag} does not import: {_one_line(error)}; fix what it imports") from None
        raise ConfigError(f"{flag} does not import: line {error.lineno}: {error.msg}; fix the file's syntax") from None
    except Exception as error:  # anything the file's own code raises is the file's problem
        raise ConfigError(
            f"{flag} does not import: {_one_line(error)}{_line_in(path, error)}; fix the file or what it imports"
        ) from None
    get_config = getattr(module, "get_config", None)
    if not callable(get_config):
        raise ConfigError(
            f"{flag} has no get_config(); define one that returns an ml_collections.ConfigDict, as configs/smoke.py "
            "does"
        )
    try:
        config = get_config(*args)
    except Exception as error:  # as above: the file's own code
        raise ConfigError(f"{flag}: get_config() raised {_one_line(error)}{_line_in(path, error)}; fix it") from None
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(
            f"{flag}: get_config() returned {type(config).__name__}, not an ml_collections.ConfigDict; return one: "
            "start from resnet_jax.configuration.base_config(), as configs/smoke.py does"
        )


def validate(config: ml_collections.ConfigDict) -> None:
    """Checks everything that can be checked without devices or data; raises ConfigError on the first problem."""
    _choice("model.name", config.model.name, models.MODEL_REGISTRY)
    _choice("model.dtype", config.model.dtype, models.DTYPES)
    if config.model.shortcut:
        _choice("model.shortcut", config.model.shortcut, ("A", "B"))
    _choice("data.dataset", config.data.dataset, data.DATASETS)
    _choice("data.source", config.data.source, data.SOURCES)
    # .get: configs saved before these keys existed (a workdir's config.json) still load.
    download = config.data.get("download", False)
    _choice("data.download", download, (False, True))
    if config.data.source == "files":
        files_dir = config.data.files_dir
        if download and not files_dir:
            raise ConfigError("data.files_dir='' is empty; set it to the folder to download the official files into")
        if not download and (not files_dir or not Path(files_dir).expanduser().is_dir()):
            raise ConfigError(
                f"data.files_dir={files_dir!r} is not a folder; set it to the folder holding the official files, "
                "or add --config.data.download=True to download them there"
            )
    if config.data.image_size:
        native = data.get_dataset_info(config.data.dataset).image_shape[0]
        if config.data.image_size < native:
            raise ConfigError(f"data.image_size={config.data.image_size} is smaller than the images ({native})")
    _choice("data.channels", config.data.channels, (0, 1, 3))
    _choice("optimizer.name", config.optimizer.name, optim.OPTIMIZERS)
    _positive("optimizer.learning_rate", config.optimizer.learning_rate)
    _in_range("optimizer.momentum", config.optimizer.momentum, 0.0, 1.0)
    _in_range("optimizer.weight_decay", config.optimizer.weight_decay, 0.0, 1.0)
    _choice("schedule.name", config.schedule.name, optim.SCHEDULES)
    _choice("schedule.warmup_mode", config.schedule.warmup_mode, optim.WARMUP_MODES)
    _positive("train.batch_size", config.train.batch_size, integer=True)
    if config.train.num_steps < 0:
        raise ConfigError(f"train.num_steps={config.train.num_steps!r} must be positive (or 0 to use num_epochs)")
    if config.train.num_steps == 0:
        _positive("train.num_epochs", config.train.num_epochs, integer=True)
    if config.train.steps_per_call < 0:
        raise ConfigError(f"train.steps_per_call={config.train.steps_per_call!r} must be positive, or 0 for automatic")
    _positive("train.log_every_steps", config.train.log_every_steps, integer=True)
    _in_range("train.label_smoothing", config.train.label_smoothing, 0.0, 1.0)
    _in_range("train.ema_decay", config.train.ema_decay, 0.0, 1.0)
    _choice("train.on_nonfinite", config.train.on_nonfinite, NONFINITE_POLICIES)
    _choice("augment.pad_mode", config.augment.pad_mode, augment.PAD_MODES)
    _positive("eval.batch_size", config.eval.batch_size, integer=True)
    _positive("eval.every_epochs", config.eval.every_epochs, integer=True)
    _positive("checkpoint.every_epochs", config.checkpoint.every_epochs, integer=True)
    _positive("checkpoint.keep", config.checkpoint.keep, integer=True)


def check_workdir(workdir: str | os.PathLike) -> Path:
    """The workdir must be a folder this process can write (it is created when missing)."""
    path = Path(workdir).expanduser()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--workdir={str(path)!r} is a file; give a folder (it is created when missing)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"--workdir={str(path)!r} cannot be created: {error.strerror}") from error
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"--workdir={str(path)!r} is not writable; choose a folder you can write")
    return path


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in tree.items():
        if isinstance(value, Mapping):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", list(value) if isinstance(value, tuple) else value


def to_json(config: ml_collections.ConfigDict) -> str:
    return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=list)


def write_json(config: ml_collections.ConfigDict, path: str | os.PathLike) -> None:
    """Writes `config` to `path` atomically: a reader (another process, a restart after a kill) sees the old file
    or the whole new one, never a torn one."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(partial, "w") as file:
        file.write(to_json(config))
        file.flush()
        os.fsync(file.fileno())
    os.replace(partial, path)


def load_json(path: str | os.PathLike) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(json.loads(Path(path).read_text()))


def identity_differences(previous: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """`key: old -> new` for every model or data key that differs between two configs (locations aside)."""
    old = dict(_flatten({key: previous.get(key, {}) for key in IDENTITY_SECTIONS}))
    new = dict(_flatten({key: current.get(key, {}) for key in IDENTITY_SECTIONS}))
    keys = sorted((old | new).keys() - set(LOCATION_KEYS))
    return [f"{key}: {old.get(key)!r} -> {new.get(key)!r}" for key in keys if old.get(key) != new.get(key)]


def use_official_files(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Reads `config.data.dataset` from its official files, downloaded (and verified) into the user's cache when
    missing: what the CIFAR configs do, as preparing CIFAR with tfds needs TensorFlow."""
    config.data.source = "files"
    config.data.download = True
    config.data.files_dir = data.default_files_dir(config.data.dataset)
    return config


def base_config() -> ml_collections.ConfigDict:
    """Every key a run reads, with the He et al. CIFAR-10 ResNet-20 recipe; configs/*.py start from this."""
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.model = ml_collections.ConfigDict(
        # shortcut "" keeps the registry's choice (A for the CIFAR family, B for ResNet-18 and up).
        dict(name="resnet20", dtype="float32", shortcut="", zero_init_residual=False, dropout_rate=0.0)
    )
    config.data = ml_collections.ConfigDict(
        dict(
            dataset="cifar10",
            source="tfds",
            files_dir="",  # the `files` source's folder (~ is expanded)
            download=False,  # True: download the official files files_dir lacks, verified by sha256
            download_mirror="",  # a base URL serving the official file names; empty: the official hosts
            data_dir="",
            image_size=32,  # grey 28x28 sets are zero-padded to this; 0 keeps the native size
            channels=0,  # 0: native; 3 repeats a grey channel
            mean=(),  # empty: the dataset's own statistics
            std=(),
            synthetic_train_examples=0,  # 0: the registry's size
            synthetic_test_examples=0,
        )
    )
    config.augment = ml_collections.ConfigDict(dict(crop_padding=4, pad_mode="constant", flip=True, cutout_size=0))
    config.train = ml_collections.ConfigDict(
        dict(
            batch_size=128,  # global, over all devices
            num_epochs=0,
            num_steps=64_000,  # > 0 wins over num_epochs
            # Steps per call (one lax.scan on accelerators, which hides Python and launch overhead; on CPUs the
            # steps are dispatched one by one, as XLA:CPU runs convolutions far slower inside loops).
            # 0: automatic, 50 on accelerators, 1 on CPUs (where a call gains nothing and logs come sooner).
            steps_per_call=0,
            log_every_steps=100,
            label_smoothing=0.0,
            ema_decay=0.0,  # > 0 keeps an EMA of the weights and evaluates it
            on_nonfinite="stop",  # or "skip": drop steps with a NaN/Inf loss or gradient and go on
        )
    )
    config.optimizer = ml_collections.ConfigDict(
        dict(
            name="sgd",
            learning_rate=0.1,
            momentum=0.9,
            nesterov=False,
            weight_decay=1e-4,
            decay_all_params=False,  # True also decays BN parameters and biases
            clip_grad_norm=0.0,
            b1=0.9,
            b2=0.999,
            eps=1e-8,
        )
    )
    config.schedule = ml_collections.ConfigDict(
        dict(
            name="piecewise",
            boundaries=(32_000, 48_000),  # steps, for piecewise
            decay_factor=0.1,
            warmup_steps=0,
            warmup_mode="linear",
            warmup_factor=0.0,
            end_factor=0.0,
            pct_start=0.3,
        )
    )
    config.eval = ml_collections.ConfigDict(dict(every_epochs=1, batch_size=1000, tta_flip=False))
    config.checkpoint = ml_collections.ConfigDict(dict(every_epochs=1, keep=3, async_save=True))
    config.distributed = ml_collections.ConfigDict(dict(coordinator_address="", num_processes=0, process_id=-1))
    return config
