"""Running a sweep: the Optuna study in DIR/study.db, one ordinary training run per trial and seed in
DIR/trials/<name>/ (DIR/trials/<name>/seed<S>/ with --seeds), an interrupted trial resumed from its newest
checkpoint, and the median pruner fed by the first seed's validation accuracy. A trial's objective is its seeds'
mean validation accuracy; test accuracy is reported, never chosen on. The results files are rewritten after every
trial (`report`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import ml_collections
import optuna
import sqlalchemy.exc

from resnet_jax import configuration, data, experiment, lock, metrics, trainer
from resnet_jax.configuration import ConfigError
from resnet_jax.tools.sweep import report
from resnet_jax.tools.sweep.spec import Dimension, SweepSpec, format_value
from resnet_jax.workdir import check_workdir

logger = logging.getLogger(__name__)

STUDY_FILE = "study.db"
STUDY_NAME = "sweep"
TRIALS_DIR = "trials"
# The median pruner compares a trial with the finished ones, so it waits for this many before it prunes anything.
PRUNER_STARTUP_TRIALS = 2
# Held out of train when the config has no validation split: trials are ranked on it (He et al. held out 5k of
# CIFAR-10's 50k; big_vision 1%).
DEFAULT_VALIDATION_SIZE = 0.1
FAILED = optuna.trial.TrialState.FAIL
FINISHED_STATES = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


# ----------------------------------------------------------------------------------------------------------------
# Trials: deterministic names, so that a re-run finds an interrupted trial's folder and resumes it.


def trial_name(overrides: Mapping[str, Any]) -> str:
    """`learning_rate=0.1,weight_decay=0.0005`; a short hash is added where the values are rounded in the name."""
    leaves = [key.rsplit(".", 1)[-1] for key in overrides]
    parts = []
    exact = True
    for key, leaf, value in zip(overrides, leaves, overrides.values(), strict=True):
        text = format_value(value)
        exact &= not isinstance(value, float) or float(text) == value
        parts.append(f"{leaf if leaves.count(leaf) == 1 else key}={text}")
    name = "".join(c if c.isalnum() or c in "._=+-," else "-" for c in ",".join(parts))
    if not exact:
        digest = hashlib.sha1(json.dumps(dict(overrides), sort_keys=True).encode()).hexdigest()[:6]
        name = f"{name}-{digest}"
    return name


def with_validation(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`config`, or a copy holding out `DEFAULT_VALIDATION_SIZE` of train when its data has no validation split."""
    experiment.check_config(config)
    if data.run_split_sizes(config.copy_and_resolve_references().data)[data.VALIDATION]:  # a folder records itself
        return config
    return configuration.apply_overrides(config, {"data.validation_size": DEFAULT_VALIDATION_SIZE})


def seed_runs(trial_dir: Path, seeds: int, first_seed: int) -> list[tuple[int, Path]]:
    """(seed, folder) of each run of a trial: the trial's folder itself for one seed, `seed<S>/` in it for more."""
    if seeds == 1:
        return [(first_seed, trial_dir)]
    return [(seed, trial_dir / f"seed{seed}") for seed in range(first_seed, first_seed + seeds)]


def _pruning_hook(trial: optuna.Trial, reported: set[int]) -> Callable[[int, dict[str, float]], None]:
    """The trainer's `on_evaluation` of a trial's first seed: reports each validation accuracy to Optuna, and ends
    the trial (after its checkpoint) when the median pruner says it is clearly worse than the others at the same
    epoch."""

    def on_evaluation(epoch: int, values: dict[str, float]) -> None:
        if epoch not in reported:
            trial.report(values[trainer.VALIDATION_ACCURACY], epoch)
            reported.add(epoch)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {epoch}")

    return on_evaluation


def report_evaluations(trial: optuna.Trial, trial_dir: Path, reported: set[int]) -> bool:
    """Reports each new evaluation of `trial_dir` as (epoch, validation accuracy); returns whether there was one."""
    try:
        records = metrics.read_metrics(trial_dir)
    except ValueError:  # a line being written right now; the next poll reads it whole
        return False
    new = False
    for record in records:
        epoch = round(record["epoch"])
        if record.get(trainer.VALIDATION_ACCURACY) is not None and epoch not in reported:
            trial.report(record[trainer.VALIDATION_ACCURACY], epoch)
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


def _queue_next_grid_point(study: optuna.Study, spec: SweepSpec) -> bool:
    """Queues the first grid point that no trial has taken; False when all have one. A point at a time, so that an
    interrupted trial, queued again on resume, runs before the points not yet begun."""
    before = len(study.get_trials(deepcopy=False))
    for point in spec.grid_points():
        study.enqueue_trial(point, skip_if_exists=True)
        if len(study.get_trials(deepcopy=False)) > before:
            return True
    return False


# ----------------------------------------------------------------------------------------------------------------
# The study: one per workdir, refused when a re-run asks for another space or base config.


def _describe_stored(stored_spec: Mapping[str, Any]) -> str:
    dimensions = [Dimension(**{**d, "values": tuple(d["values"])}) for d in stored_spec["space"]]
    return f"{stored_spec['sampler']}: " + "; ".join(d.describe() for d in dimensions)


def _check_same_sweep(study: optuna.Study, spec: SweepSpec, config: ml_collections.ConfigDict, workdir: Path) -> None:
    """A workdir holds one sweep: a re-run must explore the same space from the same base config."""
    stored_spec = study.user_attrs.get("spec")
    stored_config = study.user_attrs.get("base_config")
    base = configuration.flatten(json.loads(configuration.to_json(config)))
    if stored_spec is None:
        study.set_user_attr("spec", spec.identity())
        study.set_user_attr("base_config", base)
        return
    if stored_spec != json.loads(json.dumps(spec.identity())):
        raise ConfigError(
            f"--workdir={str(workdir)!r} holds a different sweep ({_describe_stored(stored_spec)}); re-run its own "
            "command to resume it, or choose another --workdir"
        )
    changed = [
        f"{key}: {stored_config.get(key)!r} -> {base.get(key)!r}"
        for key in sorted(stored_config.keys() | base.keys())
        if stored_config.get(key) != base.get(key)
    ]
    if changed:
        raise ConfigError(
            f"--workdir={str(workdir)!r} holds a sweep from another base config ({'; '.join(changed)}); re-run its "
            "own command to resume it, or choose another --workdir"
        )


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
    path = workdir / STUDY_FILE
    try:
        study = optuna.create_study(
            storage=f"sqlite:///{path}", study_name=STUDY_NAME, direction="maximize", pruner=pruner, load_if_exists=True
        )
    except sqlalchemy.exc.SQLAlchemyError as error:
        reason = str(getattr(error, "orig", None) or error).splitlines()[0]
        if "database is locked" in reason:  # sqlite's word for a database another process is writing
            raise ConfigError(
                f"{path} is in use by another sweep; wait for it to finish, or choose another --workdir"
            ) from None
        raise ConfigError(
            f"{path} is not a study database Optuna can open ({reason}); move it away to start the sweep afresh, "
            "or choose another --workdir"
        ) from None
    _check_same_sweep(study, spec, config, workdir)
    # Seeded by the trials so far: a resumed search draws new points instead of repeating the first ones.
    study.sampler = _make_sampler(spec, config.seed * 100_003 + len(study.trials))
    return study


# ----------------------------------------------------------------------------------------------------------------
# The loop.


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
    trial_config = configuration.apply_overrides(config, overrides)
    runs = seed_runs(workdir / TRIALS_DIR / name, spec.seeds, trial_config.seed)
    progress.start(name)
    # A resumed trial's earlier evaluations count for the pruner as if it had never stopped. The pruner follows the
    # first seed's run, the others run once it is through.
    reported: set[int] = set()
    report_evaluations(trial, runs[0][1], reported)
    on_evaluation = _pruning_hook(trial, reported) if spec.prune else None
    start = time.perf_counter()
    state, value = optuna.trial.TrialState.COMPLETE, None
    try:
        accuracies = []
        for seed, run_dir in runs:
            seed_config = configuration.apply_overrides(trial_config, {"seed": seed})
            result = trainer.train_and_evaluate(seed_config, run_dir, on_evaluation=on_evaluation)
            accuracies.append(result[trainer.VALIDATION_ACCURACY])
            on_evaluation = None
        value = statistics.fmean(accuracies)
    except trainer.TrainingError as error:
        trial.set_user_attr("error", str(error))
        state = FAILED
        logger.warning("trial %s failed: %s", name, error)
    except optuna.TrialPruned as pruned:
        state = optuna.trial.TrialState.PRUNED
        logger.info("trial %s %s", name, pruned)
    trial.set_user_attr("wall_seconds", trial.user_attrs.get("wall_seconds", 0.0) + time.perf_counter() - start)
    report_evaluations(trial, runs[0][1], reported)
    progress.finish(name, "failed" if state == FAILED else state.name.lower())
    return study.tell(trial, value, state=state)


def collect_results(
    study: optuna.Study, spec: SweepSpec, workdir: Path, config: ml_collections.ConfigDict
) -> list[report.TrialResult]:
    """One result per trial name (a resumed trial's last attempt), best first: finished trials by their seeds' mean
    final validation accuracy, then pruned, then failed."""
    latest = {trial.user_attrs["name"]: trial for trial in _counted_trials(study) if "name" in trial.user_attrs}
    results = []
    for name, trial in latest.items():
        overrides = {key: trial.params[key] for key in spec.keys}
        first_seed = overrides.get("seed", config.seed)
        run_dirs = [run_dir for _, run_dir in seed_runs(workdir / TRIALS_DIR / name, spec.seeds, first_seed)]
        results.append(
            report.TrialResult.of_runs(
                name=name,
                run_dirs=run_dirs,
                state=trial.state.name.lower().replace("fail", "failed"),
                overrides=overrides,
                wall_seconds=trial.user_attrs.get("wall_seconds"),
                attempts=trial.user_attrs.get("attempts", 1),
                error=trial.user_attrs.get("error", ""),
            )
        )
    return report.ranked(results)


def run_sweep(
    config: ml_collections.ConfigDict, workdir: str | os.PathLike, spec: SweepSpec, top: int = 5
) -> list[report.TrialResult]:
    """Runs the trials of `spec` not yet finished in `workdir` (resuming an interrupted one) and writes the
    results; returns them, best first. A config without a validation split gets one (`with_validation`). Raises
    `trainer.Preempted` when stopped by a signal."""
    config = with_validation(config)
    workdir = check_workdir(workdir)
    # One sweep per workdir: a second would take the first's running trial for an interrupted one and train it too.
    with lock.hold(workdir):
        return _run_trials(config, workdir, spec, top)


def _run_trials(
    config: ml_collections.ConfigDict, workdir: Path, spec: SweepSpec, top: int
) -> list[report.TrialResult]:
    study = _open_study(workdir, spec, config)
    _resume_interrupted(study)
    finished = len(_counted_trials(study))
    if finished:
        logger.info("%d of %d trials already finished in %s", min(finished, spec.trials), spec.trials, workdir)
    waiting = (optuna.trial.TrialState.WAITING,)
    progress = metrics.ItemProgress("trial", spec.trials, done=min(finished, spec.trials))
    while len(_counted_trials(study)) < spec.trials:
        queued = study.get_trials(deepcopy=False, states=waiting)
        if spec.sampler == "grid" and not queued and not _queue_next_grid_point(study, spec):
            break
        _run_trial(study, spec, config, workdir, progress)
        report.write_results(workdir, spec, collect_results(study, spec, workdir, config), top)
    results = collect_results(study, spec, workdir, config)
    report.write_results(workdir, spec, results, top)
    return results
