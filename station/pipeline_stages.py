"""The pipeline's stage threads of one `Station`: one factory per stage name, registered in its registry.

`register_pipeline_stages` registers the trace-log writer, the reject scheduler, the deadline watch,
the inference worker, capture, housekeeping and (with `hmi.control_socket`) the live-state channel
in the station's `StageRegistry` (the outputs register their own, `station.station_outputs`). The
station builds each stage through its factory at start, and the supervisor's restart builds the
replacement through the same factory: so a restarted stage gets the station's current objects and
settings (the classifier and gate in use, the reloaded config), and its `adopt()` takes over the
dead thread's queue, numbering and counters.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from station.capture import CaptureThread
from station.classifier import InferenceWorker
from station.control import ControlServer
from station.decision import DeadlineWatch
from station.housekeeping import Housekeeping
from station.scheduler import RejectScheduler
from station.stage_registry import StageSpec
from station.tracelog import TraceLog

if TYPE_CHECKING:
    from station.app import Station


def register_pipeline_stages(station: Station) -> None:
    register = station.stage_registry.register
    register("tracelog", StageSpec(factory=lambda: new_tracelog(station)))
    register("scheduler", StageSpec(factory=lambda: new_scheduler(station)))
    register("deadline", StageSpec(factory=lambda: new_deadline_watch(station)))
    for index, name in enumerate(inference_worker_names(station.config.model.workers)):
        register(name, StageSpec(factory=lambda index=index: new_inference_worker(station, index)))
    register("capture", StageSpec(factory=lambda: new_capture(station)))
    register("housekeeping", StageSpec(factory=lambda: new_housekeeping(station)))
    if station.config.hmi.control_socket is not None:
        register("control", StageSpec(factory=lambda: new_control(station)))


def new_tracelog(station: Station) -> TraceLog:
    t = station.config.tracelog
    assert station.run_info is not None
    return TraceLog(t.dir, station.run_info, images=t.images, sample_every_n=t.sample_every_n,
                    image_format=t.image_format, disk_budget_mb=t.disk_budget_mb, max_backlog=t.max_backlog,
                    spill_reserve_mb=t.spill_reserve_mb, min_free_mb=t.min_free_mb,
                    max_held_image_mb=t.max_held_image_mb, alarm_clear_s=t.alarm_clear_s,
                    on_alarm=station.set_alarm, on_rows_kept=station.on_trace_rows_kept)


def new_scheduler(station: Station) -> RejectScheduler:
    assert station.reject_worker is not None
    return RejectScheduler(station.reject_worker, delay_ms=station.config.reject.delay_ms)


def new_deadline_watch(station: Station) -> DeadlineWatch:
    assert station.decision is not None
    return DeadlineWatch(station.decision)


def inference_worker_names(workers: int) -> list[str]:
    """The inference workers' stage names: `inference`, then `inference-2`, `inference-3`..."""
    return ["inference"] + [f"inference-{k}" for k in range(2, workers + 1)]


def new_inference_worker(station: Station, index: int = 0) -> InferenceWorker:
    """Worker `index` (0: the first) on the shared frame queue, with its own classifier."""
    classifiers = station.classifiers()
    assert station.decision is not None and index < len(classifiers)
    return InferenceWorker(station.frames, classifiers[index], station.decision.on_prediction, gate=station.gate,
                           deadline_ns=station.decision.deadline_ns,
                           name=inference_worker_names(len(classifiers))[index])


def new_capture(station: Station) -> CaptureThread:
    cfg = station.config
    assert station.camera is not None and station.decision is not None
    reconnect = getattr(cfg.camera, "reconnect", None)  # replay and synthetic sources have no reconnect settings
    backoff = {} if reconnect is None else {"reconnect_min_s": reconnect.min_backoff_ms / 1000.0,
                                            "reconnect_max_s": reconnect.max_backoff_ms / 1000.0}
    return CaptureThread(station.camera, station.frames, station.decision, first_seq=station.first_seq,
                         on_alarm=station.set_alarm, expected_size=(cfg.frame.width_px, cfg.frame.height_px),
                         **backoff)


def new_housekeeping(station: Station) -> Housekeeping:
    return Housekeeping(alarms=station.health.alarms, outputs=station.outputs.alarm_outputs,
                        summary=lambda: f"{station.summary_line()}; {station.health.summary()}",
                        summary_interval_s=station.config.station.summary_interval_s)


def new_control(station: Station) -> ControlServer:
    assert station.config.hmi.control_socket is not None
    return ControlServer(station.config.hmi.control_socket, status=station.live.status,
                         acknowledge=station.live.acknowledge, reload=station.live.reload)
