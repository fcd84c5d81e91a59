"""Oversized frames: refused from the size they declare, before a pixel is decoded, and never stored.

The image is a real, valid PNG of 12000 x 12000 mono pixels (zeros compress to ~140 kB; decoded it
would take 144 MB). Replayed through the real station, the part gets the fail-safe `bad_frame`
verdict and its row keeps no image; a child process shows the refusal costs no decoding memory.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
from support import REPO, make_frames, make_tiny_model, query, run_to_end, write_config

from station.configfile import load_config
from station.records import Decision, Frame, Reason, Verdict
from station.tracelog import RunInfo, TraceLog

SIDE = 12000


def write_big_png(path: Path, side: int = SIDE) -> Path:
    """A valid 8-bit greyscale PNG of side x side zeros, written row by row (never held in memory)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    packer = zlib.compressobj(9)
    row = b"\0" * (side + 1)  # filter byte + pixels
    idat = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def test_an_oversized_png_is_refused_before_decoding_and_not_stored(tmp_path):
    make_frames(tmp_path / "frames", defective=1, ok=1, size=96)
    write_big_png(tmp_path / "frames" / "ok_front" / "huge.png")
    make_tiny_model(tmp_path / "tiny.pt")
    loaded = load_config(write_config(tmp_path / "s.yaml", """
camera: {kind: replay, path: frames, rate_parts_per_s: null, order: sorted}
model: {path: tiny.pt, device: cpu, warmup_runs: 0}
decision: {threshold: 0.999999, deadline_ms: 1000}
reject: {delay_ms: 1100, actuator: {kind: log}}
tracelog: {dir: log, images: all}
"""))
    run_to_end(loaded)
    rows = {Path(r["source"]).name: r for r in query(tmp_path / "log" / "trace.sqlite", "SELECT * FROM parts")}
    huge = rows["huge.png"]
    assert huge["reason"] == "bad_frame" and huge["decision"] == "reject"
    assert f"declares {SIDE}x{SIDE} px, over the 8192 px frame limit (not decoded)" in huge["detail"]
    assert huge["image_path"] is None
    assert all(r["image_path"] for name, r in rows.items() if name != "huge.png"), "normal frames are stored"
    stored = sum(p.stat().st_size for p in (tmp_path / "log" / "images").rglob("*.png"))
    assert stored < 1_000_000


def test_refusing_it_costs_no_decoding_memory(tmp_path):
    """In a fresh process: the replay loader refuses the file with its peak memory far below the 144 MB
    the pixels would take; PIL decoding the same file, for comparison, needs them."""
    big = write_big_png(tmp_path / "huge.png")
    # Peak memory from VmHWM: unlike ru_maxrss it starts afresh at exec (not at the forking test process).
    child = """
import json, sys
from station.cameras.replay import load_image
def peak_mb():
    line = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024
try:
    load_image(__import__("pathlib").Path(sys.argv[1]))
    refused = None
except ValueError as exc:
    refused = str(exc)
before_decode_mb = peak_mb()
if sys.argv[2] == "decode":
    from PIL import Image
    Image.MAX_IMAGE_PIXELS = None
    with Image.open(sys.argv[1]) as img:
        img.load()
print(json.dumps({"refused": refused, "peak_mb": before_decode_mb, "after_decode_mb": peak_mb()}))
"""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", child, str(big), "decode"], capture_output=True, text=True,
                         timeout=120, env=env, check=True)
    result = json.loads(out.stdout)
    assert result["refused"] and "not decoded" in result["refused"]
    assert result["after_decode_mb"] - result["peak_mb"] > 100, "decoding it really costs ~144 MB"
    assert result["peak_mb"] < 120, "the refusal itself decoded nothing"


def test_the_trace_log_never_stores_an_image_outside_the_frame_limits(tmp_path):
    """A camera buffer can be wider than the limit without being huge (8200 x 20 px): it is refused as a
    bad frame by the station, and the trace log will not store it either."""
    run = RunInfo("r1", "station-1", "cam", "m", "sha", "cfg")
    tracelog = TraceLog(tmp_path / "log", run, images="all")
    assert tracelog.open()
    tracelog.start()
    try:
        for seq, shape in ((1, (20, 8200)), (2, (64, 64))):
            image = np.zeros(shape, dtype=np.uint8)
            frame = Frame(seq=seq, t_capture_ns=0, wall_time=1.7e9, image=image, source="cam")
            verdict = Verdict(seq=seq, decision=Decision.REJECT, reason=Reason.BAD_FRAME, p_defect=None,
                              threshold=0.5, t_capture_ns=0, t_decided_ns=1, wall_time=1.7e9, source="cam")
            tracelog.record(verdict, frame)
    finally:
        tracelog.stop()
        tracelog.join(timeout=10)
    rows = query(tmp_path / "log" / "trace.sqlite", "SELECT seq, image_path, image_error FROM parts ORDER BY seq")
    assert rows[0]["image_path"] is None
    assert "8200x20 px is outside the 16..8192 px frame limit" in rows[0]["image_error"]
    assert rows[1]["image_path"] is not None
    assert tracelog.peak_held_image_bytes == 64 * 64, "the oversized image was not even held for the writer"


def test_a_camera_buffer_is_checked_against_its_declared_size_before_conversion():
    """Aravis and GenTL buffers declare width and height: an oversized one is refused from those
    numbers, before its bytes are read or converted (here the buffer is even far too short)."""
    import pytest

    from station.cameras.pixels import from_buffer

    with pytest.raises(ValueError, match="declares 12000x12000 px, over the 8192 px frame limit"):
        from_buffer(b"\0" * 16, width=SIDE, height=SIDE, pixel_format="bayer_rg8")
    with pytest.raises(ValueError, match="holds 16 bytes"):  # within the limit: the usual size check
        from_buffer(b"\0" * 16, width=64, height=64, pixel_format="mono8")
