"""`Preprocess.normalize` (a 256-entry table per channel, written into a caller's buffer) gives bit for bit
the tensor of the per-pixel float32 arithmetic the model was trained with, on every grey level, for grey
and RGB models and non-default mean/std; the training loader and the station share the one function."""

from __future__ import annotations

import numpy as np

from station.preprocess import Preprocess


def test_table_normalize_equals_the_arithmetic_bit_for_bit_on_every_level():
    rng = np.random.default_rng(0)
    grey = np.arange(256, dtype=np.uint8).repeat(64).reshape(128, 128)  # every level, many times
    rgb = rng.integers(0, 256, size=(48, 48, 3), dtype=np.uint8)
    for pre in (Preprocess(input_size=128), Preprocess(input_size=48, grayscale=False),
                Preprocess(input_size=128, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))):
        pixels = grey if pre.grayscale else rgb
        expected = pre.normalize_arithmetic(pixels)
        got = pre.normalize(pixels)
        assert got.dtype == np.float32 and got.shape == expected.shape
        assert np.array_equal(got.view(np.uint32), expected.view(np.uint32)), "not bit for bit"
        batch = np.full((2, *expected.shape), np.nan, dtype=np.float32)
        pre.normalize(pixels, out=batch[1])  # written in place into one row of a batch
        assert np.array_equal(batch[1], expected) and np.isnan(batch[0]).all()


def test_an_rgb_image_for_a_grey_model_is_averaged_like_before():
    pre = Preprocess(input_size=32)
    rgb = np.random.default_rng(1).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    out = np.empty((3, 32, 32), dtype=np.float32)
    assert np.array_equal(pre.normalize(rgb, out=out), pre.normalize_arithmetic(rgb))


def test_the_station_path_and_the_training_path_give_the_same_tensor():
    from PIL import Image

    pre = Preprocess(input_size=160)
    image = np.random.default_rng(2).integers(0, 256, size=(300, 300), dtype=np.uint8)
    station = pre.to_tensor(image)
    training = pre.pil_to_tensor(Image.fromarray(image))  # what training/data.py feeds the network
    assert station.shape == (3, 160, 160) and bool((station == training).all())
