"""Data parallelism: the device mesh, its shardings, `jax.distributed` start-up, the points where processes meet
(and stop together), and global arrays.

One mesh axis, `data`, spans every device of every process. Batches are sharded along it and the train state is
replicated, so under `jax.jit` BatchNorm reduces over the global batch with no `axis_name`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from orbax.checkpoint import multihost as orbax_multihost

from resnet_jax import configuration, errors

DATA_AXIS = "data"
# The config's `distributed` section: empty, a single process unless the environment says otherwise.
DEFAULTS = {"coordinator_address": "", "num_processes": 0, "process_id": -1}


def check_config(distributed_config: Mapping[str, Any]) -> None:
    """Raises a one-line ConfigError for the first `distributed` key that cannot work."""
    address, count, index = (distributed_config[key] for key in ("coordinator_address", "num_processes", "process_id"))
    if not isinstance(address, str):
        raise configuration.ConfigError(f"distributed.coordinator_address={address!r} must be a string, HOST:PORT")
    host, _, port = address.rpartition(":")
    if address and not (host and port.isdigit() and 0 < int(port) < 65536):
        raise configuration.ConfigError(
            f"distributed.coordinator_address={address!r} must be HOST:PORT, e.g. 10.0.0.1:1234 (process 0's host)"
        )
    configuration.check_at_least("distributed.num_processes", count, 0, "0: as the cluster says, or 1 process")
    configuration.check_at_least("distributed.process_id", index, -1, "-1: as the cluster says")
    if count and index >= count:
        raise configuration.ConfigError(
            f"distributed.process_id={index} must be below distributed.num_processes={count} (ids count from 0)"
        )


def initialize_distributed(distributed_config: Mapping[str, Any]) -> bool:
    """Starts JAX's multi-process runtime when the config's `distributed` section or the environment asks for it.

    Returns whether it was started. With nothing configured and no cluster environment (SLURM, Open MPI, ...),
    the run stays single-process.
    """
    check_config(distributed_config)
    if jax.distributed.is_initialized():
        return True
    coordinator_address = distributed_config["coordinator_address"]
    num_processes, process_id = distributed_config["num_processes"], distributed_config["process_id"]
    launched_by_cluster = (
        bool(os.environ.get("JAX_COORDINATOR_ADDRESS"))
        or int(os.environ.get("SLURM_NTASKS", "1")) > 1
        or int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1
    )
    if not launched_by_cluster:
        if not coordinator_address and num_processes <= 1 and process_id <= 0:
            return False  # one process
        # Outside a cluster JAX can find none of the three, and would stop in a traceback (or, with no address, the
        # run would go on as a single process that was asked to be one of several).
        given = {"coordinator_address": bool(coordinator_address), "num_processes": num_processes > 0}
        given["process_id"] = process_id >= 0
        if not all(given.values()):
            named = ", ".join(f"distributed.{key}={distributed_config[key]!r}" for key in given if given[key])
            missing = " and ".join(f"distributed.{key}" for key, present in given.items() if not present)
            raise configuration.ConfigError(
                f"{named} without {missing}: outside a cluster (SLURM, Open MPI) each process needs all three, "
                "coordinator_address=HOST:PORT (process 0's host), num_processes and its own process_id; or give "
                "none of them to train in one process"
            )
    # CPU processes need a collectives backend to form one mesh (GPU processes use NCCL regardless).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator_address or None,
        num_processes=num_processes or None,
        process_id=process_id if process_id >= 0 else None,
    )
    # The collectives backend connects at its first use, with a short timeout: use it now, while every process
    # stands at the same point, rather than first inside a training step that one process reaches late.
    multihost_utils.sync_global_devices("resnet_jax:distributed-start")
    return True


def barrier(name: str, timeout_s: int = 3600) -> None:
    """Waits until every process reaches `name`, through JAX's coordination service (no device collectives, so no
    collective timeouts); a no-op for one process."""
    if jax.process_count() > 1:
        orbax_multihost.get_barrier_sync_fn()(key=name, timeout_ms=timeout_s * 1000)


def all_reached(name: str, timeout_s: int = 300) -> bool:
    """Whether every process reached `name` within `timeout_s` (True for one process): a barrier that a process
    stopped elsewhere may never reach, for a step that may be skipped then. The default is JAX's own wait, at exit,
    for the other processes to end too."""
    try:
        barrier(name, timeout_s)
    except jax.errors.JaxRuntimeError:  # the coordination service's timeout, or a process that ended meanwhile
        return False
    return True


# A failed process's line as the others receive it (`stop_together`), cut to this many bytes: a line, not a report.
MESSAGE_BYTES = 2048


class ProcessStopped(RuntimeError):
    """Another process of the run stopped it with an error of no kind `stop_together` was told to share."""


@contextlib.contextmanager
def stop_together(name: str, shared: tuple[type[Exception], ...]) -> Iterator[None]:
    """Runs the body, where one process may fail alone (process 0 reads and writes the workdir), then has every
    process learn whether any failed, so that all stop here rather than the others going on into a collective that
    waits for the failed one (gloo's ends in a timeout's traceback some 30 s later, NCCL's may hang).

    A process that failed raises its own error. The others raise the first failed process's again: an error of the
    same class of `shared` (each class takes one message), its message after `process N: `, else ProcessStopped.
    The body must run no collective, which a failed process would leave the others waiting in. One process: the body
    alone.
    """
    if jax.process_count() == 1:
        yield
        return
    failure = None
    try:
        yield
    except Exception as error:  # every kind: the others must stop on a bug's error too, not wait for this process
        failure = error
    kind, message = 0, np.zeros(MESSAGE_BYTES, np.uint8)
    if failure is not None:
        kind = next((index for index, cls in enumerate(shared, 1) if isinstance(failure, cls)), len(shared) + 1)
        line = errors.one_line(failure).encode()[:MESSAGE_BYTES]
        message[: len(line)] = np.frombuffer(line, np.uint8)
    # Process 0 may come seconds after the others (it wrote files); gloo's collectives time out sooner than this.
    barrier(name)
    kinds, messages = multihost_utils.process_allgather((np.int32(kind), message))
    if failure is not None:
        raise failure
    failed = np.flatnonzero(kinds)
    if failed.size:
        index = int(failed[0])
        text = bytes(messages[index]).rstrip(b"\0").decode(errors="replace")
        cls = shared[kinds[index] - 1] if kinds[index] <= len(shared) else ProcessStopped
        raise cls(f"process {index}: {text}")


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A one-axis mesh over all devices (of all processes), in process order."""
    devices = list(devices) if devices is not None else jax.devices()
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """Sharding of arrays whose leading axis is the batch (or the examples of a dataset)."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def check_batch_divides(global_batch: int, mesh: Mesh, name: str = "train.batch_size") -> int:
    """Returns the per-device batch, or raises a clear error when the global batch does not split evenly."""
    devices = mesh.devices.size
    if global_batch % devices:
        lower = global_batch - global_batch % devices
        raise ValueError(
            f"{name}={global_batch} does not divide by the {devices} devices; use a multiple of {devices}, "
            f"e.g. {lower or devices} or {lower + devices}"
        )
    return global_batch // devices


def process_rows(num_rows: int, mesh: Mesh) -> slice:
    """The contiguous rows of a batch-sharded array of `num_rows` that this process's devices hold."""
    per_device = num_rows // mesh.devices.size
    local = [index for index, device in enumerate(mesh.devices.flat) if device.process_index == jax.process_index()]
    if local != list(range(local[0], local[-1] + 1)):
        raise ValueError("this process's devices are not contiguous in the mesh")
    return slice(local[0] * per_device, (local[-1] + 1) * per_device)


def global_array(local_rows: np.ndarray, mesh: Mesh, num_rows: int) -> jax.Array:
    """Builds a batch-sharded global array from this process's rows (see `process_rows`)."""
    return jax.make_array_from_process_local_data(batch_sharded(mesh), local_rows, (num_rows, *local_rows.shape[1:]))


def stacked_batch_sharded(mesh: Mesh) -> NamedSharding:
    """Sharding of batches stacked along a leading axis of steps: (steps, batch, ...), the batch axis sharded."""
    return NamedSharding(mesh, PartitionSpec(None, DATA_AXIS))


def global_batches(local_batches: np.ndarray, mesh: Mesh, stacked: bool = True) -> jax.Array:
    """Builds global batches from this process's rows of them, each process feeding its own devices in process
    order: stacked (steps, global batch, ...) from (steps, its rows, ...), or one batch from (its rows, ...)."""
    processes = mesh.devices.size // sum(device.process_index == jax.process_index() for device in mesh.devices.flat)
    axis = 1 if stacked else 0
    shape = list(local_batches.shape)
    shape[axis] *= processes
    sharding = stacked_batch_sharded(mesh) if stacked else batch_sharded(mesh)
    return jax.make_array_from_process_local_data(sharding, local_batches, tuple(shape))


def global_replicated(value: np.ndarray, mesh: Mesh) -> jax.Array:
    """A replicated global array of `value`, the same in every process."""
    return jax.make_array_from_process_local_data(replicated(mesh), value, value.shape)
