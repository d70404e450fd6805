"""Image files as a network's input: PNG, JPEG and the other formats Pillow reads, brought to a dataset's images
(grey or RGB, its native size) and then to the network's input shape exactly as the training data were; or, for a
streamed run, centre cropped as its evaluation crops each image.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from resnet_jax import data
from resnet_jax.data import crops, pixels


class ImageError(ValueError):
    """A file that cannot be read as an image; the message is one line naming it."""


def read_image(
    path: str | Path, info: data.DatasetInfo, input_shape: Sequence[int], centre_crop: bool = False
) -> np.ndarray:
    """One file as a uint8 image of `input_shape` (H, W, C), prepared as the dataset's images were: turned upright
    by its EXIF orientation, grey or RGB as the dataset is, resized to its native size, then padded or repeated as
    `data.to_input_shape` does. With `centre_crop`, as the grain loader's evaluation prepares each image instead
    (`crops.eval_image`: the short side resized to H / 0.875, the centre square of H taken).

    Raises ImageError naming the file when it is missing or not an image.
    """
    path = Path(path)
    height, width, native_channels = info.image_shape
    try:
        if centre_crop:
            return crops.eval_image(path.read_bytes(), input_shape[0], input_shape[-1])
        with Image.open(path) as opened:
            image = pixels.to_eight_bits(ImageOps.exif_transpose(opened))
            image = image.convert("L" if native_channels == 1 else "RGB")
            if image.size != (width, height):
                image = image.resize((width, height), Image.Resampling.BICUBIC)
            array = np.asarray(image, np.uint8)
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image Pillow can read (PNG, JPEG, ...)") from None
    except crops.DECODE_ERRORS as error:  # Pillow's, as the loaders catch them
        raise ImageError(f"{path}: cannot be read as an image ({error})") from None
    array = array.reshape(height, width, native_channels)
    input_height, _, channels = input_shape
    return data.to_input_shape(array[None], input_height, channels)[0]
