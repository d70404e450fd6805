"""Checks that need several devices; run in a subprocess with forced host devices (see test_parallel.py).

Prints one JSON object of measurements for the parent test to assert on.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax import data, models, parallel, pipeline, steps
from resnet_jax.state import lower_train_state
from tests.conftest import optimizer, step_config


def one_step(mesh, images, labels, **augmentation):
    model = models.get_model("resnet8_tiny", num_classes=10)
    tx = optimizer(0.1, weight_decay=5e-4)
    state = lower_train_state(model, tx, seed=0, input_shape=(32, 32, 3), mesh=mesh).compile()()
    step = steps.make_train_step(step_config(**augmentation))
    batch = parallel.batch_sharded(mesh)
    state, metrics = jax.jit(step)(state, jax.device_put(images, batch), jax.device_put(labels, batch))
    flow = {key: value for key, value in metrics.items() if key.startswith(steps.STAGE_SUM_PREFIXES)}
    return jax.device_get({"params": state.params, "batch_stats": state.batch_stats, "gradient_flow": flow})


def max_difference(a, b) -> float:
    return max(float(np.max(np.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def eval_coverage(mesh, num_examples: int, batch_per_device: int) -> list[int]:
    """The labels (= row ids) that the eval batches visit, counting only unmasked rows."""
    ids = data.SplitArrays(np.zeros((num_examples, 2, 2, 1), np.uint8), np.arange(num_examples, dtype=np.int32))
    rows = pipeline.eval_rows(num_examples, batch_per_device * mesh.devices.size)
    split = pipeline.put_split(lambda r: data.SplitArrays(ids.images[r], ids.labels[r]), num_examples, rows, mesh)
    seen = []
    for index in range(rows // mesh.devices.size // batch_per_device):
        _, labels, mask = jax.jit(pipeline.eval_batch, static_argnums=(2, 3))(split, index, batch_per_device, mesh)
        seen += np.asarray(labels)[np.asarray(mask)].tolist()
    return seen


def train_epoch_rows(mesh, num_examples: int, batch_per_device: int) -> list[int]:
    ids = np.arange(num_examples, dtype=np.int32)
    rows = pipeline.train_rows(num_examples, mesh)
    split = pipeline.put_split(
        lambda r: data.SplitArrays(np.zeros((r.stop - r.start, 2, 2, 1), np.uint8), ids[r]), rows, rows, mesh
    )
    key = jax.random.key_data(jax.random.key(0))
    permutation = pipeline.epoch_permutation(key, jnp.int32(3), rows // mesh.devices.size, mesh)
    seen = []
    for step in range(rows // mesh.devices.size // batch_per_device):
        _, labels = pipeline.gather_batch(split, permutation, jnp.int32(step), batch_per_device, mesh)
        seen += np.asarray(labels).tolist()
    return seen


def scanned_against_per_step(mesh, images, labels) -> float:
    """Two steps of the train program on the mesh, compiled ahead of time as a run compiles it, scanned and one
    dispatch a step: the largest difference between their parameters."""
    model = models.get_model("resnet8_tiny", num_classes=10)
    tx = optimizer(0.1, weight_decay=5e-4)
    count = len(labels)
    split = pipeline.put_split(lambda r: data.SplitArrays(images[r], labels[r]), count, count, mesh)
    key = jax.random.key_data(jax.random.key(0))
    permutation = pipeline.epoch_permutation(key, jnp.int32(0), count // mesh.devices.size, mesh)
    train_step = steps.make_train_step(step_config())
    params = []
    for scan in (True, False):
        state = lower_train_state(model, tx, seed=0, input_shape=(32, 32, 3), mesh=mesh).compile()()
        totals = steps.zero_train_metrics(steps.stage_sum_keys(models.stage_names(model)))
        per_call = 2 if scan else 1
        batch_per_device = count // 2 // mesh.devices.size
        program = steps.lower_train_steps(
            train_step, mesh, batch_per_device, state, totals, split, permutation, per_call, scan
        ).compile()
        for first in range(0, 2, per_call):
            state, totals = program(state, totals, split, permutation, jnp.int32(first))
        params.append(jax.device_get(state.params))
    return max_difference(*params)


def main() -> None:
    devices = jax.devices()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, 16).astype(np.int32)
    many, one = (
        one_step(parallel.make_mesh(devices), images, labels),
        one_step(parallel.make_mesh(devices[:1]), images, labels),
    )
    # Per mode: (8 devices against 1, mixed against unmixed on 8).
    mixed = {}
    for mode in ("mixup", "cutmix"):
        steps_on = [
            one_step(parallel.make_mesh(on), images, labels, **{f"{mode}_alpha": 1.0}) for on in (devices, devices[:1])
        ]
        mixed[mode] = (max_difference(*steps_on), max_difference(steps_on[0], many))
    mesh = parallel.make_mesh(devices)
    results = {
        "device_count": len(devices),
        "step_max_difference": max_difference(many, one),
        "mixed_step_max_difference": mixed,
        "gradient_flow_keys": sorted(many["gradient_flow"]),
        "eval_coverage": {f"{n}/{b}": eval_coverage(mesh, n, b) for n in (37, 64) for b in (1, 3, 5)},
        "train_epoch_rows": train_epoch_rows(mesh, 43, 2),
        "scanned_against_per_step": scanned_against_per_step(mesh, images, labels),
    }
    print(json.dumps(results))


if __name__ == "__main__":
    main()
