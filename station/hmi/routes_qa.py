"""Quality pages: the reject review queue, search with CSV export, and the trends.

Anyone may look; recording a review needs the operator role. The CSV export has the same columns
and order as `station trace export`. Trends are hourly and drawn server-side (`station.hmi.charts`).
"""

from __future__ import annotations

import csv
import io
from typing import Any

import numpy as np
from fastapi import APIRouter, Form, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from station.hmi import charts
from station.hmi.reviews import REVIEW_VALUES, ReviewError, ReviewStore
from station.hmi.security import require
from station.hmi.server import local_time
from station.hmi.tracedb import DECISIONS, LABELS, SearchFilters, TraceDb, TraceLogUnavailable, parse_local, since_hours

router = APIRouter()

PAGE_SIZE = 20
SEARCH_PAGE = 100
REVIEW_STATES = ("any", "unreviewed", "reviewed", *REVIEW_VALUES)


def _db(request: Request) -> TraceDb:
    return request.app.state.db


def _reviews(request: Request) -> ReviewStore:
    return request.app.state.reviews


@router.get("/review", response_class=HTMLResponse)
def review_page(request: Request, show: str = Query("open", pattern="^(open|all)$"),
                page: int = Query(0, ge=0, le=100_000)) -> Response:
    error, parts = None, []
    reviews = _reviews(request).latest()
    try:
        exclude = set(reviews) if show == "open" else None
        parts = _db(request).rejects(limit=PAGE_SIZE, offset=page * PAGE_SIZE, exclude=exclude)
    except TraceLogUnavailable as exc:
        error = str(exc)
    return request.app.state.templates.TemplateResponse(request, "review.html", {
        "page": "review", "parts": parts, "reviews": reviews, "show": show, "page_no": page, "error": error,
        "review_values": REVIEW_VALUES, "page_size": PAGE_SIZE})


@router.post("/review/{seq}")
def record_review(request: Request, seq: int, *, review: str = Form(...), note: str = Form("", max_length=500),
                  back: str = Form("/review")) -> Response:
    user = require(request, "operator")
    try:
        part = _db(request).part(seq)
    except TraceLogUnavailable as exc:
        raise HTTPException(status_code=503, detail=str(exc)) from exc
    if part is None:
        raise HTTPException(status_code=404, detail=f"no part {seq}")
    try:
        _reviews(request).add(part, review=review, reviewer=user.name, note=note)
    except ReviewError as exc:
        raise HTTPException(status_code=400, detail=str(exc)) from exc
    # Only back to a page of this HMI: never an open redirect.
    target = back if back.startswith("/") and not back.startswith("//") else "/review"
    return RedirectResponse(target, status_code=303)


def _filters(request: Request, *, since: str | None, until: str | None, decision: str | None,
             reason: str | None, label: str | None, review_state: str) -> SearchFilters:
    try:
        f = SearchFilters(since=parse_local(since), until=parse_local(until), decision=decision or None,
                          reason=reason or None, label=label or None)
    except ValueError as exc:
        raise HTTPException(status_code=400, detail=f"time range: {exc}") from exc
    if review_state != "any":
        latest = _reviews(request).latest()
        if review_state == "unreviewed":
            f.seqs_not_in = set(latest)
        elif review_state == "reviewed":
            f.seqs_in = set(latest)
        else:
            f.seqs_in = {s for s, r in latest.items() if r["review"] == review_state}
    return f


@router.get("/search", response_class=HTMLResponse)
def search_page(request: Request, *, since: str | None = None, until: str | None = None, decision: str | None = None,
                reason: str | None = None, label: str | None = None,
                review_state: str = Query("any", alias="review"), page: int = Query(0, ge=0, le=100_000)) -> Response:
    if review_state not in REVIEW_STATES:
        raise HTTPException(status_code=400, detail=f"review: one of {', '.join(REVIEW_STATES)}")
    error, parts, total, reasons = None, [], 0, []
    f = _filters(request, since=since, until=until, decision=decision, reason=reason, label=label,
                 review_state=review_state)
    try:
        parts = _db(request).search(f, limit=SEARCH_PAGE, offset=page * SEARCH_PAGE)
        total = _db(request).count(f)
        reasons = _db(request).distinct("reason")
    except TraceLogUnavailable as exc:
        error = str(exc)
    query = request.url.query
    return request.app.state.templates.TemplateResponse(request, "search.html", {
        "page": "search", "parts": parts, "total": total, "error": error, "reviews": _reviews(request).latest(
            [p["seq"] for p in parts]), "form": {"since": since or "", "until": until or "", "decision": decision or "",
                                                 "reason": reason or "", "label": label or "", "review": review_state},
        "decisions": DECISIONS, "labels": LABELS, "reasons": reasons, "review_states": REVIEW_STATES,
        "page_no": page, "page_size": SEARCH_PAGE, "query": query})


@router.get("/search.csv")
def search_csv(request: Request, *, since: str | None = None, until: str | None = None, decision: str | None = None,
               reason: str | None = None, label: str | None = None,
               review_state: str = Query("any", alias="review")) -> Response:
    if review_state not in REVIEW_STATES:
        raise HTTPException(status_code=400, detail=f"review: one of {', '.join(REVIEW_STATES)}")
    f = _filters(request, since=since, until=until, decision=decision, reason=reason, label=label,
                 review_state=review_state)
    try:
        cols, rows = _db(request).export_rows(f)
    except TraceLogUnavailable as exc:
        raise HTTPException(status_code=503, detail=str(exc)) from exc
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(cols)
    writer.writerows(rows)
    name = f"{request.app.state.config.station.id}-parts.csv"
    return Response(buf.getvalue(), media_type="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})


@router.get("/trends", response_class=HTMLResponse)
def trends_page(request: Request, hours: int = Query(24, ge=1, le=24 * 31)) -> Response:
    db = _db(request)
    since = since_hours(hours)
    error, figures = None, {}
    try:
        figures = _trend_charts(db, since, request.app.state.hub.status)
    except TraceLogUnavailable as exc:
        error = str(exc)
    return request.app.state.templates.TemplateResponse(request, "trends.html", {
        "page": "trends", "hours": hours, "figures": figures, "error": error})


def _hour_label(hour: str) -> str:
    return local_time(hour + ":00:00+00:00")[11:16]


def _trend_charts(db: TraceDb, since: str, status: dict[str, Any] | None) -> dict[str, Any]:
    hourly = db.hourly(since)
    labels = [_hour_label(h["hour"]) for h in hourly]
    yield_pct = [100.0 * h["ok"] / h["parts"] if h["parts"] else None for h in hourly]
    reject_pct = [100.0 * h["rejects"] / h["parts"] if h["parts"] else None for h in hourly]
    out: dict[str, Any] = {"parts": sum(h["parts"] for h in hourly)}
    out["yield"] = charts.line_chart("Yield and reject rate per hour", labels,
                                     {"yield %": yield_pct, "reject %": reject_pct}, y_label="%", y_max=100.0)
    by_reason: dict[str, dict[str, int]] = {}
    for r in db.fail_safes_by_reason(since):
        by_reason.setdefault(r["reason"], {})[r["hour"]] = r["n"]
    out["fail_safes"] = charts.bar_chart(
        "Fail-safe verdicts per hour, by reason", labels,
        {reason: [float(counts.get(h["hour"], 0)) for h in hourly] for reason, counts in sorted(by_reason.items())},
        y_label="parts", stacked=True) if by_reason else None
    hist = db.p_defect_histogram(since)
    threshold = (status or {}).get("settings", {}).get("threshold")
    out["p_defect"] = charts.bar_chart(
        "p_defect of model verdicts against the threshold",
        [f"{i / len(hist):.2f}" for i in range(len(hist))], {"parts": [float(n) for n in hist]}, y_label="parts",
        marker_x=threshold, marker_label=f"threshold {threshold:g}" if threshold is not None else "")
    lat = db.latencies(since)
    per_hour: dict[str, list[float]] = {}
    late: dict[str, list[float]] = {}
    for r in lat:
        per_hour.setdefault(r["hour"], []).append(r["decide_ms"])
        if r["fire_lateness_ms"] is not None:
            late.setdefault(r["hour"], []).append(r["fire_lateness_ms"])
    hours = [h["hour"] for h in hourly]

    def pct(values: list[float] | None, q: float) -> float | None:
        return float(np.percentile(values, q)) if values else None

    out["latency"] = charts.line_chart("Latency per hour, ms", labels, {
        "capture->verdict p50": [pct(per_hour.get(h), 50) for h in hours],
        "capture->verdict p99": [pct(per_hour.get(h), 99) for h in hours],
        "pulse lateness p99": [pct(late.get(h), 99) for h in hours]}, y_label="ms")
    return out
