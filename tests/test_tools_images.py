"""Image files as the network's input: files become it exactly as the dataset's own images do."""

import numpy as np
import pytest
from PIL import Image

from resnet_jax import data, images

FASHION = data.DATASETS["fashion_mnist"]
CIFAR = data.DATASETS["cifar10"]


def test_a_native_grey_image_is_padded_like_the_training_data(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "item.png")
    image = images.read_image(tmp_path / "item.png", FASHION, (32, 32, 1))
    padded = np.zeros((32, 32, 1), np.uint8)  # the 28x28 image centred in a black 32x32 one, two pixels each side
    padded[2:30, 2:30, 0] = pixels
    np.testing.assert_array_equal(image, padded)


def test_a_large_colour_jpeg_becomes_a_grey_native_size_input(tmp_path):
    # A white square on black, in colour and four times too large: grey, 28x28, padded to 32 for the network.
    pixels = np.zeros((112, 112, 3), np.uint8)
    pixels[28:84, 28:84] = (255, 255, 255)
    Image.fromarray(pixels).save(tmp_path / "photo.jpg", quality=95)
    image = images.read_image(tmp_path / "photo.jpg", FASHION, (32, 32, 3))
    assert image.shape == (32, 32, 3)
    assert image.dtype == np.uint8
    np.testing.assert_array_equal(image[..., 0], image[..., 2])
    assert image[:2].max() == 0  # the zero padding around the 28x28 image
    assert image[16, 16, 0] > 200
    assert image[4, 4, 0] < 50


def test_a_grey_image_is_made_rgb_for_a_colour_dataset(tmp_path):
    Image.fromarray(np.full((40, 20), 100, np.uint8)).save(tmp_path / "grey.png")
    image = images.read_image(tmp_path / "grey.png", CIFAR, (32, 32, 3))
    assert image.shape == (32, 32, 3)
    np.testing.assert_array_equal(image, np.full((32, 32, 3), 100, np.uint8))


def test_a_photo_is_turned_upright_by_its_exif_orientation(tmp_path):
    # Stored sideways (bright left column) with orientation 6: a viewer turns it 90 degrees clockwise, which puts
    # the bright column along the top.
    pixels = np.zeros((32, 32, 3), np.uint8)
    pixels[:, :4] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(tmp_path / "sideways.png", exif=exif)
    image = images.read_image(tmp_path / "sideways.png", CIFAR, (32, 32, 3))
    assert image[:4].min() == 255
    assert image[8:].max() == 0


def test_files_that_are_not_images_name_the_file(tmp_path):
    (tmp_path / "notes.png").write_text("hello")
    (tmp_path / "truncated.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 10)
    for name, reason in (("notes.png", "not an image"), ("truncated.png", "image"), ("missing.png", "no such file")):
        with pytest.raises(images.ImageError, match=reason) as error:
            images.read_image(tmp_path / name, CIFAR, (32, 32, 3))
        assert str(tmp_path / name) in str(error.value)
        assert "\n" not in str(error.value)


def test_a_16_bit_png_is_brought_to_8_bits_not_clipped_white(tmp_path):
    # 8-bit values v stored as 16-bit v * 257 (0 -> 0, 255 -> 65535): reading them back gives v, not 255.
    expected = np.arange(28 * 28, dtype=np.int64).reshape(28, 28) % 256
    Image.fromarray((expected * 257).astype(np.uint16)).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode == "I;16"
    image = images.read_image(tmp_path / "deep.png", FASHION, (28, 28, 1))
    np.testing.assert_array_equal(image[..., 0], expected)
    colour = images.read_image(tmp_path / "deep.png", CIFAR, (32, 32, 3))
    np.testing.assert_array_equal(colour[..., 0], colour[..., 2])
    assert 100 < colour.mean() < 160  # the ramp's mean is 127.5; clipped, it would be about 255


def test_a_float_image_is_scaled_from_0_1_and_refused_outside_it(tmp_path):
    Image.fromarray(np.full((28, 28), 0.5, np.float32)).save(tmp_path / "half.tif")
    np.testing.assert_array_equal(images.read_image(tmp_path / "half.tif", FASHION, (28, 28, 1)), 128)
    Image.fromarray(np.full((28, 28), 3.0, np.float32)).save(tmp_path / "hdr.tif")
    with pytest.raises(images.ImageError, match="hdr.tif: .*floating-point pixels from 3 to 3, not within 0-1"):
        images.read_image(tmp_path / "hdr.tif", FASHION, (28, 28, 1))
