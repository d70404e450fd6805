"""On-device augmentation: every output is a window of the padded input (maybe mirrored), deterministic per key."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resnet_jax import augment


def augmentation(**overrides) -> augment.Augmentation:
    """The default augmentation (pad-4 crop, flip, no cutout) with `overrides`."""
    return augment.Augmentation(**(augment.DEFAULTS | overrides))


def distinct_images(batch: int, size: int = 6, channels: int = 2, seed: int = 0) -> jax.Array:
    # Distinct pixel values make every window of the padded image unique, so a match identifies the crop.
    values = np.random.default_rng(seed).permutation(256)[: size * size * channels]
    base = values.reshape(size, size, channels).astype(np.uint8)
    return jnp.asarray(np.stack([np.roll(base, index, axis=0) for index in range(batch)]))


def windows(image: np.ndarray, padding: int, mode: str):
    """Every crop the augmentation may produce from `image`, flipped or not."""
    size = image.shape[0]
    padded = np.pad(image, ((padding, padding), (padding, padding), (0, 0)), mode=mode)
    for top in range(2 * padding + 1):
        for left in range(2 * padding + 1):
            window = padded[top : top + size, left : left + size]
            yield (top, left, False), window
            yield (top, left, True), window[:, ::-1]


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), padding=st.integers(0, 3), mode=st.sampled_from(augment.PAD_MODES))
def test_every_output_is_a_shifted_or_flipped_window_of_the_padded_input(seed, padding, mode):
    images = distinct_images(4)
    out = augment.augment_batch(jax.random.key(seed), images, augmentation(crop_padding=padding, pad_mode=mode))
    chex.assert_shape(out, images.shape)
    chex.assert_type(out, jnp.uint8)
    for image, result in zip(np.asarray(images), np.asarray(out), strict=True):
        matches = [where for where, window in windows(image, padding, mode) if np.array_equal(window, result)]
        assert matches, "output is not a window of the padded input"


def test_same_key_same_output_and_different_keys_different_crops():
    images = distinct_images(16, size=8)
    key = jax.random.key(7)
    first = augment.augment_batch(key, images, augmentation())
    chex.assert_trees_all_equal(first, augment.augment_batch(key, images, augmentation()))
    other = augment.augment_batch(jax.random.key(8), images, augmentation())
    assert not np.array_equal(first, other)
    # Crops differ per example within a batch too: not one offset for all.
    crops = augment.random_crop(key, images, padding=4)
    offsets = {
        next(w for w, window in windows(np.asarray(image), 4, "constant") if np.array_equal(window, crop))[:2]
        for image, crop in zip(np.asarray(images), np.asarray(crops), strict=True)
    }
    assert len(offsets) > 1


def test_flip_mirrors_about_half_the_batch():
    images = distinct_images(200, size=4)
    flipped = augment.random_flip(jax.random.key(0), images)
    mirrored = np.all(np.asarray(flipped) == np.asarray(images)[:, :, ::-1], axis=(1, 2, 3))
    unchanged = np.all(np.asarray(flipped) == np.asarray(images), axis=(1, 2, 3))
    assert np.all(mirrored | unchanged)
    assert 60 < mirrored.sum() < 140


def test_cutout_zeroes_one_clipped_square_per_image():
    images = jnp.full((8, 10, 10, 3), 200, jnp.uint8)
    out = np.asarray(augment.cutout(jax.random.key(3), images, size=4))
    for image in out:
        zero = np.all(image == 0, axis=-1)
        rows, cols = np.nonzero(zero)
        assert 0 < zero.sum() <= 16
        assert rows.max() - rows.min() < 4 and cols.max() - cols.min() < 4
        assert zero.sum() == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)  # a rectangle


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_normalize_per_channel_into_compute_dtype(dtype):
    images = jnp.asarray([[[[0, 255, 51]]]], jnp.uint8)
    out = augment.normalize(images, mean=(0.5, 0.5, 0.2), std=(0.5, 0.25, 0.1), dtype=dtype)
    chex.assert_type(out, dtype)
    chex.assert_trees_all_close(out.astype(jnp.float32), jnp.asarray([[[[-1.0, 2.0, 0.0]]]]), atol=1e-2)


def test_augmentation_jits_and_vmaps_over_keys():
    images = distinct_images(3)
    keys = jax.random.split(jax.random.key(0), 5)
    batched = jax.jit(jax.vmap(lambda key: augment.augment_batch(key, images, augmentation(crop_padding=2))))(keys)
    chex.assert_shape(batched, (5, *images.shape))
    chex.assert_trees_all_equal(batched[2], augment.augment_batch(keys[2], images, augmentation(crop_padding=2)))
