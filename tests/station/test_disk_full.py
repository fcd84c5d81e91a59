"""The trace log on a disk that fills up mid-run: a real 3 MB tmpfs mounted by the test (root, as in CI).

Where mount is not permitted (a developer machine without root) the tests fall back to a log folder
this user cannot write, made so before the station starts: root ignores permissions, so only a real
small filesystem can refuse root's writes mid-run, and an unprivileged user cannot mount one.
Each test then gives the space (or the permission) back and checks what the station did with it:
every part has its row, images gave way first, memory stayed bounded, the error lines and the alarm
did not flood or flap, and a station started on the full disk never reported ready.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from support import make_tiny_model, query, require_component, write_config

from station.app import Station
from station.configfile import load_config
from station.tracelog import RunInfo, TraceLog, open_db
from station.tracelog_spill import SPILL_NAME, SpillJournal, read_spill

PARTS = 100


class SmallDisk:
    """A 3 MB tmpfs that `fill()` fills to the last byte and `free()` empties again; or, where mount is
    not permitted, a folder without write permission (from before the start until `free()`)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.mounted = False
        self.ballast = root / "ballast"

    def setup(self) -> None:
        self.root.mkdir()
        if shutil.which("mount") is not None and os.geteuid() == 0:
            result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(self.root)],
                                    capture_output=True, text=True)
            self.mounted = result.returncode == 0
            why = result.stderr.strip()
        else:
            why = "not root"
        if not self.mounted:
            # Fallback: permissions. They do not bind root, so root without mount cannot run these tests.
            require_component(os.geteuid() != 0, f"a tmpfs test disk (mount failed: {why})")
            self.log_dir.mkdir()
            self.log_dir.chmod(0o555)

    @property
    def log_dir(self) -> Path:
        return self.root / "log"

    @property
    def fills_mid_run(self) -> bool:
        return self.mounted

    def fill(self) -> None:
        if not self.mounted:
            return  # the folder has been unwritable since before the start
        with open(self.ballast, "wb") as f:
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass  # ENOSPC: full to the last byte
        with open(self.ballast, "ab") as f:  # the last partial block, unbuffered
            try:
                while True:
                    os.write(f.fileno(), b"\0" * 512)
            except OSError:
                pass

    def free(self) -> None:
        if self.mounted:
            self.ballast.unlink(missing_ok=True)
        else:
            self.log_dir.chmod(0o755)

    def teardown(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.root)], check=False)


@pytest.fixture
def small_disk(tmp_path):
    disk = SmallDisk(tmp_path / "disk")
    disk.setup()
    try:
        yield disk
    finally:
        disk.teardown()


def station_config(tmp: Path, disk: SmallDisk, *, images: str, threshold: float, extra: str = "") -> Path:
    make_tiny_model(tmp / "tiny.pt")
    return write_config(tmp / "s.yaml", f"""
line: {{max_parts_per_s: 20}}
camera: {{kind: synthetic, rate_parts_per_s: 20, size_px: 300, limit: {PARTS}, defect_ratio: 0.5}}
model: {{path: tiny.pt, device: cpu, warmup_runs: 0}}
decision: {{threshold: {threshold}, deadline_ms: 100}}
reject: {{delay_ms: 150, pulse_ms: 5, actuator: {{kind: log}}}}
tracelog:
  dir: {disk.log_dir}
  images: {images}
  spill_reserve_mb: 0.25
  min_free_mb: 1.0
  alarm_clear_s: 1.0
  max_held_image_mb: 1
{extra}""")


def wait(predicate, timeout_s: float, what: str) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def run_through_a_full_disk(station: Station, disk: SmallDisk) -> None:
    """Fill the disk after the first parts, let the source run out, give the space back, wait for the
    alarms to clear, stop."""
    station.start()
    try:
        if disk.fills_mid_run:
            wait(lambda: station.stats.parts >= 3, 60, "the first parts")
            disk.fill()
        wait(lambda: station.source_finished and station.idle(), 120, "the end of the source")
        assert "tracelog" in station.health.alarms(), "the full disk raised the tracelog alarm"
        disk.free()
        wait(lambda: not {"tracelog", "tracelog_images"} & set(station.health.alarms()), 60,
             "the trace-log alarms to clear once space came back")
    finally:
        station.stop()


def test_full_disk_keeps_every_row_bounded_memory_one_alarm(tmp_path, small_disk, caplog):
    caplog.set_level(logging.INFO)
    loaded = load_config(station_config(tmp_path, small_disk, images="all", threshold=0.000001))
    station = Station(loaded)
    run_through_a_full_disk(station, small_disk)

    summary = station.stats.snapshot()
    assert summary["parts"] == PARTS and summary["reject"] == PARTS
    fired = summary["actuator"].get("acknowledged", 0) + summary["actuator"].get("late", 0)
    assert fired == PARTS, "every reject still fired while the disk was full"
    db = small_disk.log_dir / "trace.sqlite"
    rows = query(db, "SELECT seq, image_path, image_error FROM parts ORDER BY seq")
    assert [r["seq"] for r in rows] == list(range(1, PARTS + 1)), "every part has its row"
    assert read_spill(small_disk.log_dir) == [], "the spill reserve was replayed into the database"
    not_kept = [r for r in rows if r["image_path"] is None]
    assert not_kept and all(r["image_error"].startswith("not kept") for r in not_kept), "images gave way first"
    # Images waiting for the disk never grew past tracelog.max_held_image_mb (the finding: +5 MB/s).
    assert 0 < station.tracelog.peak_held_image_bytes <= 1024 * 1024
    # The operator sees the alarm raised once and cleared once (the trace log's own events say so).
    alarms = query(db, "SELECT kind, message FROM events WHERE kind LIKE 'alarm%' AND message LIKE 'tracelog%'")
    raised = [a["message"].split(":")[0] for a in alarms if a["kind"] == "alarm"]
    cleared = [a["message"] for a in alarms if a["kind"] == "alarm_cleared"]
    assert raised.count("tracelog") == 1 and cleared.count("tracelog") == 1, alarms
    assert raised.count("tracelog_images") <= 1 and cleared.count("tracelog_images") == raised.count("tracelog_images")
    error_lines = [r for r in caplog.records if r.name.startswith("station.tracelog") and r.levelno >= logging.ERROR]
    assert len(error_lines) <= 8, [r.getMessage() for r in error_lines]  # rate-limited: was about 57 per second


def test_fail_safe_policy_rejects_parts_whose_rows_cannot_be_kept(tmp_path, small_disk):
    # A 10 kB reserve fills after a few dozen records; from then on rows are in memory only.
    extra = "  when_rows_cannot_be_kept: fail_safe\n"
    cfg = station_config(tmp_path, small_disk, images="none", threshold=0.999999, extra=extra)
    cfg.write_text(cfg.read_text().replace("spill_reserve_mb: 0.25", "spill_reserve_mb: 0.01"))
    station = Station(load_config(cfg))
    run_through_a_full_disk(station, small_disk)

    rows = query(small_disk.log_dir / "trace.sqlite", "SELECT seq, decision, reason FROM parts ORDER BY seq")
    assert [r["seq"] for r in rows] == list(range(1, PARTS + 1)), "rows held in memory reached the log later"
    failed_safe = [r for r in rows if r["reason"] == "no_trace_log"]
    assert failed_safe and all(r["decision"] == "reject" for r in failed_safe)
    # From the first such part on, the model decided nothing until the space came back (after the
    # source ended): every later part is fail-safe (no_trace_log, or a timeout on a busy machine).
    later = rows[rows.index(failed_safe[0]):]
    assert all(r["reason"] != "model" and r["decision"] == "reject" for r in later)
    if small_disk.fills_mid_run:
        # Before the disk filled, and while the reserve still took rows, the model decided.
        assert rows[0]["reason"] == "model" and rows[0]["decision"] == "ok"
        assert station.tracelog.spill.written_total > 0, "rows went to the spill reserve before memory"


def test_a_station_started_on_a_full_disk_does_not_report_ready(tmp_path, small_disk):
    from service.service_support import NotifyListener, StationProcess  # tests/service, beside this folder

    cfg = station_config(tmp_path, small_disk, images="all", threshold=0.5,
                         extra="service: {startup: wait, startup_timeout_s: 3}\n")
    if small_disk.fills_mid_run:
        # What the run before the restart left: its database and its spill reserve (kept, not re-allocated).
        small_disk.log_dir.mkdir()
        open_db(small_disk.log_dir / "trace.sqlite").close()
        SpillJournal(small_disk.log_dir / SPILL_NAME, reserve_bytes=256 * 1024).open()
    small_disk.fill()  # the tmpfs to the last byte; the fallback folder is unwritable already
    listener = NotifyListener(f"@station-test-{uuid.uuid4().hex}")
    proc = StationProcess(cfg, cwd=tmp_path, env={"NOTIFY_SOCKET": listener.path})
    try:
        rc = proc.wait(timeout=120)
    finally:
        proc.kill()
        listener.close()
    assert rc == 1, proc.stderr  # start-up failed: systemd retries later, the station never said ready
    assert not listener.times("READY", "1"), "READY=1 without a working trace log"
    failed = [s for s in listener.statuses() if s.startswith("start-up failed")]
    assert failed and "trace log" in failed[-1], listener.statuses()


def test_rows_spilled_on_a_full_disk_survive_kill_9_and_reach_the_log_at_the_next_start(tmp_path, small_disk):
    """The finding: rows the disk could not take lived only in memory, and kill -9 lost them. Now they
    are in the spill reserve, fsynced, and the next start replays them into the database."""
    from service.service_support import NotifyListener, StationProcess  # tests/service, beside this folder

    require_component(small_disk.fills_mid_run, "a tmpfs test disk (the spill reserve needs a writable disk)")
    cfg = station_config(tmp_path, small_disk, images="all", threshold=0.5,
                         extra="service: {startup: wait, startup_timeout_s: 120}\n")
    small_disk.log_dir.mkdir()
    open_db(small_disk.log_dir / "trace.sqlite").close()
    SpillJournal(small_disk.log_dir / SPILL_NAME, reserve_bytes=256 * 1024).open()
    small_disk.fill()
    listener = NotifyListener(f"@station-test-{uuid.uuid4().hex}")
    proc = StationProcess(cfg, cwd=tmp_path, env={"NOTIFY_SOCKET": listener.path})
    try:
        wait(lambda: sum(op.kind == "part" for op in read_spill(small_disk.log_dir)) >= 20, 90, "rows in the spill")
        assert proc.proc.poll() is None and not listener.times("READY", "1")
        assert any("waiting for" in s and "trace log" in s for s in listener.statuses()), listener.statuses()
        proc.proc.kill()  # SIGKILL: no orderly stop, nothing flushed by the station
        proc.proc.wait(timeout=30)
    finally:
        proc.kill()
        listener.close()
    spilled = {op.values["seq"] for op in read_spill(small_disk.log_dir) if op.kind == "part"}
    assert len(spilled) >= 20
    small_disk.free()
    tracelog = TraceLog(small_disk.log_dir, RunInfo("next-run", "station-1", "cam", "m", "sha", "cfg"),
                        spill_reserve_mb=0.25, min_free_mb=1.0)
    assert tracelog.open()
    tracelog.start()
    try:
        wait(lambda: tracelog.spill.count == 0, 30, "the spill to be replayed")
    finally:
        tracelog.stop()
        tracelog.join(timeout=10)
    in_db = {r["seq"] for r in query(small_disk.log_dir / "trace.sqlite", "SELECT seq FROM parts")}
    assert spilled <= in_db, "every row the killed station had spilled is in the log now"
    assert read_spill(small_disk.log_dir) == []
