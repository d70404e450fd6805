"""The train programs: several steps per dispatch (lax.scan) give the same state and metrics as one step per call,
and the per-step form the CPU uses runs any number of steps with its one compiled program of one step; a dropped
step keeps the schedule in place, and the EMA averages what each step trained."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from resnet_jax import models, parallel, pipeline, steps
from resnet_jax.data import SplitArrays
from resnet_jax.parallel import replicated
from resnet_jax.state import lower_train_state
from tests.conftest import REASSOCIATION, optimizer, step_config

IMAGE_SHAPE = (8, 8, 3)
EXAMPLES = 48
BATCH = 8
# Each form of the train program: (scan, compiler options; None for the tuned ones).
FORMS = {"scan": (True, None), "per_step": (False, None), "xla_defaults": (False, {})}


class Setup:
    """A one-stage ResNet on a small device-resident split, and its train programs, compiled ahead of time as a run
    compiles them: one per form and number of steps a call runs, each traced once."""

    def __init__(self):
        self.mesh = parallel.make_mesh()
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (EXAMPLES, *IMAGE_SHAPE), dtype=np.uint8)
        labels = rng.integers(0, 10, (EXAMPLES,), dtype=np.int32)
        rows = lambda index: SplitArrays(images[index], labels[index])  # noqa: E731
        self.split = pipeline.put_split(rows, EXAMPLES, EXAMPLES, self.mesh)
        key_data = jax.random.key_data(jax.random.key(3))
        self.permutation = pipeline.epoch_permutation(key_data, jnp.int32(0), EXAMPLES, self.mesh)
        self.model = models.ResNet(stage_sizes=(1,), block_cls=models.BasicBlock, widths=(4,), shortcut="A")
        self.tx = optimizer(0.1, weight_decay=5e-4)
        self.stage_sums = steps.stage_sum_keys(models.stage_names(self.model))
        initial = lower_train_state(self.model, self.tx, seed=0, input_shape=IMAGE_SHAPE, mesh=self.mesh).compile()()
        self.initial = jax.device_get(initial)
        self.traces = {form: 0 for form in FORMS}
        self.programs = {}

    def _counted(self, form):
        train_step = steps.make_train_step(step_config(crop_padding=2))

        def traced(*args):
            self.traces[form] += 1
            return train_step(*args)

        return traced

    def program(self, form: str, num_steps: int):
        """The compiled program of `form` that runs `num_steps` steps a call."""
        if (form, num_steps) not in self.programs:
            scan, options = FORMS[form]
            window = steps.zero_train_metrics(self.stage_sums)
            lowered = steps.lower_train_steps(
                self._counted(form),
                self.mesh,
                BATCH,
                self.fresh_state(),
                window,
                self.split,
                self.permutation,
                num_steps,
                scan,
                options,
            )
            self.programs[form, num_steps] = lowered.compile()
        return self.programs[form, num_steps]

    def fresh_state(self):
        # The programs donate the state they are given: each run starts from its own copy of the initial one.
        return jax.device_put(self.initial, replicated(self.mesh))

    def run(self, chunks, form, first=0):
        """Runs steps `first`.. of the epoch in calls of `chunks[i]` steps (one dispatch a step unless scanned), as
        the trainer does; returns the state and metric sums."""
        state, totals = self.fresh_state(), steps.zero_train_metrics(self.stage_sums)
        for count in chunks:
            per_call = count if FORMS[form][0] else 1
            for step in range(first, first + count, per_call):
                state, totals = self.program(form, per_call)(
                    state, totals, self.split, self.permutation, jnp.int32(step)
                )
            first += count
        return jax.device_get(state), jax.device_get(totals)


@pytest.fixture(scope="module")
def setup():
    return Setup()


@pytest.mark.parametrize("form", ["scan", "per_step"])
def test_several_steps_per_call_match_one_step_per_call(setup, form):
    one_by_one_state, one_by_one_totals = setup.run([1] * 5, form="scan")
    chunked_state, chunked_totals = setup.run([3, 2], form=form)
    assert int(chunked_state.step) == 5
    for part in ("params", "batch_stats", "opt_state"):
        chex.assert_trees_all_close(getattr(chunked_state, part), getattr(one_by_one_state, part), **REASSOCIATION)
    chex.assert_trees_all_close(chunked_totals, one_by_one_totals, rtol=1e-5)
    assert float(chunked_totals["count"]) == 5 * BATCH
    assert float(chunked_totals["steps"]) == 5
    initial = jax.device_get(setup.fresh_state().params)
    assert not np.allclose(initial["head"]["kernel"], chunked_state.params["head"]["kernel"])


def test_each_step_takes_the_batch_at_its_epoch_position(setup):
    first = setup.run([1], form="per_step", first=0)[0].params["head"]["kernel"]
    third = setup.run([1], form="per_step", first=2)[0].params["head"]["kernel"]
    assert not np.allclose(first, third)
    chex.assert_trees_all_close(setup.run([1], form="scan", first=2)[0].params["head"]["kernel"], third, rtol=1e-5)


def test_the_per_step_program_runs_any_number_of_steps_traced_once(setup):
    # Runs of any length, each from a fresh metric window, call the one program of one step; the scanned form has
    # a program for each number of steps a call runs.
    setup.run([2, 3, 1], form="per_step")
    setup.run([4], form="per_step")
    setup.run([2, 3], form="scan")
    setup.run([3, 2], form="scan")
    assert setup.traces["per_step"] == 1
    assert setup.traces["scan"] == len({count for form, count in setup.programs if form == "scan"})
    with pytest.raises(ValueError, match="one step per dispatch runs 1 step"):
        steps.lower_train_steps(setup._counted("per_step"), setup.mesh, BATCH, None, {}, setup.split, None, 3)


def test_train_compiler_options_change_speed_not_results(setup):
    # Other options are other machine code (another dot library, another LLVM level): equal up to reassociation.
    tuned_state, tuned_totals = setup.run([3], form="per_step")
    default_state, default_totals = setup.run([3], form="xla_defaults")
    chex.assert_trees_all_close(tuned_state.params, default_state.params, **REASSOCIATION)
    chex.assert_trees_all_close(tuned_totals, default_totals, **REASSOCIATION)


def test_init_compiler_options_change_compile_time_not_weights(setup):
    arguments = (setup.model, setup.tx, 0, IMAGE_SHAPE, setup.mesh)
    tuned = lower_train_state(*arguments).compile()()
    default = lower_train_state(*arguments, compiler_options={}).compile()()
    # The same HLO, but LLVM at -O2 and -O3 may vectorise or contract the initialisers' float arithmetic (the
    # truncated normal's erfinv polynomial) differently: bit-identical here, guaranteed only to rounding.
    chex.assert_trees_all_close(tuned.params, default.params, **REASSOCIATION)
    chex.assert_trees_all_close(tuned.opt_state, default.opt_state, **REASSOCIATION)


def test_scan_is_used_off_the_cpu_only(setup):
    on_cpu = setup.mesh.devices.flat[0].platform == "cpu"
    assert steps.scan_is_fast(setup.mesh) is not on_cpu
    assert (steps.train_compiler_options(setup.mesh) is not None) is on_cpu


def test_a_dropped_step_keeps_the_schedule_in_place_and_out_of_the_metrics(setup):
    # SGD without momentum at 0.1 for steps 0 and 1, then 0 from step 2. Step 1 is not finite (a label past the
    # last class makes the loss NaN) and is dropped: step 2 must then apply the schedule's rate at step 2, 0.
    schedule = optax.piecewise_constant_schedule(0.1, {2: 0.0})
    tx = optimizer(schedule, momentum=0.0, weight_decay=0.0)
    state = lower_train_state(setup.model, tx, seed=0, input_shape=IMAGE_SHAPE, mesh=setup.mesh).compile()()
    train_step = jax.jit(steps.make_train_step(step_config(crop_padding=0, flip=False)))
    images = jnp.asarray(np.random.default_rng(1).integers(0, 256, (BATCH, *IMAGE_SHAPE), dtype=np.uint8))
    labels = jnp.arange(BATCH, dtype=jnp.int32) % 10
    trained, good = train_step(state, images, labels)
    dropped, bad = train_step(trained, images, labels.at[0].set(10))
    after, _ = train_step(dropped, images, labels)

    assert float(bad["nonfinite_steps"]) == 1 and int(bad["first_nonfinite_step"]) == 1
    assert float(bad["count"]) == float(bad["correct"]) == float(bad["loss_sum"]) == 0  # no accuracy, no loss
    assert float(bad["examples"]) == float(good["count"]) == BATCH  # images/s still counts the batch
    chex.assert_trees_all_equal(dropped.params, trained.params)
    assert int(dropped.step) == 2
    assert not np.allclose(
        jax.device_get(trained.params["head"]["kernel"]), jax.device_get(state.params["head"]["kernel"])
    )
    chex.assert_trees_all_equal(after.params, dropped.params)  # rate 0 at step 2, not the lagging count's 0.1


def test_the_ema_takes_a_tenth_of_each_steps_weights_and_statistics(setup):
    # At decay 0.9 each applied step moves the average a tenth of the way to the step's new parameters and BatchNorm
    # statistics (timm's ModelEmaV2, as `train.ema_decay` documents), worked out here leaf by leaf in numpy.
    state = lower_train_state(setup.model, setup.tx, 0, IMAGE_SHAPE, setup.mesh, use_ema=True).compile()()
    config = dataclasses.replace(step_config(crop_padding=0, flip=False), ema_decay=0.9)
    images = jnp.asarray(np.random.default_rng(2).integers(0, 256, (BATCH, *IMAGE_SHAPE), dtype=np.uint8))
    labels = jnp.arange(BATCH, dtype=jnp.int32) % 10
    step = jax.jit(steps.make_train_step(config))
    before = jax.device_get(state.ema)
    trained, _ = step(state, images, labels)
    trained = jax.device_get(trained)
    new = {"params": trained.params, "batch_stats": trained.batch_stats}
    moved = jax.tree.map(lambda a, b: not np.allclose(a, b), new["batch_stats"], before["batch_stats"])
    assert all(jax.tree.leaves(moved))  # the statistics moved too, so their average is checked on a real change
    expected = jax.tree.map(lambda old, now: 0.9 * np.asarray(old) + 0.1 * np.asarray(now), before, new)
    chex.assert_trees_all_close(trained.ema, expected, rtol=1e-5, atol=1e-7)
