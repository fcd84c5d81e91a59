"""The trace log's open-time recovery on real SQLite files: a run left without a stop is marked as crashed and
its pending rejects as `unknown`; a run that another live process is writing is left alone (a real flock
held by a real second process).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from support import query

from station.records import ActuationReport, ActuatorResult, Decision, Frame, Reason, Verdict
from station.tracelog import RunInfo, TraceLog


def run_info(run_id: str) -> RunInfo:
    return RunInfo(run_id=run_id, station_id="s1", camera_id="cam", model_id="m", model_sha256="0" * 64,
                   config_sha256="1" * 64)


def part(seq: int, decision: Decision) -> tuple[Verdict, Frame]:
    now = time.monotonic_ns()
    v = Verdict(seq=seq, decision=decision, reason=Reason.MODEL, p_defect=0.9, threshold=0.5, t_capture_ns=now,
                t_decided_ns=now, wall_time=time.time(), source="test")
    return v, Frame(seq=seq, t_capture_ns=now, wall_time=time.time(), image=None, source="test")


def write_unfinished_run(folder: Path, run_id: str) -> None:
    """A run whose writer ended without `finish_run`: in the log exactly what a killed station leaves."""
    log = TraceLog(folder, run_info(run_id), images="none")
    log.start()
    for seq, decision in ((1, Decision.REJECT), (2, Decision.OK), (3, Decision.REJECT), (4, Decision.REJECT)):
        log.record(*part(seq, decision))
    log.record_actuation(ActuationReport(seq=1, result=ActuatorResult.ACKNOWLEDGED, due_ns=1, fired_ns=2))
    log.event("INFO", "start", f"run {run_id}")
    log.stop()
    log.join(5)


def test_a_run_without_a_stop_is_marked_crashed_and_its_pending_rejects_unknown(tmp_path):
    write_unfinished_run(tmp_path, "run-a")
    nxt = TraceLog(tmp_path, run_info("run-b"), images="none")
    nxt.open()  # opening the log runs the recovery
    assert nxt.next_seq() == 5
    nxt.start()
    nxt.finish_run("{}")
    nxt.stop()
    nxt.join(5)
    db = tmp_path / "trace.sqlite"
    rows = {r["seq"]: r for r in query(db, "SELECT * FROM parts")}
    assert rows[1]["actuator_result"] == "acknowledged", "a reported outcome stays"
    assert rows[2]["actuator_result"] == "none", "an ok part needed no command"
    assert [rows[s]["actuator_result"] for s in (3, 4)] == ["unknown", "unknown"]
    assert rows[3]["actuator_error"].startswith("unknown: the station stopped")
    runs = {r["run_id"]: r for r in query(db, "SELECT * FROM runs")}
    assert runs["run-a"]["stopped_at"] >= rows[4]["captured_at"], "stopped after its last record"
    summary = json.loads(runs["run-a"]["summary_json"])
    assert summary["ended"] == "crashed" and summary["unknown_actuator_results"] == 2
    assert json.loads(runs["run-b"]["summary_json"]) == {}, "the run that found it is not touched"
    events = query(db, "SELECT run_id, level, kind, message FROM events WHERE kind = 'run_crashed'")
    assert len(events) == 1 and events[0]["run_id"] == "run-a" and events[0]["level"] == "ERROR"
    assert "2 part(s)" in events[0]["message"]
    # A third start finds nothing left to mark.
    third = TraceLog(tmp_path, run_info("run-c"), images="none")
    third.open()
    third.start()
    third.stop()
    third.join(5)
    assert len(query(db, "SELECT 1 FROM events WHERE kind = 'run_crashed'")) == 1


def test_the_live_run_of_another_process_is_never_marked(tmp_path):
    write_unfinished_run(tmp_path, "run-live")
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import fcntl, os, sys, time\n"
         f"fd = os.open({str(tmp_path / 'writer.lock')!r}, os.O_RDWR | os.O_CREAT)\n"
         "fcntl.flock(fd, fcntl.LOCK_EX)\n"
         "print('locked', flush=True)\n"
         "time.sleep(60)\n"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        other = TraceLog(tmp_path, run_info("run-other"), images="none")
        other.open()
        other.start()
        other.stop()
        other.join(5)
    finally:
        holder.kill()
        holder.wait()
    db = tmp_path / "trace.sqlite"
    assert query(db, "SELECT stopped_at FROM runs WHERE run_id = 'run-live'")[0]["stopped_at"] is None
    assert not query(db, "SELECT 1 FROM parts WHERE actuator_result = 'unknown'")
    assert not query(db, "SELECT 1 FROM events WHERE kind = 'run_crashed'")
