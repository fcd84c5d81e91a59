"""QA reviews of parts, in the HMI's own SQLite file, and their export as training data.

The trace log's parts rows are an audit record and never change; a review is a row of its own
(`reviews` table in `hmi.state_dir/reviews.sqlite`): seq, the verdict it reviews, true defect /
false reject / can't tell / escape, the reviewer, an optional note, when. Reviews are appended,
never updated: the latest one per part counts, the earlier ones stay as history. `export_reviews`
(`station review export --out DIR`) copies reviewed images into the training layout (`def_front/`,
`ok_front/`) with a manifest, checking every image against the sha256 the station logged.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from station.hmi.tracedb import TraceDb

log = logging.getLogger(__name__)

REVIEW_VALUES = ("true_defect", "false_reject", "cant_tell", "escape")
# Where an exported image goes: the part's true class. "cant_tell" teaches nothing and is not exported.
EXPORT_FOLDER = {"true_defect": "def_front", "escape": "def_front", "false_reject": "ok_front"}
MAX_NOTE = 500
MANIFEST_COLUMNS = ("seq", "file", "sha256", "review", "reviewer", "reviewed_at", "note", "original_path",
                    "decision", "reason", "p_defect", "threshold", "captured_at", "model_id", "station_id")

SCHEMA = """
CREATE TABLE IF NOT EXISTS reviews (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    seq          INTEGER NOT NULL,
    station_id   TEXT,
    run_id       TEXT,
    decision     TEXT,
    reason       TEXT,
    p_defect     REAL,
    image_sha256 TEXT,
    review       TEXT NOT NULL,
    reviewer     TEXT NOT NULL,
    note         TEXT,
    reviewed_at  TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS reviews_seq ON reviews(seq);
"""


class ReviewError(ValueError):
    """A review that cannot be recorded or exported; the message says why."""


class ReviewStore:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def _connect(self, *, write: bool) -> sqlite3.Connection:
        if write:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=5.0)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(SCHEMA)
        else:
            if not self.path.is_file():
                raise FileNotFoundError(self.path)
            conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=5.0)
        conn.row_factory = sqlite3.Row
        return conn

    def add(self, part: dict[str, Any], *, review: str, reviewer: str, note: str | None) -> None:
        if review not in REVIEW_VALUES:
            raise ReviewError(f"review {review!r}: one of {', '.join(REVIEW_VALUES)}")
        note = (note or "").strip() or None
        if note is not None and len(note) > MAX_NOTE:
            raise ReviewError(f"note: at most {MAX_NOTE} characters")
        conn = self._connect(write=True)
        try:
            with conn:
                conn.execute(
                    "INSERT INTO reviews (seq, station_id, run_id, decision, reason, p_defect, image_sha256, review, "
                    "reviewer, note, reviewed_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    (part["seq"], part.get("station_id"), part.get("run_id"), part.get("decision"),
                     part.get("reason"), part.get("p_defect"), part.get("image_sha256"), review, reviewer, note,
                     datetime.now(timezone.utc).isoformat(timespec="seconds")))
        finally:
            conn.close()
        log.info("part %s reviewed as %s by %s", part["seq"], review, reviewer)

    def latest(self, seqs: list[int] | None = None) -> dict[int, dict[str, Any]]:
        """The latest review of each part (of `seqs`, or all)."""
        try:
            conn = self._connect(write=False)
        except FileNotFoundError:
            return {}
        try:
            where = "" if seqs is None else f"AND r.seq IN ({','.join(str(int(s)) for s in seqs) or 'NULL'})"
            rows = conn.execute(
                "SELECT r.* FROM reviews r WHERE r.id = (SELECT MAX(id) FROM reviews WHERE seq = r.seq) "
                f"{where} ORDER BY r.seq").fetchall()
        finally:
            conn.close()
        return {int(r["seq"]): dict(r) for r in rows}

    def history(self, seq: int) -> list[dict[str, Any]]:
        try:
            conn = self._connect(write=False)
        except FileNotFoundError:
            return []
        try:
            return [dict(r) for r in conn.execute("SELECT * FROM reviews WHERE seq = ? ORDER BY id DESC", (seq,))]
        finally:
            conn.close()


@dataclass
class ExportResult:
    exported: int = 0
    skipped_cant_tell: int = 0
    missing: list[str] | None = None  # "seq N: why" for each image that could not be exported

    def line(self) -> str:
        miss = len(self.missing or [])
        return (f"exported {self.exported} image(s); {self.skipped_cant_tell} 'can't tell' not exported; "
                f"{miss} could not be exported")


def export_reviews(store: ReviewStore, db: TraceDb, out: Path) -> ExportResult:
    """Copy reviewed images into `out/def_front`, `out/ok_front` and write `out/manifest.csv`.

    Refuses an `out` folder that exists and is not empty: an earlier export is never overwritten or mixed.
    """
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ReviewError(f"--out {out} exists and is not an empty folder; give a new folder")
    reviews = store.latest()
    if not reviews:
        raise ReviewError(f"no reviews in {store.path} yet")
    result = ExportResult(missing=[])
    rows: list[dict[str, Any]] = []
    images_root = db.images_dir.resolve()
    for seq, review in sorted(reviews.items()):
        folder = EXPORT_FOLDER.get(review["review"])
        if folder is None:
            result.skipped_cant_tell += 1
            continue
        part = db.part(seq)
        if part is None:
            result.missing.append(f"seq {seq}: not in the trace log {db.db_path}")
            continue
        if not part.get("image_path") or part.get("image_pruned"):
            why = "pruned by the disk budget" if part.get("image_pruned") else "no image kept (image policy)"
            result.missing.append(f"seq {seq}: {why}")
            continue
        source = (images_root / part["image_path"]).resolve()
        if not source.is_relative_to(images_root):
            result.missing.append(f"seq {seq}: image path {part['image_path']!r} is outside the image folder")
            continue
        try:
            data = source.read_bytes()
        except OSError as exc:
            result.missing.append(f"seq {seq}: {source}: {exc.strerror or exc}")
            continue
        sha = hashlib.sha256(data).hexdigest()
        if part.get("image_sha256") and sha != part["image_sha256"]:
            result.missing.append(f"seq {seq}: {source} does not match the sha256 the station logged")
            continue
        name = f"{seq:010d}_{review['review']}{source.suffix}"
        target = out / folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        result.exported += 1
        rows.append({"seq": seq, "file": f"{folder}/{name}", "sha256": sha, "review": review["review"],
                     "reviewer": review["reviewer"], "reviewed_at": review["reviewed_at"], "note": review["note"] or "",
                     "original_path": part["image_path"], "decision": part["decision"], "reason": part["reason"],
                     "p_defect": part["p_defect"], "threshold": part["threshold"], "captured_at": part["captured_at"],
                     "model_id": part["model_id"], "station_id": part["station_id"]})
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "manifest.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=MANIFEST_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return result
