"""The spill journal: rows the trace log keeps on its own disk while the database cannot take them.

`SpillJournal` is space reserved at start: a file of `reserve_bytes` preallocated on the log's own
disk (`posix_fallocate`, so its blocks exist before the disk fills). When the database cannot be
written (disk full, I/O error), the rows are appended to it as JSON lines and fsynced, and they are
replayed into the database, in order, once it can write again, also after a crash or a restart.
An existing journal keeps its allocation across restarts, so a station restarted on a full disk
still has its reserve. Images never go into the journal: rows matter more.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from station.tracelog_records import TraceOp

log = logging.getLogger(__name__)

SPILL_NAME = "spill.journal"


class SpillJournal:
    """A preallocated append-only file of JSON lines; the unused tail is zero bytes."""

    def __init__(self, path: Path, *, reserve_bytes: int) -> None:
        self.path = path
        self.reserve_bytes = reserve_bytes
        self._fd: int | None = None
        self._end = 0        # where the next record goes
        self.count = 0       # records in the journal now
        self.max_seq = 0     # highest part seq in it (seq numbering continues after it)
        self.written_total = 0

    @property
    def ready(self) -> bool:
        return self._fd is not None

    @property
    def free_bytes(self) -> int:
        return max(0, self.reserve_bytes - self._end) if self.ready else 0

    def open(self) -> None:
        """Open (or create) and reserve the space; OSError when the disk cannot give it."""
        if self._fd is not None:
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            allocated = os.fstat(fd).st_blocks * 512
            if allocated < self.reserve_bytes:
                os.posix_fallocate(fd, 0, self.reserve_bytes)
            self._fd = fd
            self._end, self.count, self.max_seq = self._scan()
        except OSError:
            os.close(fd)
            raise

    def _scan(self) -> tuple[int, int, int]:
        """(end offset, records, max seq) of what an earlier run left in the journal."""
        end = count = max_seq = 0
        for offset, op in self._records():
            end, count = offset, count + 1
            if op.kind == "part":
                max_seq = max(max_seq, int(op.values.get("seq", 0)))
        return end, count, max_seq

    def _records(self, limit: int | None = None) -> list[tuple[int, TraceOp]]:
        """(offset after the record, op) for each complete record in the first `limit` bytes (all)."""
        assert self._fd is not None
        data = os.pread(self._fd, os.fstat(self._fd).st_size if limit is None else limit, 0)
        used = data.split(b"\0", 1)[0]
        out, offset = [], 0
        for raw in used.split(b"\n")[:-1]:  # the text after the last newline is a torn write: not a record
            offset += len(raw) + 1
            try:
                out.append((offset, TraceOp.from_json(raw.decode("utf-8"))))
            except (ValueError, KeyError) as exc:
                log.error("spill journal %s: unreadable record at byte %d skipped: %s", self.path, offset, exc)
        return out

    def append(self, ops: list[TraceOp]) -> int:
        """Write as many ops as the reserve holds, durably; return how many. OSError on an I/O error."""
        assert self._fd is not None
        chunk, taken = bytearray(), 0
        for op in ops:
            line = (op.to_json() + "\n").encode("utf-8")
            if self._end + len(chunk) + len(line) > self.reserve_bytes:
                break
            chunk += line
            taken += 1
        if not taken:
            return 0
        os.pwrite(self._fd, bytes(chunk), self._end)
        os.fdatasync(self._fd)
        self._end += len(chunk)
        self.count += taken
        self.written_total += taken
        for op in ops[:taken]:
            if op.kind == "part":
                self.max_seq = max(self.max_seq, int(op.values.get("seq", 0)))
        return taken

    def read(self) -> list[TraceOp]:
        return [op for _, op in self._records(self._end)] if self._fd is not None else []

    def reset(self) -> None:
        """Everything in the journal is in the database now: zero the used part (the space stays reserved)."""
        if self._fd is None or self._end == 0:
            return
        os.pwrite(self._fd, bytes(self._end), 0)
        os.fdatasync(self._fd)
        self._end = self.count = 0

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def read_spill(directory: Path) -> list[TraceOp]:
    """The ops a stopped station left in `directory`'s journal (for tests and audits)."""
    journal = SpillJournal(directory / SPILL_NAME, reserve_bytes=0)
    if not journal.path.exists():
        return []
    journal._fd = os.open(journal.path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return [op for _, op in journal._records()]
    finally:
        journal.close()
