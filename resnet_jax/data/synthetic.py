"""The `synthetic` source: seeded random images of any shape that a network can learn, for runs and tests that need
no files at all.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from resnet_jax.data.registry import SPLITS, SplitArrays


def synthetic_split(
    image_shape: Sequence[int], num_classes: int, num_examples: int, seed: int, split: str
) -> SplitArrays:
    """Seeded random images that are learnable: each class is a noisy copy of its own coarse random template.

    Templates are 4x4 blocks of colour, so random crops and flips keep them recognisable. Train and test share the
    templates (one seed) and draw their own labels and noise.
    """
    height, width, channels = image_shape
    coarse = np.random.default_rng(seed).integers(0, 256, (num_classes, 4, 4, channels), dtype=np.int16)
    templates = np.repeat(np.repeat(coarse, -(-height // 4), axis=1), -(-width // 4), axis=2)[:, :height, :width]
    rng = np.random.default_rng([seed, SPLITS.index(split) + 1])
    labels = rng.integers(0, num_classes, num_examples).astype(np.int32)
    noise = rng.integers(-64, 65, (num_examples, height, width, channels), dtype=np.int16)
    images = np.clip(templates[labels] + noise, 0, 255).astype(np.uint8)
    return SplitArrays(images, labels)
