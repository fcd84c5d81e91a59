"""The trace log's database: its SQLite schema, how the writer opens it, and the read-only query for exports.

One row per part in `parts` (from capture to the actuator's outcome), one row per run in `runs`,
and `events` for alarms, reloads and supervisor actions beside the parts they concern. The writer
(`station.tracelog`) opens it in WAL mode, so readers (`station trace export`, the HMI) can open it
read-only at the same time without ever blocking the line.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

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


def open_db(path: Path) -> sqlite3.Connection:
    """The writer's connection: WAL, synchronous NORMAL (durable at each checkpoint), schema in place."""
    conn = sqlite3.connect(path, timeout=5.0, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.executescript(SCHEMA)
    conn.commit()
    return conn


def rows_since(db_path: Path, since_iso: str | None) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Read parts rows (for `station trace export`) from a log, opened read-only."""
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        cur = conn.execute("SELECT * FROM parts WHERE captured_at >= ? ORDER BY seq", (since_iso or "",))
        cols = [d[0] for d in cur.description]
        return cols, cur.fetchall()
    finally:
        conn.close()
