"""The HMI's side of the live channel: a poller of the station's socket and the change feed behind the
live page's server-sent events.

`LiveHub.run` asks the station for its status every `hmi.poll_ms` over the unix socket
(`station.control`). When the last part, the alarms or the health change it fetches the part's
committed trace-log row (image path, actuator result) and the shift counters, bumps a version and
wakes every browser's event stream. When the station does not answer (stopped, or no
`hmi.control_socket`) the hub follows the trace log alone, so the page still shows the parts the log
receives, and says that the station is unreachable.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any

import anyio

from station.hmi.tracedb import ShiftCounter, ShiftCounts, TraceDb, TraceLogUnavailable

log = logging.getLogger(__name__)


class StationUnreachable(RuntimeError):
    """The station's socket is missing, refuses, times out or answered garbage."""


async def station_request(path: Path | None, payload: dict[str, Any], *, timeout_s: float) -> dict[str, Any]:
    """One JSON-lines request to the station's live-state socket."""
    if path is None:
        raise StationUnreachable("no hmi.control_socket is configured: the station has no live channel")
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_unix_connection(str(path), limit=4 * 1024 * 1024)
            try:
                writer.write((json.dumps(payload) + "\n").encode())
                await writer.drain()
                line = await reader.readline()
            finally:
                writer.close()
    except TimeoutError as exc:
        raise StationUnreachable(f"station socket {path}: no answer within {timeout_s:g} s") from exc
    except OSError as exc:
        raise StationUnreachable(f"station socket {path}: {exc.strerror or exc}") from exc
    try:
        answer = json.loads(line)
    except json.JSONDecodeError as exc:
        raise StationUnreachable(f"station socket {path} answered {line[:80]!r}, expected one JSON line") from exc
    if not isinstance(answer, dict):
        raise StationUnreachable(f"station socket {path} answered a {type(answer).__name__}, expected an object")
    return answer


class LiveHub:
    def __init__(self, *, control_socket: Path | None, db: TraceDb, poll_ms: int, shift_starts: list[str]) -> None:
        self.control_socket = control_socket
        self.db = db
        self.poll_s = poll_ms / 1000.0
        self.shift = ShiftCounter(db, shift_starts)
        self.status: dict[str, Any] | None = None
        self.station_error: str | None = "not asked yet"
        self.db_error: str | None = None
        self.last_row: dict[str, Any] | None = None
        self.counts: ShiftCounts | None = None
        self.version = 0
        self.polls = 0
        self.poll_errors = 0
        self._key: tuple | None = None
        self._changed = asyncio.Event()
        self._next_counts = 0.0

    async def run(self) -> None:
        while True:
            await self.poll_once()
            await asyncio.sleep(self.poll_s)

    async def poll_once(self) -> None:
        self.polls += 1
        try:
            answer = await station_request(self.control_socket, {"op": "status"}, timeout_s=2.0)
            if not answer.get("ok"):
                raise StationUnreachable(f"station refused the status request: {answer.get('error')}")
            self.status, self.station_error = answer["status"], None
        except StationUnreachable as exc:
            if self.station_error != str(exc):
                log.warning("live state unavailable: %s", exc)
            self.poll_errors += 1
            self.status, self.station_error = None, str(exc)
        last = (self.status or {}).get("last_part") or {}
        try:
            seq = last.get("seq") if self.status else await anyio.to_thread.run_sync(self.db.max_seq)
            if seq and (self.last_row is None or self.last_row["seq"] != seq):
                row = await anyio.to_thread.run_sync(self.db.part, seq)
                if row is not None:  # not committed yet: the next poll finds it (the writer commits in ~20 ms)
                    self.last_row = row
            now = time.monotonic()
            if self.counts is None or now >= self._next_counts or (self.last_row and self._row_changed()):
                self.counts = await anyio.to_thread.run_sync(self.shift.refresh)
                self._next_counts = now + 5.0  # refreshed on every new part anyway; this covers quiet lines
            self.db_error = None
        except TraceLogUnavailable as exc:
            self.db_error = str(exc)
        key = (self.last_row["seq"] if self.last_row else None,
               self.last_row["actuator_result"] if self.last_row else None,
               json.dumps((self.status or {}).get("alarms")), bool(self.status), self.station_error is None,
               self.db_error, self.counts.parts if self.counts else None)
        if key != self._key:
            self._key = key
            self.version += 1
            self._changed.set()
            self._changed = asyncio.Event()

    def _row_changed(self) -> bool:
        return self._key is None or self._key[0] != self.last_row["seq"]  # type: ignore[index]

    async def wait_change(self, seen_version: int, timeout_s: float) -> bool:
        """True as soon as the state differs from `seen_version`; False after `timeout_s` without a change."""
        if self.version != seen_version:
            return True
        event = self._changed
        try:
            async with asyncio.timeout(timeout_s):
                await event.wait()
        except TimeoutError:
            return False
        return True

    async def request(self, payload: dict[str, Any], *, timeout_s: float = 5.0) -> dict[str, Any]:
        return await station_request(self.control_socket, payload, timeout_s=timeout_s)
