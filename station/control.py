"""The station's live-state channel: a unix-socket server thread speaking JSON lines, for the HMI.

The web HMI runs in its own process (pulse timing comes first); this thread is all the station
adds for it. A client sends one JSON object per line and gets one back: `{"op": "status"}` (health,
alarms, counters, the last part, latency percentiles, camera / PLC / model / trace-log state),
`{"op": "ack", "alarm": NAME, "user": U}` (recorded as an event with the user) and
`{"op": "reload", "user": U, "changes": [{"key", "old", "new"}]}` (re-read the YAML and apply it
through the same all-or-nothing path as SIGHUP; the user and the old and new values go into the
events table). The thread is a `station.stage.Stage`: every wait bounded so stop is honoured within
a fraction of a second, busy while it answers a request (a reload loads a model). It never touches
the hot path: status reads counters under their own short locks and percentiles over the last
1000 parts only. A socket path already served by a live station is left alone (an error, retried),
a stale one is replaced.
"""

from __future__ import annotations

import json
import logging
import os
import selectors
import socket
import stat
import time
from pathlib import Path
from typing import Any, Callable

from station.stage import Stage

log = logging.getLogger(__name__)

MAX_LINE_BYTES = 65_536
MAX_CLIENTS = 16
_TICK_S = 0.2
_RETRY_MIN_S, _RETRY_MAX_S = 1.0, 30.0
# sun_path is 108 bytes including the terminating NUL.
MAX_SOCKET_PATH = 107

StatusSource = Callable[[], dict[str, Any]]
AckHandler = Callable[[str, str], dict[str, Any]]
ReloadHandler = Callable[[str, list[dict[str, Any]]], dict[str, Any]]


class ControlServer(Stage):
    busy_doing = "answering a request"

    def __init__(self, path: Path, *, status: StatusSource, acknowledge: AckHandler,
                 reload: ReloadHandler) -> None:
        super().__init__("control")
        self.path = Path(path)
        self.status = status
        self.acknowledge = acknowledge
        self.reload = reload
        self.requests = 0
        self.errors = 0
        self.listening = False
        self._listener: socket.socket | None = None
        self._inode: tuple[int, int] | None = None
        self._retry_s = _RETRY_MIN_S
        self._next_bind = 0.0
        self._bind_error: str | None = None
        self._selector = selectors.DefaultSelector()
        self._buffers: dict[socket.socket, bytearray] = {}

    def step(self) -> bool:
        if self.stop_event.is_set():
            return False
        if self._listener is None:
            if time.monotonic() >= self._next_bind:
                self._try_bind()
            self.stop_event.wait(_TICK_S)
            return True
        for key, _events in self._selector.select(timeout=_TICK_S):
            if key.data == "listen":
                self._accept()
            else:
                self._read(key.fileobj)  # type: ignore[arg-type]
        return True

    def cleanup(self) -> None:
        self._close_all()

    # ---- listening socket --------------------------------------------------------------------------
    def _try_bind(self) -> None:
        try:
            self._listener = self._bind()
        except OSError as exc:
            why = f"{self.path}: {exc.strerror or exc}"
            self._next_bind = time.monotonic() + self._retry_s
            if why != self._bind_error:
                # Once per distinct cause: a missing folder retried every 30 s must not flood the journal.
                log.error("live-state socket for the HMI cannot be opened (expected a free unix socket path): "
                          "%s; retrying every %.0f s at most", why, _RETRY_MAX_S)
                self._bind_error = why
            self._retry_s = min(self._retry_s * 2, _RETRY_MAX_S)
            return
        self._selector.register(self._listener, selectors.EVENT_READ, data="listen")
        self.listening = True
        self._bind_error = None
        self._retry_s = _RETRY_MIN_S
        log.info("live-state socket for the HMI: %s", self.path)

    def _bind(self) -> socket.socket:
        if len(os.fsencode(self.path)) > MAX_SOCKET_PATH:
            raise OSError(0, f"path longer than {MAX_SOCKET_PATH} bytes (unix socket limit)")
        self._remove_stale()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(self.path))
            # Owner and group only: whoever can connect may acknowledge alarms and reload settings.
            os.chmod(self.path, 0o660)
            sock.listen(8)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        st = os.stat(self.path)
        self._inode = (st.st_dev, st.st_ino)
        return sock

    def _remove_stale(self) -> None:
        """A socket file left by a station that died is replaced; one a live station serves is not."""
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise OSError(0, "exists and is not a socket; not replaced")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(0.5)
        try:
            probe.connect(str(self.path))
        except (ConnectionRefusedError, FileNotFoundError):
            os.unlink(self.path)
            log.warning("removed the stale live-state socket %s (its station is gone)", self.path)
            return
        except OSError as exc:
            raise OSError(0, f"exists and cannot be probed ({exc}); not replaced") from exc
        finally:
            probe.close()
        raise OSError(0, "another running station serves this socket")

    def _accept(self) -> None:
        assert self._listener is not None
        try:
            conn, _ = self._listener.accept()
        except BlockingIOError:
            return
        except OSError as exc:
            self.errors += 1
            log.warning("live-state socket: accept failed: %s", exc)
            return
        if len(self._buffers) >= MAX_CLIENTS:
            conn.close()  # a misbehaving client opening sockets must not exhaust the station's descriptors
            self.errors += 1
            return
        conn.setblocking(False)
        self._buffers[conn] = bytearray()
        self._selector.register(conn, selectors.EVENT_READ, data="client")

    def _read(self, conn: socket.socket) -> None:
        try:
            data = conn.recv(65_536)
        except BlockingIOError:
            return
        except OSError:
            self._drop(conn)
            return
        if not data:
            self._drop(conn)
            return
        buf = self._buffers[conn]
        buf.extend(data)
        while b"\n" in buf:
            line, _, rest = bytes(buf).partition(b"\n")
            buf[:] = rest
            with self.busy():
                answer = self.handle_line(line)
            if not self._reply(conn, answer):
                return
        if len(buf) > MAX_LINE_BYTES:
            self.errors += 1
            self._reply(conn, {"ok": False, "error": f"request longer than {MAX_LINE_BYTES} bytes"})
            self._drop(conn)

    def _reply(self, conn: socket.socket, answer: dict[str, Any]) -> bool:
        payload = (json.dumps(answer, default=str) + "\n").encode()
        conn.setblocking(True)
        conn.settimeout(1.0)  # a client that stops reading must not hold this thread
        try:
            conn.sendall(payload)
        except OSError as exc:
            self.errors += 1
            log.warning("live-state socket: reply not delivered: %s", exc)
            self._drop(conn)
            return False
        finally:
            if conn in self._buffers:
                conn.setblocking(False)
        return True

    def _drop(self, conn: socket.socket) -> None:
        self._buffers.pop(conn, None)
        try:
            self._selector.unregister(conn)
        except (KeyError, ValueError):
            pass
        conn.close()

    def _close_all(self) -> None:
        for conn in list(self._buffers):
            self._drop(conn)
        if self._listener is not None:
            self._selector.unregister(self._listener)
            self._listener.close()
            self._listener = None
            try:
                st = os.stat(self.path)
                if (st.st_dev, st.st_ino) == self._inode:
                    os.unlink(self.path)  # only our own socket file: a successor may own the path already
            except FileNotFoundError:
                pass
        self._selector.close()
        self.listening = False

    # ---- requests ------------------------------------------------------------------------------------
    def handle_line(self, line: bytes) -> dict[str, Any]:
        """One request line to one answer; never raises for a bad request."""
        self.requests += 1
        try:
            request = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            self.errors += 1
            return {"ok": False, "error": f"expected one JSON object per line: {exc}"}
        if not isinstance(request, dict):
            self.errors += 1
            return {"ok": False, "error": "expected a JSON object"}
        op = request.get("op")
        user = request.get("user")
        if op == "status":
            return {"ok": True, "status": self.status()}
        if op not in ("ack", "reload"):
            self.errors += 1
            return {"ok": False, "error": f"unknown op {op!r} (status | ack | reload)"}
        if not isinstance(user, str) or not user.strip():
            self.errors += 1
            return {"ok": False, "error": f"{op}: the request must name the user"}
        if op == "ack":
            alarm = request.get("alarm")
            if not isinstance(alarm, str):
                return {"ok": False, "error": "ack: the request must name the alarm"}
            return self.acknowledge(alarm, user)
        changes = request.get("changes", [])
        if not isinstance(changes, list) or not all(isinstance(c, dict) for c in changes):
            return {"ok": False, "error": "reload: changes must be a list of {key, old, new}"}
        return self.reload(user, changes)


def describe_changes(changes: list[dict[str, Any]]) -> str:
    """`decision.threshold 0.3753 -> 0.9; tracelog.images all -> rejects` for the events table."""
    return "; ".join(f"{c.get('key')} {c.get('old')} -> {c.get('new')}" for c in changes) or "no value changed"


def request(path: Path | str, payload: dict[str, Any], *, timeout_s: float = 5.0) -> dict[str, Any]:
    """One request to a station's live-state socket (for tools and tests); raises OSError or ValueError."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        sock.connect(str(path))
        sock.sendall((json.dumps(payload) + "\n").encode())
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = sock.recv(65_536)
            if not chunk:
                raise ConnectionError("the station closed the connection without an answer")
            buf += chunk
    return json.loads(buf)
