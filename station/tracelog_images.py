"""The trace log's image files: which parts' images are kept, where, and how the disk budget is held.

Images live under `images/YYYY/MM/DD/<seq>_<decision>.<png|jpeg>`, kept by policy (all | rejects |
none, every n-th). They are written inside the trace log's transaction: when it rolls back, its
files are removed too. Past the disk budget the oldest images are deleted and their rows marked
`image_pruned`; on a full disk, images pause for a while (or until the trace log sees free space
again) and the oldest half is deleted so the rows (which matter more) still fit. An image outside
the station's frame size limits is never stored. Only the trace-log writer thread calls into an
`ImageStore`, except `wanted_by_policy`, which the intake asks so an image nobody keeps is never held.
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

import numpy as np
from PIL import Image

from station.cameras.pixels import MAX_SIDE_PX, MIN_SIDE_PX

log = logging.getLogger(__name__)

IMAGE_PAUSE_S = 30.0  # after a disk-full error, images are not kept for this long


class ImageStore:
    def __init__(self, directory: Path, *, policy: str, sample_every_n: int, image_format: str,
                 disk_budget_bytes: int) -> None:
        self.directory = directory
        # These four change live on a reload (`update_policy`).
        self.policy = policy
        self.sample_every_n = sample_every_n
        self.image_format = image_format
        self.disk_budget_bytes = disk_budget_bytes
        self.problem: str | None = None  # why images are not being kept right now (the tracelog_images alarm)
        self.bytes = 0
        self.pruned = 0
        self.write_errors = 0
        self._kept = 0
        self._paused_until = 0.0
        self._pruned_since_pause = 0
        self._tx: list[tuple[Path, int]] = []  # files written by the open transaction

    def update_policy(self, *, policy: str, sample_every_n: int, image_format: str, disk_budget_bytes: int) -> None:
        """Which images are kept, how, and the disk budget, from the next part on (live reload). Plain
        attribute stores: the intake reads `policy` from other threads, one value at a time."""
        self.policy, self.sample_every_n, self.image_format = policy, sample_every_n, image_format
        self.disk_budget_bytes = disk_budget_bytes

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

    def wanted_by_policy(self, decision: str) -> bool:
        """Could the policy keep this part's image (before sampling)? Safe to ask from any thread."""
        policy = self.policy
        return policy == "all" or (policy == "rejects" and decision == "reject")

    def _wanted(self, decision: str) -> bool:
        if not self.wanted_by_policy(decision):
            return False
        self._kept += 1
        return (self._kept - 1) % self.sample_every_n == 0

    @property
    def paused(self) -> bool:
        return time.monotonic() < self._paused_until

    def space_check(self, free_bytes: int, min_free_bytes: int) -> None:
        """The trace log's periodic free-space reading. Paused images resume early only when the space
        came from outside (an operator cleaned up): more than our own pruning freed, plus the minimum.
        Space the pruning made is for the rows; taking it back for images would fill the disk again."""
        if self.paused and free_bytes >= min_free_bytes + self._pruned_since_pause:
            self._paused_until = 0.0
            self.problem = None
            log.warning("images are kept again: the trace log's disk has %.1f MB free", free_bytes / 1048576)

    def save(self, *, seq: int, decision: str, wall_time: float, image: np.ndarray,
             conn: sqlite3.Connection) -> tuple[str | None, str | None, int | None, str | None]:
        """Write the part's image if the policy keeps it: (relative path, sha256, bytes, error)."""
        if not self._wanted(decision):
            return None, None, None, None
        problem = image_size_problem(image)
        if problem is not None:
            return None, None, None, f"not kept: {problem}"
        if self.paused:
            return None, None, None, "not kept: disk full"
        when = datetime.fromtimestamp(wall_time, tz=timezone.utc)
        rel = Path(f"{when:%Y/%m/%d}") / f"{seq:010d}_{decision}.{self.image_format}"
        data = encode_image(image, self.image_format)
        sha = hashlib.sha256(data).hexdigest()
        target = self.directory / rel
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_suffix(".tmp")
            tmp.write_bytes(data)
            os.replace(tmp, target)
        except OSError as exc:
            self.write_errors += 1
            self.problem = f"images cannot be written into {self.directory}: {exc.strerror or exc}"
            if is_disk_full(exc):
                self.make_room(None)
            return None, sha, None, f"{type(exc).__name__}: {exc.strerror or exc}"
        self.problem = None
        self.bytes += len(data)
        self._tx.append((target, len(data)))
        if self.bytes > self.disk_budget_bytes:
            self.prune(conn)
        return rel.as_posix(), sha, len(data), None

    def make_room(self, conn: sqlite3.Connection | None) -> None:
        """Disk full: pause images and delete the oldest half of them so rows can still be written.
        `conn` is given outside a transaction (the WAL is then truncated too), None inside one."""
        if self.policy != "none":  # with no images kept there is nothing to pause (or to alarm about)
            if not self.paused:
                self._pruned_since_pause = 0
            self._paused_until = time.monotonic() + IMAGE_PAUSE_S
            self.problem = f"images paused: the disk of {self.directory} filled up"
        try:
            if conn is None:
                return  # inside the writer's transaction: the failed write's rollback comes first
            with conn:
                self.prune(conn, self.bytes // 2)
            # Move the WAL into the database file and truncate it: the WAL only shrinks this way.
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except (sqlite3.Error, OSError) as exc:
            # Rows are what matters: the writer's own error line (rate-limited) reports the disk.
            log.debug("could not free disk space by pruning images: %s", exc)

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
                self._pruned_since_pause += nbytes or 0
                self.pruned += 1
                conn.execute("UPDATE parts SET image_pruned=1 WHERE seq=?", (seq,))


def image_size_problem(image: np.ndarray) -> str | None:
    """Why an image is outside the station's frame limits (and must not be stored), or None."""
    h, w = image.shape[:2]
    if MIN_SIDE_PX <= w <= MAX_SIDE_PX and MIN_SIDE_PX <= h <= MAX_SIDE_PX:
        return None
    return f"{w}x{h} px is outside the {MIN_SIDE_PX}..{MAX_SIDE_PX} px frame limit"


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
