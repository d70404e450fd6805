"""On-device augmentation in pure jnp: pad-and-crop, flips, cutout, normalisation; and the config's `augment`
section (its defaults and checks). Every function takes a whole uint8/float batch and ONE PRNG key, is jittable,
and gives the same output for the same key, so results do not depend on sharding.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from resnet_jax import configuration

PAD_MODES = ("constant", "reflect")
DEFAULTS = {"crop_padding": 4, "pad_mode": "constant", "flip": True, "cutout_size": 0}


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """The training augmentation a config's `augment` section asks for."""

    crop_padding: int
    pad_mode: str
    flip: bool
    cutout_size: int

    @classmethod
    def from_config(cls, augment_config: ml_collections.ConfigDict, image_size: int) -> Augmentation:
        """The section, checked against the `image_size` x `image_size` images it augments: one ConfigError line
        for the first key that cannot work."""
        for key in ("crop_padding", "cutout_size"):
            configuration.check_at_least(f"augment.{key}", augment_config[key], 0, "0 turns it off")
        # A crop from padding as wide as the image can be all padding (and reflection cannot pad that far).
        if augment_config.crop_padding >= image_size:
            raise configuration.ConfigError(
                f"augment.crop_padding={augment_config.crop_padding} must be below the image size ({image_size}); "
                "4 is the CIFAR recipe's, 0 turns cropping off"
            )
        if augment_config.cutout_size > image_size:
            raise configuration.ConfigError(
                f"augment.cutout_size={augment_config.cutout_size} is larger than the images ({image_size}), and "
                "would blank them; give at most that (16 is the CIFAR-10 recipe's), or 0 to turn it off"
            )
        configuration.check_choice("augment.pad_mode", augment_config.pad_mode, PAD_MODES)
        configuration.check_choice("augment.flip", augment_config.flip, (False, True))
        return cls(**{field.name: augment_config[field.name] for field in dataclasses.fields(cls)})


def random_crop(key: jax.Array, images: jax.Array, padding: int = 4, mode: str = "constant") -> jax.Array:
    """Pads each image by `padding` pixels (zeros or reflection) and takes a random crop of the original size."""
    if padding == 0:
        return images
    if mode not in PAD_MODES:
        raise ValueError(f"unknown pad mode {mode!r}; choose one of {', '.join(PAD_MODES)}")
    batch, height, width, channels = images.shape
    padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)), mode=mode)
    offsets = jax.random.randint(key, (batch, 2), 0, 2 * padding + 1)

    def crop(image: jax.Array, offset: jax.Array) -> jax.Array:
        return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (height, width, channels))

    return jax.vmap(crop)(padded, offsets)


def random_flip(key: jax.Array, images: jax.Array) -> jax.Array:
    """Mirrors each image left-right with probability 1/2."""
    flip = jax.random.bernoulli(key, 0.5, (images.shape[0], 1, 1, 1))
    return jnp.where(flip, images[:, :, ::-1, :], images)


def cutout(key: jax.Array, images: jax.Array, size: int) -> jax.Array:
    """Zeroes a `size` x `size` square at a random centre of each image (DeVries & Taylor 2017); it may clip."""
    if size == 0:
        return images
    batch, height, width, _ = images.shape
    centres = jax.random.randint(key, (batch, 2), 0, jnp.array([height, width]))
    rows = jnp.arange(height)[None, :, None]
    cols = jnp.arange(width)[None, None, :]
    top = centres[:, 0, None, None] - size // 2
    left = centres[:, 1, None, None] - size // 2
    inside = (rows >= top) & (rows < top + size) & (cols >= left) & (cols < left + size)
    return jnp.where(inside[..., None], jnp.zeros((), images.dtype), images)


def normalize(images: jax.Array, mean: Sequence[float], std: Sequence[float], dtype: Any = jnp.float32) -> jax.Array:
    """uint8 pixels -> (x / 255 - mean) / std per channel, in `dtype`."""
    scale = jnp.asarray(std, jnp.float32) * 255.0
    shift = jnp.asarray(mean, jnp.float32) * 255.0
    return ((images.astype(jnp.float32) - shift) / scale).astype(dtype)


def augment_batch(key: jax.Array, images: jax.Array, augmentation: Augmentation) -> jax.Array:
    """The training augmentation: random crop, horizontal flip, cutout, on uint8 images (before normalisation)."""
    crop_key, flip_key, cutout_key = jax.random.split(key, 3)
    images = random_crop(crop_key, images, augmentation.crop_padding, augmentation.pad_mode)
    if augmentation.flip:
        images = random_flip(flip_key, images)
    return cutout(cutout_key, images, augmentation.cutout_size)
