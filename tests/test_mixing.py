"""Mixup and CutMix (timm's batch mode): what a mixed batch holds, its lambda's distribution and its soft targets,
and the train step that mixes: it learns, never retraces, composes with EMA, the linear probe and the non-finite
policy, and with mixing off or never drawn it is the unmixed step, to rounding (the two are different programs,
whose reductions XLA may fuse in another order)."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from resnet_jax import augment, experiment, models, optim, parallel, pipeline, steps
from resnet_jax.data import SplitArrays
from resnet_jax.state import lower_train_state
from tests.conftest import REASSOCIATION, load_config, optimizer, step_config

SIZE = 8


def augmentation(**overrides) -> augment.Augmentation:
    return augment.Augmentation(**(augment.DEFAULTS | overrides))


def float_batch(batch: int = 6, seed: int = 0) -> jax.Array:
    # Continuous values: no pixel of an image equals its partner's, so each pixel's source can be told.
    return jnp.asarray(np.random.default_rng(seed).normal(size=(batch, SIZE, SIZE, 3)).astype(np.float32))


def test_mixup_blends_each_image_with_its_partner_by_the_drawn_lambda():
    images = float_batch()
    lambdas = []
    for seed in range(5):
        mixed, lam = augment.mix_batch(jax.random.key(seed), images, augmentation(mixup_alpha=0.4))
        chex.assert_shape(mixed, images.shape)
        lam = float(lam)
        expected = lam * np.asarray(images) + (1 - lam) * np.asarray(images)[::-1]
        np.testing.assert_allclose(mixed, expected, rtol=1e-6, atol=1e-6)
        lambdas.append(lam)
    assert all(0 < lam < 1 for lam in lambdas) and len(set(lambdas)) == 5


def box_of(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.nonzero(mask)
    return rows.min(), rows.max() + 1, cols.min(), cols.max() + 1


def test_cutmix_pastes_one_box_of_the_partner_and_lambda_is_the_area_kept():
    size = 32
    images = jnp.asarray(np.random.default_rng(1).normal(size=(4, size, size, 2)).astype(np.float32))
    own, partner = np.asarray(images), np.asarray(images)[::-1]
    clipped = 0
    for seed in range(40):
        mixed, lam = augment.mix_batch(jax.random.key(seed), images, augmentation(cutmix_alpha=1.0))
        mixed = np.asarray(mixed)
        pasted = np.all(mixed == partner, axis=-1)
        # Every pixel is its own or its partner's, exactly: a paste, not a blend.
        assert np.all(pasted | np.all(mixed == own, axis=-1))
        # One box, the same for the whole batch.
        assert all(np.array_equal(pasted[0], pasted[index]) for index in range(len(pasted)))
        kept = size * size - pasted[0].sum()
        assert float(lam) == np.float32(kept) / np.float32(size * size)
        if pasted[0].any():
            top, bottom, left, right = box_of(pasted[0])
            assert pasted[0].sum() == (bottom - top) * (right - left)
            clipped += top == 0 or left == 0 or bottom == size or right == size
    # Boxes centred near an edge are clipped to the image; lambda then still counts what is kept.
    assert clipped > 0


def draws(settings: augment.Augmentation, count: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    keys = jax.random.split(jax.random.key(0), count)
    weights, lam = jax.jit(jax.vmap(lambda key: augment.draw_mix(key, settings, 32, 32)))(keys)
    return np.asarray(weights), np.asarray(lam)


def test_lambda_follows_the_symmetric_beta_and_is_fixed_by_the_key():
    alpha = 0.3
    weights, lam = draws(augmentation(mixup_alpha=alpha))
    assert abs(lam.mean() - 0.5) < 0.03
    # Beta(a, a) has variance 1 / (4 (2a + 1)): 0.156 here, against a uniform's 0.083.
    assert abs(lam.var() - 1 / (4 * (2 * alpha + 1))) < 0.015
    np.testing.assert_array_equal(weights, np.broadcast_to(lam[:, None, None], weights.shape))
    key = jax.random.key(5)
    first = augment.draw_mix(key, augmentation(mixup_alpha=alpha), 32, 32)
    chex.assert_trees_all_equal(first, augment.draw_mix(key, augmentation(mixup_alpha=alpha), 32, 32))
    assert float(first[1]) != float(augment.draw_mix(jax.random.key(6), augmentation(mixup_alpha=alpha), 32, 32)[1])


def test_mix_prob_and_switch_prob_choose_per_batch():
    _, lam = draws(augmentation(mixup_alpha=1.0, mix_prob=0.25))
    assert abs((lam == 1).mean() - 0.75) < 0.04
    weights, lam = draws(augmentation(mixup_alpha=1.0, cutmix_alpha=1.0, switch_prob=0.3))
    # A CutMix draw weighs pixels 0 or 1 and has a box (but for lambdas within 0.4% of 1); a mixup draw neither.
    cutmix = np.all((weights == 0) | (weights == 1), axis=(1, 2)) & np.any(weights == 0, axis=(1, 2))
    assert abs(cutmix.mean() - 0.3) < 0.04
    np.testing.assert_array_equal(lam[cutmix], weights[cutmix].mean(axis=(1, 2)))


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_the_mixed_loss_is_the_cross_entropy_of_timms_mixed_soft_targets(smoothing):
    classes = 5
    rng = np.random.default_rng(2)
    logits = jnp.asarray(rng.normal(size=(6, classes)).astype(np.float32))
    labels = jnp.asarray([0, 1, 2, 3, 4, 0], jnp.int32)
    lam = jnp.float32(0.3)

    def loss(logits):
        partners = augment.paired(labels)
        return optim.mixed_cross_entropy(logits, labels, partners, lam, smoothing)

    # d loss_i / d logits_i = softmax_i - targets_i: the targets the loss trains towards, read off its gradient.
    targets = jax.nn.softmax(logits) - jnp.einsum("iic->ic", jax.jacrev(loss)(logits))
    smooth = lambda y: optax.smooth_labels(jax.nn.one_hot(y, classes), smoothing)  # noqa: E731
    timm = lam * smooth(labels) + (1 - lam) * smooth(labels[::-1])
    chex.assert_trees_all_close(targets, timm, atol=1e-6)
    chex.assert_trees_all_close(targets.sum(-1), jnp.ones(6), atol=1e-6)
    chex.assert_trees_all_close(loss(logits), optax.softmax_cross_entropy(logits, timm), rtol=1e-6)
    assert list(augment.dominant_labels(labels, lam)) == list(labels[::-1])


# A learnable task: four classes, each a noisy coarse template.
CLASSES, EXAMPLES, BATCH = 4, 64, 16


def task() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    templates = rng.integers(0, 256, (CLASSES, 2, 2, 3))
    labels = np.arange(EXAMPLES) % CLASSES
    images = np.repeat(np.repeat(templates[labels], SIZE // 2, 1), SIZE // 2, 2)
    noise = rng.normal(0, 20, images.shape)
    return np.clip(images + noise, 0, 255).astype(np.uint8), labels.astype(np.int32)


def tiny_state(mesh=None, tx=None, ema: bool = False):
    model = models.ResNet(stage_sizes=(1,), block_cls=models.BasicBlock, widths=(4,), shortcut="A", num_classes=CLASSES)
    tx = tx or optimizer(0.1, weight_decay=5e-4)
    return lower_train_state(model, tx, 0, (SIZE, SIZE, 3), mesh or parallel.make_mesh(), use_ema=ema).compile()()


def run(config: steps.StepConfig, num_steps: int):
    """`num_steps` steps over the task's batches in turn, traced once; the final state and every step's metrics."""
    images, labels = task()
    chex.clear_trace_counter()
    step = jax.jit(chex.assert_max_traces(steps.make_train_step(config), n=1))
    state, history = tiny_state(ema=config.ema_decay > 0), []
    for index in range(num_steps):
        rows = slice(index * BATCH % EXAMPLES, index * BATCH % EXAMPLES + BATCH)
        state, metrics = step(state, jnp.asarray(images[rows]), jnp.asarray(labels[rows]))
        history.append(metrics)
    return jax.device_get(state), jax.device_get(history)


def clean_loss(config: steps.StepConfig, state) -> float:
    images, labels = task()
    eval_step = steps.make_eval_step(config, state.apply_fn)
    sums, _ = jax.jit(eval_step)(state.variables, images, labels, jnp.ones(EXAMPLES, bool))
    return float(sums["loss_sum"] / sums["count"])


MIXING = {"mixup_alpha": 0.4, "cutmix_alpha": 1.0, "crop_padding": 0, "flip": False}


def test_a_mixing_step_learns_the_task_without_retracing():
    config = step_config(**MIXING)
    before = clean_loss(config, jax.device_get(tiny_state()))
    # 80 steps of one traced program: lambda, the box and the mode are traced values, never static.
    state, history = run(config, 80)
    assert clean_loss(config, state) < 0.3 * before
    losses = [float(metrics["loss_sum"] / metrics["count"]) for metrics in history]
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])


@pytest.mark.parametrize("probe", [False, True], ids=["train", "linear probe with EMA and smoothing"])
def test_mixing_off_or_never_drawn_is_the_unmixed_step(probe):
    base = step_config(crop_padding=2)
    if probe:
        base = dataclasses.replace(base, frozen_statistics=True, ema_decay=0.9, label_smoothing=0.1)
    never = dataclasses.replace(
        base, augmentation=dataclasses.replace(base.augmentation, mixup_alpha=0.4, cutmix_alpha=1.0, mix_prob=0.0)
    )
    drawn = dataclasses.replace(never, augmentation=dataclasses.replace(never.augmentation, mix_prob=1.0))
    off_state, off_metrics = run(base, 3)
    never_state, never_metrics = run(never, 3)
    # Per example the never-drawn loss is the unmixed one to the bit, but a batch's sum may be reduced in another
    # order (seen: loss_sum 1 ulp apart under XLA on an AMD EPYC): equal to rounding.
    chex.assert_trees_all_close(never_state.checkpoint_tree(), off_state.checkpoint_tree(), **REASSOCIATION)
    chex.assert_trees_all_close(never_metrics, off_metrics, **REASSOCIATION)
    # Drawn, the same mixing changes the step: the agreement above is not of two steps that ignore it.
    drawn_state, _ = run(drawn, 3)
    head, off_head = drawn_state.params["head"]["kernel"], off_state.params["head"]["kernel"]
    assert not np.allclose(head, off_head, **REASSOCIATION)
    if probe:
        chex.assert_trees_all_equal(drawn_state.batch_stats, off_state.batch_stats)  # the probe keeps statistics


def test_train_accuracy_under_mixing_counts_each_examples_dominant_label():
    # A stand-in network whose logits ignore the images: every example predicts its own label, by a margin of 4.
    # Partners (the batch reversed) never share a label here, so a step counts all 16 correct where each example's own
    # label weighs at least half and none where its partner's weighs more. That weight, lambda, is read off the
    # step's loss, lambda * CE(own) + (1 - lambda) * CE(partner), both cross-entropies known by hand.
    labels = jnp.arange(BATCH, dtype=jnp.int32) % CLASSES
    assert not np.any(np.asarray(labels) == np.asarray(labels)[::-1])
    fixed = 4.0 * jax.nn.one_hot(labels, CLASSES)
    own, partner = np.log(np.exp(4.0) + 3) - 4.0, np.log(np.exp(4.0) + 3)

    def stand_in(variables, inputs, train, mutable, rngs):
        del inputs, train, mutable, rngs
        return fixed + 0.0 * jnp.sum(variables["params"]["head"]["kernel"]), {"batch_stats": variables["batch_stats"]}

    config = dataclasses.replace(step_config(**MIXING), gradient_flow=False)
    step = jax.jit(steps.make_train_step(config))
    state = tiny_state().replace(apply_fn=stand_in)
    images = jnp.asarray(task()[0][:BATCH])
    counted = []
    for _ in range(12):
        state, metrics = step(state, images, labels)
        lam = (partner - float(metrics["loss_sum"] / metrics["count"])) / (partner - own)
        assert -1e-5 <= lam <= 1 + 1e-5
        if abs(lam - 0.5) > 1e-4:
            counted.append((lam >= 0.5, float(metrics["correct"])))
    assert all(correct == (BATCH if dominant else 0) for dominant, correct in counted), counted
    assert {dominant for dominant, _ in counted} == {True, False}  # both cases met


def test_mixing_inside_a_scan_runs_the_steps_it_runs_one_by_one():
    # Accelerators scan several steps per call: each step must still draw its own mix from its own step's key.
    mesh, (images, labels) = parallel.make_mesh(), task()
    split = pipeline.put_split(lambda rows: SplitArrays(images[rows], labels[rows]), EXAMPLES, EXAMPLES, mesh)
    permutation = pipeline.epoch_permutation(jax.random.key_data(jax.random.key(1)), jnp.int32(0), EXAMPLES, mesh)
    train_step = steps.make_train_step(step_config(**MIXING))
    stage_sums = steps.stage_sum_keys(("stem", "stage1"))  # tiny_state's parts
    results = []
    for scan in (True, False):
        state, totals = tiny_state(mesh), steps.zero_train_metrics(stage_sums)  # the program donates both
        per_call = 4 if scan else 1
        program = steps.lower_train_steps(
            train_step, mesh, BATCH, state, totals, split, permutation, per_call, scan
        ).compile()
        for first in range(0, 4, per_call):
            state, totals = program(state, totals, split, permutation, jnp.int32(first))
        results.append(jax.device_get((state.params, totals)))
    chex.assert_trees_all_close(*results, **REASSOCIATION)


@pytest.mark.parametrize(
    "block_cls",
    [models.BasicBlock, models.BottleneckBlock, models.PreActBasicBlock, models.PreActBottleneckBlock],
    ids=lambda block: block.__name__,
)
def test_every_block_family_trains_mixed_in_bfloat16_with_dropout(block_cls):
    # Mixing touches only the inputs and the loss: one step of each family, at the compute dtype the mix is cast to.
    model = models.ResNet(
        stage_sizes=(1, 1),
        block_cls=block_cls,
        widths=(4, 8),
        num_classes=CLASSES,
        dtype=jnp.bfloat16,
        dropout_rate=0.1,
    )
    state = lower_train_state(model, optimizer(0.1), 0, (SIZE, SIZE, 3), parallel.make_mesh()).compile()()
    config = dataclasses.replace(step_config(**MIXING), dtype=jnp.bfloat16)
    images, labels = task()
    trained, metrics = jax.jit(steps.make_train_step(config))(state, images[:BATCH], labels[:BATCH])
    assert float(metrics["nonfinite_steps"]) == 0 and np.isfinite(float(metrics["loss_sum"]))
    assert not np.array_equal(jax.device_get(trained.params["head"]["kernel"]), state.params["head"]["kernel"])


def test_a_nonfinite_mixed_step_is_dropped_and_counted():
    config = step_config(**MIXING)
    state = tiny_state(ema=True)
    config = dataclasses.replace(config, ema_decay=0.9)
    images, labels = task()
    step = jax.jit(steps.make_train_step(config))
    # A label past the last class: its own and its partner's losses are NaN, so the whole step is.
    dropped, metrics = step(state, jnp.asarray(images[:BATCH]), jnp.asarray(labels[:BATCH]).at[0].set(CLASSES))
    assert float(metrics["nonfinite_steps"]) == 1 and float(metrics["count"]) == 0
    chex.assert_trees_all_equal(jax.device_get(dropped.params), jax.device_get(state.params))
    chex.assert_trees_all_equal(jax.device_get(dropped.ema), jax.device_get(state.ema))
    applied, metrics = step(dropped, jnp.asarray(images[:BATCH]), jnp.asarray(labels[:BATCH]))
    assert float(metrics["nonfinite_steps"]) == 0 and 0 <= float(metrics["correct"]) <= BATCH
    assert not np.array_equal(
        jax.device_get(applied.ema["params"]["head"]["kernel"]), state.ema["params"]["head"]["kernel"]
    )


def test_the_config_section_reaches_the_step():
    mixing = {"augment.mixup_alpha": 0.2, "augment.cutmix_alpha": 1.0, "augment.mix_prob": 0.8}
    augmentation = experiment.build(load_config("smoke", **mixing)).step_config.augmentation
    assert augmentation.mixes and (augmentation.mixup_alpha, augmentation.cutmix_alpha) == (0.2, 1.0)
    assert (augmentation.mix_prob, augmentation.switch_prob) == (0.8, 0.5)
    assert not experiment.build(load_config("smoke")).step_config.augmentation.mixes
