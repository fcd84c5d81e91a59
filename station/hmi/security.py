"""HMI security: the session key, CSRF tokens, the login rate limit, role checks and response headers.

Sessions are signed cookies (Starlette's SessionMiddleware, itsdangerous) with a key kept in the
HMI's state folder (made once, owner-only). Every session carries a random CSRF token; every POST
must send it back (form field `csrf_token` or header `X-CSRF-Token`) or it is refused with 403,
before any handler runs. Failed logins are counted per user name and per client address within
`hmi.login_window_s`; past `hmi.login_max_failures` (four times that per address) the login answers
429 until the window has passed. The role is looked up in the users file on every request, so a
removed user is logged out at once.
"""

from __future__ import annotations

import collections
import logging
import os
import secrets
import threading
import time
from pathlib import Path

from fastapi import HTTPException, Request

from station.hmi.users import User, UserStore

log = logging.getLogger(__name__)

CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")

# Scripts and styles only from the HMI itself (vendored files): no inline code a page could be tricked into.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "frame-ancestors 'none'; form-action 'self'; base-uri 'none'")


def session_key(state_dir: Path) -> str:
    """The cookie signing key: made on first start, owner-only, kept across restarts (sessions survive)."""
    path = state_dir / "session.key"
    try:
        return path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        pass
    state_dir.mkdir(parents=True, exist_ok=True)
    key = secrets.token_hex(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(key + "\n")
    log.info("new session key in %s", path)
    return key


def csrf_token(request: Request) -> str:
    token = request.session.get("csrf")
    if not token:
        token = request.session["csrf"] = secrets.token_urlsafe(32)
    return token


async def csrf_guard(request: Request) -> None:
    """App-wide dependency: every state-changing request must carry the session's CSRF token."""
    if request.method in SAFE_METHODS:
        return
    expected = request.session.get("csrf")
    sent = request.headers.get(CSRF_HEADER)
    if sent is None:
        content_type = request.headers.get("content-type", "")
        if content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
            form = await request.form()  # cached by Starlette: the handler's Form() fields still work
            value = form.get(CSRF_FIELD)
            sent = value if isinstance(value, str) else None
    if not expected or not sent or not secrets.compare_digest(expected, sent):
        log.warning("refused %s %s from %s: missing or wrong CSRF token", request.method, request.url.path,
                    request.client.host if request.client else "?")
        raise HTTPException(status_code=403, detail="missing or wrong CSRF token: reload the page and try again")


def current_user(request: Request) -> User | None:
    """The logged-in user (fresh from the users file), or None for a viewer."""
    name = request.session.get("user")
    if not name:
        return None
    users: UserStore = request.app.state.users
    user = users.get(name)
    if user is None:
        request.session.pop("user", None)  # removed since login
    return user


class NeedsLogin(Exception):
    """Raised by `require` for an anonymous viewer; the app redirects to the login page."""


def require(request: Request, role: str) -> User:
    user = current_user(request)
    if user is None:
        raise NeedsLogin()
    if not user.can(role):
        raise HTTPException(status_code=403, detail=f"this needs the {role} role; you are {user.role}")
    return user


class LoginLimiter:
    """Failed-login counter per user name and per client address, over a sliding window."""

    def __init__(self, *, max_failures: int, window_s: float) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self._failures: dict[str, collections.deque[float]] = collections.defaultdict(collections.deque)
        self._lock = threading.Lock()
        self.refused = 0

    def _keys(self, name: str, client: str) -> list[tuple[str, int]]:
        # Per address a little more room: several people share the line PC's address.
        return [(f"user:{name.lower()}", self.max_failures), (f"addr:{client}", 4 * self.max_failures)]

    def retry_after_s(self, name: str, client: str, now: float | None = None) -> float:
        """0 when a login attempt is allowed now, else the seconds until it is."""
        now = time.monotonic() if now is None else now
        wait = 0.0
        with self._lock:
            for key, limit in self._keys(name, client):
                times = self._failures.get(key)
                if not times:
                    continue
                while times and now - times[0] > self.window_s:
                    times.popleft()
                if len(times) >= limit:
                    wait = max(wait, self.window_s - (now - times[0]))
            if wait > 0:
                self.refused += 1
        return wait

    def failed(self, name: str, client: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            for key, _ in self._keys(name, client):
                self._failures[key].append(now)

    def succeeded(self, name: str) -> None:
        with self._lock:
            self._failures.pop(f"user:{name.lower()}", None)
