"""The traceability log: one SQLite (WAL) row per part, images as files, one writer thread.

Rows are inserted when the verdict is made and updated when the actuator reports or a late
prediction arrives; the writer commits at least every 20 ms so a verdict is durable within tens of
milliseconds. Images are kept by policy (all | rejects | none, every n-th) under
`images/YYYY/MM/DD/`, and the oldest are pruned past the disk budget (the row stays and says so).
When the disk is full or read-only the writer raises an alarm, keeps the rows in memory and
retries; line decisions never wait for the disk.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import logging
import os
import queue
import sqlite3
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image

from station.records import ActuationReport, Decision, Frame, Prediction, Verdict

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
    image_error     TEXT
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

_STOP = object()
IMAGE_PAUSE_S = 30.0  # after a disk-full error, images are not kept for this long
AlarmHook = Callable[[str, str | None], None]


def iso_utc(wall_time: float) -> str:
    return datetime.fromtimestamp(wall_time, tz=timezone.utc).isoformat(timespec="milliseconds")


def open_db(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=5.0, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.executescript(SCHEMA)
    conn.commit()
    return conn


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
        self.images_dir = self.directory / "images"
        self.run_info = run
        self.images = images
        self.sample_every_n = sample_every_n
        self.image_format = image_format
        self.disk_budget_bytes = int(disk_budget_mb * 1024 * 1024)
        self.max_backlog = max_backlog
        self.on_alarm = on_alarm or (lambda name, msg: None)
        self._queue: queue.Queue = queue.Queue()
        self._backlog: list[tuple[str, tuple]] = []
        self._conn: sqlite3.Connection | None = None
        self._image_bytes = 0
        self._kept_images = 0
        self.last_beat_ns = time.monotonic_ns()
        self.rows_written = 0
        self.write_errors = 0
        self.pruned = 0
        self.unwritten = 0  # records that only reached the service log (disk never recovered)
        self._images_paused_until = 0.0
        self._tx_images: list[tuple[Path, int]] = []  # image files written by the open transaction

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
        self.rows_written, self.write_errors, self.pruned = old.rows_written, old.write_errors, old.pruned
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
            self._image_bytes = _folder_bytes(self.images_dir)
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
        self._tx_images: list[tuple[Path, int]] = []
        try:
            with conn:
                for kind, args in self._backlog:
                    getattr(self, f"_write_{kind}")(conn, *args)
        except (sqlite3.Error, OSError) as exc:
            self.write_errors += 1
            self.on_alarm("tracelog", f"trace log write failed ({len(self._backlog)} records held in memory): {exc}")
            self._discard_tx_images()
            if _is_disk_full(exc):
                self._images_paused_until = time.monotonic() + IMAGE_PAUSE_S
                self._make_room(conn)
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
                          "threshold": v.threshold, "label": v.label, "source": v.source, "detail": v.detail}
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
        image_path, sha, nbytes, image_error = self._save_image(verdict, frame)
        r = self.run_info
        conn.execute(
            "INSERT OR IGNORE INTO parts (seq, run_id, station_id, camera_id, source, captured_at, t_capture_ns, "
            "model_id, model_sha256, config_sha256, p_defect, threshold, decision, reason, fail_safe, detail, "
            "label, infer_ms, decide_ms, image_path, image_sha256, image_bytes, image_error) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (verdict.seq, r.run_id, r.station_id, r.camera_id, verdict.source, iso_utc(verdict.wall_time),
             verdict.t_capture_ns, verdict.model_id or r.model_id, r.model_sha256, r.config_sha256,
             verdict.p_defect, verdict.threshold, verdict.decision.value, verdict.reason.value,
             int(verdict.is_fail_safe), verdict.detail, verdict.label, verdict.infer_ms, verdict.decide_ms,
             image_path, sha, nbytes, image_error))
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

    # ---- images ------------------------------------------------------------------------------------
    def _wants_image(self, verdict: Verdict, frame: Frame) -> bool:
        if frame.image is None or self.images == "none":
            return False
        if self.images == "rejects" and verdict.decision is not Decision.REJECT:
            return False
        self._kept_images += 1
        return (self._kept_images - 1) % self.sample_every_n == 0

    def _save_image(self, verdict: Verdict, frame: Frame) -> tuple[str | None, str | None, int | None, str | None]:
        if not self._wants_image(verdict, frame):
            return None, None, None, None
        if time.monotonic() < self._images_paused_until:
            return None, None, None, "not kept: disk full"
        when = datetime.fromtimestamp(verdict.wall_time, tz=timezone.utc)
        rel = Path(f"{when:%Y/%m/%d}") / f"{verdict.seq:010d}_{verdict.decision.value}.{self.image_format}"
        data = encode_image(frame.image, self.image_format)
        sha = hashlib.sha256(data).hexdigest()
        target = self.images_dir / rel
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_suffix(".tmp")
            tmp.write_bytes(data)
            os.replace(tmp, target)
        except OSError as exc:
            self.write_errors += 1
            self.on_alarm("tracelog_images", f"cannot write image {target}: {exc}")
            if _is_disk_full(exc):
                # Rows come first: stop keeping images for a while and free room for the database.
                self._images_paused_until = time.monotonic() + IMAGE_PAUSE_S
                self._make_room(None)
            return None, sha, None, f"{type(exc).__name__}: {exc.strerror or exc}"
        self.on_alarm("tracelog_images", None)
        self._image_bytes += len(data)
        self._tx_images.append((target, len(data)))
        if self._image_bytes > self.disk_budget_bytes:
            self._prune()
        return rel.as_posix(), sha, len(data), None

    def _discard_tx_images(self) -> None:
        """The transaction rolled back: its image files must go too, or they would be orphans."""
        for path, nbytes in self._tx_images:
            try:
                path.unlink()
                self._image_bytes -= nbytes
            except FileNotFoundError:
                pass
        self._tx_images = []

    def _make_room(self, conn: sqlite3.Connection | None) -> None:
        """Disk full: delete the oldest half of the kept images so rows can still be written."""
        try:
            if conn is None:
                self._prune(self._image_bytes // 2)
            else:
                with conn:
                    self._prune(self._image_bytes // 2)
                # Move the WAL into the database file and truncate it: the WAL only shrinks this way.
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except (sqlite3.Error, OSError) as exc:
            log.error("could not free disk space by pruning images: %s", exc)

    def _prune(self, goal: int | None = None) -> None:
        """Delete the oldest images until the folder is back under `goal` (default 90% of the budget)."""
        assert self._conn is not None
        goal = int(self.disk_budget_bytes * 0.9) if goal is None else goal
        while self._image_bytes > goal:
            rows = self._conn.execute(
                "SELECT seq, image_path, image_bytes FROM parts WHERE image_path IS NOT NULL AND image_pruned=0 "
                "ORDER BY seq LIMIT 500").fetchall()
            if not rows:
                break
            for seq, rel, nbytes in rows:
                if self._image_bytes <= goal:
                    break
                try:
                    (self.images_dir / rel).unlink()
                except FileNotFoundError:
                    pass
                self._image_bytes -= nbytes or 0
                self.pruned += 1
                self._conn.execute("UPDATE parts SET image_pruned=1 WHERE seq=?", (seq,))


def encode_image(image: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt == "png":
        Image.fromarray(image).save(buf, format="PNG", compress_level=1)
    else:
        Image.fromarray(image).save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def _is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError):
        return exc.errno == errno.ENOSPC
    return "full" in str(exc).lower()


def _folder_bytes(folder: Path) -> int:
    total = 0
    if folder.exists():
        for p in folder.rglob("*"):
            if p.is_file():
                total += p.stat().st_size
    return total


def rows_since(db_path: Path, since_iso: str | None) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Read parts rows (for `station trace export`) from a log, opened read-only."""
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        cur = conn.execute("SELECT * FROM parts WHERE captured_at >= ? ORDER BY seq", (since_iso or "",))
        cols = [d[0] for d in cur.description]
        return cols, cur.fetchall()
    finally:
        conn.close()
