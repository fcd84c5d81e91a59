"""The `Station`: builds every stage from the config, starts them in order and stops them in order.

Start: every output to its safe state (its own worker thread; a PLC that is down is an alarm, not a
failure) -> model (refuses to start on a bad model) and its validity gate (the artifact's limits with
the YAML's `gate.limits`; a format-1 model runs with the gate off and a warning at every start) ->
trace log -> reject scheduler, deadline watch, inference worker -> camera capture -> housekeeping
(`station.housekeeping`: the alarm output follows health); the live-state socket for the HMI
(`station.control`, when `hmi.control_socket` is set) starts last and stops first. Every stage thread
is a `station.stage.Stage`, built through the station's `StageRegistry` from one factory per stage
name; the supervisor restarts a dead stage through the same registry (a fresh thread from the
factory that adopts the dead one's queues and state). Every verdict also goes to the `GateMonitor`,
which raises the `image_quality` alarm and writes `drift` warnings. Stop: capture first, then every
part in flight is scored or failed safe, every scheduled pulse fires, outputs are switched off, and
the trace log is flushed and closed; no thread is left. SIGHUP calls `reload` (`station.reload`),
which changes what can change live through public methods of the stages and of the station.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import uuid
from typing import Callable, TypeVar

from station.actuators.base import Actuator
from station.cameras import build_camera
from station.cameras.base import Camera
from station.capture import CaptureThread
from station.classifier import Classifier, InferenceWorker
from station.config import StationConfig
from station.configfile import LoadedConfig
from station.control import ControlServer
from station.decision import DeadlineWatch, DecisionMaker, DecisionSettings
from station.gate import Gate, GateMonitor, start_warnings
from station.health import Health, Stats
from station.housekeeping import Housekeeping, alarm_code
from station.live_state import LiveState
from station.output_worker import OutputWorker
from station.records import ActuationReport, Frame, Prediction, Reason, Verdict
from station.reload import ReloadResult, apply_reload
from station.pipeline_stages import inference_worker_names, register_pipeline_stages
from station.scheduler import RejectScheduler
from station.stage import Stage
from station.stage_registry import StageRegistry, StageSlot
from station.station_outputs import StationOutputs
from station.tracelog import RunInfo, TraceLog

log = logging.getLogger(__name__)

VerdictListener = Callable[[Verdict, Frame], None]
S = TypeVar("S", bound=Stage)


class Station:
    def __init__(self, loaded: LoadedConfig, *, camera: Camera | None = None,
                 classifier: Classifier | None = None, on_verdict: VerdictListener | None = None) -> None:
        self.loaded = loaded
        self.config = loaded.config
        self.camera = camera
        self.classifier = classifier
        self.extra_classifiers: list[Classifier] = []  # one per inference worker after the first (model.workers)
        self.listeners: list[VerdictListener] = [on_verdict] if on_verdict else []
        self.report_listeners: list[Callable[[ActuationReport], None]] = []
        self.run_id = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]
        self.stats = Stats()
        self.health = Health()
        self.decision: DecisionMaker | None = None
        self.frames: queue.Queue = queue.Queue(maxsize=self.config.queues.frames)
        self.gate: Gate | None = None
        self.gate_monitor = GateMonitor(alarm=self.config.gate.alarm, drift=self.config.gate.drift, limits=None,
                                        reference=None, on_alarm=self.set_alarm, on_event=self.record_event)
        self.live = LiveState(self)
        self.stage_registry = StageRegistry()  # every stage thread, built and restarted from here
        self.outputs = StationOutputs(self.stage_registry, config=lambda: self.config, on_report=self._on_report,
                                      on_alarm=self.set_alarm, reject_worker_changed=self._reject_worker_changed)
        self.run_info: RunInfo | None = None  # set at start: what every row of this run records
        self.first_seq = 0                    # set at start: the first part number of this run
        self._trace_rows_lost: str | None = None  # why rows cannot be kept right now, None while they can
        self.started = False
        self.stopped = False

    # ---- the stage threads, by the names the registry, the supervisor and the logs use -------------------
    capture = StageSlot("capture", CaptureThread)
    worker = StageSlot("inference", InferenceWorker)
    deadline_watch = StageSlot("deadline", DeadlineWatch)
    scheduler = StageSlot("scheduler", RejectScheduler)
    tracelog = StageSlot("tracelog", TraceLog)
    housekeeping = StageSlot("housekeeping", Housekeeping)
    control = StageSlot("control", ControlServer)
    reject_worker = StageSlot("reject_output", OutputWorker)  # the only thread that talks to the reject device
    alarm_worker = StageSlot("alarm_output", OutputWorker)

    @property
    def reject_actuator(self) -> Actuator | None:
        return self.outputs.actuator("reject")

    @property
    def alarm_actuator(self) -> Actuator | None:
        return self.outputs.actuator("alarm")

    def classifiers(self) -> list[Classifier]:
        """The classifier of each inference worker, the first worker's first (`classifier`)."""
        assert self.classifier is not None
        return [self.classifier, *self.extra_classifiers]

    def inference_workers(self) -> list[InferenceWorker]:
        """The inference worker threads that exist, `inference` first."""
        found = (self.stage_registry.get(name) for name in inference_worker_names(self.config.model.workers))
        return [w for w in found if isinstance(w, InferenceWorker)]

    def stages(self) -> dict[str, Stage]:
        """Every stage thread that exists, by name (the supervisor inspects these)."""
        return self.stage_registry.threads()

    def threads(self) -> list[threading.Thread]:
        return list(self.stages().values())

    # ---- start -------------------------------------------------------------------------------------
    def start(self) -> None:
        try:
            self._start()
        except BaseException:
            self._abort_start()
            raise

    def _start(self) -> None:
        cfg = self.config
        self.outputs.start()  # first: a killed station may have left the ejector on; a model loads for seconds
        if self.classifier is None:
            log.info("loading model %s", cfg.model.path)
            self.classifier = Classifier.from_config(cfg.model)
            log.info("model %s loaded", self.classifier.describe())
        self.extra_classifiers = [Classifier.from_config(cfg.model) for _ in range(cfg.model.workers - 1)]
        if self.extra_classifiers:
            log.info("%d inference workers, each with its own %s", cfg.model.workers, self.classifier.describe())
        if cfg.model.threads:
            import torch
            torch.set_num_threads(cfg.model.threads)
        threshold = cfg.decision.threshold if cfg.decision.threshold is not None \
            else self.classifier.recommended_threshold
        self.gate = self.build_gate(self.classifier, cfg)
        if self.camera is None:
            self.camera = build_camera(cfg.camera)
        self.run_info = RunInfo(run_id=self.run_id, station_id=cfg.station.id, camera_id=self.camera.describe(),
                                model_id=self.classifier.model_id, model_sha256=self.classifier.artifact.sha256,
                                config_sha256=self.loaded.sha256)
        register_pipeline_stages(self)
        tracelog = self._build("tracelog", TraceLog)
        # A log that cannot be opened is an alarm, not a failed start: the writer keeps trying, parts are
        # decided meanwhile (their rows go to the spill reserve), and start-up does not report ready.
        tracelog.open()
        self.first_seq = tracelog.next_seq()
        self.decision = DecisionMaker(
            DecisionSettings(threshold=threshold, deadline_ms=cfg.decision.deadline_ms,
                             fail_safe=cfg.decision.fail_safe),
            on_verdict=self._on_verdict, on_late=self._on_late)
        scheduler = self._build("scheduler", RejectScheduler)
        deadline_watch = self._build("deadline", DeadlineWatch)
        workers = [self._build(name, InferenceWorker) for name in inference_worker_names(cfg.model.workers)]
        capture = self._build("capture", CaptureThread)
        tracelog.start()
        reject_actuator = self.reject_actuator
        assert reject_actuator is not None and self.reject_worker is not None
        tracelog.event("INFO", "start", f"run {self.run_id}: model {self.classifier.describe()}, "
                                        f"threshold {threshold:g}, camera {self.camera.describe()}, "
                                        f"reject via {reject_actuator.describe()}")
        for name, message in self.health.alarms().items():  # raised before the log was open (outputs)
            tracelog.event("ERROR", "alarm", f"{name}: {message}")
        for warning in start_warnings(self.classifier, self.gate):
            log.warning("%s", warning)
            tracelog.event("WARNING", "gate", warning)
        scheduler.start()
        deadline_watch.start()
        for worker in workers:
            worker.start()
        self.reject_worker.mark_ready()  # queued ahead of the first part's verdict
        capture.start()
        self._build("housekeeping", Housekeeping).start()
        if cfg.hmi.control_socket is not None:
            self._build("control", ControlServer).start()
        self.started = True
        log.info("station %s started: run %s, model %s (threshold %g), camera %s, reject via %s",
                 cfg.station.id, self.run_id, self.classifier.describe(), threshold, self.camera.describe(),
                 reject_actuator.describe())

    def _build(self, name: str, kind: type[S]) -> S:
        thread = self.stage_registry.build(name)
        assert isinstance(thread, kind)
        return thread

    def _abort_start(self) -> None:
        """Start-up failed (e.g. a bad model): leave nothing running and every output off."""
        self.outputs.stop()

    # ---- the supervisor's restarts ----------------------------------------------------------------
    def restart_stage(self, name: str) -> Stage:
        """Replace a stage thread that has exited (crashed) by a fresh one from the registry, on the same
        queues and state. Only a dead thread is replaced: a hang is the watchdog's job, not this one's.
        Raises RuntimeError when the stage cannot be restarted (unknown, still running, station stopped)."""
        if not self.started or self.stopped:
            raise RuntimeError(f"stage {name!r} cannot be restarted now: the station is not running")
        new = self.stage_registry.restart(name)
        log.warning("stage %s restarted (the previous thread had exited)", name)
        self.record_event("WARNING", "stage_restart", f"{name} restarted after its thread exited")
        return new

    # ---- the validity gate -------------------------------------------------------------------------
    def build_gate(self, classifier: Classifier, config: StationConfig) -> Gate | None:
        """The gate for this classifier and config (None: a format-1 model has no validity domain), and the
        monitor set to its limits. Raises GateConfigError (a ModelArtifactError) when the YAML's limits
        do not fit the model."""
        gate = None if classifier.domain is None else Gate.build(classifier.domain, config.gate.limits)
        self._monitor_settings(classifier, gate, config)
        return gate

    def use_scoring(self, classifier: Classifier, gate: Gate | None, config: StationConfig,
                    extra: list[Classifier] | None = None) -> None:
        """Score from the next frame on with this classifier and gate (a live reload of the model or of
        `gate:`); the monitor restarts its windows on the new limits. `extra`: the other inference
        workers' copies of a new model (None: they keep theirs, the model did not change)."""
        if extra is not None:
            self.extra_classifiers = extra
        self.classifier, self.gate = classifier, gate
        for worker, own in zip(self.inference_workers(), self.classifiers()):
            worker.use(own, gate)
        self._monitor_settings(classifier, gate, config)

    def _monitor_settings(self, classifier: Classifier, gate: Gate | None, config: StationConfig) -> None:
        domain = classifier.domain
        self.gate_monitor.update_settings(alarm=config.gate.alarm, drift=config.gate.drift,
                                          limits=gate.limits if gate else None,
                                          reference=domain.reference if domain else None,
                                          boundaries=domain.drift_boundaries if domain else None)

    def summary_line(self) -> str:
        """Counters and the gate's state: the summary log line and the service's STATUS=."""
        return f"{self.stats.line()}; {self.gate_monitor.line()}"

    # ---- stage callbacks ---------------------------------------------------------------------------
    def _on_verdict(self, verdict: Verdict, frame: Frame) -> None:
        self.stats.add_verdict(verdict)
        self.live.on_verdict(verdict)
        self.gate_monitor.observe(verdict)
        scheduler, tracelog = self.scheduler, self.tracelog
        assert scheduler is not None and tracelog is not None
        scheduler.submit(verdict)
        tracelog.record(verdict, frame)
        log.debug("part %d: %s (%s) p_defect=%s", verdict.seq, verdict.decision.value, verdict.reason.value,
                  verdict.p_defect)
        for listener in self.listeners:
            listener(verdict, frame)

    def _on_late(self, prediction: Prediction) -> None:
        tracelog = self.tracelog
        assert tracelog is not None
        tracelog.record_late(prediction)

    def _on_report(self, report: ActuationReport) -> None:
        self.stats.add_report(report)
        self.live.on_report(report)
        tracelog = self.tracelog
        assert tracelog is not None
        tracelog.record_actuation(report)
        for listener in self.report_listeners:
            listener(report)

    def on_trace_rows_kept(self, kept: bool, why: str | None) -> None:
        """The trace log's rows fit nowhere durable (or do again): apply tracelog.when_rows_cannot_be_kept."""
        self._trace_rows_lost = None if kept else why
        self.apply_trace_log_policy()

    def apply_trace_log_policy(self) -> None:
        """fail_safe: while rows cannot be kept, every part gets the fail-safe verdict (also after a reload)."""
        if self.decision is None:
            return
        lost = self._trace_rows_lost
        if lost is not None and self.config.tracelog.when_rows_cannot_be_kept == "fail_safe":
            self.decision.force_fail_safe(Reason.NO_TRACE_LOG, f"trace log cannot keep rows: {lost}")
        else:
            self.decision.force_fail_safe(None)

    def set_alarm(self, name: str, message: str | None) -> None:
        was = name in self.health.alarms()
        self.health.set_alarm(name, message)
        if (message is not None) != was:
            self.live.alarm_changed(name, message is not None)
        tracelog = self.tracelog
        if tracelog is not None and (message is not None) != was:
            tracelog.event("ERROR" if message else "INFO", "alarm" if message else "alarm_cleared",
                           f"{name}: {message}" if message else name)

    def record_event(self, level: str, kind: str, message: str) -> None:
        """An event row in the trace log (reloads, supervisor actions) next to the parts it concerns."""
        tracelog = self.tracelog
        if tracelog is not None:
            tracelog.event(level, kind, message)

    # ---- the outputs -------------------------------------------------------------------------------
    def _reject_worker_changed(self, worker: OutputWorker) -> None:
        """A new reject output worker (a restart, a reload's swap): later parts go to it."""
        scheduler = self.scheduler
        if scheduler is not None:
            scheduler.swap_worker(worker)

    def replace_alarm_output(self, actuator: Actuator) -> Actuator | None:
        """Drive the alarm lamp through `actuator` (opened by the caller) from now on; return the previous
        actuator, its worker stopped, for the caller to close (live reload)."""
        return self.outputs.replace_alarm(actuator, level=alarm_code(self.health.alarms()))

    def replace_reject_output(self, actuator: Actuator, *, finish_s: float) -> Actuator:
        """Send every later reject to `actuator` (opened by the caller); the previous output finishes the
        pulse it is giving (up to `finish_s`), its worker stops, and it is returned for the caller to close."""
        return self.outputs.replace_reject(actuator, finish_s=finish_s)

    def use_config(self, loaded: LoadedConfig) -> None:
        """The config the station runs with from now on (a reload, after it applied what changes live)."""
        self.loaded, self.config = loaded, loaded.config
        self.apply_trace_log_policy()

    # ---- running and stopping ------------------------------------------------------------------------
    @property
    def source_finished(self) -> bool:
        capture = self.capture
        return capture is not None and capture.finished.is_set()

    def idle(self) -> bool:
        """No part between camera and actuator (the trace log is flushed by stop(), even on a failing disk)."""
        decision, scheduler = self.decision, self.scheduler
        assert decision is not None and scheduler is not None
        return self.frames.empty() and decision.pending_count == 0 and scheduler.in_flight == 0

    def wait_source_finished(self, timeout_s: float | None = None, stop_event: threading.Event | None = None) -> bool:
        """For finite sources (replay): wait until the source ended and every part has left the pipeline."""
        end = None if timeout_s is None else time.monotonic() + timeout_s
        while end is None or time.monotonic() < end:
            if stop_event is not None and stop_event.is_set():
                return False
            if self.source_finished and self.idle():
                return True
            time.sleep(0.02)
        return False

    def stop(self) -> dict:
        """Stop in order; return the run summary."""
        if self.stopped or not self.started:
            return self.stats.snapshot()
        self.stopped = True
        cfg = self.config
        capture, worker, decision, deadline_watch = self.capture, self.worker, self.decision, self.deadline_watch
        scheduler, tracelog, housekeeping, control = self.scheduler, self.tracelog, self.housekeeping, self.control
        assert capture and worker and decision and deadline_watch and scheduler and tracelog and housekeeping
        if control is not None:
            # First: no settings reload may start while the stages stop.
            control.stop()
            control.join(timeout=2.0)
        log.info("stopping: capture first, then %d queued part(s)", self.frames.qsize())
        capture.stop()
        capture.join(timeout=5.0)
        workers = self.inference_workers()
        for worker in workers:
            worker.stop()
        finish_s = max(2.0, cfg.decision.deadline_ms / 1000.0 * (self.frames.qsize() + 2))
        for worker in workers:
            worker.join(timeout=finish_s)
        # Whatever the worker could not finish in time still gets its (fail-safe) verdict.
        decision.expire()
        n = decision.fail_all_pending(Reason.SHUTDOWN, "station stopped before the part was classified")
        if n:
            log.warning("%d part(s) failed safe at shutdown", n)
        deadline_watch.stop()
        deadline_watch.join(timeout=2.0)
        drain_s = (cfg.reject.delay_ms + cfg.reject.pulse_ms) / 1000.0 + 1.0
        if not scheduler.drain(drain_s):
            log.error("reject scheduler still had commands after %.1f s", drain_s)
        scheduler.stop()
        scheduler.join(timeout=2.0)
        housekeeping.stop()
        housekeeping.join(timeout=2.0)
        self.outputs.stop()
        summary = self.stats.snapshot()
        summary["model"] = self.classifier.describe() if self.classifier else None
        summary["camera"] = dict(self.camera.counters) if self.camera else {}
        summary["overruns"] = capture.overruns
        summary["alarms_raised"] = self.health.raised_total
        summary["gate"] = self.gate_monitor.snapshot()
        tracelog.event("INFO", "stop", f"run {self.run_id} stopped: {self.summary_line()}")
        tracelog.finish_run(json.dumps(summary, default=str))
        tracelog.stop()
        tracelog.join(timeout=10.0)
        log.info("station stopped: %s", self.summary_line())
        return summary

    # ---- live reload (SIGHUP) ----------------------------------------------------------------------
    def reload(self, loaded: LoadedConfig) -> ReloadResult:
        """Apply a new, validated config live where it can change; see `station.reload`."""
        return apply_reload(self, loaded)
