"""The validation split held out from train: its size (`data.validation_size`, a count or a fraction of train) and
its draw, stratified by class and fixed by its own seed (`data.validation_seed`), never by the training seed. A leaf:
numpy only.
"""

from __future__ import annotations

import hashlib

import numpy as np

from resnet_jax.data.registry import DataError


def holdout_count(validation_size: float, train_examples: int) -> int:
    """How many train examples `validation_size` holds out: 0 none, below 1 a fraction of train (rounded), else a
    count."""
    if validation_size >= 1:
        return int(validation_size)
    return int(validation_size * train_examples + 0.5)


def class_shares(counts: np.ndarray, total: int) -> np.ndarray:
    """Each class's share of `total` held-out examples, in proportion to its `counts` (largest remainders get the
    rounding; ties go to the lower class index), so that the shares add up to `total` exactly."""
    quotas = counts * total / counts.sum()
    shares = np.floor(quotas).astype(np.int64)
    remainders = quotas - shares
    order = sorted(range(len(counts)), key=lambda index: (-remainders[index], index))
    shares[order[: total - shares.sum()]] += 1
    return shares


def holdout_rows(labels: np.ndarray, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, validation rows) of a train split with `labels`, each in the split's order: every class gives
    its share of `count` validation rows, drawn by `seed`. A class the rest would train on none of is refused."""
    classes = np.unique(labels)
    members = [np.flatnonzero(labels == label) for label in classes]
    shares = class_shares(np.array([len(rows) for rows in members]), count)
    emptied = [int(label) for label, rows, share in zip(classes, members, shares, strict=True) if share >= len(rows)]
    if emptied:
        raise DataError(
            f"data.validation_size holds out all {len(members[list(classes).index(emptied[0])])} train examples of "
            f"class {emptied[0]}, leaving none to train on; give a smaller data.validation_size"
        )
    validation = _draw(members, shares, classes, seed)
    return np.setdiff1d(np.arange(len(labels)), validation), validation


def subset_rows(labels: np.ndarray, count: int, seed: int) -> np.ndarray:
    """`count` rows of a split with `labels` (all of them when it has no more), stratified as `holdout_rows` draws
    and in the split's order: a fixed sample of a split to score."""
    if count >= len(labels):
        return np.arange(len(labels))
    classes = np.unique(labels)
    members = [np.flatnonzero(labels == label) for label in classes]
    shares = class_shares(np.array([len(rows) for rows in members]), count)
    return _draw(members, shares, classes, seed)


def _draw(members: list[np.ndarray], shares: np.ndarray, classes: np.ndarray, seed: int) -> np.ndarray:
    chosen = [
        np.random.default_rng([seed, int(label)]).permutation(rows)[:share]
        for label, rows, share in zip(classes, members, shares, strict=True)
    ]
    return np.sort(np.concatenate(chosen))


def rows_digest(rows: np.ndarray) -> str:
    """A short digest of drawn rows: numpy does not promise its generators' streams across versions, so a run
    records the digest of its draw and refuses to go on with another."""
    return hashlib.sha256(np.asarray(rows, dtype="<i8").tobytes()).hexdigest()[:16]
