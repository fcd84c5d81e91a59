"""Helpers for the HMI tests: the real `station hmi` process, a headless Chromium driven by Playwright,
users made through the real CLI, a logged-in HTTP client.

The browser is Debian's `chromium` (apt), launched through Playwright's `executable_path`: Playwright
never downloads a browser here. Outside CI a missing browser skips the test; with CI=true it fails.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
from support import REPO, STATION_CLI, require_component

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]


def require_browser() -> None:
    try:
        import playwright.sync_api  # noqa: F401
        have_playwright = True
    except ImportError:
        have_playwright = False
    require_component(have_playwright, "playwright (pip, test extra)")
    require_component(CHROMIUM.exists(), "chromium (Debian package, .ci/run installs it)")


@contextlib.contextmanager
def chromium() -> Iterator[object]:
    """A headless Chromium (Playwright Browser), closed on exit."""
    require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def add_user(config: Path, name: str, role: str, password: str) -> subprocess.CompletedProcess:
    return subprocess.run([*STATION_CLI, "users", "-c", str(config), "add", name, "--role",
                           role, "--password-stdin"], input=password + "\n", capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})


class HmiProcess:
    """`station hmi -c CONFIG --port PORT` as a real process, stopped by its own pid."""

    def __init__(self, config: Path, *, port: int, cwd: Path) -> None:
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.stderr_path = cwd / f"hmi-{port}.stderr"
        self._stderr = open(self.stderr_path, "w")
        self.proc = subprocess.Popen([*STATION_CLI, "hmi", "-c", str(config), "--port",
                                      str(port)], cwd=cwd, stdout=subprocess.DEVNULL, stderr=self._stderr,
                                     env={**os.environ, "PYTHONPATH": str(REPO)})

    def wait_ready(self, timeout_s: float = 60.0, *, station: bool = True) -> None:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            assert self.proc.poll() is None, f"the HMI exited: {self.stderr_path.read_text()[-2000:]}"
            try:
                r = httpx.get(self.base + "/healthz", timeout=2.0)
                if r.status_code == 200 and (r.json()["station_reachable"] or not station):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"the HMI did not come up: {self.stderr_path.read_text()[-2000:]}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._stderr.close()
        return self.proc.returncode


def csrf_of(html: str) -> str:
    m = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert m, "no CSRF token in the page"
    return m.group(1)


def logged_in_client(base: str, name: str, password: str) -> httpx.Client:
    """An HTTP client with a session: fetched the login form, posted it with its CSRF token."""
    client = httpx.Client(base_url=base, timeout=30.0)
    token = csrf_of(client.get("/login").text)
    r = client.post("/login", data={"username": name, "password": password, "csrf_token": token, "next": "/live"})
    assert r.status_code == 303, (r.status_code, r.text[:300])
    return client


def login(page: object, base: str, name: str, password: str, *, then: str = "/live") -> None:
    page.goto(f"{base}/login?next={then}")
    page.fill("input[name=username]", name)
    page.fill("input[name=password]", password)
    page.click("#login-form button[type=submit]")
    page.wait_for_url(f"{base}{then}*")

