"""Images of more than 8 bits a channel (16-bit PNG, 32-bit integer and floating-point images) brought to the 8 bits
the datasets and the network hold, for the folder source and for the files `predict` reads: Pillow's own
conversion to 8 bits clips them at 255, which turns most of such an image white.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

SIXTEEN_BIT_MAX = 65535
STEP = 257  # 65535 / 255: the 16-bit value of 8-bit v is v * 257, so v comes back exactly


def to_eight_bits(image: Image.Image) -> Image.Image:
    """`image` in 8 bits (mode L) when it holds 16-bit or 32-bit integers (scaled from 0-65535) or floats
    (scaled from 0-1); any other image as it is. Raises ValueError for values outside those ranges."""
    if image.mode == "I" or image.mode.startswith("I;16"):
        values = np.asarray(image, np.int64)
        if values.size and (values.min() < 0 or values.max() > SIXTEEN_BIT_MAX):
            raise ValueError(
                f"it holds integer pixels from {values.min()} to {values.max()}, outside the 16-bit range 0-65535; "
                "save it with 8 or 16 bits a channel"
            )
        return Image.fromarray(np.rint(values / STEP).astype(np.uint8))
    if image.mode == "F":
        values = np.asarray(image, np.float64)
        if values.size and not (np.isfinite(values).all() and values.min() >= 0 and values.max() <= 1):
            raise ValueError(
                f"it holds floating-point pixels from {np.nanmin(values):g} to {np.nanmax(values):g}, not within "
                "0-1 where they could be scaled to 8 bits; save it with 8 or 16 bits a channel"
            )
        return Image.fromarray(np.rint(values * 255).astype(np.uint8))
    return image
