"""The accuracy of trained runs, as compare reads them from their workdirs (config.json and metrics.jsonl): runs
that differ only in their seed are one group (their spread is a seed spread), final validation and test accuracy and
epochs, in the order given; runs of one model trained differently are groups of their own, named by what differs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ml_collections

from resnet_jax import configuration, inference, metrics, record
from resnet_jax.configuration import ConfigError
from resnet_jax.tools import common


@dataclasses.dataclass(frozen=True)
class RunAccuracy:
    """Final validation and test accuracy of a model's trained runs (its seeds), each run's in the order given
    (validation None for a run without that split); the table shows their spread."""

    workdirs: tuple[str, ...]
    validation: tuple[float | None, ...]
    test: tuple[float, ...]
    epochs: tuple[float, ...]
    model: str = ""

    @property
    def runs(self) -> int:
        return len(self.workdirs)

    def spreads(self) -> dict[str, common.Spread | None]:
        return {"validation": common.Spread.of(self.validation), "test": common.Spread.of(self.test)}


# Keys that say where a run lives or what it recorded, not how it trained: runs differing only in these (and the
# seed) are seeds of one recipe.
NOT_THE_RECIPE = ("seed", "record.", "checkpoint.", "distributed.", "train.log_every_steps", "eval.every_epochs")


def recipe(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """What a run trained, as flat keys: its config without the seed, the places and the records."""
    ignored = (*NOT_THE_RECIPE, *record.LOCATION_KEYS, *record.RECORDED_KEYS, *record.SCORING_KEYS)
    return {
        key: value
        for key, value in configuration.flatten(config.to_dict()).items()
        if not key.startswith(ignored) and key not in ignored
    }


def _differing(recipes: Sequence[dict[str, Any]]) -> list[str]:
    keys = sorted(set().union(*recipes))
    return [key for key in keys if len({repr(r.get(key)) for r in recipes}) > 1]


def _label(model: str, own: dict[str, Any], keys: Sequence[str]) -> str:
    return f"{model} ({', '.join(f'{key}={own.get(key)}' for key in keys)})" if keys else model


def read_runs(run_dirs: Sequence[str | Path]) -> tuple[dict[str, RunAccuracy], ml_collections.ConfigDict | None]:
    """The runs' accuracy by group over the given trained workdirs, and the first run's config (for the input
    shape). A group is a model's runs that differ only in their seed, named by the model, or, where one model was
    trained in several ways, by the model and the keys that tell its groups apart (`resnet8 (optimizer.name=adam)`).
    A damaged config.json or metrics.jsonl is a ConfigError naming the file."""
    groups: dict[tuple[str, str], list[tuple[str, dict[str, Any]]]] = {}
    recipes: dict[tuple[str, str], dict[str, Any]] = {}
    first_config, datasets = None, set()
    for run_dir in map(Path, run_dirs):
        if not (run_dir / configuration.CONFIG_FILE).exists():
            raise ConfigError(f"--runs {str(run_dir)!r} holds no {configuration.CONFIG_FILE}")
        try:
            config = inference.load_run_config(run_dir)
            summary = metrics.summarize_run(run_dir)
        except (inference.RunError, metrics.MetricsError) as error:
            raise ConfigError(f"--runs {str(run_dir)!r}: {error}") from None
        if summary["final_test_accuracy"] is None:
            raise ConfigError(f"--runs {str(run_dir)!r} has no evaluation in its metrics yet")
        first_config = first_config or config
        datasets.add(config.data.dataset)
        own = recipe(config)
        key = (config.model.name, repr(sorted(own.items())))
        recipes[key] = own
        groups.setdefault(key, []).append((str(run_dir), summary))
    if len(datasets) > 1:
        raise ConfigError(f"--runs mixes datasets ({', '.join(sorted(datasets))}); compare one at a time")
    accuracies = {}
    for (model, _), runs in groups.items():
        siblings = [recipes[key] for key in groups if key[0] == model]
        label = _label(model, recipes[(model, _)], _differing(siblings))
        accuracies[label] = RunAccuracy(
            workdirs=tuple(workdir for workdir, _ in runs),
            validation=tuple(summary["final_validation_accuracy"] for _, summary in runs),
            test=tuple(summary["final_test_accuracy"] for _, summary in runs),
            epochs=tuple(summary["epochs"] for _, summary in runs),
            model=model,
        )
    return accuracies, first_config


def differences_besides_the_model(run_dirs: Sequence[str | Path]) -> list[str]:
    """The recipe keys, other than the model's own section, in which the given runs differ (an architecture
    comparison between them is confounded by these)."""
    recipes = [recipe(inference.load_run_config(Path(run_dir))) for run_dir in run_dirs]
    return [key for key in _differing(recipes) if not key.startswith("model.")] if recipes else []
