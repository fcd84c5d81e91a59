"""A trace log on a disk that fills up mid-run: a real 1 MiB tmpfs mounted by the test (needs root).

Decisions and rejects go on, the alarm is raised, images give way (paused, oldest pruned, the WAL
truncated) so that every part's row still reaches the database.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import subprocess

import pytest
from support import make_frames, make_tiny_model, require_component, write_config

from station.app import Station
from station.configfile import load_config


@pytest.fixture
def tiny_disk(tmp_path):
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    can_mount = os.geteuid() == 0 and shutil.which("mount") is not None
    require_component(can_mount, "root and mount(8) for a tmpfs test disk")
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)],
                            capture_output=True, text=True)
    require_component(result.returncode == 0, f"mounting a tmpfs ({result.stderr.strip()})")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_disk_full_alarm_decisions_go_on_nothing_lost(tmp_path, tiny_disk, caplog):
    make_frames(tmp_path / "frames", defective=40, ok=40, size=300, seed=3)
    make_tiny_model(tmp_path / "tiny.pt")
    cfg = load_config(write_config(tmp_path / "s.yaml", f"""
line: {{max_parts_per_s: 100}}
camera: {{kind: replay, path: frames, rate_parts_per_s: 100}}
model: {{path: tiny.pt, device: cpu}}
decision: {{threshold: 0.000001, deadline_ms: 100}}
reject: {{delay_ms: 150, pulse_ms: 2, actuator: {{kind: log}}}}
tracelog: {{dir: {tiny_disk}/log, images: all, image_format: png, disk_budget_mb: 100}}
"""))
    alarms = []
    station = Station(cfg)
    original = station.set_alarm

    def spy(name, message):
        if message:
            alarms.append(name)
        original(name, message)

    station.set_alarm = spy
    caplog.set_level(logging.CRITICAL, logger="station.tracelog")
    station.start()
    try:
        assert station.wait_source_finished(timeout_s=120) or station.source_finished
    finally:
        summary = station.stop()

    assert summary["parts"] == 80 and summary["reject"] == 80
    assert summary["actuator"].get("logged", 0) + summary["actuator"].get("acknowledged", 0) \
        + summary["actuator"].get("late", 0) == 80, "every reject still fired with the disk full"
    assert {"tracelog_images", "tracelog"} & set(alarms), "the full disk raised an alarm"
    conn = sqlite3.connect(tiny_disk / "log" / "trace.sqlite")
    in_db = {seq for (seq,) in conn.execute("SELECT seq FROM parts")}
    image_errors = conn.execute("SELECT COUNT(*) FROM parts WHERE image_error IS NOT NULL").fetchone()[0]
    conn.close()
    dumped = {int(r.getMessage().split('"seq": ')[1].split(",")[0]) for r in caplog.records
              if r.getMessage().startswith("unwritten trace verdict")}
    assert in_db | dumped == set(range(1, 81)), "every part is in the database or in the service log"
    assert image_errors > 0, "the disk really filled up"
    # Rows come first: images were paused and pruned, the WAL truncated, so every row made it.
    assert in_db == set(range(1, 81)) and not dumped
