"""The HMI web application: builds the FastAPI app from a station YAML and runs it under uvicorn.

`create_app` wires the parts together: read-only trace log, live hub (station socket), users,
reviews, heat maps, settings editor, Prometheus registry, signed sessions, the app-wide CSRF check
and the security headers. Pages live in `routes_live`, `routes_qa` and `routes_admin`. `serve`
listens on `hmi.listen:hmi.port` (127.0.0.1 unless the YAML says otherwise).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from prometheus_client import CollectorRegistry
from starlette.middleware.sessions import SessionMiddleware

from station.configfile import LoadedConfig
from station.hmi import explain
from station.hmi.heatmaps import HeatmapService, sweep_orphans
from station.hmi.live import LiveHub
from station.hmi.metrics import StationCollector
from station.hmi.reviews import ReviewStore
from station.hmi.security import CSP, LoginLimiter, NeedsLogin, csrf_guard, csrf_token, current_user, session_key
from station.hmi.settings_edit import SettingsEditor
from station.hmi.tracedb import TraceDb
from station.hmi.users import ROLES, UserStore

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
SWEEP_EVERY_S = 600.0


def local_time(value: Any) -> str:
    """An ISO UTC string or UNIX time as the line PC's local time, to the second."""
    if value in (None, ""):
        return ""
    try:
        when = datetime.fromtimestamp(value, tz=timezone.utc) if isinstance(value, (int, float)) \
            else datetime.fromisoformat(str(value))
    except (ValueError, OverflowError, OSError):
        return str(value)
    return when.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _context(request: Request) -> dict[str, Any]:
    return {"user": current_user(request), "csrf": csrf_token(request), "explain": explain, "roles": ROLES,
            "station_id": request.app.state.config.station.id}


def create_app(loaded: LoadedConfig) -> FastAPI:
    cfg = loaded.config
    h = cfg.hmi
    db = TraceDb(cfg.tracelog.dir)
    hub = LiveHub(control_socket=h.control_socket, db=db, poll_ms=h.poll_ms, shift_starts=h.shift_starts)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        poller = asyncio.create_task(hub.run(), name="live-hub")
        sweeper = asyncio.create_task(_sweep(db), name="heatmap-sweep")
        log.info("HMI for station %s on http://%s:%d (trace log %s, live socket %s)", cfg.station.id, h.listen,
                 h.port, db.db_path, h.control_socket or "none")
        try:
            yield
        finally:
            for task in (poller, sweeper):
                task.cancel()
            await asyncio.gather(poller, sweeper, return_exceptions=True)

    app = FastAPI(lifespan=lifespan, dependencies=[Depends(csrf_guard)], docs_url=None, redoc_url=None,
                  openapi_url=None, title="Inspection station HMI")
    templates = Jinja2Templates(directory=str(HERE / "templates"), context_processors=[_context])
    templates.env.filters["local_time"] = local_time
    templates.env.filters["fmt"] = fmt
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StationCollector(db, hub))
    app.state.loaded = loaded
    app.state.config = cfg
    app.state.db = db
    app.state.hub = hub
    app.state.users = UserStore(h.users_file)
    app.state.reviews = ReviewStore(h.state_dir / "reviews.sqlite")
    app.state.heatmaps = HeatmapService(cfg.model.path, enabled=h.heatmaps)
    app.state.limiter = LoginLimiter(max_failures=h.login_max_failures, window_s=h.login_window_s)
    app.state.settings = SettingsEditor(loaded.path)
    app.state.templates = templates
    app.state.registry = registry

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Any) -> Response:
        response = await call_next(request)
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Referrer-Policy"] = "same-origin"
        if response.media_type in (None, "text/html") or request.url.path.startswith(("/part", "/images")):
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    # Added after the header middleware so it wraps it: the session exists before any handler runs.
    app.add_middleware(SessionMiddleware, secret_key=session_key(h.state_dir), session_cookie="hmi_session",
                       max_age=int(h.session_hours * 3600), same_site="strict", https_only=h.secure_cookie)

    @app.exception_handler(NeedsLogin)
    async def needs_login(request: Request, _exc: NeedsLogin) -> Response:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        if request.method != "GET":
            return HTMLResponse("log in first", status_code=401)
        return RedirectResponse(f"/login?next={quote(target)}", status_code=303)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        if "text/html" in request.headers.get("accept", "") and not request.headers.get("hx-request"):
            return templates.TemplateResponse(request, "error.html", {"status": exc.status_code,
                                                                      "detail": exc.detail},
                                              status_code=exc.status_code, headers=exc.headers)
        return Response(str(exc.detail), status_code=exc.status_code, headers=exc.headers, media_type="text/plain")

    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    from station.hmi import routes_admin, routes_live, routes_qa

    app.include_router(routes_live.router)
    app.include_router(routes_qa.router)
    app.include_router(routes_admin.router)
    return app


async def _sweep(db: TraceDb) -> None:
    """Remove heat maps of pruned images now and then (the station's disk budget deletes only images)."""
    import anyio

    while True:
        removed = await anyio.to_thread.run_sync(sweep_orphans, db.images_dir)
        if removed:
            log.info("removed %d heat map(s) whose image was pruned", removed)
        await asyncio.sleep(SWEEP_EVERY_S)


def serve(loaded: LoadedConfig, *, listen: str | None = None, port: int | None = None) -> int:
    import uvicorn

    h = loaded.config.hmi
    app = create_app(loaded)
    config = uvicorn.Config(app, host=listen or h.listen, port=port or h.port, log_level="warning",
                            access_log=False, proxy_headers=False, server_header=False, timeout_graceful_shutdown=3)
    server = uvicorn.Server(config)
    server.run()
    return 0 if server.started else 1
