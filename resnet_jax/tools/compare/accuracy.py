"""The accuracy of trained runs, as compare reads them from their workdirs (config.json and metrics.jsonl): each
model's runs (its seeds), final validation and test accuracy and epochs, in the order given.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ml_collections

from resnet_jax import configuration, inference, metrics
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

    @property
    def runs(self) -> int:
        return len(self.workdirs)

    def spreads(self) -> dict[str, common.Spread | None]:
        return {"validation": common.Spread.of(self.validation), "test": common.Spread.of(self.test)}


def read_runs(run_dirs: Sequence[str | Path]) -> tuple[dict[str, RunAccuracy], ml_collections.ConfigDict | None]:
    """Each model's runs' accuracy over the given trained workdirs, and the first run's config (for the input
    shape). A damaged config.json or metrics.jsonl is a ConfigError naming the file."""
    per_model: dict[str, list[tuple[str, dict[str, Any]]]] = {}
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
        per_model.setdefault(config.model.name, []).append((str(run_dir), summary))
    if len(datasets) > 1:
        raise ConfigError(f"--runs mixes datasets ({', '.join(sorted(datasets))}); compare one at a time")
    accuracies = {
        model: RunAccuracy(
            workdirs=tuple(workdir for workdir, _ in runs),
            validation=tuple(summary["final_validation_accuracy"] for _, summary in runs),
            test=tuple(summary["final_test_accuracy"] for _, summary in runs),
            epochs=tuple(summary["epochs"] for _, summary in runs),
        )
        for model, runs in per_model.items()
    }
    return accuracies, first_config
