"""What one model costs on this machine: the run's own train program compiled and timed for a model and batch, with
its parameters, forward GFLOPs and memory, each model in a fresh process (`measure_isolated`).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import multiprocessing
import statistics
import time
from typing import Any

import ml_collections
import numpy as np

from resnet_jax import configuration, data, experiment, models, pipeline, runtime


@dataclasses.dataclass
class Measurement:
    """What one model costs on this machine, at one batch size."""

    model: str
    params: int
    gflops: float  # forward pass, per image
    compile_seconds: float  # lowering + XLA compilation of the train program
    images_per_second: float  # median of the timed calls
    step_milliseconds: float
    xla_step_bytes: int | None  # the compiled train program's arguments + outputs + temporaries (less aliasing)
    peak_bytes: int | None  # the device's own peak counter; None where it keeps none (the CPU)
    device_kind: str
    platform: str
    device_count: int
    jax_version: str


def measurement_config(
    base: ml_collections.ConfigDict, model: str, batch: int, steps: int, dtype: str | None
) -> ml_collections.ConfigDict:
    """`base` (a run's config, or the default) training `model` on synthetic data of the same shape and classes:
    a registered dataset's synthetic source, or for a folder run the classes and image shape its config recorded
    (the folder is not read, and may be gone)."""
    config = base.copy_and_resolve_references()
    config.model.name = model
    if dtype:
        config.model.dtype = dtype
    sizes = {"train": batch * steps, data.VALIDATION: 0, "test": batch}
    if config.data.dataset == data.FOLDER:
        # The synthetic source makes a registered dataset's images only: a folder run's recorded sizes become the
        # timed batches', and `measure_model` draws the images.
        config.data.split_sizes.update(sizes)
    else:
        config.data.source = "synthetic"
        config.data.synthetic_train_examples = sizes["train"]
        config.data.synthetic_test_examples = sizes["test"]
    config.data.validation_size = 0.0  # a run's held-out count could exceed the few timed batches
    config.train.batch_size = batch
    config.train.num_steps = steps
    config.train.num_epochs = 0
    config.train.steps_per_call = steps
    # A step's speed does not depend on the rate, and a run of a few steps has no room for a recipe's drops.
    config.schedule.name = "constant"
    config.schedule.warmup_epochs = 0.0
    return config


def _host_random_state(abstract_state: Any, mesh: Any) -> Any:
    """A train state of the right shapes, filled on the host: a step's speed does not depend on the values, and
    XLA:CPU takes longer to compile the random initialiser than the train step itself."""
    import jax
    import jax.numpy as jnp

    from resnet_jax.parallel import replicated

    rng = np.random.default_rng(0)

    def fill(leaf):
        if jnp.issubdtype(leaf.dtype, jnp.floating):
            return (0.05 * rng.standard_normal(leaf.shape)).astype(leaf.dtype)
        return np.zeros(leaf.shape, leaf.dtype)

    return jax.device_put(jax.tree.map(fill, abstract_state), replicated(mesh))


def _synthetic_train_split(built: experiment.Experiment) -> pipeline.DeviceSplit:
    """The train split as synthetic images of the model's input shape and classes, on the mesh: nothing is read
    (a folder run's images may be gone), and a step's speed does not depend on the pixels."""
    count = built.train_examples
    arrays = data.synthetic_split(built.input_shape, built.info.num_classes, count, built.config.seed, "train")
    return pipeline.put_split(
        lambda rows: data.SplitArrays(arrays.images[rows], arrays.labels[rows]), count, count, built.mesh
    )


def measure_model(config_json: str, repeats: int) -> Measurement:
    """Compiles the run's own train program (`Experiment.lower_train_program`: `train.steps_per_call` steps over
    device-resident data) for the config's model and batch, runs it once to warm up, then times `repeats` calls."""
    runtime.reuse_freed_memory()  # in this fresh process, before JAX runs anything: the step a run takes is timed
    import jax
    import jax.numpy as jnp

    config = configuration.from_saved(json.loads(config_json), experiment.base_config())
    built = experiment.build(config)
    abstract_state = built.lower_new_state().out_info
    state = _host_random_state(abstract_state, built.mesh)
    split = _synthetic_train_split(built)
    num_steps = built.steps_per_call

    start = time.perf_counter()
    program = built.lower_train_program(state, split, [num_steps]).compile()
    compile_seconds = time.perf_counter() - start
    per_call = num_steps if program.scan else 1  # else one dispatch a step
    compiled = program.train[per_call]
    permutation, totals = program.permutation(jnp.int32(0)), program.zero_totals()

    def call(state, totals):
        for first in range(0, num_steps, per_call):
            state, totals = compiled(state, totals, split, permutation, jnp.int32(first))
        return jax.block_until_ready((state, totals))

    analysis = compiled.memory_analysis()
    xla_step_bytes = (
        None
        if analysis is None
        else analysis.argument_size_in_bytes
        + analysis.output_size_in_bytes
        + analysis.temp_size_in_bytes
        - analysis.alias_size_in_bytes
    )

    state, totals = call(state, totals)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        state, totals = call(state, totals)
        seconds.append(time.perf_counter() - start)
    call_seconds = statistics.median(seconds)
    device = jax.devices()[0]
    stats = device.memory_stats()
    return Measurement(
        model=config.model.name,
        params=models.count_params(abstract_state.params),
        gflops=models.forward_flops(built.model, built.input_shape) / 1e9,
        compile_seconds=compile_seconds,
        images_per_second=config.train.batch_size * num_steps / call_seconds,
        step_milliseconds=1000 * call_seconds / num_steps,
        xla_step_bytes=xla_step_bytes,
        peak_bytes=stats.get("peak_bytes_in_use") if stats else None,
        device_kind=device.device_kind,
        platform=device.platform,
        device_count=jax.device_count(),
        jax_version=jax.__version__,
    )


def measure_isolated(config: ml_collections.ConfigDict, repeats: int) -> Measurement:
    """`measure_model` in a fresh process: the device's peak-memory counter cannot be reset, and one model's
    compiled programs and buffers must not weigh on the next one's numbers."""
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(measure_model, configuration.to_json(config), repeats).result()
