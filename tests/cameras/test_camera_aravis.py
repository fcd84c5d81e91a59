"""The `aravis` camera against Aravis' fake GigE Vision camera, started (and killed) by the tests."""

from __future__ import annotations

import time

import numpy as np
import pytest

from station.cameras import build_camera
from station.cameras.aravis import AravisCamera, join_release_threads
from station.cameras.base import CameraError, CameraLost, Grab
from station.config_cameras import AravisCameraConfig


def _config(fake_gv, **kw) -> AravisCameraConfig:
    return AravisCameraConfig(serial=fake_gv.serial, **kw)


def _grab_n(camera, n: int, *, limit_s: float = 20.0) -> list[Grab]:
    grabs: list[Grab] = []
    deadline = time.monotonic() + limit_s
    while len(grabs) < n and time.monotonic() < deadline:
        grab = camera.grab(0.5)
        if grab is not None:
            grabs.append(grab)
    assert len(grabs) == n, f"got {len(grabs)} of {n} grabs in {limit_s} s"
    return grabs


@pytest.mark.parametrize(("pixel_format", "shape"), [
    ("Mono8", (240, 320)), ("Mono16", (240, 320)), ("RGB8", (240, 320, 3)), ("BayerRG8", (240, 320, 3)),
])
def test_free_run_frames_have_the_configured_region_and_format(fake_gv, pixel_format, shape):
    camera = build_camera(_config(fake_gv, pixel_format=pixel_format,
                                  region={"x": 0, "y": 0, "width": 320, "height": 240}, frame_rate_hz=50))
    assert isinstance(camera, AravisCamera)
    camera.open()
    try:
        before = time.monotonic_ns()
        grabs = _grab_n(camera, 3)
    finally:
        camera.close()
    for grab in grabs:
        assert grab.error is None
        assert grab.image.shape == shape and grab.image.dtype == np.uint8
        assert grab.t_capture_ns is not None and grab.t_capture_ns <= time.monotonic_ns()
        assert grab.t_capture_ns > before - 2_000_000_000   # mapped to the monotonic clock, not raw camera time
        assert grab.meta["device_timestamp_ns"] > 0
    ids = [g.meta["frame_id"] for g in grabs]
    assert ids == sorted(ids) and len(set(ids)) == 3
    assert camera.counters["frames"] == 3
    assert fake_gv.serial in camera.describe()


def test_full_sensor_is_512_square_mono8_by_default(fake_gv):
    camera = build_camera(_config(fake_gv))
    camera.open()
    try:
        (grab,) = _grab_n(camera, 1)
    finally:
        camera.close()
    assert grab.image.shape == (512, 512) and grab.image.dtype == np.uint8


def test_software_trigger_gives_exactly_one_frame_per_trigger(fake_gv):
    # The fake camera free-runs at 25 fps; at 5 triggers/s a camera left in free run would deliver
    # about five frames per trigger (late frames, frame-id gaps, frames left over after the last one).
    camera = build_camera(_config(fake_gv, frame_rate_hz=25,
                                  trigger={"mode": "software", "rate_parts_per_s": 5}))
    camera.open()
    try:
        grabs = _grab_n(camera, 6)
        leftover = camera._pop(0.6)   # no trigger fired: nothing may arrive
    finally:
        camera.close()
    assert [g.error for g in grabs] == [None] * 6
    assert [g.meta["trigger"] for g in grabs] == [1, 2, 3, 4, 5, 6]
    ids = [g.meta["frame_id"] for g in grabs]
    assert ids == list(range(ids[0], ids[0] + 6)), f"frames between triggers: ids {ids}"
    assert leftover is None
    assert camera.counters["triggers"] == 6 and camera.counters["frames"] == 6
    assert camera.counters["late_frames"] == 0 and camera.counters["timeouts"] == 0


def test_a_trigger_pending_at_stop_still_ends_as_one_grab(fake_gv, monkeypatch):
    camera = build_camera(_config(fake_gv, trigger={"mode": "software", "rate_parts_per_s": 20}))
    camera.open()
    try:
        first = _grab_n(camera, 1)[0]
        assert camera.finish_pending() is None            # nothing waits after a delivered frame
        real_pop = camera._pop
        in_flight = {"left": 1}

        def pop_after_one_miss(timeout_s):               # the next frame is still on the wire
            if camera._pending is not None and in_flight["left"]:
                in_flight["left"] -= 1
                return None
            return real_pop(timeout_s)

        monkeypatch.setattr(camera, "_pop", pop_after_one_miss)
        while camera._pending is None:
            assert camera.grab(0.2) is None
        last = camera.finish_pending()                    # what the capture thread calls at stop
    finally:
        camera.close()
    assert first.meta["trigger"] == 1
    assert last is not None and last.error is None and last.meta["trigger"] == 2
    assert camera.counters["abandoned_triggers"] == 0 and camera.counters["triggers"] == 2


def test_unknown_serial_is_a_clear_error(fake_gv):
    camera = build_camera(AravisCameraConfig(serial="NO-SUCH-SERIAL"))
    with pytest.raises(CameraError, match="NO-SUCH-SERIAL"):
        camera.open()
    camera.close()


def test_pixel_format_the_station_cannot_convert_is_refused_at_open(fake_gv):
    camera = build_camera(_config(fake_gv, pixel_format="YUV422_8"))
    with pytest.raises(CameraError, match="YUV422_8"):
        camera.open()
    camera.close()


def test_free_run_silence_is_detected_as_a_loss(fake_gv):
    camera = build_camera(_config(fake_gv, lost_after_ms=1000))
    camera.open()
    try:
        _grab_n(camera, 2)
        fake_gv.stop()
        killed = time.monotonic()
        with pytest.raises(CameraLost, match="no frame for"):
            while time.monotonic() - killed < 30:
                camera.grab(0.5)
        detected_s = time.monotonic() - killed
    finally:
        camera.close()
    assert 0.9 <= detected_s < 30
    assert camera.counters["lost"] == 1


def _open_with_backoff(camera, *, limit_s: float) -> int:
    """What the capture thread does after a loss: reopen with capped backoff until it works."""
    attempts, backoff = 0, 0.2
    deadline = time.monotonic() + limit_s
    while True:
        attempts += 1
        try:
            camera.open()
            return attempts
        except CameraError:
            if time.monotonic() > deadline:
                raise
            time.sleep(backoff)
            backoff = min(backoff * 2, 1.0)


@pytest.mark.slow
def test_killed_camera_is_detected_reopened_and_every_trigger_is_accounted_for(fake_gv):
    camera = build_camera(_config(fake_gv, lost_after_ms=1000, reconnect={"min_backoff_ms": 200, "max_backoff_ms": 1000},
                                  trigger={"mode": "software", "rate_parts_per_s": 10, "frame_timeout_ms": 300}))
    grabs: list[Grab] = []
    losses: list[str] = []
    camera.open()
    try:
        grabs += _grab_n(camera, 4)
        fake_gv.stop()
        deadline = time.monotonic() + 60
        while not losses and time.monotonic() < deadline:
            try:
                grab = camera.grab(0.5)
            except CameraLost as exc:
                losses.append(str(exc))
                camera.close()
                break
            if grab is not None:
                grabs.append(grab)
        assert losses, "the loss of the camera was not detected"
        fake_gv.start()
        _open_with_backoff(camera, limit_s=60)
        grabs += _grab_n(camera, 4)
    finally:
        camera.close()
    frames = [g for g in grabs if g.error is None]
    broken = [g for g in grabs if g.error is not None]
    # Every software trigger ended as exactly one Grab: a frame, or an error for its part.
    assert camera.counters["triggers"] == len(grabs)
    assert [g.meta["trigger"] for g in grabs] == list(range(1, len(grabs) + 1))
    assert broken, "the trigger(s) fired while the camera was gone must give broken parts"
    assert all(g.image is None and g.t_capture_ns is not None for g in broken)
    assert len(frames) >= 8 and all(g.image.shape == (512, 512) for g in frames)
    assert camera.counters["reconnects"] == 1 and camera.counters["lost"] == 1
    assert grabs[-1].error is None and grabs[-4].error is None   # going on after the reconnect
    assert join_release_threads(timeout_s=20.0)


def test_hardware_trigger_waits_for_the_line_and_probes_a_silent_camera(fake_gv):
    # No edge ever comes on Line0: a camera left in free run would deliver frames. While the line is
    # quiet the camera is probed over the control channel instead of being declared lost; once the
    # camera is gone, the probe fails and the loss is raised.
    camera = build_camera(_config(fake_gv, lost_after_ms=300, frame_rate_hz=25,
                                  trigger={"mode": "hardware", "line": "Line0", "activation": "RisingEdge"}))
    camera.open()
    try:
        quiet_until = time.monotonic() + 1.5
        while time.monotonic() < quiet_until:
            assert camera.grab(0.25) is None
        assert camera.counters["frames"] == 0 and camera.counters["lost"] == 0
        fake_gv.stop()
        with pytest.raises(CameraLost, match="control read failed"):
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                camera.grab(0.25)
    finally:
        camera.close()
    assert camera.counters["lost"] == 1
