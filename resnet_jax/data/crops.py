"""One image file to the network's input, as the grain loader prepares it: torchvision's random-resized crop and a
flip for training, the short side resized to size / 0.875 and the centre crop for evaluation (256 -> 224). Pillow
only, so that `predict` prepares an image as a streamed run evaluated it without importing Grain.
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image, ImageOps

from resnet_jax.data import folder
from resnet_jax.data.pixels import to_eight_bits

# torchvision's RandomResizedCrop defaults (as flax's ImageNet example): a crop of 8% to all of the image's area, of
# aspect ratio 3/4 to 4/3, resized to the network's size.
CROP_AREA = (0.08, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
CROP_TRIES = 10
# Evaluation resizes the short side to image_size / 0.875 and takes the centre image_size (256 -> 224).
CENTRE_FRACTION = 0.875
DECODE_ERRORS = (*folder.DECODE_ERRORS, Image.DecompressionBombError)  # a file that is not a readable image


def _mode(channels: int) -> str:
    """Grey with channels=1; else RGB (whether a folder has colour is not read ahead of streaming it)."""
    return "L" if channels == 1 else "RGB"


def _open(data: bytes, mode: str, draft: int = 0) -> Image.Image:
    """An image upright by its EXIF orientation, in 8 bits and `mode`; a JPEG decoded at the smallest scale (1/2,
    1/4, 1/8) still at least `draft` on both sides."""
    image = Image.open(io.BytesIO(data))
    if draft:
        image.draft(mode, (draft, draft))
    image = to_eight_bits(ImageOps.exif_transpose(image))
    if image.mode == "P":  # a palette, perhaps with a transparent entry: through RGBA drops it cleanly
        image = image.convert("RGBA")
    return image.convert(mode)


def _array(image: Image.Image) -> np.ndarray:
    array = np.asarray(image, dtype=np.uint8)
    return array[..., None] if array.ndim == 2 else array


def crop_box(width: int, height: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop box (left, top, right, bottom): a random area and aspect ratio, placed at
    random; after `CROP_TRIES` that do not fit, the centre crop of the nearest allowed ratio."""
    area = width * height
    low, high = math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])
    for _ in range(CROP_TRIES):
        target = area * rng.uniform(*CROP_AREA)
        ratio = math.exp(rng.uniform(low, high))
        crop_width, crop_height = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
        if 0 < crop_width <= width and 0 < crop_height <= height:
            top = int(rng.integers(0, height - crop_height + 1))
            left = int(rng.integers(0, width - crop_width + 1))
            return left, top, left + crop_width, top + crop_height
    ratio = width / height
    crop_width, crop_height = width, height
    if ratio < CROP_RATIO[0]:
        crop_height = round(width / CROP_RATIO[0])
    elif ratio > CROP_RATIO[1]:
        crop_width = round(height * CROP_RATIO[1])
    left, top = (width - crop_width) // 2, (height - crop_height) // 2
    return left, top, left + crop_width, top + crop_height


def train_image(data: bytes, image_size: int, channels: int, rng: np.random.Generator) -> np.ndarray:
    """A training example's pixels: a random-resized crop (bilinear) of `image_size`, flipped half the time."""
    image = _open(data, _mode(channels))
    box = crop_box(*image.size, rng)
    array = _array(image.resize((image_size, image_size), Image.Resampling.BILINEAR, box=box))
    return np.ascontiguousarray(array[:, ::-1]) if rng.random() < 0.5 else array


def eval_image(data: bytes, image_size: int, channels: int) -> np.ndarray:
    """An evaluation example's pixels: the short side resized to image_size / 0.875 (bilinear), the centre
    `image_size` square taken (in one resize, from the matching box of the image)."""
    resized = int(image_size / CENTRE_FRACTION)
    image = _open(data, _mode(channels), draft=resized)
    width, height = image.size
    side = image_size * min(width, height) / resized  # the crop's side in the image's own pixels
    left, top = (width - side) / 2, (height - side) / 2
    box = (left, top, left + side, top + side)
    return _array(image.resize((image_size, image_size), Image.Resampling.BILINEAR, box=box))
