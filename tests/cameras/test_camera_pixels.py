"""Exact-value tests of the one place that converts camera pixel layouts to the station layout."""

from __future__ import annotations

import numpy as np
import pytest

from station.cameras.pixels import GENICAM_FORMATS, PIXEL_FORMATS, from_buffer, station_format, to_station_image


def test_mono8_passes_through_unchanged():
    raw = np.array([[0, 1, 2], [253, 254, 255]], np.uint8)
    out = to_station_image(raw, "mono8")
    assert out.dtype == np.uint8 and np.array_equal(out, raw)
    assert np.array_equal(to_station_image(raw[:, :, None], "mono8"), raw)


def test_mono16_file_data_is_scaled_by_its_used_bit_depth():
    # 12-bit values in a 16-bit container: 4095 -> 255, 2048 -> 128 (round(2048 * 255 / 4095)).
    raw = np.array([[0, 2048, 4095]], np.uint16)
    assert to_station_image(raw, "mono16").tolist() == [[0, 128, 255]]


@pytest.mark.parametrize(("fmt", "values", "expected"), [
    ("mono10", [0, 4, 512, 1023], [0, 1, 128, 255]),
    ("mono12", [0, 16, 2048, 4095], [0, 1, 128, 255]),
    ("mono16_full", [0, 256, 32768, 65535], [0, 1, 128, 255]),
])
def test_camera_mono_depths_scale_by_the_declared_depth_not_the_content(fmt, values, expected):
    raw = np.array([values], np.uint16)
    assert to_station_image(raw, fmt).tolist() == [expected]
    # A dark frame stays dark: the scale does not follow the frame's own maximum.
    dark = np.array([[values[1]] * 4], np.uint16)
    assert to_station_image(dark, fmt).tolist() == [[expected[1]] * 4]


def test_values_above_the_declared_depth_saturate():
    assert to_station_image(np.array([[5000]], np.uint16), "mono12").tolist() == [[255]]


def test_rgb_and_bgr_give_rgb():
    rgb = np.array([[[10, 20, 30], [40, 50, 60]]], np.uint8)
    assert to_station_image(rgb, "rgb8").tolist() == [[[10, 20, 30], [40, 50, 60]]]
    assert to_station_image(rgb, "bgr8").tolist() == [[[30, 20, 10], [60, 50, 40]]]


def test_rgba_and_bgra_drop_alpha():
    px = np.array([[[10, 20, 30, 99]]], np.uint8)
    assert to_station_image(px, "rgba8").tolist() == [[[10, 20, 30]]]
    assert to_station_image(px, "bgra8").tolist() == [[[30, 20, 10]]]


@pytest.mark.parametrize(("fmt", "cell", "rgb"), [
    ("bayer_rg8", [[200, 100], [50, 10]], (200, 75, 10)),
    ("bayer_bg8", [[10, 100], [50, 200]], (200, 75, 10)),
    ("bayer_gr8", [[100, 200], [10, 50]], (200, 75, 10)),
    ("bayer_gb8", [[100, 10], [200, 50]], (200, 75, 10)),
])
def test_bayer_patterns_demosaic_each_cell_to_r_mean_g_b(fmt, cell, rgb):
    raw = np.tile(np.array(cell, np.uint8), (2, 3))   # 4x6 mosaic of identical cells
    out = to_station_image(raw, fmt)
    assert out.shape == (4, 6, 3) and out.dtype == np.uint8
    assert {tuple(int(v) for v in p) for p in out.reshape(-1, 3)} == {rgb}


def test_bayer_cells_stay_where_they_are():
    raw = np.array([[255, 0, 0, 0], [0, 0, 0, 0]], np.uint8)   # red only in the left RGGB cell
    out = to_station_image(raw, "bayer_rg8")
    assert out[:, :2, 0].tolist() == [[255, 255], [255, 255]] and out[:, 2:, 0].tolist() == [[0, 0], [0, 0]]


def test_unknown_format_and_wrong_shapes_are_value_errors():
    with pytest.raises(ValueError, match="unknown pixel format"):
        to_station_image(np.zeros((2, 2), np.uint8), "yuv422")
    with pytest.raises(ValueError, match="expected 3"):
        to_station_image(np.zeros((2, 2, 4), np.uint8), "rgb8")
    with pytest.raises(ValueError, match="expected 2-D uint16"):
        to_station_image(np.zeros((2, 2), np.uint8), "mono12")


def test_from_buffer_reads_little_endian_words_and_rows():
    words = np.array([[4095, 0, 16], [2048, 4095, 0]], "<u2")
    out = from_buffer(words.tobytes(), width=3, height=2, pixel_format="mono12")
    assert out.tolist() == [[255, 0, 1], [128, 255, 0]]
    bgr = bytes([1, 2, 3, 4, 5, 6])
    assert from_buffer(bgr, width=2, height=1, pixel_format="bgr8").tolist() == [[[3, 2, 1], [6, 5, 4]]]


def test_from_buffer_refuses_a_short_buffer():
    with pytest.raises(ValueError, match="holds 5 bytes, expected 6"):
        from_buffer(bytes(5), width=3, height=2, pixel_format="mono8")


def test_genicam_names_map_to_station_formats():
    assert station_format("BayerRG8") == "bayer_rg8" and station_format("Mono16") == "mono16_full"
    assert set(GENICAM_FORMATS.values()) <= set(PIXEL_FORMATS)
    with pytest.raises(ValueError, match="YUV422_8"):
        station_format("YUV422_8")
