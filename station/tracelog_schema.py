"""The trace log's database: its SQLite schema, how the writer opens it, and the read-only query for exports.

One row per part in `parts` (from capture to the actuator's outcome), one row per run in `runs`,
and `events` for alarms, reloads and supervisor actions beside the parts they concern. The writer
(`station.tracelog`) opens it in WAL mode, so readers (`station trace export`, the HMI) can open it
read-only at the same time without ever blocking the line.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path
from typing import Any

from station.image_checks import ALL_MEASURES

log = logging.getLogger(__name__)

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
    image_error     TEXT,
    gate_failed     TEXT,
    gate_brightness REAL,
    gate_contrast   REAL,
    gate_dark_clip  REAL,
    gate_bright_clip REAL,
    gate_focus      REAL,
    gate_noise      REAL,
    gate_part_offset REAL,
    gate_part_size  REAL,
    gate_novelty    REAL,
    gate_ms         REAL
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

# Columns added after the first release, with their types: `open_db` adds the ones an existing log lacks
# (plant logs outlive releases; ALTER TABLE ADD COLUMN keeps every row, the new columns read NULL).
MIGRATIONS: list[tuple[str, str, str]] = [
    ("parts", "gate_failed", "TEXT"),        # violated validity-gate limits, e.g. "brightness_min,novelty_max"
    *[("parts", f"gate_{m}", "REAL") for m in ALL_MEASURES],  # what the gate measured on the frame
    ("parts", "gate_ms", "REAL"),            # time the gate took on the frame (checks, novelty, comparison)
]


def open_db(path: Path) -> sqlite3.Connection:
    """The writer's connection: WAL, synchronous NORMAL (durable at each checkpoint), schema in place."""
    conn = sqlite3.connect(path, timeout=5.0, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.executescript(SCHEMA)
    migrate(conn)
    conn.commit()
    return conn


def migrate(conn: sqlite3.Connection) -> list[str]:
    """Add the MIGRATIONS columns an older log lacks; return what was added."""
    added = []
    for table, column, kind in MIGRATIONS:
        have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        if column not in have:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
            added.append(f"{table}.{column}")
    if added:
        log.warning("trace log schema upgraded: added %s", ", ".join(added))
    return added


def rows_since(db_path: Path, since_iso: str | None) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Read parts rows (for `station trace export`) from a log, opened read-only."""
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        cur = conn.execute("SELECT * FROM parts WHERE captured_at >= ? ORDER BY seq", (since_iso or "",))
        cols = [d[0] for d in cur.description]
        return cols, cur.fetchall()
    finally:
        conn.close()
