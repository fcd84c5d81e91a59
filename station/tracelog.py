"""The traceability log: one SQLite (WAL) row per part, one writer thread.

Rows are inserted when the verdict is made and updated when the actuator reports or a late
prediction arrives; the writer commits at least every 20 ms so a verdict is durable within tens of
milliseconds. Image files, their policy and the disk budget are `station.tracelog_images`. When the
disk is full or read-only the writer raises an alarm, keeps the rows in memory and retries; line
decisions never wait for the disk. Rows that never reach the disk go to the service log at stop.
"""

from __future__ import annotations

import json
import logging
import queue
import sqlite3
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable


from station.records import ActuationReport, Frame, Prediction, Verdict
from station.tracelog_images import ImageStore, is_disk_full
from station.image_checks import ALL_MEASURES

log = logging.getLogger("station.tracelog")

SCHEMA = """
CREATE TABLE IF NOT EXISTS parts (
    seq             INTEGER PRIMARY KEY,
    run_id          TEXT NOT NULL,
    station_id      TEXT NOT NULL,
    camera_id       TEXT NOT NULL,
    source          TEXT,
    captured_at     TEXT NOT NULL,
    t_capture_ns    INTEGER NOT NULL,
    model_id        TEXT,
    model_sha256    TEXT,
    config_sha256   TEXT,
    p_defect        REAL,
    threshold       REAL NOT NULL,
    decision        TEXT NOT NULL,
    reason          TEXT NOT NULL,
    fail_safe       INTEGER NOT NULL,
    detail          TEXT,
    label           TEXT,
    infer_ms        REAL,
    decide_ms       REAL NOT NULL,
    late_p_defect   REAL,
    late_infer_ms   REAL,
    due_ns          INTEGER,
    fired_ns        INTEGER,
    fire_lateness_ms REAL,
    actuator_result TEXT NOT NULL DEFAULT 'none',
    actuator_error  TEXT,
    image_path      TEXT,
    image_sha256    TEXT,
    image_bytes     INTEGER,
    image_pruned    INTEGER NOT NULL DEFAULT 0,
    image_error     TEXT,
    gate_failed     TEXT,
    gate_brightness REAL,
    gate_contrast   REAL,
    gate_dark_clip  REAL,
    gate_bright_clip REAL,
    gate_focus      REAL,
    gate_noise      REAL,
    gate_part_offset REAL,
    gate_part_size  REAL,
    gate_novelty    REAL,
    gate_ms         REAL
);
CREATE INDEX IF NOT EXISTS parts_captured_at ON parts(captured_at);
CREATE INDEX IF NOT EXISTS parts_unpruned_images ON parts(seq) WHERE image_path IS NOT NULL AND image_pruned = 0;
CREATE TABLE IF NOT EXISTS runs (
    run_id        TEXT PRIMARY KEY,
    started_at    TEXT NOT NULL,
    stopped_at    TEXT,
    station_id    TEXT NOT NULL,
    config_sha256 TEXT,
    model_id      TEXT,
    summary_json  TEXT
);
CREATE TABLE IF NOT EXISTS events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    at         TEXT NOT NULL,
    run_id     TEXT,
    level      TEXT NOT NULL,
    kind       TEXT NOT NULL,
    message    TEXT NOT NULL
);
"""

# Columns added after the first release, with their types: `open_db` adds the ones an existing log lacks
# (plant logs outlive releases; ALTER TABLE ADD COLUMN keeps every row, the new columns read NULL).
MIGRATIONS: list[tuple[str, str, str]] = [
    ("parts", "gate_failed", "TEXT"),        # violated validity-gate limits, e.g. "brightness_min,novelty_max"
    *[("parts", f"gate_{m}", "REAL") for m in ALL_MEASURES],  # what the gate measured on the frame
    ("parts", "gate_ms", "REAL"),            # time the gate took on the frame (checks, novelty, comparison)
]

_STOP = object()
AlarmHook = Callable[[str, str | None], None]


def iso_utc(wall_time: float) -> str:
    return datetime.fromtimestamp(wall_time, tz=timezone.utc).isoformat(timespec="milliseconds")


def open_db(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=5.0, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.executescript(SCHEMA)
    migrate(conn)
    conn.commit()
    return conn


def migrate(conn: sqlite3.Connection) -> list[str]:
    """Add the MIGRATIONS columns an older log lacks; return what was added."""
    added = []
    for table, column, kind in MIGRATIONS:
        have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        if column not in have:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
            added.append(f"{table}.{column}")
    if added:
        log.warning("trace log schema upgraded: added %s", ", ".join(added))
    return added


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    station_id: str
    camera_id: str
    model_id: str
    model_sha256: str
    config_sha256: str


class TraceLog(threading.Thread):
    """Owns the database connection; every other thread only enqueues."""

    def __init__(self, directory: Path, run: RunInfo, *, images: str = "all", sample_every_n: int = 1,
                 image_format: str = "png", disk_budget_mb: float = 2048.0, max_backlog: int = 10_000,
                 on_alarm: AlarmHook | None = None) -> None:
        super().__init__(name="tracelog", daemon=True)
        self.directory = Path(directory)
        self.db_path = self.directory / "trace.sqlite"
        self.run_info = run
        self.max_backlog = max_backlog
        self.on_alarm = on_alarm or (lambda name, msg: None)
        self.images = ImageStore(self.directory / "images", policy=images, sample_every_n=sample_every_n,
                                 image_format=image_format, disk_budget_bytes=int(disk_budget_mb * 1024 * 1024),
                                 on_alarm=self.on_alarm)
        self._queue: queue.Queue = queue.Queue()
        self._backlog: list[tuple[str, tuple]] = []
        self._conn: sqlite3.Connection | None = None
        self.last_beat_ns = time.monotonic_ns()
        self.rows_written = 0
        self.write_errors = 0
        self.unwritten = 0  # records that only reached the service log (disk never recovered)

    # ---- called from other threads -------------------------------------------------------------
    def next_seq(self) -> int:
        """First free part number, so seq stays unique across runs of the same log."""
        conn = self._connect_or_none()
        if conn is None:
            return int(time.time() * 1000)  # log unreadable: still unique, and the alarm says why
        row = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM parts").fetchone()
        return int(row[0]) + 1

    def record(self, verdict: Verdict, frame: Frame) -> None:
        self._queue.put(("verdict", (verdict, frame)))

    def record_actuation(self, report: ActuationReport) -> None:
        self._queue.put(("actuation", (report,)))

    def record_late(self, prediction: Prediction) -> None:
        self._queue.put(("late", (prediction,)))

    def event(self, level: str, kind: str, message: str) -> None:
        self._queue.put(("event", (time.time(), level, kind, message)))

    def finish_run(self, summary_json: str) -> None:
        self._queue.put(("finish", (time.time(), summary_json)))

    def adopt(self, old: TraceLog) -> None:
        """Take over the queue and held-back records of a writer whose thread died, before start()."""
        self._queue, self._backlog = old._queue, old._backlog  # the same queue: later records follow in order
        self.rows_written, self.write_errors = old.rows_written, old.write_errors
        self.images = old.images
        if old._conn is not None:
            try:
                old._conn.close()
            except sqlite3.Error as exc:
                log.warning("closing the dead trace-log writer's connection: %s", exc)
            old._conn = None

    def stop(self) -> None:
        self._queue.put(_STOP)

    @property
    def backlog(self) -> int:
        return self._queue.qsize() + len(self._backlog)

    # ---- writer thread ---------------------------------------------------------------------------
    def _connect_or_none(self) -> sqlite3.Connection | None:
        if self._conn is not None:
            return self._conn
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._conn = open_db(self.db_path)
            self._conn.execute(
                "INSERT OR IGNORE INTO runs(run_id, started_at, station_id, config_sha256, model_id) "
                "VALUES (?,?,?,?,?)",
                (self.run_info.run_id, iso_utc(time.time()), self.run_info.station_id, self.run_info.config_sha256,
                 self.run_info.model_id))
            self._conn.commit()
            self.images.scan()
            self.on_alarm("tracelog", None)
        except (sqlite3.Error, OSError) as exc:
            self._conn = None
            self.write_errors += 1
            self.on_alarm("tracelog", f"trace log {self.db_path} cannot be opened: {exc}")
        return self._conn

    def run(self) -> None:
        stopping = False
        while True:
            self.last_beat_ns = time.monotonic_ns()
            try:
                item = self._queue.get(timeout=0.02 if self._backlog else 0.2)
            except queue.Empty:
                item = None
            if item is _STOP:
                stopping = True
            elif item is not None:
                self._backlog.append(item)
            # Take everything queued so one transaction commits a burst of parts together.
            while True:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is _STOP:
                    stopping = True
                else:
                    self._backlog.append(more)
            if self._backlog:
                self._flush()
            if stopping:
                if self._backlog:
                    self._flush()  # one last try, the disk may have room again
                if self._backlog:
                    self._dump_backlog()
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None
                return

    def _flush(self) -> None:
        conn = self._connect_or_none()
        if conn is None:
            self._check_backlog()
            time.sleep(0.5)
            return
        self.images.begin()
        try:
            with conn:
                for kind, args in self._backlog:
                    getattr(self, f"_write_{kind}")(conn, *args)
        except (sqlite3.Error, OSError) as exc:
            self.write_errors += 1
            self.on_alarm("tracelog", f"trace log write failed ({len(self._backlog)} records held in memory): {exc}")
            self.images.rollback()
            if is_disk_full(exc):
                self.images.make_room(conn)
                return  # retry at once: the rows matter more than the images
            try:
                conn.close()
            except sqlite3.Error:
                pass
            self._conn = None
            self._check_backlog()
            time.sleep(0.5)
            return
        self._backlog.clear()
        self.on_alarm("tracelog", None)

    def _dump_backlog(self) -> None:
        """The disk never recovered: put every unwritten record into the service log (journald keeps it
        on another disk), one JSON line each, so no part's verdict is lost."""
        log.critical("trace log stopping with %d unwritten record(s); they follow as JSON", len(self._backlog))
        for kind, args in self._backlog:
            if kind == "verdict":
                v, _frame = args
                record = {"seq": v.seq, "run_id": self.run_info.run_id, "captured_at": iso_utc(v.wall_time),
                          "decision": v.decision.value, "reason": v.reason.value, "p_defect": v.p_defect,
                          "threshold": v.threshold, "label": v.label, "source": v.source, "detail": v.detail,
                          "gate_failed": list(v.gate.failed) if v.gate else None,
                          "gate": v.gate.measures if v.gate else None}
            elif kind == "actuation":
                r = args[0]
                record = {"seq": r.seq, "actuator_result": r.result.value, "fire_lateness_ms": r.lateness_ms,
                          "actuator_error": r.error}
            elif kind == "late":
                p = args[0]
                record = {"seq": p.seq, "late_p_defect": p.p_defect, "late_infer_ms": p.infer_ms}
            else:
                record = {"args": [str(a) for a in args]}
            log.critical("unwritten trace %s %s", kind, json.dumps(record, default=str))
        self.unwritten = len(self._backlog)
        self._backlog.clear()

    def _check_backlog(self) -> None:
        if len(self._backlog) > self.max_backlog:
            log.critical("trace log backlog %d exceeds %d records", len(self._backlog), self.max_backlog)

    def _write_verdict(self, conn: sqlite3.Connection, verdict: Verdict, frame: Frame) -> None:
        image_path, sha, nbytes, image_error = self.images.save(verdict, frame, conn)
        r = self.run_info
        columns = ["seq", "run_id", "station_id", "camera_id", "source", "captured_at", "t_capture_ns", "model_id",
                   "model_sha256", "config_sha256", "p_defect", "threshold", "decision", "reason", "fail_safe",
                   "detail", "label", "infer_ms", "decide_ms", "image_path", "image_sha256", "image_bytes",
                   "image_error"]
        values = [verdict.seq, r.run_id, r.station_id, r.camera_id, verdict.source, iso_utc(verdict.wall_time),
                  verdict.t_capture_ns, verdict.model_id or r.model_id, r.model_sha256, r.config_sha256,
                  verdict.p_defect, verdict.threshold, verdict.decision.value, verdict.reason.value,
                  int(verdict.is_fail_safe), verdict.detail, verdict.label, verdict.infer_ms, verdict.decide_ms,
                  image_path, sha, nbytes, image_error]
        gate = verdict.gate
        if gate is not None:
            columns += ["gate_failed", "gate_ms", *(f"gate_{m}" for m in ALL_MEASURES)]
            values += [",".join(gate.failed) or None, gate.gate_ms, *(gate.measures.get(m) for m in ALL_MEASURES)]
        conn.execute(f"INSERT OR IGNORE INTO parts ({', '.join(columns)}) VALUES ({','.join('?' * len(values))})",
                     values)
        self.rows_written += 1

    def _write_actuation(self, conn: sqlite3.Connection, report: ActuationReport) -> None:
        conn.execute(
            "UPDATE parts SET due_ns=?, fired_ns=?, fire_lateness_ms=?, actuator_result=?, actuator_error=? "
            "WHERE seq=?",
            (report.due_ns, report.fired_ns, report.lateness_ms, report.result.value, report.error, report.seq))

    def _write_late(self, conn: sqlite3.Connection, prediction: Prediction) -> None:
        conn.execute("UPDATE parts SET late_p_defect=?, late_infer_ms=? WHERE seq=?",
                     (prediction.p_defect, prediction.infer_ms, prediction.seq))

    def _write_event(self, conn: sqlite3.Connection, at: float, level: str, kind: str, message: str) -> None:
        conn.execute("INSERT INTO events(at, run_id, level, kind, message) VALUES (?,?,?,?,?)",
                     (iso_utc(at), self.run_info.run_id, level, kind, message))

    def _write_finish(self, conn: sqlite3.Connection, at: float, summary_json: str) -> None:
        conn.execute("UPDATE runs SET stopped_at=?, summary_json=? WHERE run_id=?",
                     (iso_utc(at), summary_json, self.run_info.run_id))


def rows_since(db_path: Path, since_iso: str | None) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Read parts rows (for `station trace export`) from a log, opened read-only."""
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        cur = conn.execute("SELECT * FROM parts WHERE captured_at >= ? ORDER BY seq", (since_iso or "",))
        cols = [d[0] for d in cur.description]
        return cols, cur.fetchall()
    finally:
        conn.close()
