"""On-device augmentation in pure jnp: pad-and-crop, flips, cutout, normalisation, Mixup and CutMix; and the
config's `augment` section (its defaults and checks). Every function takes a whole uint8/float batch and ONE PRNG
key, is jittable, and gives the same output for the same key, so results do not depend on sharding.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from resnet_jax import configuration

PAD_MODES = ("constant", "reflect")
DEFAULTS = {
    "crop_padding": 4,
    "pad_mode": "constant",
    "flip": True,
    "cutout_size": 0,
    # Mixup and CutMix as timm's `Mixup` in batch mode; an alpha of 0 turns each off.
    "mixup_alpha": 0.0,
    "cutmix_alpha": 0.0,
    "mix_prob": 1.0,  # the probability that a batch is mixed
    "switch_prob": 0.5,  # with both on, the probability that a mixed batch gets CutMix rather than Mixup
}


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """The training augmentation a config's `augment` section asks for."""

    crop_padding: int
    pad_mode: str
    flip: bool
    cutout_size: int
    mixup_alpha: float
    cutmix_alpha: float
    mix_prob: float
    switch_prob: float

    @property
    def mixes(self) -> bool:
        """Whether batches are mixed (Mixup, CutMix or both), which makes the targets soft."""
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0

    @classmethod
    def from_config(cls, augment_config: ml_collections.ConfigDict, image_size: int, batch_size: int) -> Augmentation:
        """The section, checked against the `image_size` x `image_size` images it augments in global batches of
        `batch_size`: one ConfigError line for the first key that cannot work."""
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
        for key in ("mixup_alpha", "cutmix_alpha"):
            alpha = augment_config[key]
            if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha < math.inf:
                raise configuration.ConfigError(
                    f"augment.{key}={alpha!r} must be 0 (off) or a positive number, the concentration of the Beta "
                    "distribution of lambda (timm's ImageNet recipes: 0.8 for mixup, 1.0 for CutMix)"
                )
        for key in ("mix_prob", "switch_prob"):
            configuration.check_probability(f"augment.{key}", augment_config[key])
        mixes = augment_config.mixup_alpha > 0 or augment_config.cutmix_alpha > 0
        if mixes and batch_size == 1:
            raise configuration.ConfigError(
                "augment.mixup_alpha/cutmix_alpha mix each image with another of its batch, and train.batch_size=1 "
                "has only itself; give a batch of 2 or more, or set both alphas to 0"
            )
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


def paired(batch: jax.Array) -> jax.Array:
    """Each example's partner in a mixed batch: the batch reversed, as timm pairs them (big_vision rolls it by one)."""
    return batch[::-1]


def draw_mix(key: jax.Array, augmentation: Augmentation, height: int, width: int) -> tuple[jax.Array, jax.Array]:
    """One mix for a whole batch (timm's batch mode): each pixel's weight (height, width) of an image against its
    partner, and the weight of its own label in its target.

    The batch is mixed with probability `mix_prob`, by CutMix with probability `switch_prob` when both are on, with
    lambda ~ Beta(alpha, alpha) of the one chosen. Mixup weighs every pixel lambda. CutMix pastes the partner into a
    box of about sqrt(1 - lambda) of the image's side, centred anywhere and clipped to the image, and the label's weight
    is the fraction of the image kept (timm's `cutmix_bbox_and_lam` with `correct_lam=True`). Unmixed, every weight
    is 1.
    """
    mix_key, switch_key, lambda_key, box_key = jax.random.split(key, 4)
    both = augmentation.mixup_alpha > 0 and augmentation.cutmix_alpha > 0
    use_cutmix = jax.random.bernoulli(
        switch_key, float(augmentation.switch_prob if both else augmentation.cutmix_alpha > 0)
    )
    alpha = jnp.where(use_cutmix, float(augmentation.cutmix_alpha), float(augmentation.mixup_alpha))
    drawn = jax.random.beta(lambda_key, alpha, alpha)
    lam = jnp.where(jax.random.bernoulli(mix_key, float(augmentation.mix_prob)), drawn, 1.0)

    side = jnp.sqrt(1.0 - lam)
    cut_height, cut_width = (jnp.floor(size * side).astype(jnp.int32) for size in (height, width))
    centre = jax.random.randint(box_key, (2,), 0, jnp.array([height, width]))
    top, bottom = (jnp.clip(centre[0] + offset, 0, height) for offset in (-(cut_height // 2), cut_height // 2))
    left, right = (jnp.clip(centre[1] + offset, 0, width) for offset in (-(cut_width // 2), cut_width // 2))
    rows, cols = jnp.arange(height)[:, None], jnp.arange(width)[None, :]
    inside = (rows >= top) & (rows < bottom) & (cols >= left) & (cols < right)
    kept = (height * width - (bottom - top) * (right - left)).astype(jnp.float32) / (height * width)

    weights = jnp.where(use_cutmix, (~inside).astype(jnp.float32), lam)
    return weights, jnp.where(use_cutmix, kept, lam)


def mix_batch(key: jax.Array, images: jax.Array, augmentation: Augmentation) -> tuple[jax.Array, jax.Array]:
    """Float `images` mixed with their partners by one `draw_mix`, and the weight of each one's own label."""
    weights, label_weight = draw_mix(key, augmentation, images.shape[1], images.shape[2])
    weights = weights[None, :, :, None].astype(images.dtype)
    return weights * images + (1 - weights) * paired(images), label_weight


def dominant_labels(labels: jax.Array, label_weight: jax.Array) -> jax.Array:
    """Each mixed example's label of the larger weight (its own at a tie): what train accuracy counts under mixing."""
    return jnp.where(label_weight >= 0.5, labels, paired(labels))
