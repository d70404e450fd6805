"""A run's best evaluation, by the one rule that the trainer's record, a run's summary and the checkpoint orbax keeps
as best all follow: the highest validation accuracy, the later of equal ones. Test accuracy is reported at that
evaluation, never chosen on; a run without a validation split has no best.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

VALIDATION_ACCURACY = "validation_accuracy"
TEST_ACCURACY = "test_accuracy"


def score(metrics: Mapping[str, Any]) -> float:
    """What the best is chosen by: an evaluation's validation accuracy; -inf without one, so never the best. orbax
    ranks its checkpoints by it with a stable sort and keeps the last, so there too the later of equals wins."""
    value = metrics.get(VALIDATION_ACCURACY)
    return -math.inf if value is None else value


def better_best(best: dict[str, float] | None, evaluation: Mapping[str, Any], step: int) -> dict[str, float] | None:
    """The best evaluation once `evaluation` (at `step`) is in, as `{"step", "validation_accuracy",
    "test_accuracy"}`: `evaluation`'s unless `best` scored higher, or `evaluation` has no validation accuracy."""
    if evaluation.get(VALIDATION_ACCURACY) is None or (best is not None and score(evaluation) < score(best)):
        return best
    return {
        "step": step,
        VALIDATION_ACCURACY: evaluation[VALIDATION_ACCURACY],
        TEST_ACCURACY: evaluation[TEST_ACCURACY],
    }


def best_of(evaluations: Iterable[Mapping[str, Any]]) -> dict[str, float] | None:
    """The best of a run's evaluations (records with their `step`), given in the order they ran."""
    best = None
    for evaluation in evaluations:
        best = better_best(best, evaluation, evaluation["step"])
    return best


def best_values(best: dict[str, float] | None) -> dict[str, float]:
    """`best_validation_accuracy` and the test accuracy of that same evaluation, `test_accuracy_at_best_validation`
    (reported, never chosen on); nothing without a validation split."""
    if best is None:
        return {}
    return {
        "best_validation_accuracy": best[VALIDATION_ACCURACY],
        "test_accuracy_at_best_validation": best[TEST_ACCURACY],
    }
