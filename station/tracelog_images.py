"""The trace log's image files: which parts' images are kept, where, and how the disk budget is held.

Images live under `images/YYYY/MM/DD/<seq>_<decision>.<png|jpeg>`, kept by policy (all | rejects |
none, every n-th). They are written inside the trace log's transaction: when it rolls back, its
files are removed too. Past the disk budget the oldest images are deleted and their rows marked
`image_pruned`; on a full disk, images pause for a while and the oldest half is deleted so the rows
(which matter more) still fit. Only the trace-log writer thread calls into an `ImageStore`.
"""

from __future__ import annotations

import errno
import hashlib
import io
import logging
import os
import sqlite3
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from station.records import Decision, Frame, Verdict

log = logging.getLogger("station.tracelog")

IMAGE_PAUSE_S = 30.0  # after a disk-full error, images are not kept for this long


class ImageStore:
    def __init__(self, directory: Path, *, policy: str, sample_every_n: int, image_format: str,
                 disk_budget_bytes: int, on_alarm: Callable[[str, str | None], None]) -> None:
        self.directory = directory
        # These four change live on a reload (station.reload).
        self.policy = policy
        self.sample_every_n = sample_every_n
        self.image_format = image_format
        self.disk_budget_bytes = disk_budget_bytes
        self.on_alarm = on_alarm
        self.bytes = 0
        self.pruned = 0
        self.write_errors = 0
        self._kept = 0
        self._paused_until = 0.0
        self._tx: list[tuple[Path, int]] = []  # files written by the open transaction

    def scan(self) -> None:
        """Measure what is already on disk (a restart keeps the budget honest)."""
        self.bytes = sum(p.stat().st_size for p in self.directory.rglob("*") if p.is_file()) \
            if self.directory.exists() else 0

    def begin(self) -> None:
        self._tx = []

    def rollback(self) -> None:
        """The transaction rolled back: its image files must go too, or they would be orphans."""
        for path, nbytes in self._tx:
            try:
                path.unlink()
                self.bytes -= nbytes
            except FileNotFoundError:
                pass
        self._tx = []

    def _wanted(self, verdict: Verdict, frame: Frame) -> bool:
        if frame.image is None or self.policy == "none":
            return False
        if self.policy == "rejects" and verdict.decision is not Decision.REJECT:
            return False
        self._kept += 1
        return (self._kept - 1) % self.sample_every_n == 0

    def save(self, verdict: Verdict, frame: Frame,
             conn: sqlite3.Connection) -> tuple[str | None, str | None, int | None, str | None]:
        """Write the part's image if the policy keeps it: (relative path, sha256, bytes, error)."""
        if not self._wanted(verdict, frame):
            return None, None, None, None
        if time.monotonic() < self._paused_until:
            return None, None, None, "not kept: disk full"
        when = datetime.fromtimestamp(verdict.wall_time, tz=timezone.utc)
        rel = Path(f"{when:%Y/%m/%d}") / f"{verdict.seq:010d}_{verdict.decision.value}.{self.image_format}"
        data = encode_image(frame.image, self.image_format)
        sha = hashlib.sha256(data).hexdigest()
        target = self.directory / rel
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_suffix(".tmp")
            tmp.write_bytes(data)
            os.replace(tmp, target)
        except OSError as exc:
            self.write_errors += 1
            self.on_alarm("tracelog_images", f"cannot write image {target}: {exc}")
            if is_disk_full(exc):
                self.make_room(None)
            return None, sha, None, f"{type(exc).__name__}: {exc.strerror or exc}"
        self.on_alarm("tracelog_images", None)
        self.bytes += len(data)
        self._tx.append((target, len(data)))
        if self.bytes > self.disk_budget_bytes:
            self.prune(conn)
        return rel.as_posix(), sha, len(data), None

    def make_room(self, conn: sqlite3.Connection | None) -> None:
        """Disk full: pause images and delete the oldest half of them so rows can still be written.
        `conn` is given outside a transaction (the WAL is then truncated too), None inside one."""
        self._paused_until = time.monotonic() + IMAGE_PAUSE_S
        try:
            if conn is None:
                return  # inside the writer's transaction: the failed write's rollback comes first
            with conn:
                self.prune(conn, self.bytes // 2)
            # Move the WAL into the database file and truncate it: the WAL only shrinks this way.
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except (sqlite3.Error, OSError) as exc:
            log.error("could not free disk space by pruning images: %s", exc)

    def prune(self, conn: sqlite3.Connection, goal: int | None = None) -> None:
        """Delete the oldest images until the folder is back under `goal` (default 90% of the budget)."""
        goal = int(self.disk_budget_bytes * 0.9) if goal is None else goal
        while self.bytes > goal:
            rows = conn.execute(
                "SELECT seq, image_path, image_bytes FROM parts WHERE image_path IS NOT NULL AND image_pruned=0 "
                "ORDER BY seq LIMIT 500").fetchall()
            if not rows:
                break
            for seq, rel, nbytes in rows:
                if self.bytes <= goal:
                    break
                try:
                    (self.directory / rel).unlink()
                except FileNotFoundError:
                    pass
                self.bytes -= nbytes or 0
                self.pruned += 1
                conn.execute("UPDATE parts SET image_pruned=1 WHERE seq=?", (seq,))


def encode_image(image: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt == "png":
        Image.fromarray(image).save(buf, format="PNG", compress_level=1)
    else:
        Image.fromarray(image).save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError):
        return exc.errno == errno.ENOSPC
    return "full" in str(exc).lower()
