"""Test helpers for the service: a real notify socket that records what the station sends, and a
`station run` subprocess with its stderr in a file and its trace log readable while it runs."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

from support import REPO, STATION_CLI, until  # noqa: F401  (until: the service tests import it from here)

from support import query as read_rows  # noqa: F401  (the service tests' name for it)


class NotifyListener:
    """A unix datagram socket standing in for systemd's $NOTIFY_SOCKET; records (t_monotonic, fields)."""

    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        bind_to = b"\0" + self.path[1:].encode() if self.path.startswith("@") else self.path
        self.sock.bind(bind_to)
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, dict[str, str]]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name="notify-listener", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            with self._lock:
                self.messages.append((time.monotonic(), fields))

    def snapshot(self) -> list[tuple[float, dict[str, str]]]:
        with self._lock:
            return list(self.messages)

    def times(self, key: str, value: str | None = None) -> list[float]:
        return [t for t, f in self.snapshot() if key in f and (value is None or f[key] == value)]

    def statuses(self) -> list[str]:
        return [f["STATUS"] for _, f in self.snapshot() if "STATUS" in f]

    def wait_for(self, predicate: Callable[[dict[str, str]], bool], timeout: float = 60.0,
                 after: float = 0.0) -> float:
        """Time of the first message (sent after `after`) matching `predicate`; AssertionError on timeout."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for t, fields in self.snapshot():
                if t >= after and predicate(fields):
                    return t
            time.sleep(0.02)
        raise AssertionError(f"no matching notification within {timeout} s; got {self.snapshot()[-8:]}")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()
        if not self.path.startswith("@"):
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass


class StationProcess:
    """`station run -c CONFIG` (tests/station_cli.py, or a fault-injection runner script) as a real subprocess."""

    def __init__(self, config: Path, *, cwd: Path, env: dict[str, str] | None = None,
                 runner: Path | None = None, journal: bool = False) -> None:
        self.stderr_path = cwd / "station.stderr"
        self._stderr = open(self.stderr_path, "w")
        env = dict(env or {})
        if journal:
            # What systemd does for StandardError=journal: name the stream so the service can tell.
            st = os.fstat(self._stderr.fileno())
            env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        cmd = [sys.executable, str(runner)] if runner else STATION_CLI
        self.proc = subprocess.Popen([*cmd, "run", "-c", str(config)], cwd=cwd, stdout=subprocess.DEVNULL,
                                     stderr=self._stderr, env={**os.environ, "PYTHONPATH": str(REPO), **env})

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def wait(self, timeout: float = 60.0) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._stderr.close()

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on (for a PLC that is down, or starts later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def count_rows(db: Path, sql: str = "SELECT COUNT(*) FROM parts", args: tuple = ()) -> int:
    if not db.exists():
        return 0
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return int(conn.execute(sql, args).fetchone()[0])
    except sqlite3.OperationalError:
        return 0  # the writer has not created the schema yet
    finally:
        conn.close()


def wait_rows(db: Path, n: int, *, timeout: float = 90.0, sql: str = "SELECT COUNT(*) FROM parts",
              args: tuple = ()) -> int:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        count = count_rows(db, sql, args)
        if count >= n:
            return count
        time.sleep(0.1)
    raise AssertionError(f"only {count_rows(db, sql, args)} of {n} rows after {timeout} s ({sql})")

