"""What the trace log writes, as plain operations: one `TraceOp` per row insert or update.

Every record the writer takes from its queue (a verdict with its frame, an actuator outcome, a late
prediction, an event, the end of a run) becomes a `TraceOp` of column -> value. The same op goes
into SQLite (`apply_op`), into the spill journal (`station.tracelog_spill`) as one JSON line, or
into the service log, so a row reads the same whichever way it was kept. A part's op carries its
frame only while its image may still be saved; images never go to the spill or the service log.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from station.image_checks import ALL_MEASURES
from station.records import Frame, Verdict


def iso_utc(wall_time: float) -> str:
    return datetime.fromtimestamp(wall_time, tz=timezone.utc).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    station_id: str
    camera_id: str
    model_id: str
    model_sha256: str
    config_sha256: str


@dataclass
class TraceOp:
    """One write. `kind`: part | actuation | late | event | finish."""

    kind: str
    values: dict[str, Any]
    frame: Frame | None = None  # part rows only, while the image may still be saved
    image_bytes: int = 0        # bytes of `frame.image` counted as held in memory

    def to_json(self) -> str:
        return json.dumps({"kind": self.kind, "values": self.values}, separators=(",", ":"), default=str)

    @classmethod
    def from_json(cls, line: str) -> TraceOp:
        data = json.loads(line)
        return cls(kind=str(data["kind"]), values=dict(data["values"]))


def part_values(verdict: Verdict, run: RunInfo, image_note: str | None) -> dict[str, Any]:
    """The part's row as column -> value (the image columns come when its image is saved)."""
    return {"seq": verdict.seq, "run_id": run.run_id, "station_id": run.station_id, "camera_id": run.camera_id,
            "source": verdict.source, "captured_at": iso_utc(verdict.wall_time), "t_capture_ns": verdict.t_capture_ns,
            "model_id": verdict.model_id or run.model_id, "model_sha256": run.model_sha256,
            "config_sha256": run.config_sha256, "p_defect": verdict.p_defect, "threshold": verdict.threshold,
            "decision": verdict.decision.value, "reason": verdict.reason.value, "fail_safe": int(verdict.is_fail_safe),
            "detail": verdict.detail, "label": verdict.label, "infer_ms": verdict.infer_ms,
            "decide_ms": verdict.decide_ms, "image_error": image_note, **gate_values(verdict)}


def gate_values(verdict: Verdict) -> dict[str, Any]:
    """The validity gate's columns: which limits the frame violated and what was measured (none without a gate)."""
    gate = verdict.gate
    if gate is None:
        return {}
    return {"gate_failed": ",".join(gate.failed) or None, "gate_ms": gate.gate_ms,
            **{f"gate_{m}": gate.measures.get(m) for m in ALL_MEASURES}}


def op_from_record(kind: str, args: tuple, run: RunInfo) -> TraceOp:
    """A queued record (see TraceLog.record*, event, finish_run) as its TraceOp."""
    if kind == "verdict":
        verdict, frame, note, nbytes = args
        return TraceOp("part", part_values(verdict, run, note),
                       frame=frame if frame.image is not None else None, image_bytes=nbytes)
    if kind == "actuation":
        r = args[0]
        return TraceOp("actuation", {"seq": r.seq, "due_ns": r.due_ns, "fired_ns": r.fired_ns,
                                     "fire_lateness_ms": r.lateness_ms, "actuator_result": r.result.value,
                                     "actuator_error": r.error})
    if kind == "late":
        p = args[0]
        return TraceOp("late", {"seq": p.seq, "late_p_defect": p.p_defect, "late_infer_ms": p.infer_ms})
    if kind == "event":
        at, level, what, message = args
        return TraceOp("event", {"at": iso_utc(at), "run_id": run.run_id, "level": level, "kind": what,
                                 "message": message})
    if kind == "finish":
        at, summary_json = args
        return TraceOp("finish", {"stopped_at": iso_utc(at), "summary_json": summary_json, "run_id": run.run_id})
    raise ValueError(f"unknown trace record {kind!r}")


def apply_op(conn: sqlite3.Connection, op: TraceOp) -> None:
    """Write one op inside the caller's transaction."""
    v = op.values
    if op.kind == "part":
        cols = ", ".join(v)
        conn.execute(f"INSERT OR IGNORE INTO parts ({cols}) VALUES ({', '.join('?' * len(v))})", tuple(v.values()))
    elif op.kind in ("actuation", "late"):
        sets = {k: val for k, val in v.items() if k != "seq"}
        conn.execute(f"UPDATE parts SET {', '.join(f'{k}=?' for k in sets)} WHERE seq=?", (*sets.values(), v["seq"]))
    elif op.kind == "event":
        conn.execute("INSERT INTO events(at, run_id, level, kind, message) VALUES (?,?,?,?,?)",
                     (v["at"], v["run_id"], v["level"], v["kind"], v["message"]))
    elif op.kind == "finish":
        conn.execute("UPDATE runs SET stopped_at=?, summary_json=? WHERE run_id=?",
                     (v["stopped_at"], v["summary_json"], v["run_id"]))
    else:
        raise ValueError(f"unknown trace op {op.kind!r}")
