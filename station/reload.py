"""Live reload (SIGHUP): apply a new, validated station YAML to the running `Station` where it can change.

Live: decision threshold/deadline/fail-safe, reject delay/pulse, actuator settings of the same kind
(a new actuator is opened, swapped under the scheduler, the old one closed with its output off),
the model file (the new one is loaded and verified before it replaces the old, with its own validity
gate), the `gate:` limits, alarm and drift settings, the image policy, the frame size check, the
summary interval and the log level. Only a restart can change the camera, the queue size, the
trace-log folder and its spill reserve, the station id and an actuator's kind: those are reported as
"needs restart" and left as they run. Everything that can fail is done before anything is applied, so
a reload that fails raises `ReloadError` and leaves the station exactly as it was. Each setting is
applied through a public method of the stage or component that holds it (`DecisionMaker.update_settings`,
`RejectScheduler.update_timing`, `TraceLog.update_settings`, `CaptureThread.update_frame_size`, ...);
nothing here writes into another object's state.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING

from station.actuators import build_actuator
from station.actuators.base import Actuator, ActuatorError
from station.artifact import ModelArtifactError, file_sha256
from station.classifier import Classifier
from station.config import StationConfig
from station.configfile import LoadedConfig
from station.decision import DecisionSettings
from station.gate import Gate, GateConfigError, start_warnings

if TYPE_CHECKING:
    from station.app import Station

log = logging.getLogger(__name__)


class ReloadError(RuntimeError):
    """A reload that cannot be applied; the running station is unchanged."""


@dataclasses.dataclass
class ReloadResult:
    applied: list[str] = dataclasses.field(default_factory=list)
    needs_restart: list[str] = dataclasses.field(default_factory=list)

    def line(self) -> str:
        applied = "; ".join(self.applied) if self.applied else "nothing changed"
        if self.needs_restart:
            return f"applied: {applied}; needs restart (not applied): {', '.join(self.needs_restart)}"
        return f"applied: {applied}"


def _kind(actuator_config: object | None) -> str | None:
    return None if actuator_config is None else getattr(actuator_config, "kind")


def restart_only_changes(old: StationConfig, new: StationConfig) -> list[str]:
    """Keys whose change only a restart can apply."""
    checks = (("camera", new.camera != old.camera), ("queues", new.queues != old.queues),
              ("tracelog.dir", new.tracelog.dir != old.tracelog.dir),
              ("tracelog.spill_reserve_mb", new.tracelog.spill_reserve_mb != old.tracelog.spill_reserve_mb),
              ("station.id", new.station.id != old.station.id),
              ("reject.actuator.kind", new.reject.actuator.kind != old.reject.actuator.kind),
              ("alarm.actuator", _kind(new.alarm.actuator) != _kind(old.alarm.actuator)),
              ("hmi.control_socket", new.hmi.control_socket != old.hmi.control_socket),
              ("model.workers", new.model.workers != old.model.workers))
    return [key for key, changed in checks if changed]


def effective_config(old: StationConfig, new: StationConfig, needs_restart: list[str]) -> StationConfig:
    """`new` with the restart-only settings kept as they run, so the station's config stays true."""
    reject = new.reject if "reject.actuator.kind" not in needs_restart \
        else new.reject.model_copy(update={"actuator": old.reject.actuator})
    return new.model_copy(update={
        "camera": old.camera, "queues": old.queues,
        "station": new.station.model_copy(update={"id": old.station.id}),
        "tracelog": new.tracelog.model_copy(update={"dir": old.tracelog.dir,
                                                    "spill_reserve_mb": old.tracelog.spill_reserve_mb}),
        "reject": reject, "alarm": old.alarm if "alarm.actuator" in needs_restart else new.alarm,
        "hmi": new.hmi.model_copy(update={"control_socket": old.hmi.control_socket}),
        "model": new.model.model_copy(update={"workers": old.model.workers})})


def apply_reload(station: Station, loaded: LoadedConfig) -> ReloadResult:
    if not station.started or station.stopped:
        raise ReloadError("the station is not running")
    old = station.config
    decision, scheduler, tracelog, capture = station.decision, station.scheduler, station.tracelog, station.capture
    housekeeping = station.housekeeping
    assert decision and scheduler and tracelog and capture and housekeeping and station.classifier
    result = ReloadResult(needs_restart=restart_only_changes(old, loaded.config))
    new = effective_config(old, loaded.config, result.needs_restart)

    # 1. Prepare: nothing below touches the running station until all of it succeeded.
    classifier = load_changed_model(station.classifier, old, new)
    # The other inference workers get their own copies of a new model, loaded and verified the same way.
    extra = None if classifier is None else [load_changed_model(station.classifier, old, new, force=True)
                                             for _ in station.extra_classifiers]
    scoring = classifier or station.classifier
    gate_changed = classifier is not None or new.gate != old.gate
    try:
        gate = station.gate if not gate_changed else (
            Gate.build(scoring.domain, new.gate.limits) if scoring.domain is not None else None)
    except GateConfigError as exc:
        raise ReloadError(f"{exc}; the running model and gate are kept") from exc
    new_reject = new_alarm = None
    try:
        if new.reject.actuator != old.reject.actuator:
            new_reject = open_for_reload(new.reject.actuator, "reject")
        if new.alarm.actuator is not None and new.alarm.actuator != old.alarm.actuator:
            new_alarm = open_for_reload(new.alarm.actuator, "alarm")
    except ReloadError:
        if new_reject is not None:
            with new_reject.lock:
                new_reject.close()
        raise

    # 2. Apply, each from its next part on.
    if gate_changed:
        station.use_scoring(scoring, gate, new, extra)
        if classifier is not None:
            result.applied.append(f"model {classifier.describe()}")
        if new.gate != old.gate or classifier is not None:
            own = len(new.gate.limits.overrides())
            result.applied.append("validity gate " + ("OFF (format-1 model)" if gate is None
                                                      else f"limits ({own} set by the station)"))
        for warning in start_warnings(scoring, gate):
            log.warning("%s", warning)
            station.record_event("WARNING", "gate", warning)
    threshold = new.decision.threshold if new.decision.threshold is not None \
        else station.classifier.recommended_threshold
    settings = DecisionSettings(threshold=threshold, deadline_ms=new.decision.deadline_ms,
                                fail_safe=new.decision.fail_safe)
    if settings != decision.settings:
        decision.update_settings(settings)
        result.applied.append(f"decision (threshold {threshold:g}, deadline {settings.deadline_ms:g} ms, "
                              f"fail_safe {settings.fail_safe})")
    r = new.reject
    timing = (r.delay_ms, r.pulse_ms, r.late_tolerance_ms, r.plc_slow_clear_after)
    if timing != (old.reject.delay_ms, old.reject.pulse_ms, old.reject.late_tolerance_ms,
                  old.reject.plc_slow_clear_after):
        scheduler.update_timing(delay_ms=r.delay_ms, pulse_ms=r.pulse_ms, late_tolerance_ms=r.late_tolerance_ms,
                                plc_slow_clear_after=r.plc_slow_clear_after)
        result.applied.append(f"reject timing (delay {r.delay_ms:g} ms, pulse {r.pulse_ms:g} ms, "
                              f"tolerance {r.late_tolerance_ms:g} ms)")
    if new_reject is not None:
        swap_reject_actuator(station, new_reject, pulse_ms=old.reject.pulse_ms)
        result.applied.append(f"reject actuator {new_reject.describe()}")
    if new_alarm is not None:
        previous = station.replace_alarm_output(new_alarm)
        if previous is not None:
            with previous.lock:
                previous.close()
        result.applied.append(f"alarm actuator {new_alarm.describe()}")
    t = new.tracelog
    if t != old.tracelog:
        tracelog.update_settings(
            images=t.images, sample_every_n=t.sample_every_n, image_format=t.image_format,
            disk_budget_mb=t.disk_budget_mb, max_backlog=t.max_backlog, min_free_mb=t.min_free_mb,
            max_held_image_mb=t.max_held_image_mb, alarm_clear_s=t.alarm_clear_s)
        result.applied.append(f"image policy ({t.images}, every {t.sample_every_n}, {t.image_format}, "
                              f"budget {t.disk_budget_mb:g} MB); trace log (max_backlog {t.max_backlog}, "
                              f"min_free_mb {t.min_free_mb:g}, when rows cannot be kept: "
                              f"{t.when_rows_cannot_be_kept})")
    if new.model.threads != old.model.threads and new.model.threads:
        import torch

        torch.set_num_threads(new.model.threads)
        result.applied.append(f"inference threads {new.model.threads}")
    if new.frame != old.frame:
        capture.update_frame_size(width_px=new.frame.width_px, height_px=new.frame.height_px)
        result.applied.append("frame size check")
    if new.station.log_level != old.station.log_level:
        logging.getLogger().setLevel(new.station.log_level)
        result.applied.append(f"log level {new.station.log_level}")
    if new.station.summary_interval_s != old.station.summary_interval_s:
        housekeeping.update_summary_interval(new.station.summary_interval_s)
    if (new.service, new.line, new.station.summary_interval_s) != (old.service, old.line,
                                                                    old.station.summary_interval_s):
        # The service reads its limits from the station's config after a reload (Supervisor.update_limits).
        result.applied.append("service, line and summary settings")
    tracelog.update_run_info(model_id=station.classifier.model_id, model_sha256=station.classifier.artifact.sha256,
                             config_sha256=loaded.sha256)
    station.use_config(dataclasses.replace(loaded, config=new))
    station.record_event("INFO", "reload", result.line())
    return result


def load_changed_model(running: Classifier, old: StationConfig, new: StationConfig, *,
                       force: bool = False) -> Classifier | None:
    """A new, verified classifier when the model path, the file's content or any other model setting
    (device, backend, precision, batch size, warm-up) changed (or onnxruntime's thread count), or when
    `force`d (another inference worker's copy); else None."""
    m = new.model
    try:
        same_file = m.path == old.model.path and file_sha256(m.path) == running.artifact.sha256
    except OSError as exc:
        raise ReloadError(f"model.path {m.path}: {exc.strerror or exc}; "
                          f"the running model {running.model_id} is kept") from exc
    # An onnxruntime session fixes its thread count when it is made: a new count needs a new session.
    threads_fixed = m.backend != "torch" and m.threads != old.model.threads
    if not force and same_file and not threads_fixed and m.model_dump(exclude={"path", "threads"}) == \
            old.model.model_dump(exclude={"path", "threads"}):
        return None
    try:
        # Loading verifies it: seal, digests, format, architecture, tensor shapes, finite weights, the
        # reference inputs' scores on this backend (and, for onnxruntime, agreement with torch on probes).
        return Classifier.from_config(m)
    except ModelArtifactError as exc:
        raise ReloadError(f"{exc}; the running model {running.model_id} is kept") from exc
    except RuntimeError as exc:  # torch: device unavailable or out of memory while loading or probing
        raise ReloadError(f"model {m.path} could not be loaded on {m.device}: {exc}; "
                          f"the running model {running.model_id} is kept") from exc


def open_for_reload(config: object, name: str) -> Actuator:
    actuator = build_actuator(config, name=name)
    try:
        with actuator.lock:
            actuator.open()
    except ActuatorError as exc:
        with actuator.lock:
            actuator.close()
        raise ReloadError(f"new {name} actuator {actuator.describe()} cannot be opened: {exc}; "
                          f"the running one is kept") from exc
    return actuator


def swap_reject_actuator(station: Station, new: Actuator, *, pulse_ms: float) -> None:
    """Route the next reject to `new`, then close the old output (drives it off).

    A pulse the old output is giving right now keeps its width: its worker finishes it on the old
    device before it stops and the old output is closed.
    """
    previous = station.replace_reject_output(new, finish_s=pulse_ms / 1000.0 + 1.0)
    with previous.lock:
        previous.close()
    log.info("reject actuator swapped: %s -> %s (old output closed, off)", previous.describe(), new.describe())
