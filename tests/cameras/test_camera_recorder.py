"""`station record` -> `station replay`: a recording plays back pixel-identical, in order, with its broken parts."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from station.cameras.base import Camera, EndOfStream, Grab
from station.cameras.recorder import MANIFEST, Recorder, pixels_sha256, read_manifest
from station.cameras.replay import ReplayCamera
from station.cameras.synthetic import SyntheticCamera
from station.cli_cameras import add_record_parser, run_record
from station.config_cameras import ReplayCameraConfig, SyntheticCameraConfig


def _replay_all(folder: Path) -> list[Grab]:
    # The default replay order is "shuffled": a recording must still come back in capture order.
    camera = ReplayCamera(ReplayCameraConfig(path=folder, rate_parts_per_s=None))
    camera.open()
    grabs = []
    try:
        with pytest.raises(EndOfStream):
            for _ in range(1000):
                grabs.append(camera.grab(0.5))
    finally:
        camera.close()
    return grabs


class ScriptedCamera(Camera):
    """Delivers a fixed list of grabs, then ends: RGB and mono frames, labels, and a broken buffer."""

    kind = "scripted"

    def __init__(self, grabs: list[Grab]) -> None:
        super().__init__()
        self._grabs = list(grabs)

    def open(self) -> None:
        pass

    def grab(self, timeout_s: float) -> Grab | None:
        if not self._grabs:
            raise EndOfStream
        return self._grabs.pop(0)

    def close(self) -> None:
        pass


def test_synthetic_recording_replays_pixel_identical_in_capture_order(tmp_path):
    config = SyntheticCameraConfig(rate_parts_per_s=None, size_px=64, limit=12, seed=7)
    summary = Recorder(SyntheticCamera(config), tmp_path / "rec", camera_config=config).run()
    assert (summary.parts, summary.images, summary.broken, summary.ended_by) == (12, 12, 0, "end_of_stream")

    reference = SyntheticCamera(config)   # same seed: the very frames the recorder got
    reference.open()
    expected = [reference.grab(0.5).image for _ in range(12)]
    replayed = _replay_all(tmp_path / "rec")
    assert len(replayed) == 12
    for want, got in zip(expected, replayed):
        assert got.error is None and got.image.dtype == np.uint8
        assert np.array_equal(want, got.image)
    entries = read_manifest(tmp_path / "rec")
    assert [e["index"] for e in entries] == list(range(1, 13))
    assert all(e["sha256"] == pixels_sha256(w) for e, w in zip(entries, expected))
    assert [g.meta["recorded_t_capture_ns"] for g in replayed] == [e["t_capture_ns"] for e in entries]
    info = json.loads((tmp_path / "rec" / "recording.json").read_text())
    assert info["parts"] == 12 and info["camera_config"]["seed"] == 7


def test_rgb_frames_labels_and_broken_parts_survive_the_roundtrip(tmp_path):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    mono = rng.integers(0, 256, (30, 40), dtype=np.uint8)
    grabs = [Grab(image=rgb, source="cam#1", t_capture_ns=111, label="defective", meta={"frame_id": np.int64(1)}),
             Grab(image=None, source="cam#2", t_capture_ns=222, error="incomplete buffer: missing_packets"),
             Grab(image=mono, source="cam#3", t_capture_ns=333, label="ok")]
    summary = Recorder(ScriptedCamera(grabs), tmp_path / "rec").run()
    assert (summary.parts, summary.images, summary.broken) == (3, 2, 1)

    replayed = _replay_all(tmp_path / "rec")
    assert [g.label for g in replayed] == ["defective", None, "ok"]
    assert np.array_equal(replayed[0].image, rgb) and replayed[0].image.shape == (30, 40, 3)
    assert replayed[1].image is None and replayed[1].error == "incomplete buffer: missing_packets"
    assert np.array_equal(replayed[2].image, mono) and replayed[2].image.ndim == 2
    assert replayed[0].meta["recorded_meta"] == {"frame_id": 1}
    assert sorted(p.name for p in (tmp_path / "rec").glob("*.png")) == ["000001.png", "000003.png"]


def test_recording_stops_at_the_part_count(tmp_path):
    config = SyntheticCameraConfig(rate_parts_per_s=None, size_px=32, limit=None)
    summary = Recorder(SyntheticCamera(config), tmp_path / "rec").run(parts=5)
    assert summary.parts == 5 and summary.ended_by == "parts"
    assert len(read_manifest(tmp_path / "rec")) == 5


def test_a_truncated_last_manifest_line_is_ignored(tmp_path):
    config = SyntheticCameraConfig(rate_parts_per_s=None, size_px=32, limit=3)
    Recorder(SyntheticCamera(config), tmp_path / "rec").run()
    with (tmp_path / "rec" / MANIFEST).open("a") as fh:
        fh.write('{"index": 4, "fi')
    assert len(_replay_all(tmp_path / "rec")) == 3


def _record_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_record_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["record", *argv])


def test_station_record_cli_records_from_the_configured_camera(tmp_path, capsys):
    config = tmp_path / "station.yaml"
    config.write_text("camera:\n  kind: synthetic\n  rate_parts_per_s: null\n  size_px: 48\n  limit: 50\n")
    out = tmp_path / "rec"
    assert run_record(_record_args("-c", str(config), "--out", str(out), "--parts", "4")) == 0
    assert "recorded 4 parts" in capsys.readouterr().out
    assert len(read_manifest(out)) == 4 and len(list(out.glob("*.png"))) == 4
    assert len(_replay_all(out)) == 4
    # An existing recording is never overwritten.
    assert run_record(_record_args("-c", str(config), "--out", str(out), "--parts", "4")) == 2
    assert "already holds a recording" in capsys.readouterr().err
    assert len(read_manifest(out)) == 4


def test_station_record_from_a_missing_path_is_bad_input(tmp_path, capsys):
    config = tmp_path / "station.yaml"
    config.write_text("camera:\n  kind: replay\n  path: no-such-folder\n")
    assert run_record(_record_args("-c", str(config), "--out", str(tmp_path / "rec"), "--parts", "2")) == 2
    err = capsys.readouterr().err
    assert "camera.path" in err and "no-such-folder does not exist" in err
    assert not (tmp_path / "rec").exists()


def test_station_record_cli_reports_a_bad_config(tmp_path, capsys):
    config = tmp_path / "station.yaml"
    config.write_text("camera:\n  kind: aravis\n  trigger:\n    mode: software\n")
    assert run_record(_record_args("-c", str(config), "--out", str(tmp_path / "rec"), "--seconds", "1")) == 2
    assert "rate_parts_per_s" in capsys.readouterr().err


def test_station_record_from_the_fake_gige_camera(fake_gv, tmp_path):
    config = tmp_path / "station.yaml"
    config.write_text(f"camera:\n  kind: aravis\n  serial: {fake_gv.serial}\n  pixel_format: RGB8\n"
                      "  region: {x: 0, y: 0, width: 128, height: 96}\n")
    out = tmp_path / "rec"
    assert run_record(_record_args("-c", str(config), "--out", str(out), "--parts", "3")) == 0
    entries = read_manifest(out)
    assert len(entries) == 3 and all(e["shape"] == [96, 128, 3] and e["meta"]["frame_id"] for e in entries)
    replayed = _replay_all(out)
    assert [g.image.shape for g in replayed] == [(96, 128, 3)] * 3
    assert [pixels_sha256(g.image) for g in replayed] == [e["sha256"] for e in entries]
