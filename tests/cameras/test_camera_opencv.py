"""The `opencv` camera on a video file written by the test (FFV1, lossless, so values are exact)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from station.cameras import build_camera
from station.cameras.base import CameraError, CameraLost, EndOfStream
from station.cameras.opencv_cam import OpenCvCamera
from station.config_cameras import OpenCvCameraConfig

N_FRAMES = 6


def _write_video(cv2, path: Path) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"FFV1"), 10, (64, 48))
    if not writer.isOpened():
        pytest.fail("OpenCV cannot write FFV1 video here")
    for i in range(N_FRAMES):
        frame = np.zeros((48, 64, 3), np.uint8)
        frame[:, :, 2] = 200            # BGR: red
        frame[:8, :8] = 30 * (i + 1)    # a grey patch that numbers the frame
        writer.write(frame)
    writer.release()
    return path


def _drain(camera, limit: int = 50) -> list:
    grabs = []
    with pytest.raises(EndOfStream):
        for _ in range(limit):
            grab = camera.grab(0.5)
            if grab is not None:
                grabs.append(grab)
    return grabs


def test_video_file_frames_in_order_as_rgb_then_end_of_stream(cv2_module, tmp_path):
    video = _write_video(cv2_module, tmp_path / "parts.avi")
    camera = build_camera(OpenCvCameraConfig(source=str(video)))
    assert isinstance(camera, OpenCvCamera) and camera.paced_by_pipeline
    camera.open()
    try:
        grabs = _drain(camera)
    finally:
        camera.close()
    assert len(grabs) == N_FRAMES
    for i, grab in enumerate(grabs):
        assert grab.image.shape == (48, 64, 3) and grab.image.dtype == np.uint8
        assert tuple(grab.image[30, 30]) == (200, 0, 0)          # BGR red arrives as RGB red
        assert tuple(grab.image[2, 2]) == (30 * (i + 1),) * 3   # in file order
        assert grab.source.endswith(f"#{i + 1}")
    assert camera.counters["frames"] == N_FRAMES


def test_looping_file_starts_again_and_rate_paces_it(cv2_module, tmp_path):
    video = _write_video(cv2_module, tmp_path / "parts.avi")
    camera = build_camera(OpenCvCameraConfig(source=str(video), loop=True, rate_parts_per_s=50))
    assert not camera.paced_by_pipeline
    camera.open()
    try:
        grabs = []
        while len(grabs) < N_FRAMES + 2:
            grab = camera.grab(0.5)
            if grab is not None:
                grabs.append(grab)
    finally:
        camera.close()
    patches = [int(g.image[2, 2, 0]) for g in grabs]
    assert patches == [30 * (i + 1) for i in range(N_FRAMES)] + [30, 60]
    stamps = [g.t_capture_ns for g in grabs]
    assert stamps == sorted(stamps) and stamps[-1] - stamps[0] >= (len(grabs) - 2) * 20_000_000 * 0.5


def test_live_source_that_stops_delivering_is_lost_and_its_reader_stops(cv2_module, tmp_path):
    # A file:// URL goes through the live-source path (reader thread); its end is a failed read,
    # as an unplugged device or a dropped stream would be.
    video = _write_video(cv2_module, tmp_path / "parts.avi")
    camera = build_camera(OpenCvCameraConfig(source=f"file://{video}", backend="ffmpeg", lost_after_ms=1000))
    assert not camera.is_file
    camera.open()
    grabs, lost = [], None
    try:
        deadline = time.monotonic() + 20
        while lost is None and time.monotonic() < deadline:
            try:
                grab = camera.grab(0.5)
            except CameraLost as exc:
                lost = exc
                break
            if grab is not None:
                grabs.append(grab)
    finally:
        camera.close()
    assert lost is not None and "read failed" in str(lost)
    assert 1 <= len(grabs) <= N_FRAMES
    assert all(tuple(g.image[30, 30]) == (200, 0, 0) for g in grabs)
    assert camera.counters["lost"] == 1


def test_missing_file_is_a_clear_error(cv2_module, tmp_path):
    camera = build_camera(OpenCvCameraConfig(source=str(tmp_path / "absent.avi")))
    with pytest.raises(CameraError, match="does not exist"):
        camera.open()
