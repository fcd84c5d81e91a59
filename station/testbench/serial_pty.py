"""The far end of a serial line, for tests and the pulse timing bench: a socat pty pair and a relay board.

`SocatPtyPair` makes a software null-modem cable with `socat` (the station opens one end, a simulated
device the other); `SerialBytesRecorder` plays a serial relay board on the device's end, timestamping
every chunk of bytes it receives with `time.monotonic_ns()`, the clock the station's due times use.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time


class SocatPtyPair:
    """Two linked pseudo-terminals made by `socat` (a null-modem cable in software): `a` is the station's
    port, `b` the device's end. `kill()` ends this socat by its own pid, and both device paths vanish,
    like an unplugged USB adapter; `start()` again brings them back under the same paths."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.a = os.path.join(folder, "station-port")
        self.b = os.path.join(folder, "device-port")
        self.proc: subprocess.Popen[bytes] | None = None

    @staticmethod
    def available() -> bool:
        return shutil.which("socat") is not None

    def start(self, timeout_s: float = 5.0) -> SocatPtyPair:
        if not self.available():
            raise RuntimeError("socat is not installed (apt-get install socat)")
        self.proc = subprocess.Popen(
            ["socat", f"pty,raw,echo=0,link={self.a}", f"pty,raw,echo=0,link={self.b}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout_s
        while not (os.path.exists(self.a) and os.path.exists(self.b)):
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                self.proc = None
                raise RuntimeError(f"socat exited: {err}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError("socat did not create its ptys")
            time.sleep(0.01)
        return self

    def kill(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        self.proc = None
        deadline = time.monotonic() + 2.0
        while (os.path.exists(self.a) or os.path.exists(self.b)) and time.monotonic() < deadline:
            time.sleep(0.01)


class SerialBytesRecorder:
    """The relay board's end of a serial line: timestamps every chunk of bytes it receives, in a thread."""

    def __init__(self, path: str, *, baudrate: int = 9600) -> None:
        import serial

        self._serial_errors = (serial.SerialException, OSError)
        self.port = serial.Serial(path, baudrate, timeout=0.02)
        self.chunks: list[tuple[int, bytes]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name="sim-serial-recorder", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                # read(1) returns as soon as a byte arrives (a longer read would wait out the timeout)
                data = self.port.read(1)
                if data and self.port.in_waiting:
                    data += self.port.read(self.port.in_waiting)
            except self._serial_errors:
                return
            if data:
                self.chunks.append((time.monotonic_ns(), data))

    @property
    def data(self) -> bytes:
        return b"".join(c for _, c in list(self.chunks))

    def command_times(self, command: bytes) -> list[int]:
        """Arrival time of each complete `command` (the chunk that completed it)."""
        times, buf = [], b""
        for t_ns, chunk in list(self.chunks):
            buf += chunk
            while command in buf:
                times.append(t_ns)
                buf = buf[buf.index(command) + len(command):]
        return times

    def wait_for(self, n_bytes: int, timeout_s: float = 2.0) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.data) < n_bytes and time.monotonic() < deadline:
            time.sleep(0.01)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5.0)
        self.port.close()
