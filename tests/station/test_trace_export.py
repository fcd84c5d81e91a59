"""`station trace export` on bad input and a closed pipe: one line and exit 2, or quiet as Unix tools are.

The log is a real trace.sqlite made with the station's own schema; the command runs as a subprocess.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from support import REPO

from station.tracelog import open_db

ROWS = 3000


@pytest.fixture
def trace_db(tmp_path):
    db = tmp_path / "trace.sqlite"
    conn = open_db(db)
    conn.executemany(
        "INSERT INTO parts (seq, run_id, station_id, camera_id, captured_at, t_capture_ns, threshold, decision, "
        "reason, fail_safe, decide_ms) VALUES (?, 'r1', 'station-1', 'cam', ?, 0, 0.5, 'ok', 'model', 0, 12.5)",
        [(i, f"2024-05-01T10:{i // 60 % 60:02d}:{i % 60:02d}.000+00:00") for i in range(1, ROWS + 1)])
    conn.commit()
    conn.close()
    return db


def export(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "station.cli", "trace", "export", *args], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})


def test_since_overflow_and_missing_output_folder_are_one_line_exit_2(trace_db, tmp_path):
    for since in ("1000000d", "99999999999h"):
        result = export("--db", str(trace_db), "--since", since)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert result.stderr.strip().splitlines() == [result.stderr.strip()] and "--since" in result.stderr
    missing = tmp_path / "no-such-folder" / "out.csv"
    result = export("--db", str(trace_db), "-o", str(missing))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == f"trace export: cannot write {missing}: No such file or directory"
    good = export("--db", str(trace_db), "-o", str(tmp_path / "out.csv"), "--since", "2024-05-01")
    assert good.returncode == 0 and len((tmp_path / "out.csv").read_text().splitlines()) == ROWS + 1


def test_a_reader_that_closes_the_pipe_ends_the_export_quietly(trace_db):
    proc = subprocess.Popen([sys.executable, "-m", "station.cli", "trace", "export", "--db", str(trace_db)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        header = proc.stdout.readline()
        first = proc.stdout.readline()
        proc.stdout.close()  # `| head -2`: the reader goes away with most rows unread
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert header.startswith(b"seq,") and first.startswith(b"1,")
    assert err == b"", err.decode()
    assert proc.returncode == 141  # 128 + SIGPIPE, what a shell reports for `seq 1e9 | head -2`
