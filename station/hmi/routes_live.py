"""The live page, its server-sent events, alarm acknowledgement, part images and heat maps, /metrics.

Images are served only from the trace log's image folder: a requested path is resolved (symlinks
included) and refused unless it lies inside that folder and is an image file, so `../` tricks,
absolute paths and links pointing out all end in 404.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import anyio
from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from station.hmi.heatmaps import HeatmapUnavailable
from station.hmi.live import LiveHub, StationUnreachable
from station.hmi.security import require
from station.hmi.tracedb import TraceLogUnavailable

log = logging.getLogger(__name__)
router = APIRouter()

IMAGE_SUFFIXES = (".png", ".jpeg", ".jpg")
FRAGMENTS = ("part", "counters", "alarms", "status")
KEEPALIVE_S = 15.0


def fragment_context(request: Request) -> dict[str, Any]:
    hub: LiveHub = request.app.state.hub
    status = hub.status or {}
    row = hub.last_row
    return {"request": request, "hub": hub, "status": status, "row": row,
            "live_part": status.get("last_part"), "counts": hub.counts}


def render_fragment(request: Request, name: str, context: dict[str, Any]) -> str:
    templates = request.app.state.templates
    template = templates.get_template(f"_{name}.html")
    full = {**request.app.state.templates.context_processors[0](request), **context}
    return template.render(full)


@router.get("/")
def index() -> RedirectResponse:
    return RedirectResponse("/live", status_code=303)


@router.get("/live", response_class=HTMLResponse)
def live_page(request: Request) -> Response:
    context = fragment_context(request)
    fragments = {name: render_fragment(request, name, context) for name in FRAGMENTS}
    return request.app.state.templates.TemplateResponse(request, "live.html", {"fragments": fragments,
                                                                                "page": "live"})


@router.get("/live/events")
async def live_events(request: Request) -> StreamingResponse:
    """Server-sent events: each change of the live state re-renders the page's fragments."""
    hub: LiveHub = request.app.state.hub

    async def stream() -> Any:
        seen = -1
        while True:
            changed = await hub.wait_change(seen, KEEPALIVE_S)
            if await request.is_disconnected():
                return
            if not changed:
                yield ": keep-alive\n\n"
                continue
            seen = hub.version
            context = fragment_context(request)
            for name in FRAGMENTS:
                html = render_fragment(request, name, context)
                yield f"event: {name}\n" + "".join(f"data: {line}\n" for line in html.splitlines()) + "\n"

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


@router.post("/alarms/ack")
async def acknowledge(request: Request, alarm: str = Form(..., max_length=100)) -> Response:
    user = require(request, "operator")
    hub: LiveHub = request.app.state.hub
    try:
        answer = await hub.request({"op": "ack", "alarm": alarm, "user": user.name})
    except StationUnreachable as exc:
        raise HTTPException(status_code=503, detail=f"the station is not reachable: {exc}") from exc
    if not answer.get("ok"):
        raise HTTPException(status_code=409, detail=answer.get("error", "refused"))
    await hub.poll_once()  # the page shows the acknowledgement at once
    if request.headers.get("hx-request"):
        return HTMLResponse(render_fragment(request, "alarms", fragment_context(request)))
    return RedirectResponse("/live", status_code=303)


@router.get("/api/status")
def api_status(request: Request) -> JSONResponse:
    hub: LiveHub = request.app.state.hub
    return JSONResponse({"station": hub.status, "station_error": hub.station_error, "trace_log_error": hub.db_error,
                         "last_part": hub.last_row, "version": hub.version})


@router.get("/healthz")
def healthz(request: Request) -> JSONResponse:
    hub: LiveHub = request.app.state.hub
    return JSONResponse({"hmi": "ok", "station_reachable": hub.status is not None, "polls": hub.polls})


@router.get("/metrics")
def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.registry), media_type=CONTENT_TYPE_LATEST)


# ---- images ----------------------------------------------------------------------------------------------
def safe_image_path(images_dir: Path, rel: str) -> Path:
    """The file `rel` names inside `images_dir`; 404 for anything outside it or not an image."""
    root = images_dir.resolve()
    try:
        target = (root / rel).resolve(strict=True)
    except (OSError, RuntimeError, ValueError):
        raise HTTPException(status_code=404, detail="no such image") from None
    if not target.is_relative_to(root) or target.suffix.lower() not in IMAGE_SUFFIXES or not target.is_file():
        log.warning("refused image path %r (outside %s or not an image)", rel, root)
        raise HTTPException(status_code=404, detail="no such image")
    return target


@router.get("/images/{rel:path}")
def image_file(request: Request, rel: str) -> FileResponse:
    return FileResponse(safe_image_path(request.app.state.db.images_dir, rel))


def _part_image(request: Request, seq: int) -> tuple[dict[str, Any], Path]:
    try:
        part = request.app.state.db.part(seq)
    except TraceLogUnavailable as exc:
        raise HTTPException(status_code=503, detail=str(exc)) from exc
    if part is None:
        raise HTTPException(status_code=404, detail=f"no part {seq} in the trace log")
    if not part["image_path"] or part["image_pruned"]:
        why = "pruned by the disk budget" if part["image_pruned"] else "not kept (image policy)"
        raise HTTPException(status_code=404, detail=f"part {seq}: image {why}")
    return part, safe_image_path(request.app.state.db.images_dir, part["image_path"])


@router.get("/part/{seq}/image")
def part_image(request: Request, seq: int) -> FileResponse:
    return FileResponse(_part_image(request, seq)[1])


@router.get("/part/{seq}/heatmap")
async def part_heatmap(request: Request, seq: int) -> Response:
    part, image = await anyio.to_thread.run_sync(_part_image, request, seq)
    try:
        result = await anyio.to_thread.run_sync(
            lambda: request.app.state.heatmaps.get(image, model_sha256=part["model_sha256"]))
    except HeatmapUnavailable as exc:
        raise HTTPException(status_code=404, detail=f"part {seq}: no heat map: {exc}") from exc
    if isinstance(result, bytes):
        return Response(result, media_type="image/png")
    return FileResponse(result, media_type="image/png")
