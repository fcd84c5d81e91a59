"""The `genicam` camera through harvesters and the simulated GenTL producer the `genicam` wheel ships."""

from __future__ import annotations

import time

import numpy as np
import pytest

from station.cameras import build_camera
from station.cameras.base import CameraError
from station.cameras.genicam import GenicamCamera, find_producers, list_genicam_devices
from station.config_cameras import GenicamCameraConfig


def _grab_n(camera, n: int):
    grabs = []
    deadline = time.monotonic() + 20
    while len(grabs) < n and time.monotonic() < deadline:
        grab = camera.grab(0.5)
        if grab is not None:
            grabs.append(grab)
    assert len(grabs) == n
    return grabs


@pytest.mark.parametrize(("pixel_format", "shape"), [("Mono8", (240, 320)), ("RGBa8", (240, 320, 3))])
def test_frames_have_the_configured_region_and_format(viky_cti, pixel_format, shape):
    camera = build_camera(GenicamCameraConfig(producers=[viky_cti], serial="1", pixel_format=pixel_format,
                                              region={"width": 320, "height": 240}, frame_rate_hz=30))
    assert isinstance(camera, GenicamCamera)
    camera.open()
    try:
        grabs = _grab_n(camera, 3)
    finally:
        camera.close()
    for grab in grabs:
        assert grab.error is None and grab.image.dtype == np.uint8 and grab.image.shape == shape
        assert grab.t_capture_ns is not None and grab.t_capture_ns <= time.monotonic_ns()
    assert [g.meta["frame_id"] for g in grabs] == [1, 2, 3]
    assert camera.counters["frames"] == 3
    assert "Viky 1" in camera.describe()


@pytest.mark.parametrize(("serial", "ball_rgb"), [("0", (255, 0, 0)), ("2", (0, 0, 255))])
def test_rgba_frames_become_rgb_with_the_right_channel_order(viky_cti, serial, ball_rgb):
    # The simulated devices draw a ball on white: red on device 0, blue on device 2. The station
    # image must hold exactly those two RGB colours: a kept alpha channel or a BGR/RGB mix-up fails.
    camera = build_camera(GenicamCameraConfig(producers=[viky_cti], serial=serial, pixel_format="RGBa8",
                                              region={"width": 200, "height": 200}))
    camera.open()
    try:
        image = _grab_n(camera, 1)[0].image
    finally:
        camera.close()
    assert image.shape == (200, 200, 3)
    colours = {tuple(int(v) for v in c) for c in np.unique(image.reshape(-1, 3), axis=0)}
    assert colours == {ball_rgb, (255, 255, 255)}


def test_device_selected_by_id(viky_cti):
    camera = build_camera(GenicamCameraConfig(producers=[viky_cti], device_id="VikyTL_DEV_blue"))
    camera.open()
    try:
        _grab_n(camera, 1)
    finally:
        camera.close()
    assert camera.describe() == "genicam Viky 2"


def test_unknown_serial_names_the_devices_seen(viky_cti):
    camera = build_camera(GenicamCameraConfig(producers=[viky_cti], serial="999"))
    with pytest.raises(CameraError, match=r"serial='999'.*VikyTL_DEV_red"):
        camera.open()
    camera.close()


def test_a_setting_the_device_lacks_is_refused_with_its_key(viky_cti):
    camera = build_camera(GenicamCameraConfig(producers=[viky_cti], exposure_us=500))
    with pytest.raises(CameraError, match="exposure_us: the device has no ExposureTime node"):
        camera.open()
    camera.close()
    camera = build_camera(GenicamCameraConfig(producers=[viky_cti],
                                              trigger={"mode": "software", "rate_parts_per_s": 5}))
    with pytest.raises(CameraError, match="TriggerSelector"):
        camera.open()
    camera.close()


def test_producers_come_from_genicam_gentl64_path(viky_cti, monkeypatch, tmp_path):
    monkeypatch.setenv("GENICAM_GENTL64_PATH", f"{tmp_path}:{viky_cti.parent}")
    assert find_producers([]) == [viky_cti]
    devices = list_genicam_devices()
    assert [d["serial"] for d in devices] == ["0", "1", "2"]
    assert {d["model"] for d in devices} == {"Viky"}
    camera = build_camera(GenicamCameraConfig(serial="2"))
    camera.open()
    try:
        _grab_n(camera, 1)
    finally:
        camera.close()


def test_missing_producer_file_is_a_clear_error(tmp_path):
    camera = build_camera(GenicamCameraConfig(producers=[tmp_path / "absent.cti"]))
    with pytest.raises(CameraError, match="absent.cti does not exist"):
        camera.open()
