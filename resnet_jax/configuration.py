"""Configs as data: loading a `--config` file, `--config.key=value` overrides, and `config.json` written and read.

It knows no section's meaning: each consumer (models, data, optim, ...) owns its section's defaults and checks and
uses the `check_*` helpers here, so every problem is one `ConfigError` line naming the key, the value and the fix.
"""

from __future__ import annotations

import ast
import difflib
import importlib.machinery
import importlib.util
import json
import math
import os
import traceback
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_collections

from resnet_jax import atomic, errors

CONFIG_FILE = "config.json"
RECORD_KEY = "record"  # config.json's record of what ran, beside the config's sections (resnet_jax.record)
OVERRIDABLE_TYPES = (bool, int, float, str, tuple, list)


class ConfigError(ValueError):
    """A config value that cannot work; the message is one line naming key, value and what is allowed."""


def check_choice(key: str, value: Any, allowed: Iterable[Any]) -> None:
    allowed = tuple(allowed)
    if isinstance(value, bool) != any(isinstance(option, bool) for option in allowed) or value not in allowed:
        raise ConfigError(f"{key}={value!r} is not known; allowed: {', '.join(map(str, allowed))}")


def check_positive(key: str, value: Any, integer: bool = False) -> None:
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or value <= 0:
        raise ConfigError(f"{key}={value!r} must be a positive {'integer' if integer else 'number'}")


def check_at_least(key: str, value: Any, low: int, meaning: str) -> None:
    """An integer key that must be at least `low`; `meaning` says what `low` stands for."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{key}={value!r} must be an integer of at least {low} ({meaning})")


def is_number(value: Any) -> bool:
    """A finite int or float; a bool is not a number here, though Python counts it as an int."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _within(value: Any, low: float, high: float, closed: str) -> bool:
    above = is_number(value) and (value >= low if closed[0] == "[" else value > low)
    return above and (value <= high if closed[1] == "]" else value < high)


def check_number(key: str, value: Any, low: float, high: float, closed: str = "[)", fix: str = "") -> None:
    """A finite number between `low` and `high`, each end included or not as `closed` says (`"[)"`, `"(]"`, ...);
    `fix` ends the message (` (0: no clipping)`). The bounds are shown as given: 0 as 0, 0.0 as 0.0."""
    if not _within(value, low, high, closed):
        if math.isinf(high):
            allowed = "a positive number" if closed[0] == "(" else f"a number of {low} or more"
        else:
            allowed = f"in {closed[0]}{low}, {high}{closed[1]}"
        raise ConfigError(f"{key}={value!r} must be {allowed}{fix}")


def check_in_range(key: str, value: Any, low: float, high: float) -> None:
    check_number(key, value, low, high, "[)")


def check_probability(key: str, value: Any) -> None:
    if not _within(value, 0, 1, "[]"):
        raise ConfigError(f"{key}={value!r} must be a probability, in [0, 1]")


def check_seed(key: str, value: Any) -> None:
    # numpy's generators (the synthetic source) take no negative seed, and jax's keys hold 32 bits of one.
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**32:
        raise ConfigError(f"{key}={value!r} must be an integer in [0, 2**32)")


# ----------------------------------------------------------------------------------------------------------------
# The --config file.


def _one_line(error: BaseException) -> str:
    return f"{type(error).__name__}: {errors.one_line(error)}".rstrip(": ")


def _line_in(path: str, error: BaseException) -> str:
    """` (line N)` of the deepest frame of `error`'s traceback that ran in the file at `path`, if any."""
    lines = [frame.lineno for frame in traceback.extract_tb(error.__traceback__) if frame.filename == path]
    return f" (line {lines[-1]})" if lines else ""


def load_config_file(argument: str) -> ml_collections.ConfigDict:
    """The config of a `--config` argument: `PATH` or `PATH:ARG`, whose `get_config([ARG])` returns a ConfigDict
    (the convention of the Flax examples). Raises a one-line ConfigError naming the file and the fix."""
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
            "start from resnet_jax.experiment.base_config(), as configs/smoke.py does"
        )
    return config


# ----------------------------------------------------------------------------------------------------------------
# Overrides: `key=value` texts (the command lines' --config.key=value) and typed values (a sweep's trials).


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"section.key": value}` for every leaf of a nested mapping (tuples as lists, as JSON holds them)."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat |= flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return flat


def _initials(name: str) -> str:
    return "".join(word[0] for word in name.split("_") if word)


def _nearest_key(config: ml_collections.ConfigDict, key: str) -> str | None:
    """The real key `key` most likely meant. Its last part decides, matched within its section first (a typo, or
    the words' initials, as lr for learning_rate), then in another section; the whole key last."""
    keys = list(flatten(config.to_dict()))
    parts = {candidate: candidate.rpartition(".") for candidate in keys}
    section, _, leaf = key.rpartition(".")
    sections = sorted({parent for parent, _, _ in parts.values()})
    if section not in sections:
        close = difflib.get_close_matches(section, sections, n=1)
        section = close[0] if close else section
    siblings = {name: candidate for candidate, (parent, _, name) in parts.items() if parent == section}
    close = difflib.get_close_matches(leaf, list(siblings), n=1)
    if close:
        return siblings[close[0]]
    elsewhere = [candidate for candidate, (_, _, name) in parts.items() if name == leaf]
    if elsewhere:
        return elsewhere[0]
    abbreviated = [name for name in siblings if leaf == _initials(name) or (len(leaf) > 1 and name.startswith(leaf))]
    if abbreviated:
        return siblings[abbreviated[0]]
    close = difflib.get_close_matches(key, keys, n=1)
    return close[0] if close else None


def leaf_value(config: ml_collections.ConfigDict, key: str, flag: str) -> Any:
    """The value of a dotted leaf key, or a ConfigError naming the key and the nearest real one."""
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            close = _nearest_key(config, key)
            hint = f"; did you mean {close}?" if close else "; see resnet_jax.experiment.base_config() for the keys"
            raise ConfigError(f"{flag}: the config has no key {key!r}{hint}")
        node = node[part]
    if isinstance(node, ml_collections.ConfigDict):
        raise ConfigError(
            f"{flag}: {key!r} is a section of the config; set one of its keys: "
            + ", ".join(f"{key}.{name}" for name in node)
        )
    if not isinstance(node, OVERRIDABLE_TYPES):
        raise ConfigError(f"{flag}: the key holds a {type(node).__name__}, which cannot be set from text")
    return node


def _number(text: str) -> Any:
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    return None if isinstance(value, bool) else value


def parse_value(key: str, text: str, current: Any, flag: str) -> Any:
    """Reads `text` as a value of `current`'s type: true/false for a bool, whole numbers for an int, numbers for a
    float, a comma-separated list (brackets optional) for a tuple, the text itself for a string."""
    text = text.strip()
    if isinstance(current, bool):
        if text.lower() not in ("true", "false"):
            raise ConfigError(f"{flag}: {key} is a bool; give true or false")
        return text.lower() == "true"
    if isinstance(current, str):
        return text
    if isinstance(current, (tuple, list)):
        inner = text.strip("()[] ")
        items = [item for item in inner.split(",") if item.strip()] if inner else []
        values = [_number(item.strip()) for item in items]
        if any(not isinstance(value, (int, float)) for value in values):
            raise ConfigError(f"{flag}: {key} is a list of numbers; give them comma-separated, e.g. 0.5,0.75")
        return type(current)(values) if isinstance(current, list) else tuple(values)
    value = _number(text)
    if isinstance(current, int) and not isinstance(value, int):
        raise ConfigError(f"{flag}: {key} is an integer; give a whole number")
    if not isinstance(value, (int, float)):
        raise ConfigError(f"{flag}: {key} is a number; give a number")
    return type(current)(value)


def apply_overrides(
    config: ml_collections.ConfigDict, overrides: Mapping[str, Any], flag: str = "--config"
) -> ml_collections.ConfigDict:
    """A copy of `config` with dotted keys set to values of their type (ints widen to floats where a float is)."""
    updated = config.copy_and_resolve_references()
    for key, value in overrides.items():
        current = leaf_value(updated, key, f"{flag}.{key}")
        if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if type(value) is not type(current) and not (
            isinstance(current, (tuple, list)) and isinstance(value, (tuple, list))
        ):
            raise ConfigError(
                f"{flag}.{key}={value!r}: the key holds a {type(current).__name__}, not a {type(value).__name__}"
            )
        *sections, leaf = key.split(".")
        node = updated
        for section in sections:
            node = node[section]
        node[leaf] = tuple(value) if isinstance(current, tuple) else value
    return updated


def apply_override_texts(
    config: ml_collections.ConfigDict, texts: Sequence[str], flag: str = "--config"
) -> ml_collections.ConfigDict:
    """`config` with `key=value` texts applied in order (the last one of a key wins, as on a command line)."""
    values = {}
    for text in texts:
        key, separator, value = text.partition("=")
        if not separator or not key:
            raise ConfigError(f"{flag}.{text}: give a value, e.g. {flag}.train.num_epochs=3")
        current = leaf_value(config, key, f"{flag}.{key}")
        values[key] = parse_value(key, value, current, f"{flag}.{key}={value}")
    return apply_overrides(config, values, flag)


# ----------------------------------------------------------------------------------------------------------------
# config.json: written, and read back as a config.


def to_json(config: ml_collections.ConfigDict | Mapping[str, Any]) -> str:
    tree = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else config
    return json.dumps(tree, indent=2, sort_keys=True, default=list)


def write_json(config: ml_collections.ConfigDict | Mapping[str, Any], path: str | os.PathLike) -> None:
    """Writes `config` to `path` atomically: a reader (another process, a restart after a kill) sees the old file
    or the whole new one, never a torn one."""
    atomic.write_text(path, to_json(config))


def from_saved(saved: Mapping[str, Any], defaults: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A saved config (a workdir's config.json) over today's `defaults`: keys added since it was written take their
    defaults, and keys that no longer exist are dropped (so an older run's tools still rebuild its model)."""
    known = flatten(defaults.to_dict())
    values = {key: value for key, value in flatten(saved).items() if key in known}
    config = defaults.copy_and_resolve_references()
    for key, value in values.items():
        *sections, leaf = key.split(".")
        node = config
        for section in sections:
            node = node[section]
        node[leaf] = tuple(value) if isinstance(node[leaf], tuple) else value
    return config


def read_json(path: str | os.PathLike) -> dict[str, Any]:
    return json.loads(Path(path).read_text())
