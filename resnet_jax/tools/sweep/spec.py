"""What a sweep explores: `--grid` and `--search` texts parsed into typed dimensions of config keys, checked against
the config (every key exists, every value has its key's type, every corner of the space builds) before anything
runs. The keys and values are read by `configuration`, as `--config.key=value` is.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence
from typing import Any

import ml_collections
import optuna

from resnet_jax import configuration, experiment
from resnet_jax.configuration import ConfigError
from resnet_jax.data import DataError

SAMPLERS = ("tpe", "random")
DISTRIBUTIONS = ("uniform", "loguniform", "choice")
SWEEPABLE_TYPES = (bool, int, float, str)
# Trials are ranked on one validation split: what draws it is the sweep's, never a trial's own.
UNSWEEPABLE_KEYS = ("data.validation_size", "data.validation_seed")


@dataclasses.dataclass(frozen=True)
class Dimension:
    """One swept config key: a list of values (a grid or a `choice`), or a numeric range (`uniform`, `loguniform`)."""

    key: str
    kind: str  # "grid", "choice", "uniform" or "loguniform"
    values: tuple[Any, ...] = ()
    low: float = 0.0
    high: float = 0.0
    integer: bool = False

    @property
    def log(self) -> bool:
        return self.kind == "loguniform"

    def distribution(self) -> optuna.distributions.BaseDistribution:
        if self.values:
            return optuna.distributions.CategoricalDistribution(self.values)
        if self.integer:
            return optuna.distributions.IntDistribution(int(self.low), int(self.high), log=self.log)
        return optuna.distributions.FloatDistribution(self.low, self.high, log=self.log)

    def describe(self) -> str:
        if self.values:
            return f"{self.key} in {{{', '.join(map(str, self.values))}}}"
        return f"{self.key} ~ {self.kind}[{self.low:g}, {self.high:g}]"

    def corners(self) -> tuple[Any, ...]:
        """The values that bound this dimension: each listed value, or the two ends of the range."""
        return self.values or (self.low, self.high)


@dataclasses.dataclass(frozen=True)
class SweepSpec:
    """What a sweep explores and how: the dimensions, the sampler, the trial budget, the pruning, and the training
    seeds each trial runs (`seed`, `seed` + 1, ...)."""

    dimensions: tuple[Dimension, ...]
    sampler: str  # "grid", "tpe" or "random"
    trials: int
    prune: bool = False
    prune_after_epochs: int = 2
    seeds: int = 1

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(dimension.key for dimension in self.dimensions)

    def grid_points(self) -> list[dict[str, Any]]:
        return [
            dict(zip(self.keys, values, strict=True))
            for values in itertools.product(*(d.values for d in self.dimensions))
        ]

    def identity(self) -> dict[str, Any]:
        """What must not change between runs of one sweep (the trial budget may grow)."""
        identity = {"sampler": self.sampler, "space": [dataclasses.asdict(d) for d in self.dimensions]}
        return identity | ({"seeds": self.seeds} if self.seeds > 1 else {})  # a one-seed sweep's as before seeds


def format_value(value: Any) -> str:
    """A swept value as trial names and tables write it: `true`, `0.0005`, `resnet20`."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _split_assignment(text: str, flag: str) -> tuple[str, str]:
    key, separator, rest = text.partition("=")
    if not separator or not key.strip() or not rest.strip():
        raise ConfigError(f"{flag} {text!r}: write KEY=VALUES, e.g. optimizer.learning_rate=0.01,0.1")
    return key.strip(), rest.strip()


def _sweepable_value(config: ml_collections.ConfigDict, key: str, flag: str) -> Any:
    current = configuration.leaf_value(config, key, f"{flag} {key}")
    if not isinstance(current, SWEEPABLE_TYPES):
        raise ConfigError(
            f"{flag} {key}: the key holds a {type(current).__name__}; only bool, int, float and str keys can be swept"
        )
    return current


def _values(key: str, texts: Sequence[str], current: Any, flag: str) -> tuple[Any, ...]:
    return tuple(configuration.parse_value(key, text, current, f"{flag} {key}={text.strip()}") for text in texts)


def parse_grid(config: ml_collections.ConfigDict, text: str) -> Dimension:
    """`key=v1,v2,...` -> a grid dimension whose values have the key's type."""
    key, rest = _split_assignment(text, "--grid")
    values = _values(key, rest.split(","), _sweepable_value(config, key, "--grid"), "--grid")
    if len(set(values)) != len(values):
        raise ConfigError(f"--grid {key}: the values {rest} repeat one another")
    return Dimension(key, "grid", values=values)


def parse_search(config: ml_collections.ConfigDict, text: str) -> Dimension:
    """`key=uniform:lo:hi`, `key=loguniform:lo:hi` (numeric keys) or `key=choice:a,b,c` -> a search dimension."""
    key, rest = _split_assignment(text, "--search")
    current = _sweepable_value(config, key, "--search")
    kind, _, arguments = rest.partition(":")
    if kind not in DISTRIBUTIONS:
        raise ConfigError(
            f"--search {key}={rest!r}: unknown distribution {kind!r}; use uniform:LOW:HIGH, loguniform:LOW:HIGH "
            "or choice:A,B,C"
        )
    if kind == "choice":
        return Dimension(
            key, "choice", values=tuple(dict.fromkeys(_values(key, arguments.split(","), current, "--search")))
        )
    if isinstance(current, (bool, str)):
        raise ConfigError(f"--search {key}: a {type(current).__name__} key takes choice:A,B,..")
    ends = arguments.split(":")
    if len(ends) != 2:
        raise ConfigError(f"--search {key}={rest!r}: write {kind}:LOW:HIGH")
    low, high = _values(key, ends, current, "--search")
    if not low < high:
        raise ConfigError(f"--search {key}={rest!r}: LOW must be below HIGH")
    if kind == "loguniform" and low <= 0:
        raise ConfigError(f"--search {key}={rest!r}: loguniform needs LOW > 0")
    return Dimension(key, kind, low=low, high=high, integer=isinstance(current, int))


def make_spec(
    config: ml_collections.ConfigDict,
    grids: Sequence[str] = (),
    searches: Sequence[str] = (),
    trials: int = 0,
    sampler: str = "tpe",
    prune: bool = False,
    prune_after_epochs: int = 2,
    seeds: int = 1,
) -> SweepSpec:
    """Parses and checks a sweep against `config`: every key exists, every value has the key's type, and the
    configs it leads to build (`experiment.build`). Raises ConfigError (one line) on the first problem."""
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ConfigError(f"--seeds={seeds!r} must be a whole number of at least 1 (training seeds per trial)")
    if config.seed + seeds > 2**32:
        raise ConfigError(f"--seeds={seeds} from seed={config.seed} reaches past 2**32 - 1; give a lower seed")
    if bool(grids) == bool(searches):
        raise ConfigError("give --grid KEY=V1,V2 (repeatable) or --search KEY=DIST:ARGS, not both")
    if grids and trials:
        raise ConfigError("--trials is for --search; a grid runs every combination once")
    if searches and trials <= 0:
        raise ConfigError("--search needs --trials N (a positive number of trials)")
    if searches and sampler not in SAMPLERS:
        raise ConfigError(f"--sampler={sampler!r} is not known; allowed: {', '.join(SAMPLERS)}")
    if prune_after_epochs < 1:
        raise ConfigError(f"--prune-after-epochs={prune_after_epochs} must be at least 1")
    dimensions = tuple(parse_grid(config, text) for text in grids) or tuple(
        parse_search(config, text) for text in searches
    )
    keys = [d.key for d in dimensions]
    repeated = [key for key in dict.fromkeys(keys) if keys.count(key) > 1]
    if repeated:
        raise ConfigError(f"{repeated[0]} is swept twice; give each key once")
    fixed = [key for key in keys if key in UNSWEEPABLE_KEYS]
    if fixed:
        raise ConfigError(
            f"{fixed[0]} cannot be swept: every trial is ranked on the same validation split; set it with "
            f"--config.{fixed[0]}=VALUE instead"
        )
    if seeds > 1 and "seed" in keys:
        raise ConfigError("seed is swept and --seeds is given; give one: --seeds N runs seeds seed..seed+N-1")
    if grids:
        trial_count = math.prod(len(d.values) for d in dimensions)
        spec = SweepSpec(dimensions, "grid", trial_count, prune, prune_after_epochs, seeds)
        candidates = spec.grid_points()
    else:
        spec = SweepSpec(dimensions, sampler, trials, prune, prune_after_epochs, seeds)
        # Each end of each range, the others at their low ends: a range that only fails at one end is caught.
        lows = {d.key: d.corners()[0] for d in dimensions}
        candidates = [lows | {d.key: value} for d in dimensions for value in d.corners()]
    for overrides in candidates:
        try:
            experiment.build(configuration.apply_overrides(config, overrides))
        except (ValueError, DataError) as error:  # a ConfigError, or a plain ValueError of a builder
            where = ", ".join(f"{key}={value}" for key, value in overrides.items())
            raise ConfigError(f"the sweep reaches {where}, which cannot run: {error}") from None
    return spec
