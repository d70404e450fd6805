"""The dataset resident on the devices: sharded splits, per-epoch permutations, and batch gathers inside `jit`.

Each device holds a contiguous shard of a split and draws its part of every batch from its own shard, so a gather
never crosses devices. The data position (epoch, step within it) is all a checkpoint needs to resume iteration.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from resnet_jax.data import SplitArrays
from resnet_jax.parallel import DATA_AXIS, batch_sharded, global_array, process_rows


@dataclasses.dataclass(frozen=True)
class DataPosition:
    """Where iteration stands: the next step to run is `step_in_epoch` of `epoch` (both from 0)."""

    epoch: int = 0
    step_in_epoch: int = 0

    def to_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, int]) -> DataPosition:
        return cls(int(values["epoch"]), int(values["step_in_epoch"]))


class DeviceSplit(NamedTuple):
    """A split on the devices, sharded along examples. `mask` is False on padding rows."""

    images: jax.Array  # uint8 (N, H, W, C)
    labels: jax.Array  # int32 (N,)
    mask: jax.Array  # bool (N,)


def train_rows(num_examples: int, mesh: Mesh) -> int:
    """Training uses a multiple of the device count: at most devices - 1 examples are left out."""
    return num_examples - num_examples % mesh.devices.size


def eval_rows(num_examples: int, global_batch: int) -> int:
    """Evaluation pads the split up to whole global batches; the padding is masked out."""
    return math.ceil(num_examples / global_batch) * global_batch


def abstract_split(num_rows: int, image_shape: Sequence[int], mesh: Mesh) -> DeviceSplit:
    """The shapes, dtypes and shardings `put_split` gives a `num_rows`-row split: enough to compile against it."""

    def sharded(shape: tuple[int, ...], dtype: Any) -> jax.ShapeDtypeStruct:
        return jax.ShapeDtypeStruct(shape, dtype, sharding=batch_sharded(mesh))

    return DeviceSplit(
        sharded((num_rows, *image_shape), np.uint8), sharded((num_rows,), np.int32), sharded((num_rows,), np.bool_)
    )


def put_split(load_rows: Callable[[slice], SplitArrays], num_examples: int, num_rows: int, mesh: Mesh) -> DeviceSplit:
    """Loads this process's rows of a `num_rows`-row split (rows past `num_examples` are padding) onto the mesh.

    `load_rows(slice)` reads the given rows of the split; each process reads only its own.
    """
    rows = process_rows(num_rows, mesh)
    real = slice(min(rows.start, num_examples), min(rows.stop, num_examples))
    arrays = load_rows(real)
    count = rows.stop - rows.start
    padding = count - len(arrays)
    images = np.concatenate([arrays.images, np.zeros((padding, *arrays.images.shape[1:]), np.uint8)])
    labels = np.concatenate([arrays.labels, np.zeros((padding,), np.int32)])
    mask = np.arange(count) < len(arrays)
    return DeviceSplit(
        global_array(images, mesh, num_rows),
        global_array(labels, mesh, num_rows),
        global_array(mask, mesh, num_rows),
    )


def epoch_permutation(key_data: jax.Array, epoch: jax.Array, rows_per_device: int, mesh: Mesh) -> jax.Array:
    """Each device's own shuffle of its shard for `epoch`, as local row indices (a batch-sharded (N,) array)."""

    def local(key_data: jax.Array, epoch: jax.Array) -> jax.Array:
        key = jax.random.fold_in(jax.random.wrap_key_data(key_data), epoch)
        key = jax.random.fold_in(key, jax.lax.axis_index(DATA_AXIS))
        return jax.random.permutation(key, rows_per_device).astype(jnp.int32)

    return jax.shard_map(local, mesh=mesh, in_specs=(P(), P()), out_specs=P(DATA_AXIS))(key_data, epoch)


def gather_batch(
    split: DeviceSplit, permutation: jax.Array, step: jax.Array, batch_per_device: int, mesh: Mesh
) -> tuple[jax.Array, jax.Array]:
    """Training batch `step` of the epoch: every device takes its next `batch_per_device` shuffled rows."""

    def local(images, labels, permutation, step):
        indices = jax.lax.dynamic_slice_in_dim(permutation, step * batch_per_device, batch_per_device)
        return jnp.take(images, indices, axis=0), jnp.take(labels, indices, axis=0)

    sharded = P(DATA_AXIS)
    return jax.shard_map(local, mesh=mesh, in_specs=(sharded, sharded, sharded, P()), out_specs=(sharded, sharded))(
        split.images, split.labels, permutation, step
    )


def eval_batch(
    split: DeviceSplit, index: jax.Array, batch_per_device: int, mesh: Mesh
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Evaluation batch `index`: every device takes the next `batch_per_device` rows of its shard, in order."""

    def local(images, labels, mask, index):
        start = index * batch_per_device
        return tuple(jax.lax.dynamic_slice_in_dim(a, start, batch_per_device) for a in (images, labels, mask))

    sharded = P(DATA_AXIS)
    return jax.shard_map(
        local, mesh=mesh, in_specs=(sharded, sharded, sharded, P()), out_specs=(sharded, sharded, sharded)
    )(split.images, split.labels, split.mask, index)


def eval_outputs_in_split_order(per_batch: np.ndarray, num_devices: int) -> np.ndarray:
    """Reorders per-example eval outputs, stacked (batches, global_batch, ...), into the split's row order."""
    batches, global_batch = per_batch.shape[:2]
    per_device = global_batch // num_devices
    grouped = per_batch.reshape(batches, num_devices, per_device, *per_batch.shape[2:])
    return np.swapaxes(grouped, 0, 1).reshape(batches * global_batch, *per_batch.shape[2:])
