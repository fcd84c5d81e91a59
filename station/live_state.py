"""What the station tells the HMI: a status snapshot, alarm acknowledgements and settings reloads.

`LiveState` belongs to one `Station`. The stage callbacks hand it the last verdict and actuator
report (one reference store each: nothing is computed on the hot path); the control thread
(`station.control`) asks it for a JSON-ready status, records an operator's acknowledgement of an
alarm as an event with the user's name, and applies a settings reload requested from the HMI's
settings page: the YAML is re-read and applied all-or-nothing through `Station.reload` (the SIGHUP
path), and the user's name with the old and new values goes into the events table either way.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Callable

from station.configfile import ConfigError, load_config
from station.control import describe_changes
from station.records import ActuationReport, Verdict
from station.reload import ReloadError

if TYPE_CHECKING:
    from station.app import Station

log = logging.getLogger(__name__)

ReloadHook = Callable[[str, list[dict[str, Any]]], dict[str, Any]]


def copy_counter(counter: Mapping[str, int]) -> dict[str, int]:
    """A copy of a Counter another thread may be adding keys to (a dict copy can then fail once)."""
    for _ in range(3):
        try:
            return dict(counter)
        except RuntimeError:  # "dictionary changed size during iteration": try again
            continue
    return {}


class LiveState:
    def __init__(self, station: Station) -> None:
        self.station = station
        self.started_wall = time.time()
        self.last_verdict: Verdict | None = None
        self.last_report: ActuationReport | None = None
        self._lock = threading.Lock()
        self._alarm_since: dict[str, float] = {}
        self._acks: dict[str, tuple[str, float]] = {}  # alarm -> (user, wall time)
        self._reload_lock = threading.Lock()
        self._reload_hook: ReloadHook | None = None

    # ---- from the stages (cheap) -------------------------------------------------------------------
    def on_verdict(self, verdict: Verdict) -> None:
        self.last_verdict = verdict

    def on_report(self, report: ActuationReport) -> None:
        self.last_report = report

    def alarm_changed(self, name: str, raised: bool) -> None:
        with self._lock:
            if raised:
                self._alarm_since.setdefault(name, time.time())
            else:
                # A cleared alarm forgets its acknowledgement: the next time it is raised is a new alarm.
                self._alarm_since.pop(name, None)
                self._acks.pop(name, None)

    # ---- from the control thread ---------------------------------------------------------------------
    def acknowledge(self, alarm: str, user: str) -> dict[str, Any]:
        active = self.station.health.alarms()
        if alarm not in active:
            return {"ok": False, "error": f"no active alarm {alarm!r} (active: {', '.join(sorted(active)) or 'none'})"}
        with self._lock:
            self._acks[alarm] = (user, time.time())
        log.warning("alarm %s acknowledged by %s", alarm, user)
        self.station.record_event("INFO", "alarm_ack", f"{alarm} acknowledged by {user}: {active[alarm]}")
        return {"ok": True}

    def route_reloads(self, hook: ReloadHook) -> None:
        """Hand the HMI's reload requests to `hook` (the service's reload, which tells systemd RELOADING=1 ...
        READY=1 and updates the supervisor); without one they go straight to `reload_in_station`."""
        self._reload_hook = hook

    def reload(self, user: str, changes: list[dict[str, Any]]) -> dict[str, Any]:
        if self._reload_hook is not None:
            return self._reload_hook(user, changes)
        return self.reload_in_station(user, changes)

    def reload_in_station(self, user: str, changes: list[dict[str, Any]]) -> dict[str, Any]:
        """Re-read the station's YAML and apply it (all or nothing); an event names the user either way."""
        station = self.station
        with self._reload_lock:
            try:
                try:
                    result = station.reload(load_config(station.loaded.path, use=station.loaded.use))
                except ConfigError as exc:
                    raise ReloadError("invalid config: " + "; ".join(str(i) for i in exc.issues)) from exc
            except ReloadError as exc:
                log.error("settings change by %s refused, nothing changed: %s", user, exc)
                station.record_event("ERROR", "settings_change_failed",
                                     f"by {user}: {describe_changes(changes)}; refused, nothing changed: {exc}")
                return {"ok": False, "error": str(exc)}
        station.record_event("INFO", "settings_change", f"by {user}: {describe_changes(changes)}; {result.line()}")
        log.info("settings changed by %s: %s (%s)", user, describe_changes(changes), result.line())
        return {"ok": True, "applied": result.applied, "needs_restart": result.needs_restart}

    def status(self) -> dict[str, Any]:
        """Everything the live page shows; JSON-ready."""
        st = self.station
        cfg = st.config
        now = time.time()
        alarms = st.health.alarms()
        with self._lock:
            since = dict(self._alarm_since)
            acks = dict(self._acks)
        threshold = st.decision.settings.threshold if st.decision is not None else None
        return {
            "station_id": cfg.station.id, "run_id": st.run_id, "pid": os.getpid(),
            "started_at": self.started_wall, "uptime_s": now - self.started_wall, "now": now,
            "healthy": not alarms, "running": st.started and not st.stopped,
            "alarms": [{"name": name, "message": message, "since": since.get(name),
                        "acked_by": acks[name][0] if name in acks else None,
                        "acked_at": acks[name][1] if name in acks else None}
                       for name, message in sorted(alarms.items())],
            "alarms_raised_total": st.health.raised_total,
            "counts": st.stats.counts(),
            "latency_ms": st.stats.recent_percentiles(),
            "queue": {"depth": st.frames.qsize(), "max": st.frames.maxsize,
                      "pending_verdicts": st.decision.pending_count if st.decision else 0,
                      "in_flight_commands": st.scheduler.in_flight if st.scheduler else 0},
            "last_part": _verdict_dict(self.last_verdict),
            "camera": self._camera(),
            "outputs": {role: _actuator_dict(a) for role, a in (("reject", st.reject_actuator),
                                                                ("alarm", st.alarm_actuator)) if a is not None},
            "model": {"id": st.classifier.model_id if st.classifier else None,
                      "describe": st.classifier.describe() if st.classifier else None,
                      "sha256": st.classifier.artifact.sha256 if st.classifier else None},
            "settings": {"threshold": threshold, "deadline_ms": cfg.decision.deadline_ms,
                         "fail_safe": cfg.decision.fail_safe, "images": cfg.tracelog.images,
                         "sample_every_n": cfg.tracelog.sample_every_n, "image_format": cfg.tracelog.image_format},
            "tracelog": self._tracelog(),
            "config": {"path": str(st.loaded.path), "sha256": st.loaded.sha256},
        }

    def _camera(self) -> dict[str, Any]:
        st = self.station
        cap = st.capture
        return {"describe": st.camera.describe() if st.camera else None,
                "open": bool(cap and cap.is_open), "finished": st.source_finished,
                "captured": cap.captured if cap else 0, "overruns": cap.overruns if cap else 0,
                "bad_frames": cap.bad_frames if cap else 0, "reconnects": cap.reconnects if cap else 0,
                "counters": copy_counter(st.camera.counters) if st.camera else {}}

    def _tracelog(self) -> dict[str, Any]:
        tl = self.station.tracelog
        if tl is None:
            return {}
        return {"db": str(tl.db_path), "images": str(tl.images.directory), "backlog": tl.backlog,
                "rows_written": tl.rows_written, "write_errors": tl.write_errors, "unwritten": tl.unwritten,
                "images_pruned": tl.images.pruned, "image_bytes": tl.images.bytes}


def _verdict_dict(v: Verdict | None) -> dict[str, Any] | None:
    if v is None:
        return None
    return {"seq": v.seq, "decision": v.decision.value, "reason": v.reason.value, "fail_safe": v.is_fail_safe,
            "p_defect": v.p_defect, "threshold": v.threshold, "decide_ms": v.decide_ms, "infer_ms": v.infer_ms,
            "detail": v.detail, "source": v.source, "label": v.label, "wall_time": v.wall_time}


def _actuator_dict(actuator: Any) -> dict[str, Any]:
    link = getattr(actuator, "link", None)
    return {"describe": actuator.describe(), "connected": bool(getattr(actuator, "connected", False)),
            "kind": getattr(actuator, "kind", type(actuator).__name__),
            "reconnects": getattr(link, "reconnects", 0) if link is not None else 0,
            "counters": copy_counter(getattr(actuator, "counters", {}))}
