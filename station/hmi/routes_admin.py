"""Login and logout, the engineer's settings page and the admin's users page.

Login answers 429 while the rate limit holds (per user name and per client address); a successful
login gets a fresh session (new CSRF token) so a token seen before login is worthless after it.
Settings go through `SettingsEditor` (validated, written with comments kept, reloaded by the
station, restored on refusal); the events table gets the user's name with the old and new values.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from station.hmi.live import LiveHub, StationUnreachable
from station.hmi.security import LoginLimiter, current_user, require
from station.hmi.settings_edit import SETTINGS, SettingsEditor, SettingsError
from station.hmi.tracedb import TraceLogUnavailable
from station.hmi.users import LOGIN_ROLES, UserError, UserStore

log = logging.getLogger(__name__)
router = APIRouter()

SETTINGS_EVENTS = ("settings_change", "settings_change_failed", "reload", "reload_failed", "alarm_ack")


def _safe_next(target: str | None) -> str:
    return target if target and target.startswith("/") and not target.startswith("//") else "/live"


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, next: str | None = None) -> Response:
    return request.app.state.templates.TemplateResponse(request, "login.html", {
        "page": "login", "next": _safe_next(next), "error": None})


@router.post("/login")
def login(request: Request, *, username: str = Form(..., max_length=64), password: str = Form(..., max_length=1024),
          next: str = Form("/live")) -> Response:
    limiter: LoginLimiter = request.app.state.limiter
    client = request.client.host if request.client else "?"
    wait_s = limiter.retry_after_s(username, client)
    templates = request.app.state.templates
    if wait_s > 0:
        log.warning("login for %r from %s refused: too many failures (retry in %.0f s)", username, client, wait_s)
        return templates.TemplateResponse(request, "login.html", {
            "page": "login", "next": _safe_next(next),
            "error": f"Too many failed logins. Try again in {int(wait_s) + 1} s."},
            status_code=429, headers={"Retry-After": str(int(wait_s) + 1)})
    user = request.app.state.users.authenticate(username, password)
    if user is None:
        limiter.failed(username, client)
        log.warning("failed login for %r from %s", username, client)
        return templates.TemplateResponse(request, "login.html", {
            "page": "login", "next": _safe_next(next), "error": "Wrong user name or password."}, status_code=401)
    limiter.succeeded(username)
    request.session.clear()  # a fresh session: nothing from before the login carries over
    request.session.update({"user": user.name, "csrf": secrets.token_urlsafe(32)})
    log.info("%s (%s) logged in from %s", user.name, user.role, client)
    return RedirectResponse(_safe_next(next), status_code=303)


@router.post("/logout")
def logout(request: Request) -> Response:
    request.session.clear()
    return RedirectResponse("/live", status_code=303)


# ---- settings (engineer) -------------------------------------------------------------------------------
def _settings_context(request: Request, *, message: str | None = None, error: str | None = None,
                      form: dict[str, str] | None = None) -> dict[str, Any]:
    editor: SettingsEditor = request.app.state.settings
    try:
        current = editor.current()
    except (OSError, ValueError) as exc:
        current, error = {}, error or f"{editor.path} cannot be read: {exc}"
    try:
        events = request.app.state.db.events(kinds=SETTINGS_EVENTS, limit=15)
    except TraceLogUnavailable:
        events = []
    hub: LiveHub = request.app.state.hub
    values = {s.key: (form or {}).get(s.key, "" if current.get(s.key) is None else str(current.get(s.key)))
              for s in SETTINGS}
    return {"page": "settings", "settings": SETTINGS, "values": values, "message": message, "error": error,
            "events": events, "path": str(editor.path), "running": (hub.status or {}).get("settings"),
            "station_error": hub.station_error}


@router.get("/settings", response_class=HTMLResponse)
def settings_page(request: Request) -> Response:
    require(request, "engineer")
    return request.app.state.templates.TemplateResponse(request, "settings.html", _settings_context(request))


@router.post("/settings")
async def save_settings(request: Request) -> Response:
    user = require(request, "engineer")
    form = {s.key: str(v) for s in SETTINGS if isinstance(v := (await request.form()).get(s.key), str)}
    hub: LiveHub = request.app.state.hub
    templates = request.app.state.templates
    try:
        status = await hub.request({"op": "status"}, timeout_s=5.0)
    except StationUnreachable as exc:
        return templates.TemplateResponse(request, "settings.html", _settings_context(
            request, form=form, error=f"The station is not running or not reachable ({exc}); nothing was changed: "
                                      "settings are applied by the running station."), status_code=503)
    running_sha = (status.get("status") or {}).get("config", {}).get("sha256")
    try:
        answer = await request.app.state.settings.apply(
            form, user=user.name, running_sha256=running_sha,
            ask_station=lambda payload: hub.request(payload, timeout_s=120.0))
    except SettingsError as exc:
        return templates.TemplateResponse(request, "settings.html",
                                          _settings_context(request, form=form, error=str(exc)), status_code=400)
    await hub.poll_once()
    done = "; ".join(f"{c['key']}: {c['old']} -> {c['new']}" for c in answer["changes"])
    extra = f" (needs a restart: {', '.join(answer['needs_restart'])})" if answer.get("needs_restart") else ""
    return templates.TemplateResponse(request, "settings.html",
                                      _settings_context(request, message=f"Applied: {done}{extra}"))


# ---- users (admin) -------------------------------------------------------------------------------------
def _users_page(request: Request, *, message: str | None = None, error: str | None = None,
                status_code: int = 200) -> Response:
    store: UserStore = request.app.state.users
    try:
        users = store.list()
    except UserError as exc:
        users, error = [], str(exc)
    return request.app.state.templates.TemplateResponse(request, "users.html", {
        "page": "users", "users": users, "login_roles": LOGIN_ROLES, "message": message, "error": error,
        "path": str(store.path)}, status_code=status_code)


@router.get("/users", response_class=HTMLResponse)
def users_page(request: Request) -> Response:
    require(request, "admin")
    return _users_page(request)


@router.post("/users")
def change_user(request: Request, *, action: str = Form(...), name: str = Form(..., max_length=64),
                role: str = Form("operator"), password: str = Form("", max_length=1024)) -> Response:
    admin = require(request, "admin")
    store: UserStore = request.app.state.users
    try:
        if action == "add":
            store.add(name, role, password, by=admin.name)
            message = f"user {name} ({role}) added"
        elif action == "role":
            store.set_role(name, role)
            message = f"{name} is now {role}"
        elif action == "password":
            store.set_password(name, password)
            message = f"password of {name} changed"
        elif action == "remove":
            if name == admin.name:
                raise UserError("you cannot remove yourself (another admin can)")
            store.remove(name)
            message = f"user {name} removed"
        else:
            raise HTTPException(status_code=400, detail=f"unknown action {action!r}")
    except UserError as exc:
        return _users_page(request, error=str(exc), status_code=400)
    log.warning("users: %s by %s", message, admin.name)
    return _users_page(request, message=message)


@router.get("/whoami")
def whoami(request: Request) -> dict[str, Any]:
    user = current_user(request)
    return {"user": user.name if user else None, "role": user.role if user else "viewer"}
