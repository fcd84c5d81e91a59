"""Open-time recovery of the trace log: a run that ended without a stop (the process was killed or crashed).

A run's row gets `stopped_at` when the station stops in order. A run still without one when the next
station opens the log ended by a crash: kill -9, power loss, the OOM killer, a watchdog abort. The
station that opens the log next marks it: the run's row gets `stopped_at` (its last record, the
best estimate there is) and the summary `{"ended": "crashed", ...}`, a `run_crashed` event says so
beside the run's other events, and its parts whose actuator command was still pending get
actuator_result `unknown` instead of `none`: a reject whose outcome was never reported may or may
not have been ejected, and `none` means "no command needed". In a run that sent every verdict to a
PLC handshake (some ok part has a result other than `none`) its pending ok parts are marked too.

A live run of another process must never be marked: the writer holds an exclusive lock on
`writer.lock` in the log's folder while it writes (the kernel drops it when a process dies), and the
recovery runs only while this writer holds it.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import sqlite3
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

log = logging.getLogger(__name__)

UNKNOWN_NOTE = ("unknown: the station stopped (crash or kill) before this part's command was reported; "
                "the ejector may or may not have fired")


@dataclass(frozen=True)
class CrashedRun:
    run_id: str
    last_record_at: str
    unknown_rows: int


class WriterLock:
    """An exclusive, non-blocking flock on `<folder>/writer.lock`, held while one station writes the log."""

    def __init__(self, directory: Path) -> None:
        self.path = Path(directory) / "writer.lock"
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> bool:
        """True when this writer holds the lock (now or already); False when another process does, or
        the folder does not allow the lock file (then nothing is recovered: the log cannot be written)."""
        if self._fd is not None:
            return True
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o640)
        except OSError as exc:
            log.warning("trace log lock %s cannot be created (%s): unfinished runs are not checked", self.path,
                        exc.strerror or exc)
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            log.warning("another process is writing the trace log in %s; its runs are left as they are",
                        self.path.parent)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None


def mark_crashed_runs(conn: sqlite3.Connection, *, current_run_id: str) -> list[CrashedRun]:
    """Mark every run but `current_run_id` that has no stop time (see the module doc); commits."""
    crashed = []
    now = datetime.fromtimestamp(time.time(), tz=timezone.utc).isoformat(timespec="milliseconds")
    with conn:
        runs = conn.execute("SELECT run_id, started_at FROM runs WHERE stopped_at IS NULL AND run_id != ?",
                            (current_run_id,)).fetchall()
        for run_id, started_at in runs:
            last_part, = conn.execute("SELECT MAX(captured_at) FROM parts WHERE run_id = ?", (run_id,)).fetchone()
            last_event, = conn.execute("SELECT MAX(at) FROM events WHERE run_id = ?", (run_id,)).fetchone()
            last = max(t for t in (started_at, last_part, last_event) if t is not None)
            every_part, = conn.execute(
                "SELECT EXISTS (SELECT 1 FROM parts WHERE run_id = ? AND decision = 'ok' "
                "AND actuator_result != 'none')", (run_id,)).fetchone()
            unknown = conn.execute(
                "UPDATE parts SET actuator_result = 'unknown', actuator_error = ? WHERE run_id = ? "
                "AND actuator_result = 'none' AND (decision = 'reject' OR ?)",
                (UNKNOWN_NOTE, run_id, every_part)).rowcount
            summary = {"ended": "crashed", "stopped_at_is": "its last record", "detected_by_run": current_run_id,
                       "unknown_actuator_results": unknown}
            conn.execute("UPDATE runs SET stopped_at = ?, summary_json = ? WHERE run_id = ?",
                         (last, json.dumps(summary), run_id))
            conn.execute("INSERT INTO events(at, run_id, level, kind, message) VALUES (?,?,?,?,?)",
                         (now, run_id, "ERROR", "run_crashed",
                          f"run {run_id} ended without a stop (crash or kill) after {last}; {unknown} part(s) "
                          f"whose actuator command was pending marked 'unknown' (found by run {current_run_id})"))
            crashed.append(CrashedRun(run_id=run_id, last_record_at=last, unknown_rows=unknown))
    for run in crashed:
        log.warning("trace log: run %s ended without a stop (crash or kill) after %s; %d part(s) with a pending "
                    "actuator command marked 'unknown'", run.run_id, run.last_record_at, run.unknown_rows)
    return crashed
