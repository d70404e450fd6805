"""Hyper-parameter sweeps: a grid, or an Optuna random/TPE search, of ordinary training runs, one per trial.

`python -m resnet_jax.sweep --config configs/X.py --workdir DIR --grid key=a,b ...` (or `--search key=dist:lo:hi
--trials N`). The Optuna study lives in DIR/study.db, each trial in DIR/trials/<name>/, and the same command resumes:
finished trials are skipped, an interrupted one continues from its newest checkpoint. Results: DIR/results.{csv,md}
and DIR/sweep.png.
"""

from __future__ import annotations

import ast
import csv
import dataclasses
import difflib
import hashlib
import itertools
import json
import logging
import math
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_collections
import optuna
from absl import flags
from ml_collections import config_flags

from resnet_jax import configuration, metrics, runtime, trainer
from resnet_jax.checkpoint import CheckpointError
from resnet_jax.data import DataError

# Named, not __name__: run as `python -m resnet_jax.sweep` this module is __main__.
logger = logging.getLogger("resnet_jax.sweep")

STUDY_FILE = "study.db"
STUDY_NAME = "sweep"
TRIALS_DIR = "trials"
RESULTS_CSV = "results.csv"
RESULTS_MD = "results.md"
PLOT_FILE = "sweep.png"
SAMPLERS = ("tpe", "random")
DISTRIBUTIONS = ("uniform", "loguniform", "choice")
# The median pruner compares a trial with the finished ones, so it waits for this many before it prunes anything.
PRUNER_STARTUP_TRIALS = 2
SWEEPABLE_TYPES = (bool, int, float, str)
FAILED = optuna.trial.TrialState.FAIL
FINISHED_STATES = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


# ----------------------------------------------------------------------------------------------------------------
# The search space: parsed and checked against the config before anything runs.


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
    """What a sweep explores and how: the dimensions, the sampler, the trial budget and the pruning."""

    dimensions: tuple[Dimension, ...]
    sampler: str  # "grid", "tpe" or "random"
    trials: int
    prune: bool = False
    prune_after_epochs: int = 2

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
        return {"sampler": self.sampler, "space": [dataclasses.asdict(d) for d in self.dimensions]}


def _leaf_keys(config: ml_collections.ConfigDict, prefix: str = "") -> Iterator[str]:
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            yield from _leaf_keys(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


def _current_value(config: ml_collections.ConfigDict, key: str, flag: str) -> Any:
    """The value of a dotted leaf key, or a ConfigError naming the key and the nearest real one."""
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            node = None
            break
        node = node[part]
    if isinstance(node, ml_collections.ConfigDict):
        raise configuration.ConfigError(
            f"{flag} {key}: {key!r} is a section of the config; sweep one of its keys: "
            + ", ".join(f"{key}.{name}" for name in node)
        )
    if node is None:
        close = difflib.get_close_matches(key, list(_leaf_keys(config)), n=1)
        hint = f"; did you mean {close[0]}?" if close else "; see configuration.base_config() for the keys"
        raise configuration.ConfigError(f"{flag} {key}: the config has no key {key!r}{hint}")
    if not isinstance(node, SWEEPABLE_TYPES):
        raise configuration.ConfigError(
            f"{flag} {key}: the key holds a {type(node).__name__}; only bool, int, float and str keys can be swept"
        )
    return node


def _parse_value(key: str, text: str, current: Any, flag: str) -> Any:
    """Reads `text` as a value of `current`'s type (an int key takes only integers, a bool key true/false)."""
    text = text.strip()
    if isinstance(current, bool):
        lowered = text.lower()
        if lowered not in ("true", "false"):
            raise configuration.ConfigError(f"{flag} {key}={text!r}: the key is a bool; give true or false")
        return lowered == "true"
    if isinstance(current, str):
        return text
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = None
    if isinstance(current, int) and (isinstance(value, bool) or not isinstance(value, int)):
        raise configuration.ConfigError(f"{flag} {key}={text!r}: the key is an integer; give whole numbers")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise configuration.ConfigError(f"{flag} {key}={text!r}: the key is a number; give numbers")
    return type(current)(value)


def _split_assignment(text: str, flag: str) -> tuple[str, str]:
    key, separator, rest = text.partition("=")
    if not separator or not key.strip() or not rest.strip():
        raise configuration.ConfigError(f"{flag} {text!r}: write KEY=VALUES, e.g. optimizer.learning_rate=0.01,0.1")
    return key.strip(), rest.strip()


def parse_grid(config: ml_collections.ConfigDict, text: str) -> Dimension:
    """`key=v1,v2,...` -> a grid dimension whose values have the key's type."""
    key, rest = _split_assignment(text, "--grid")
    current = _current_value(config, key, "--grid")
    values = tuple(_parse_value(key, item, current, "--grid") for item in rest.split(","))
    if len(set(values)) != len(values):
        raise configuration.ConfigError(f"--grid {key}: the values {rest} repeat one another")
    return Dimension(key, "grid", values=values)


def parse_search(config: ml_collections.ConfigDict, text: str) -> Dimension:
    """`key=uniform:lo:hi`, `key=loguniform:lo:hi` (numeric keys) or `key=choice:a,b,c` -> a search dimension."""
    key, rest = _split_assignment(text, "--search")
    current = _current_value(config, key, "--search")
    kind, _, arguments = rest.partition(":")
    if kind not in DISTRIBUTIONS:
        raise configuration.ConfigError(
            f"--search {key}={rest!r}: unknown distribution {kind!r}; use uniform:LOW:HIGH, loguniform:LOW:HIGH "
            "or choice:A,B,C"
        )
    if kind == "choice":
        values = tuple(_parse_value(key, item, current, "--search") for item in arguments.split(","))
        return Dimension(key, "choice", values=tuple(dict.fromkeys(values)))
    if isinstance(current, (bool, str)):
        raise configuration.ConfigError(f"--search {key}: a {type(current).__name__} key takes choice:A,B,..")
    ends = arguments.split(":")
    if len(ends) != 2:
        raise configuration.ConfigError(f"--search {key}={rest!r}: write {kind}:LOW:HIGH")
    low, high = (_parse_value(key, end, current, "--search") for end in ends)
    if not low < high:
        raise configuration.ConfigError(f"--search {key}={rest!r}: LOW must be below HIGH")
    if kind == "loguniform" and low <= 0:
        raise configuration.ConfigError(f"--search {key}={rest!r}: loguniform needs LOW > 0")
    return Dimension(key, kind, low=low, high=high, integer=isinstance(current, int))


def apply_overrides(config: ml_collections.ConfigDict, overrides: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """A copy of `config` with dotted keys set; ml_collections' locking and typing refuse unknown keys and types."""
    trial_config = config.copy_and_resolve_references()
    trial_config.lock()
    for key, value in overrides.items():
        *sections, leaf = key.split(".")
        node = trial_config
        for section in sections:
            node = node[section]
        try:
            node[leaf] = value
        except (TypeError, KeyError, AttributeError) as error:
            raise configuration.ConfigError(f"{key}={value!r} does not fit the config: {error}") from None
    return trial_config


def make_spec(
    config: ml_collections.ConfigDict,
    grids: Sequence[str] = (),
    searches: Sequence[str] = (),
    trials: int = 0,
    sampler: str = "tpe",
    prune: bool = False,
    prune_after_epochs: int = 2,
) -> SweepSpec:
    """Parses and checks a sweep against `config`: every key exists, every value has the key's type, and the
    configs it leads to pass the trainer's own validation. Raises ConfigError (one line) on the first problem."""
    if bool(grids) == bool(searches):
        raise configuration.ConfigError("give --grid KEY=V1,V2 (repeatable) or --search KEY=DIST:ARGS, not both")
    if grids and trials:
        raise configuration.ConfigError("--trials is for --search; a grid runs every combination once")
    if searches and trials <= 0:
        raise configuration.ConfigError("--search needs --trials N (a positive number of trials)")
    if searches and sampler not in SAMPLERS:
        raise configuration.ConfigError(f"--sampler={sampler!r} is not known; allowed: {', '.join(SAMPLERS)}")
    if prune_after_epochs < 1:
        raise configuration.ConfigError(f"--prune_after_epochs={prune_after_epochs} must be at least 1")
    dimensions = tuple(parse_grid(config, text) for text in grids) or tuple(
        parse_search(config, text) for text in searches
    )
    repeated = [key for key in dict.fromkeys(d.key for d in dimensions) if [d.key for d in dimensions].count(key) > 1]
    if repeated:
        raise configuration.ConfigError(f"{repeated[0]} is swept twice; give each key once")
    if grids:
        spec = SweepSpec(dimensions, "grid", math.prod(len(d.values) for d in dimensions), prune, prune_after_epochs)
        candidates = spec.grid_points()
    else:
        spec = SweepSpec(dimensions, sampler, trials, prune, prune_after_epochs)
        lows = {d.key: d.corners()[0] for d in dimensions}
        candidates = [lows | {d.key: value} for d in dimensions for value in d.corners()]
    for overrides in candidates:
        try:
            trainer.build_experiment(apply_overrides(config, overrides))
        except (configuration.ConfigError, DataError, ValueError) as error:
            where = ", ".join(f"{key}={value}" for key, value in overrides.items())
            raise configuration.ConfigError(f"the sweep reaches {where}, which cannot run: {error}") from None
    return spec


# ----------------------------------------------------------------------------------------------------------------
# Trials: deterministic names, so that a re-run finds an interrupted trial's folder and resumes it.


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def trial_name(overrides: Mapping[str, Any]) -> str:
    """`learning_rate=0.1,weight_decay=0.0005`; a short hash is added where the values are rounded in the name."""
    leaves = [key.rsplit(".", 1)[-1] for key in overrides]
    parts = []
    exact = True
    for key, leaf, value in zip(overrides, leaves, overrides.values(), strict=True):
        text = _format_value(value)
        exact &= not isinstance(value, float) or float(text) == value
        parts.append(f"{leaf if leaves.count(leaf) == 1 else key}={text}")
    name = "".join(c if c.isalnum() or c in "._=+-," else "-" for c in ",".join(parts))
    if not exact:
        digest = hashlib.sha1(json.dumps(dict(overrides), sort_keys=True).encode()).hexdigest()[:6]
        name = f"{name}-{digest}"
    return name


def _pruning_hook(trial: optuna.Trial, reported: set[int]) -> Callable[[int, dict[str, float]], None]:
    """The trainer's `on_evaluation`: reports each evaluation to Optuna, and ends the trial (after its checkpoint)
    when the median pruner says it is clearly worse than the others at the same epoch."""

    def on_evaluation(epoch: int, values: dict[str, float]) -> None:
        if epoch not in reported:
            trial.report(values["test_accuracy"], epoch)
            reported.add(epoch)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {epoch}")

    return on_evaluation


def report_evaluations(trial: optuna.Trial, trial_dir: Path, reported: set[int]) -> bool:
    """Reports each new evaluation of `trial_dir` as (epoch, test accuracy); returns whether there was one."""
    try:
        records = metrics.read_metrics(trial_dir)
    except ValueError:  # a line being written right now; the next poll reads it whole
        return False
    new = False
    for record in records:
        epoch = round(record["epoch"])
        if record.get("test_accuracy") is not None and epoch not in reported:
            trial.report(record["test_accuracy"], epoch)
            reported.add(epoch)
            new = True
    return new


def _is_interrupted(trial: optuna.trial.FrozenTrial) -> bool:
    """A trial a killed sweep left behind (marked FAIL on restart, with no error of its own)."""
    return trial.state == FAILED and "error" not in trial.user_attrs


def _counted_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Trials that used up budget: finished, pruned, or failed on their own (non-finite loss, say)."""
    return [
        trial
        for trial in study.get_trials(deepcopy=False)
        if trial.state in FINISHED_STATES or (trial.state == FAILED and not _is_interrupted(trial))
    ]


def _resume_interrupted(study: optuna.Study) -> None:
    """A trial still RUNNING belongs to a sweep that was killed: queue its parameters again (the new trial has
    the same name, so it resumes the same folder from its newest checkpoint) and close the old record."""
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        attempts = trial.user_attrs.get("attempts", 1) + 1
        study.enqueue_trial(trial.params, user_attrs={"attempts": attempts})
        study.tell(trial.number, state=FAILED)
        logger.info("trial %s was interrupted; it resumes from its newest checkpoint", trial.user_attrs.get("name"))


def _flat(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat |= _flat(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _check_same_sweep(study: optuna.Study, spec: SweepSpec, config: ml_collections.ConfigDict, workdir: Path):
    """A workdir holds one sweep: a re-run must explore the same space from the same base config."""
    stored_spec = study.user_attrs.get("spec")
    stored_config = study.user_attrs.get("base_config")
    base = _flat(json.loads(configuration.to_json(config)))
    if stored_spec is None:
        study.set_user_attr("spec", spec.identity())
        study.set_user_attr("base_config", base)
        return
    if stored_spec != json.loads(json.dumps(spec.identity())):
        raise configuration.ConfigError(
            f"--workdir={str(workdir)!r} holds a different sweep ({_describe_stored(stored_spec)}); re-run its own "
            "command to resume it, or choose another --workdir"
        )
    changed = [
        f"{key}: {stored_config.get(key)!r} -> {base.get(key)!r}"
        for key in sorted(stored_config.keys() | base.keys())
        if stored_config.get(key) != base.get(key)
    ]
    if changed:
        raise configuration.ConfigError(
            f"--workdir={str(workdir)!r} holds a sweep from another base config ({'; '.join(changed)}); re-run its "
            "own command to resume it, or choose another --workdir"
        )


def _describe_stored(stored_spec: Mapping[str, Any]) -> str:
    dimensions = [Dimension(**{**d, "values": tuple(d["values"])}) for d in stored_spec["space"]]
    return f"{stored_spec['sampler']}: " + "; ".join(d.describe() for d in dimensions)


def _make_sampler(spec: SweepSpec, seed: int) -> optuna.samplers.BaseSampler:
    # Grid points are all queued, so a grid never samples; its sampler is never asked.
    if spec.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


def _open_study(workdir: Path, spec: SweepSpec, config: ml_collections.ConfigDict) -> optuna.Study:
    pruner = (
        optuna.pruners.MedianPruner(n_startup_trials=PRUNER_STARTUP_TRIALS, n_warmup_steps=spec.prune_after_epochs)
        if spec.prune
        else optuna.pruners.NopPruner()
    )
    study = optuna.create_study(
        storage=f"sqlite:///{workdir / STUDY_FILE}",
        study_name=STUDY_NAME,
        direction="maximize",
        pruner=pruner,
        load_if_exists=True,
    )
    _check_same_sweep(study, spec, config, workdir)
    # Seeded by the trials so far: a resumed search draws new points instead of repeating the first ones.
    study.sampler = _make_sampler(spec, config.seed * 100_003 + len(study.trials))
    return study


def _run_trial(
    study: optuna.Study,
    spec: SweepSpec,
    config: ml_collections.ConfigDict,
    workdir: Path,
    progress: metrics.ItemProgress,
) -> optuna.trial.FrozenTrial:
    trial = study.ask({d.key: d.distribution() for d in spec.dimensions})
    overrides = {key: trial.params[key] for key in spec.keys}
    name = trial_name(overrides)
    trial.set_user_attr("name", name)
    trial_dir = workdir / TRIALS_DIR / name
    progress.start(name)
    # A resumed trial's earlier evaluations count for the pruner as if it had never stopped.
    reported: set[int] = set()
    report_evaluations(trial, trial_dir, reported)
    on_evaluation = _pruning_hook(trial, reported) if spec.prune else None
    start = time.perf_counter()
    state, value = optuna.trial.TrialState.COMPLETE, None
    try:
        result = trainer.train_and_evaluate(apply_overrides(config, overrides), trial_dir, on_evaluation=on_evaluation)
        value = result["test_accuracy"]
    except trainer.TrainingError as error:
        trial.set_user_attr("error", str(error))
        state = FAILED
        logger.warning("trial %s failed: %s", name, error)
    except optuna.TrialPruned as pruned:
        state = optuna.trial.TrialState.PRUNED
        logger.info("trial %s %s", name, pruned)
    trial.set_user_attr("wall_seconds", trial.user_attrs.get("wall_seconds", 0.0) + time.perf_counter() - start)
    report_evaluations(trial, trial_dir, reported)
    progress.finish(name, "failed" if state == FAILED else state.name.lower())
    return study.tell(trial, value, state=state)


# ----------------------------------------------------------------------------------------------------------------
# The loop, and the results: a table and a figure, rewritten after every trial.


def run_sweep(
    config: ml_collections.ConfigDict, workdir: str | Path, spec: SweepSpec, top: int = 5
) -> list[TrialResult]:
    """Runs the trials of `spec` not yet finished in `workdir` (resuming an interrupted one) and writes the
    results; returns them, best first. Raises `trainer.Preempted` when stopped by a signal."""
    workdir = configuration.check_workdir(workdir)
    study = _open_study(workdir, spec, config)
    _resume_interrupted(study)
    if spec.sampler == "grid":
        for point in spec.grid_points():
            study.enqueue_trial(point, skip_if_exists=True)
    finished = len(_counted_trials(study))
    if finished:
        logger.info("%d of %d trials already finished in %s", min(finished, spec.trials), spec.trials, workdir)
    waiting = (optuna.trial.TrialState.WAITING,)
    progress = metrics.ItemProgress("trial", spec.trials, done=min(finished, spec.trials))
    while len(_counted_trials(study)) < spec.trials:
        if spec.sampler == "grid" and not study.get_trials(deepcopy=False, states=waiting):
            break
        _run_trial(study, spec, config, workdir, progress)
        write_results(workdir, spec, collect_results(study, spec, workdir), top)
    results = collect_results(study, spec, workdir)
    write_results(workdir, spec, results, top)
    return results


@dataclasses.dataclass
class TrialResult:
    """One row of the results table."""

    name: str
    state: str  # "complete", "pruned" or "failed"
    overrides: dict[str, Any]
    final_test_accuracy: float | None
    best_test_accuracy: float | None
    epochs: float | None
    wall_seconds: float | None
    images_per_second: float | None
    attempts: int
    error: str = ""


_STATE_ORDER = {"complete": 0, "pruned": 1, "failed": 2}


def collect_results(study: optuna.Study, spec: SweepSpec, workdir: Path) -> list[TrialResult]:
    """One result per trial name (a resumed trial's last attempt), best first: finished trials by final test
    accuracy, then pruned, then failed."""
    latest = {trial.user_attrs["name"]: trial for trial in _counted_trials(study) if "name" in trial.user_attrs}
    results = []
    for name, trial in latest.items():
        summary = metrics.summarize_run(workdir / TRIALS_DIR / name)
        results.append(
            TrialResult(
                name=name,
                state=trial.state.name.lower().replace("fail", "failed"),
                overrides={key: trial.params[key] for key in spec.keys},
                wall_seconds=trial.user_attrs.get("wall_seconds"),
                attempts=trial.user_attrs.get("attempts", 1),
                error=trial.user_attrs.get("error", ""),
                **summary,
            )
        )
    results.sort(key=lambda r: (_STATE_ORDER[r.state], -(r.final_test_accuracy or 0.0), -(r.best_test_accuracy or 0.0)))
    return results


RESULT_COLUMNS = (
    "final_test_accuracy",
    "best_test_accuracy",
    "epochs",
    "wall_seconds",
    "images_per_second",
    "attempts",
    "error",
)


def _cell(value: Any, digits: int) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def write_results(workdir: Path, spec: SweepSpec, results: Sequence[TrialResult], top: int = 5) -> None:
    """DIR/results.csv, DIR/results.md and DIR/sweep.png."""
    header = ["rank", "trial", "state", *spec.keys, *RESULT_COLUMNS]
    with (workdir / RESULTS_CSV).open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for rank, result in enumerate(results, 1):
            values = [getattr(result, column) for column in RESULT_COLUMNS]
            writer.writerow([rank, result.name, result.state, *result.overrides.values(), *values])
    (workdir / RESULTS_MD).write_text(results_markdown(spec, results))
    if results:
        plot_sweep(workdir, spec, results, top)


def results_markdown(spec: SweepSpec, results: Sequence[TrialResult]) -> str:
    import jax

    device = jax.devices()[0]
    states = ", ".join(
        f"{sum(r.state == s for r in results)} {s}" for s in _STATE_ORDER if any(r.state == s for r in results)
    )
    lines = [
        f"Sweep ({spec.sampler}): " + "; ".join(d.describe() for d in spec.dimensions),
        "",
        f"{len(results)} of {spec.trials} trials ({states or 'none yet'}), on {device.device_kind} "
        f"({device.platform}, jax {jax.__version__}). Sorted by final test accuracy.",
        "",
        "| rank | "
        + " | ".join(spec.keys)
        + " | state | final test acc | best test acc | epochs | wall s | images/s |",
        "|---:|" + "---:|" * len(spec.keys) + "---|---:|---:|---:|---:|---:|",
    ]
    for rank, result in enumerate(results, 1):
        values = " | ".join(_format_value(value) for value in result.overrides.values())
        state = result.state + (f" ({result.attempts} attempts)" if result.attempts > 1 else "")
        lines.append(
            f"| {rank} | {values} | {state} | {_cell(result.final_test_accuracy, 4)} | "
            f"{_cell(result.best_test_accuracy, 4)} | {_cell(result.epochs, 2)} | {_cell(result.wall_seconds, 0)} | "
            f"{_cell(result.images_per_second, 0)} |"
        )
    failed = [result for result in results if result.error]
    lines += [""] + [f"- {result.name} failed: {result.error}" for result in failed] if failed else []
    return "\n".join(lines) + "\n"


def _numeric(values: Sequence[Any]) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def plot_sweep(workdir: Path, spec: SweepSpec, results: Sequence[TrialResult], top: int = 5) -> Path:
    """Final test accuracy against each swept key (a line per value of the other key in a 2-D grid), and the
    curves of the `top` best trials overlaid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = len(spec.dimensions) + 2
    columns = min(panels, 2 if panels == 4 else 3)
    rows = math.ceil(panels / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 4.0 * rows), squeeze=False)
    axes = axes.ravel()
    for axis in axes[panels:]:
        axis.set_visible(False)
    scored = [r for r in results if r.final_test_accuracy is not None]
    for axis, dimension in zip(axes, spec.dimensions, strict=False):
        _plot_dimension(axis, spec, dimension, scored)
    curves = [r for r in results if r.state != "failed"][:top]
    loss_axis, accuracy_axis = axes[len(spec.dimensions)], axes[len(spec.dimensions) + 1]
    accuracy_axis.sharex(loss_axis)
    for rank, result in enumerate(curves, 1):
        records = metrics.read_metrics(workdir / TRIALS_DIR / result.name)
        train = [(r["epoch"], r["train_loss"]) for r in records if r.get("train_loss") is not None]
        evals = [(r["epoch"], r["test_accuracy"]) for r in records if r.get("test_accuracy") is not None]
        label = f"#{rank} {result.name}"
        line = loss_axis.plot(*zip(*train, strict=True), label=label)[0] if train else None
        if evals:
            accuracy_axis.plot(*zip(*evals, strict=True), "o-", label=label, color=line.get_color() if line else None)
    loss_axis.set(title=f"train loss, top {len(curves)}", xlabel="epoch", ylabel="train loss")
    accuracy_axis.set(title=f"test accuracy, top {len(curves)}", xlabel="epoch", ylabel="test accuracy")
    loss_axis.grid(alpha=0.3)
    accuracy_axis.grid(alpha=0.3)
    if curves:  # one legend: both panels draw a trial in the same colour
        loss_axis.legend(fontsize="small")
    figure.suptitle(f"{workdir.name}: {spec.sampler} sweep, {len(results)} trials")
    figure.tight_layout()
    path = workdir / PLOT_FILE
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _plot_dimension(axis: Any, spec: SweepSpec, dimension: Dimension, scored: Sequence[TrialResult]) -> None:
    import matplotlib.ticker

    values = [r.overrides[dimension.key] for r in scored]
    numeric = _numeric(values)
    positions = values if numeric else [list(dict.fromkeys(map(str, values))).index(str(v)) for v in values]
    others = [d for d in spec.dimensions if d is not dimension]
    if spec.sampler == "grid" and len(others) == 1:
        other = others[0].key
        for other_value in others[0].values:
            points = sorted(
                (x, r.final_test_accuracy)
                for x, r in zip(positions, scored, strict=True)
                if r.overrides[other] == other_value
            )
            if points:
                axis.plot(
                    *zip(*points, strict=True), "o-", label=f"{other.rsplit('.', 1)[-1]}={_format_value(other_value)}"
                )
        axis.legend(fontsize="small")
    else:
        pruned = [r.state == "pruned" for r in scored]
        axis.scatter(
            [x for x, p in zip(positions, pruned, strict=True) if not p],
            [r.final_test_accuracy for r, p in zip(scored, pruned, strict=True) if not p],
            label="finished",
        )
        if any(pruned):
            axis.scatter(
                [x for x, p in zip(positions, pruned, strict=True) if p],
                [r.final_test_accuracy for r, p in zip(scored, pruned, strict=True) if p],
                marker="x",
                label="pruned (last eval)",
            )
            axis.legend(fontsize="small")
    if numeric and values and min(values) > 0 and (dimension.log or max(values) / min(values) >= 10):
        axis.set_xscale("log")
        axis.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    if numeric and dimension.values:
        axis.set_xticks(sorted(set(values)), [_format_value(v) for v in sorted(set(values))])
    if not numeric:
        labels = list(dict.fromkeys(map(str, values)))
        axis.set_xticks(range(len(labels)), labels)
    axis.set(title=f"final test accuracy vs {dimension.key}", xlabel=dimension.key, ylabel="final test accuracy")
    axis.grid(alpha=0.3)


# ----------------------------------------------------------------------------------------------------------------
# Command line.


def _define_flags(flag_values: flags.FlagValues) -> None:
    flags.DEFINE_string("workdir", None, "Sweep folder: study.db, trials/<name>/, results.*", flag_values=flag_values)
    config_flags.DEFINE_config_file(
        "config", None, "A configs/*.py file; fixed overrides with --config.key=value.", flag_values=flag_values
    )
    flags.DEFINE_multi_string(
        "grid", [], "KEY=V1,V2,...: a grid dimension (repeat for more; all combinations run)", flag_values=flag_values
    )
    flags.DEFINE_multi_string(
        "search",
        [],
        "KEY=uniform:LO:HI | loguniform:LO:HI | choice:A,B: a search dimension (repeat for more)",
        flag_values=flag_values,
    )
    flags.DEFINE_integer("trials", 0, "Number of trials of a --search.", flag_values=flag_values)
    flags.DEFINE_enum("sampler", "tpe", SAMPLERS, "Optuna sampler of a --search.", flag_values=flag_values)
    flags.DEFINE_bool("prune", False, "Stop trials below the median of earlier ones (Optuna).", flag_values=flag_values)
    flags.DEFINE_integer(
        "prune_after_epochs", 2, "The first epoch at which a trial may be pruned.", flag_values=flag_values
    )
    flags.DEFINE_integer("top", 5, "How many of the best trials' curves sweep.png overlays.", flag_values=flag_values)


def main(argv: Sequence[str] | None = None) -> int:
    flag_values = flags.FlagValues()
    _define_flags(flag_values)
    argv = list(sys.argv if argv is None else ["sweep", *argv])
    try:
        configuration.check_config_argument(argv)
        rest = flag_values(argv)
        if len(rest) > 1:
            raise flags.Error(f"unexpected arguments: {' '.join(rest[1:])}")
        if flag_values.workdir is None or flag_values.config is None:
            raise flags.Error("--workdir and --config are required")
        config = flag_values.config
        spec = make_spec(
            config,
            flag_values.grid,
            flag_values.search,
            flag_values.trials,
            flag_values.sampler,
            flag_values.prune,
            flag_values.prune_after_epochs,
        )
    except (flags.Error, configuration.ConfigError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    runtime.setup_logging()
    runtime.use_compile_cache()
    workdir = Path(flag_values.workdir)
    try:
        results = run_sweep(config, workdir, spec, flag_values.top)
    except (configuration.ConfigError, DataError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except CheckpointError as error:
        print(f"sweep stopped: {error}", file=sys.stderr)
        return 1
    except trainer.Preempted as stop:
        print(f"pre-empted: {stop}", flush=True)
        return 0
    except KeyboardInterrupt:
        print("interrupted; run the same command to resume", flush=True)
        return 130
    done = sum(result.state != "failed" for result in results)
    print(f"done: {done} of {len(results)} trials finished; results in {workdir / RESULTS_MD}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
