"""systemd's notify protocol (sd_notify) with the standard library only: READY, STATUS, WATCHDOG, STOPPING, RELOADING.

systemd passes a unix datagram socket in `$NOTIFY_SOCKET` (a path, or an abstract-namespace name
written with a leading '@') and, when `WatchdogSec=` is set, the watchdog interval in
`$WATCHDOG_USEC` (for the process named in `$WATCHDOG_PID`, when given). Each notification is one
datagram of newline-separated `KEY=value` lines. Outside systemd (no `$NOTIFY_SOCKET`) every call
is a silent no-op, so the same code runs from a terminal and under the service manager.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger(__name__)


def socket_address(value: str) -> str | bytes:
    """`$NOTIFY_SOCKET` as a `sendto` address: '@name' is the abstract namespace ('\\0name')."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    return value


def watchdog_interval_s(env: Mapping[str, str] | None = None, *, pid: int | None = None) -> float | None:
    """The watchdog interval systemd expects pings within, or None when no watchdog applies to us."""
    env = os.environ if env is None else env
    raw = env.get("WATCHDOG_USEC", "")
    if not raw:
        return None
    try:
        usec = int(raw)
    except ValueError:
        log.warning("WATCHDOG_USEC=%r is not a number: watchdog pings disabled", raw)
        return None
    if usec <= 0:
        return None
    owner = env.get("WATCHDOG_PID", "")
    if owner:
        # The watchdog belongs to one process; a child that inherited the variable must not ping.
        try:
            if int(owner) != (os.getpid() if pid is None else pid):
                return None
        except ValueError:
            return None
    return usec / 1e6


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, as RELOADING=1 wants it in MONOTONIC_USEC= (Type=notify-reload)."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def one_line(text: str, limit: int = 400) -> str:
    """STATUS= is a single line: newlines would start new KEY=value fields."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


class Notifier:
    """Sends notifications to systemd; a no-op when not started by systemd with `Type=notify`."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        raw = env.get("NOTIFY_SOCKET", "")
        self.address: str | bytes | None = socket_address(raw) if raw else None
        self.watchdog_s = watchdog_interval_s(env)
        self._sock: socket.socket | None = None
        self._failed_logged = False
        self.sent = 0

    @property
    def enabled(self) -> bool:
        return self.address is not None

    @property
    def ping_interval_s(self) -> float | None:
        """Half the watchdog interval, as sd_watchdog_enabled(3) recommends."""
        return None if self.watchdog_s is None else self.watchdog_s / 2

    def notify(self, *fields: str) -> bool:
        """Send one datagram of `KEY=value` fields; True when systemd got it."""
        if self.address is None:
            return False
        data = "\n".join(fields).encode("utf-8")
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(data, self.address)
        except OSError as exc:
            # The service keeps running; systemd's own timeouts tell the operator something is off.
            if not self._failed_logged:
                log.error("sd_notify to %r failed: %s", self.address, exc)
                self._failed_logged = True
            return False
        self._failed_logged = False
        self.sent += 1
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.notify("READY=1", *([f"STATUS={one_line(status)}"] if status else []))

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={one_line(text)}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def reloading(self, status: str | None = None) -> bool:
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec()}",
                           *([f"STATUS={one_line(status)}"] if status else []))

    def stopping(self, status: str | None = None) -> bool:
        return self.notify("STOPPING=1", *([f"STATUS={one_line(status)}"] if status else []))

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for more time in the current start or stop phase (EXTEND_TIMEOUT_USEC=)."""
        return self.notify(f"EXTEND_TIMEOUT_USEC={int(seconds * 1e6)}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
