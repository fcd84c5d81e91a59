"""Real components for the camera tests: Aravis' fake GigE Vision camera, the GenTL producer that the
`genicam` wheel ships (through harvesters), and OpenCV for video files written by the tests.

A missing component skips a test locally, with the reason, and fails it under CI (`CI=true`), through
support.require_component.
The fake camera binds the GigE Vision port on 127.0.0.1, so only one can run per machine: the
fixture takes a machine-wide lock file, gives its camera a serial unique to this test process and
checks that the camera it reaches is its own. It stops the camera by the pid it started.
"""

from __future__ import annotations

import fcntl
import glob
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest
from support import require_component

FAKE_GV = "arv-fake-gv-camera-0.8"
FAKE_GV_ADDRESS = "127.0.0.1"
LOCK_FILE = Path("/tmp/station-tests-arv-fake-gv.lock")


def aravis_available() -> tuple[bool, str]:
    try:
        import gi

        gi.require_version("Aravis", "0.8")
        from gi.repository import Aravis  # noqa: F401
    except (ImportError, ValueError) as exc:
        return False, f"Aravis Python bindings (PyGObject + gir1.2-aravis-0.8): {exc}"
    return True, ""


def viky_producer() -> Path | None:
    """The simulated GenTL producer shipped inside the `genicam` wheel."""
    try:
        import genicam
    except ImportError:
        return None
    found = sorted(glob.glob(os.path.join(os.path.dirname(genicam.__file__), "*.cti")))
    return Path(found[0]) if found else None


class FakeGvCamera:
    """One `arv-fake-gv-camera-0.8 -i 127.0.0.1 -s SERIAL` process that a test can kill and restart."""

    def __init__(self, serial: str) -> None:
        self.serial = serial
        self.address = FAKE_GV_ADDRESS
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        last_error = ""
        while time.monotonic() < deadline:
            self.proc = subprocess.Popen([FAKE_GV, "-i", self.address, "-s", self.serial],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            time.sleep(0.3)
            if self.proc.poll() is None and self._answers():
                return
            if self.proc.poll() is not None:
                last_error = (self.proc.stderr.read() if self.proc.stderr else b"").decode().strip()
            self.stop()
            time.sleep(0.5)   # the port may still be held by a camera another process is stopping
        raise RuntimeError(f"{FAKE_GV} did not start on {self.address}: {last_error or 'no answer'}")

    def _answers(self) -> bool:
        import gi

        gi.require_version("Aravis", "0.8")
        from gi.repository import Aravis, GLib

        try:
            camera = Aravis.Camera.new(self.address)
            return camera.get_device_serial_number() == self.serial
        except GLib.Error:
            return False

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        if proc.stderr:
            proc.stderr.close()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def machine_lock(path: Path):
    """The lock file shared by every user's test runs, opened read-only (flock needs no more).

    Whoever creates it makes it world-readable: a file that root created (CI) in the sticky /tmp must
    still open for a sudo user's run, and opening it with O_CREAT would be refused there
    (fs.protected_regular), so it is created only when absent."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0o644)
            os.fchmod(fd, 0o644)
        except FileExistsError:  # another run created it in between
            fd = os.open(path, os.O_RDONLY)
    return os.fdopen(fd, "rb")


FAKE_GV_FRAME_BYTES = 512 * 512   # the fake camera's default frame: Mono8, 512 x 512


def socket_buffer_fits_a_frame() -> bool:
    """Root receives GigE frames through Aravis' packet socket; any other user through a UDP socket
    whose receive buffer the kernel caps at net.core.rmem_max, which must hold a whole frame."""
    if os.geteuid() == 0:
        return True
    try:
        return int(Path("/proc/sys/net/core/rmem_max").read_text()) >= FAKE_GV_FRAME_BYTES
    except (OSError, ValueError):
        return False


@pytest.fixture
def fake_gv() -> Iterator[FakeGvCamera]:
    ok, why = aravis_available()
    require_component(ok, why)
    require_component(shutil.which(FAKE_GV) is not None, f"{FAKE_GV} (Debian package aravis-tools)")
    require_component(socket_buffer_fits_a_frame(),
                      f"a socket receive buffer for one GigE frame as a non-root user: net.core.rmem_max >= "
                      f"{FAKE_GV_FRAME_BYTES} (sudo sysctl -w net.core.rmem_max=8388608)")
    with machine_lock(LOCK_FILE) as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)   # one fake camera per machine: wait for other test runs
        camera = FakeGvCamera(serial=f"ST{os.getpid() % 100000}")
        camera.start()
        try:
            yield camera
        finally:
            camera.stop()
            from station.cameras.aravis import join_release_threads

            join_release_threads(timeout_s=20.0)


@pytest.fixture
def viky_cti() -> Path:
    try:
        import harvesters.core  # noqa: F401
    except ImportError as exc:
        require_component(False, f"harvesters ({exc})")
    cti = viky_producer()
    require_component(cti is not None, "the simulated GenTL producer of the genicam wheel (pip install harvesters)")
    assert cti is not None
    return cti


@pytest.fixture
def cv2_module():
    try:
        import cv2
    except ImportError:
        require_component(False, "OpenCV (pip install opencv-python-headless)")
    return cv2
