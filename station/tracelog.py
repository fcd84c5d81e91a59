"""The traceability log: one SQLite (WAL) row per part, one writer thread, and what it does when the disk fails.

Rows are inserted when the verdict is made and updated when the actuator reports or a late
prediction arrives; the writer commits at least every 20 ms so a verdict is durable within tens of
milliseconds. Image files, their policy and the disk budget are `station.tracelog_images`.
Line decisions never wait for the disk. When the database cannot be written (disk full, read-only,
I/O error) the writer, in this order: drops the images it holds (rows matter more), appends the
rows to the spill journal reserved on the disk at start (`station.tracelog_spill`, replayed into
the database once it writes again, also after a restart), holds what the journal cannot take in
memory up to `max_backlog` rows, and writes older ones to the service log. Memory stays bounded:
images waiting for the disk are capped at `max_held_image_bytes`. The `tracelog` alarm is raised at
the first problem and cleared only after the log has been fine for `alarm_clear_s`; error lines are
rate-limited. `problem` says what is wrong right now: start-up waits for it to be None. The writer is
a `station.stage.Stage` whose input queue is the record queue: `stop()` puts the sentinel behind the
records already queued, so each of them is written before the thread ends.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import queue
import sqlite3
import threading
import time
from pathlib import Path
from typing import Callable

from station.fault_reporting import LatchedAlarm, RateLimitedLog
from station.records import ActuationReport, Frame, Prediction, Verdict
from station.tracelog_images import ImageStore, image_size_problem, is_disk_full
from station.tracelog_records import RunInfo, TraceOp, apply_op, iso_utc, op_from_record
from station.tracelog_schema import SCHEMA, open_db, rows_since
from station.tracelog_spill import SPILL_NAME, SpillJournal
from station.tracelog_recovery import WriterLock, mark_crashed_runs
from station.stage import IDLE_WAIT_S, STOP, Stage

# Re-exported: the station, `trace export` and the tests import these from here.
__all__ = ["SCHEMA", "RunInfo", "TraceLog", "iso_utc", "open_db", "rows_since"]

log = logging.getLogger(__name__)

AlarmHook = Callable[[str, str | None], None]
RowsKeptHook = Callable[[bool, str | None], None]
DB_RETRY_S = 1.0      # a failing database is tried again this often; rows go to the spill in between
SPACE_CHECK_S = 1.0   # free space on the log's disk is checked this often


class TraceLog(Stage):
    """Owns the database connection and the spill journal; every other thread only enqueues."""

    busy_doing = "waiting for the disk"

    def __init__(self, directory: Path, run: RunInfo, *, images: str = "all", sample_every_n: int = 1,
                 image_format: str = "png", disk_budget_mb: float = 2048.0, max_backlog: int = 10_000,
                 spill_reserve_mb: float = 16.0, min_free_mb: float = 64.0, max_held_image_mb: float = 256.0,
                 alarm_clear_s: float = 30.0, on_alarm: AlarmHook | None = None,
                 on_rows_kept: RowsKeptHook | None = None) -> None:
        records: queue.Queue = queue.Queue()
        super().__init__("tracelog", inbox=records)
        self._queue = records
        self.directory = Path(directory)
        self.db_path = self.directory / "trace.sqlite"
        self.run_info = run
        hook = on_alarm or (lambda name, msg: None)
        self.on_rows_kept = on_rows_kept or (lambda kept, why: None)
        self.alarm = LatchedAlarm("tracelog", hook, clear_after_s=alarm_clear_s)
        self.images_alarm = LatchedAlarm("tracelog_images", hook, clear_after_s=alarm_clear_s)
        self.images = ImageStore(self.directory / "images", policy=images, sample_every_n=sample_every_n,
                                 image_format=image_format, disk_budget_bytes=int(disk_budget_mb * 1024 * 1024))
        self.spill = SpillJournal(self.directory / SPILL_NAME, reserve_bytes=int(spill_reserve_mb * 1024 * 1024))
        self.errors = RateLimitedLog(log)
        self.max_backlog = max_backlog
        self.min_free_bytes = int(min_free_mb * 1024 * 1024)
        self.max_held_image_bytes = int(max_held_image_mb * 1024 * 1024)
        self._pending: list[TraceOp] = []  # taken from the queue, in neither the database nor the spill yet
        self._conn: sqlite3.Connection | None = None
        self._held_lock = threading.Lock()
        self._held_image_bytes = 0
        self._db_error: str | None = "not opened yet"
        self._spill_error: str | None = None
        self._low_space: str | None = None
        self._db_max_seq: int | None = None
        self._next_db_try = self._next_space_check = 0.0
        self._rows_kept, self._scanned = True, False  # rows reach the database or the spill; images folder measured
        self.rows_written = 0
        self.write_errors = 0
        self.images_dropped = 0
        self.unwritten = 0  # records that only reached the service log (no room anywhere else)
        self.peak_held_image_bytes = 0
        self.writer_lock = WriterLock(self.directory)  # held while this process writes the log
        self.recovered = False  # unfinished runs of earlier processes checked (once per run)

    # ---- called from other threads -------------------------------------------------------------
    def open(self) -> bool:
        """Open the database and the spill reserve (Station.start, before the thread starts). False: the
        `tracelog` alarm is up and the writer keeps trying; parts are decided meanwhile."""
        ok = self._open()
        self._check_space()
        self.alarm.update(self.problem)
        return ok

    def next_seq(self) -> int:
        """First free part number, so seq stays unique across runs of the same log (and its spill)."""
        if self._db_max_seq is None:
            return int(time.time() * 1000)  # log unreadable: still unique, and the alarm says why
        return max(self._db_max_seq, self.spill.max_seq) + 1

    def record(self, verdict: Verdict, frame: Frame) -> None:
        note, nbytes = None, 0
        if frame.image is not None:
            problem = image_size_problem(frame.image)
            if not self.images.wanted_by_policy(verdict.decision.value):
                frame = dataclasses.replace(frame, image=None)  # nobody keeps it: do not hold it
            elif problem is not None or not self._hold_image(frame.image.nbytes):
                note = f"not kept: {problem or 'images waiting for the disk reached tracelog.max_held_image_mb'}"
                frame = dataclasses.replace(frame, image=None)
                with self._held_lock:
                    self.images_dropped += 1
            else:
                nbytes = frame.image.nbytes
        self._queue.put(("verdict", (verdict, frame, note, nbytes)))

    def record_actuation(self, report: ActuationReport) -> None:
        self._queue.put(("actuation", (report,)))

    def record_late(self, prediction: Prediction) -> None:
        self._queue.put(("late", (prediction,)))

    def event(self, level: str, kind: str, message: str) -> None:
        self._queue.put(("event", (time.time(), level, kind, message)))

    def finish_run(self, summary_json: str) -> None:
        self._queue.put(("finish", (time.time(), summary_json)))

    def update_settings(self, *, images: str, sample_every_n: int, image_format: str, disk_budget_mb: float,
                        max_backlog: int, min_free_mb: float, max_held_image_mb: float, alarm_clear_s: float) -> None:
        """Live reload; the writer reads each of these per part (plain attribute stores are atomic)."""
        self.images.update_policy(policy=images, sample_every_n=sample_every_n, image_format=image_format,
                                  disk_budget_bytes=int(disk_budget_mb * 1024 * 1024))
        self.max_backlog, self.min_free_bytes = max_backlog, int(min_free_mb * 1024 * 1024)
        self.max_held_image_bytes = int(max_held_image_mb * 1024 * 1024)
        self.alarm.update_clear_after(alarm_clear_s)
        self.images_alarm.update_clear_after(alarm_clear_s)

    def update_run_info(self, *, model_id: str, model_sha256: str, config_sha256: str) -> None:
        """The model and config that parts recorded from now on are decided with (live reload)."""
        self.run_info = dataclasses.replace(self.run_info, model_id=model_id, model_sha256=model_sha256,
                                            config_sha256=config_sha256)

    def adopt(self, old: Stage) -> None:
        """Take over the queue, held rows, spill and alarms of a writer whose thread died, before start()."""
        assert isinstance(old, TraceLog)
        self.run_info = old.run_info
        # The same queue: later records follow in order, and stop() puts its sentinel behind them.
        self._queue, self.inbox, self._pending = old._queue, old._queue, old._pending
        self.rows_written, self.write_errors, self.unwritten = old.rows_written, old.write_errors, old.unwritten
        self.images, self.spill, self.errors = old.images, old.spill, old.errors
        self.alarm, self.images_alarm = old.alarm, old.images_alarm
        self._held_lock, self._held_image_bytes = old._held_lock, old._held_image_bytes
        self._db_max_seq, self._rows_kept, self._scanned = old._db_max_seq, old._rows_kept, old._scanned
        self.writer_lock, self.recovered = old.writer_lock, old.recovered
        if old._conn is not None:
            try:
                old._conn.close()
            except sqlite3.Error as exc:
                log.warning("closing the dead trace-log writer's connection: %s", exc)
            old._conn = None

    @property
    def problem(self) -> str | None:
        """What keeps the log from working right now (None: rows reach the database, disk has room)."""
        found = []
        if self._conn is None:
            found.append(self._db_error or "not open")
        elif self._db_error:
            found.append(f"database write failing: {self._db_error}")
        if self.spill.count:
            found.append(f"{self.spill.count} row(s) waiting in the spill reserve")
        if not self._rows_kept:
            found.append(f"{len(self._pending)} row(s) held in memory only")
        found += [p for p in (self._spill_error, self._low_space) if p]
        text = "; ".join(found)
        return f"trace log {self.directory}: {text}" if text else None

    @property
    def backlog(self) -> int:
        return self._queue.qsize() + len(self._pending) + self.spill.count

    @property
    def held_image_bytes(self) -> int:
        return self._held_image_bytes

    def _hold_image(self, nbytes: int) -> bool:
        with self._held_lock:
            if self._held_image_bytes + nbytes > self.max_held_image_bytes:
                return False
            self._held_image_bytes += nbytes
            self.peak_held_image_bytes = max(self.peak_held_image_bytes, self._held_image_bytes)
            return True

    def _release_image(self, op: TraceOp) -> None:
        if op.frame is not None:
            with self._held_lock:
                self._held_image_bytes -= op.image_bytes
            op.frame, op.image_bytes = None, 0

    # ---- writer thread ---------------------------------------------------------------------------
    def step(self) -> bool:
        stopping = self._take(0.02 if self._pending or self.spill.count else IDLE_WAIT_S)
        self._flush(final=stopping)
        if stopping:
            # Only here, not in cleanup(): a writer that crashed leaves its spill, lock and rows to adopt().
            self._close()
        return not stopping

    def _take(self, timeout_s: float) -> bool:
        """Move queued records into `_pending` (a burst commits in one transaction). True: stop seen."""
        try:
            items = [self._queue.get(timeout=timeout_s)]
        except queue.Empty:
            return False
        while True:
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                break
        for item in items:
            if item is STOP:
                return True
            self._pending.append(op_from_record(*item, self.run_info))
        return False

    def _flush(self, *, final: bool = False) -> None:
        now = time.monotonic()
        if now >= self._next_space_check:
            self._check_space()
        if self._conn is None and (final or now >= self._next_db_try):
            self._open()
        written = False
        if self._conn is not None and (self._pending or self.spill.count) \
                and (final or self._db_error is None or now >= self._next_db_try):
            written = self._write()
        if self._pending and not written:
            self._hold(final=final)
        self._set_rows_kept(not self._pending or written)
        self.alarm.update(self.problem)
        self.images_alarm.update(self.images.problem)

    def _open(self) -> bool:
        self._next_db_try = time.monotonic() + DB_RETRY_S
        self.busy_since_ns = time.monotonic_ns()
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            if not self.spill.ready:
                try:
                    self.spill.open()
                    self._spill_error = None
                except OSError as exc:
                    self._spill_error = (f"spill reserve of {self.spill.reserve_bytes / 1048576:g} MB cannot be "
                                         f"allocated: {exc.strerror or exc}")
                    self.errors.error("spill", f"trace log {self.directory}: {self._spill_error}")
            conn = open_db(self.db_path)
            try:
                self._db_max_seq = int(conn.execute("SELECT COALESCE(MAX(seq), 0) FROM parts").fetchone()[0])
                with conn:
                    self._on_open(conn)
            except sqlite3.Error:
                conn.close()
                raise
            self._conn, self._db_error = conn, None
            if not self._scanned:  # once: the image folder may hold many thousand files
                self.images.scan()
                self._scanned = True
            self._recover_crashed_runs()
            return True
        except (sqlite3.Error, OSError) as exc:
            self.write_errors += 1
            self._db_error = f"{self.db_path} cannot be opened for writing: {exc}"
            self.errors.error("open", f"trace log {self._db_error}")
            return False
        finally:
            self.busy_since_ns = None

    def _on_open(self, conn: sqlite3.Connection) -> None:
        """Open-time steps, in the transaction that opens the log: this run's row."""
        r = self.run_info
        conn.execute("INSERT OR IGNORE INTO runs(run_id, started_at, station_id, config_sha256, model_id) "
                     "VALUES (?,?,?,?,?)", (r.run_id, iso_utc(time.time()), r.station_id, r.config_sha256, r.model_id))

    def _recover_crashed_runs(self) -> None:
        """Once per run, at the first open: rows an earlier process left in the spill go in first, then its
        unfinished runs are marked (station.tracelog_recovery), never the live run of another process."""
        if self.recovered or self._conn is None:
            return
        self.recovered = True
        if not self.writer_lock.acquire():
            return
        if self.spill.count and not self._write():
            return  # the spill stays; its rows keep their results until a later start marks them
        try:
            mark_crashed_runs(self._conn, current_run_id=self.run_info.run_id)
        except sqlite3.Error as exc:
            self.errors.error("recovery", f"trace log {self.db_path}: unfinished earlier runs not marked: {exc}")

    def _write(self) -> bool:
        """The spill (first: it is older) and the pending ops into the database. False: it failed."""
        assert self._conn is not None
        conn = self._conn
        self.busy_since_ns = time.monotonic_ns()
        try:
            batch = self.spill.read() + self._pending if self.spill.count else self._pending
            for attempt in (1, 2):
                self.images.begin()
                try:
                    with conn:
                        for op in batch:
                            self._apply(conn, op)
                    break
                except (sqlite3.Error, OSError) as exc:
                    self.images.rollback()
                    self.write_errors += 1
                    if attempt == 1 and is_disk_full(exc):
                        self.images.make_room(conn)  # rows before images: prune, truncate the WAL, once more
                        continue
                    self._db_failed(exc, len(batch))
                    return False
            if self.spill.count:
                self.spill.reset()
        except OSError as exc:  # reading or resetting the spill journal
            self._spill_error = f"spill journal: {exc.strerror or exc}"
            self.errors.error("spill", f"trace log {self.directory}: {self._spill_error}")
            return False
        finally:
            self.busy_since_ns = None
        for op in self._pending:
            self._release_image(op)
        self.rows_written += sum(op.kind == "part" for op in batch)
        self._pending.clear()
        self._db_error = self._spill_error = None
        return True

    def _apply(self, conn: sqlite3.Connection, op: TraceOp) -> None:
        if op.kind == "part" and op.frame is not None and op.frame.image is not None:
            values = op.values
            path, sha, nbytes, error = self.images.save(seq=values["seq"], decision=values["decision"],
                                                        wall_time=op.frame.wall_time, image=op.frame.image, conn=conn)
            op = TraceOp(op.kind, {**values, "image_path": path, "image_sha256": sha, "image_bytes": nbytes,
                                   "image_error": error or values.get("image_error")})
        apply_op(conn, op)

    def _db_failed(self, exc: BaseException, records: int) -> None:
        self._db_error = f"{type(exc).__name__}: {exc}"
        self._next_db_try = time.monotonic() + DB_RETRY_S
        self.errors.error("write", f"trace log {self.db_path}: write of {records} record(s) failed ({exc}); "
                                   f"rows go to the spill reserve, retried every {DB_RETRY_S:g} s")
        if not is_disk_full(exc) and self._conn is not None:
            try:  # anything but a full disk: a fresh connection on the next try
                self._conn.close()
            except sqlite3.Error as close_exc:
                log.debug("closing the failed connection: %s", close_exc)
            self._conn = None

    def _hold(self, *, final: bool) -> None:
        """The database cannot take the pending ops now: images go, rows to the spill, then memory."""
        for op in self._pending:
            if op.frame is not None:
                self._release_image(op)
                op.values["image_error"] = op.values.get("image_error") or "not kept: the trace log could not write"
                with self._held_lock:
                    self.images_dropped += 1
        if self.spill.ready and self._pending:
            try:
                taken = self.spill.append(self._pending)
                del self._pending[:taken]
            except OSError as exc:
                self._spill_error = f"spill journal cannot be written: {exc.strerror or exc}"
                self.errors.error("spill", f"trace log {self.directory}: {self._spill_error}")
        keep = 0 if final else self.max_backlog
        if len(self._pending) > keep:
            self._dump(self._pending[:len(self._pending) - keep])
            del self._pending[:len(self._pending) - keep]

    def _dump(self, ops: list[TraceOp]) -> None:
        """No room anywhere: each record goes to the service log (journald keeps it on its own disk)."""
        self.errors.log(logging.CRITICAL, "dump", f"trace log: no room for {len(ops)} record(s) in the database, "
                                                  f"the spill reserve or memory (max_backlog); they follow as JSON")
        for op in ops:
            log.critical("unwritten trace %s %s", "verdict" if op.kind == "part" else op.kind,
                         json.dumps(op.values, default=str))
        self.unwritten += len(ops)

    def _set_rows_kept(self, kept: bool) -> None:
        if kept == self._rows_kept:
            return
        self._rows_kept = kept
        why = None if kept else "neither the database nor the spill reserve can take rows"
        if kept:
            log.warning("trace log: rows are kept again")
        else:
            log.error("trace log: %s; they are held in memory (max_backlog %d)", why, self.max_backlog)
        self.on_rows_kept(kept, why)

    def _check_space(self) -> None:
        self._next_space_check = time.monotonic() + SPACE_CHECK_S
        try:
            st = os.statvfs(self.directory if self.directory.exists() else self.directory.parent)
        except OSError:
            return  # a folder that cannot be read shows as a database error
        free = st.f_bavail * st.f_frsize
        self.images.space_check(free, self.min_free_bytes)
        if free >= self.min_free_bytes:
            self._low_space = None
        else:
            self._low_space = (f"{free / 1048576:.1f} MB free on its disk, below "
                               f"tracelog.min_free_mb = {self.min_free_bytes / 1048576:g}")

    def _close(self) -> None:
        self.errors.flush()
        self.writer_lock.release()
        for op in self._pending:
            self._release_image(op)
        self.spill.close()
        if self._conn is not None:
            self._conn.close()
            self._conn = None
