"""Read-only queries on the station's trace log for the HMI pages (SQLite `mode=ro`; WAL lets the
station write meanwhile).

Every call opens its own read-only connection: the HMI can never change an audit row, and a request
never waits behind another thread's cursor. Columns are read by name and reasons, alarms and
actuator results as the strings the station wrote, so columns added by newer stations simply show
up. Shift counters are kept incrementally: rows old enough to be final (`SETTLE_S`) are counted once
by seq, the last few seconds are recounted on every refresh.
"""

from __future__ import annotations

import sqlite3
import threading
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

SETTLE_S = 10.0  # a row this old has its actuator result: it no longer changes

DECISIONS = ("ok", "reject")
LABELS = ("defective", "ok")


class TraceLogUnavailable(RuntimeError):
    """The trace log does not exist yet or cannot be read; the message says which."""


def iso(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).isoformat(timespec="milliseconds")


@dataclass
class SearchFilters:
    since: str | None = None  # ISO UTC
    until: str | None = None
    decision: str | None = None
    reason: str | None = None
    label: str | None = None
    seqs_in: set[int] | None = None      # review state: these seqs only
    seqs_not_in: set[int] | None = None  # review state: not these

    def where(self) -> tuple[str, list[Any]]:
        clauses, args = ["1=1"], []
        for column, op, value in (("captured_at", ">=", self.since), ("captured_at", "<", self.until),
                                  ("decision", "=", self.decision), ("reason", "=", self.reason),
                                  ("label", "=", self.label)):
            if value:
                clauses.append(f"{column} {op} ?")
                args.append(value)
        if self.seqs_in is not None:
            clauses.append(f"seq IN ({','.join(str(int(s)) for s in self.seqs_in) or 'NULL'})")
        if self.seqs_not_in:
            clauses.append(f"seq NOT IN ({','.join(str(int(s)) for s in self.seqs_not_in)})")
        return " AND ".join(clauses), args


class TraceDb:
    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.db_path = self.directory / "trace.sqlite"
        self.images_dir = self.directory / "images"

    def connect(self) -> sqlite3.Connection:
        if not self.db_path.is_file():
            raise TraceLogUnavailable(f"no trace log at {self.db_path} yet (the station has not run)")
        try:
            conn = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=2.0, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute("SELECT 1 FROM parts LIMIT 1")
        except sqlite3.Error as exc:
            raise TraceLogUnavailable(f"trace log {self.db_path} cannot be read: {exc}") from exc
        return conn

    def _all(self, sql: str, args: tuple | list = ()) -> list[dict[str, Any]]:
        conn = self.connect()
        try:
            return [dict(r) for r in conn.execute(sql, args).fetchall()]
        except sqlite3.Error as exc:
            raise TraceLogUnavailable(f"trace log query failed: {exc}") from exc
        finally:
            conn.close()

    # ---- single parts ---------------------------------------------------------------------------
    def part(self, seq: int) -> dict[str, Any] | None:
        rows = self._all("SELECT * FROM parts WHERE seq = ?", (seq,))
        return rows[0] if rows else None

    def last_part(self) -> dict[str, Any] | None:
        rows = self._all("SELECT * FROM parts ORDER BY seq DESC LIMIT 1")
        return rows[0] if rows else None

    def max_seq(self) -> int:
        rows = self._all("SELECT COALESCE(MAX(seq), 0) AS m FROM parts")
        return int(rows[0]["m"])

    # ---- lists ---------------------------------------------------------------------------------------
    def rejects(self, *, limit: int, offset: int = 0, exclude: set[int] | None = None) -> list[dict[str, Any]]:
        f = SearchFilters(decision="reject", seqs_not_in=exclude)
        where, args = f.where()
        return self._all(f"SELECT * FROM parts WHERE {where} ORDER BY seq DESC LIMIT ? OFFSET ?",
                         [*args, limit, offset])

    def search(self, filters: SearchFilters, *, limit: int | None, offset: int = 0) -> list[dict[str, Any]]:
        where, args = filters.where()
        page = "" if limit is None else f" LIMIT {int(limit)} OFFSET {int(offset)}"
        return self._all(f"SELECT * FROM parts WHERE {where} ORDER BY seq DESC{page}", args)

    def count(self, filters: SearchFilters) -> int:
        where, args = filters.where()
        return int(self._all(f"SELECT COUNT(*) AS n FROM parts WHERE {where}", args)[0]["n"])

    def export_rows(self, filters: SearchFilters) -> tuple[list[str], list[tuple]]:
        """The same columns and order as `station trace export`: every column, oldest first."""
        where, args = filters.where()
        conn = self.connect()
        try:
            cur = conn.execute(f"SELECT * FROM parts WHERE {where} ORDER BY seq", args)
            return [d[0] for d in cur.description], [tuple(r) for r in cur.fetchall()]
        finally:
            conn.close()

    def distinct(self, column: str) -> list[str]:
        assert column in ("reason", "decision", "label", "actuator_result")
        return [r["v"] for r in self._all(f"SELECT DISTINCT {column} AS v FROM parts WHERE {column} IS NOT NULL "
                                          f"ORDER BY v")]

    def events(self, *, kinds: tuple[str, ...] | None = None, limit: int = 50) -> list[dict[str, Any]]:
        where = f"WHERE kind IN ({','.join('?' * len(kinds))})" if kinds else ""
        return self._all(f"SELECT * FROM events {where} ORDER BY id DESC LIMIT ?", [*(kinds or ()), limit])

    # ---- trends ----------------------------------------------------------------------------------------
    def hourly(self, since: str) -> list[dict[str, Any]]:
        return self._all(
            "SELECT substr(captured_at, 1, 13) AS hour, COUNT(*) AS parts, SUM(decision = 'ok') AS ok, "
            "SUM(decision = 'reject') AS rejects, SUM(fail_safe) AS fail_safes FROM parts "
            "WHERE captured_at >= ? GROUP BY hour ORDER BY hour", (since,))

    def fail_safes_by_reason(self, since: str) -> list[dict[str, Any]]:
        return self._all("SELECT substr(captured_at, 1, 13) AS hour, reason, COUNT(*) AS n FROM parts "
                         "WHERE captured_at >= ? AND fail_safe = 1 GROUP BY hour, reason ORDER BY hour", (since,))

    def p_defect_histogram(self, since: str, bins: int = 50) -> list[int]:
        rows = self._all("SELECT MIN(CAST(p_defect * ? AS INTEGER), ? - 1) AS b, COUNT(*) AS n FROM parts "
                         "WHERE captured_at >= ? AND p_defect IS NOT NULL AND reason = 'model' GROUP BY b",
                         (bins, bins, since))
        counts = [0] * bins
        for r in rows:
            counts[max(0, int(r["b"]))] += int(r["n"])
        return counts

    def latencies(self, since: str) -> list[dict[str, Any]]:
        return self._all("SELECT substr(captured_at, 1, 13) AS hour, decide_ms, fire_lateness_ms FROM parts "
                         "WHERE captured_at >= ?", (since,))


def shift_start(now: datetime, starts: list[str]) -> datetime:
    """The latest shift start (local time, HH:MM) at or before `now` (an aware datetime)."""
    local = now.astimezone()
    candidates = []
    for value in starts:
        hh, mm = (int(x) for x in value.split(":"))
        today = local.replace(hour=hh, minute=mm, second=0, microsecond=0)
        candidates.append(today if today <= local else today - timedelta(days=1))
    return max(candidates)


@dataclass
class ShiftCounts:
    since: datetime
    parts: int = 0
    decisions: Counter = field(default_factory=Counter)
    reasons: Counter = field(default_factory=Counter)       # fail-safe verdicts by reason
    actuator: Counter = field(default_factory=Counter)

    @property
    def yield_pct(self) -> float | None:
        return 100.0 * self.decisions["ok"] / self.parts if self.parts else None


class ShiftCounter:
    """Counts of the current shift: settled rows counted once (by seq), the recent tail recounted."""

    def __init__(self, db: TraceDb, shift_starts: list[str]) -> None:
        self.db = db
        self.shift_starts = shift_starts
        self._lock = threading.Lock()
        self._since: datetime | None = None
        self._settled = ShiftCounts(since=datetime.now(timezone.utc))
        self._cursor = 0

    def refresh(self, now: datetime | None = None) -> ShiftCounts:
        now = now or datetime.now(timezone.utc)
        since = shift_start(now, self.shift_starts)
        with self._lock:
            if since != self._since:  # a new shift: start counting again
                self._since, self._cursor = since, 0
                self._settled = ShiftCounts(since=since)
            settle_iso = iso(now - timedelta(seconds=SETTLE_S))
            conn = self.db.connect()
            try:
                rows = conn.execute(
                    "SELECT seq, decision, reason, fail_safe, actuator_result FROM parts WHERE seq > ? "
                    "AND captured_at >= ? AND captured_at < ? ORDER BY seq", (self._cursor, iso(since), settle_iso)
                ).fetchall()
                tail = conn.execute(
                    "SELECT seq, decision, reason, fail_safe, actuator_result FROM parts WHERE captured_at >= ? "
                    "AND captured_at >= ?", (settle_iso, iso(since))).fetchall()
            finally:
                conn.close()
            for r in rows:
                _add(self._settled, r)
                self._cursor = max(self._cursor, r["seq"])
            out = ShiftCounts(since=since, parts=self._settled.parts, decisions=Counter(self._settled.decisions),
                              reasons=Counter(self._settled.reasons), actuator=Counter(self._settled.actuator))
        for r in tail:
            if r["seq"] > self._cursor:
                _add(out, r)
        return out


def _add(counts: ShiftCounts, row: sqlite3.Row) -> None:
    counts.parts += 1
    counts.decisions[row["decision"]] += 1
    if row["fail_safe"]:
        counts.reasons[row["reason"]] += 1
    counts.actuator[row["actuator_result"]] += 1


def since_hours(hours: float) -> str:
    return iso(datetime.now(timezone.utc) - timedelta(hours=hours))


def parse_local(text: str | None) -> str | None:
    """A datetime-local form value (local time) as ISO UTC; None when empty. ValueError when malformed."""
    if not text:
        return None
    return iso(datetime.fromisoformat(text).astimezone())
