"""The `Station`: builds every stage from the config, starts them in order and stops them in order.

Start: every output to its safe state (its own worker thread; a PLC that is down is an alarm, not a
failure) -> model (refuses to start on a bad model) and its validity gate (the artifact's limits with
the YAML's `gate.limits`; a format-1 model runs with the gate off and a warning at every start) ->
trace log -> reject scheduler, deadline watch, inference worker -> camera capture; the live-state
socket for the HMI (`station.control`, when `hmi.control_socket` is set) starts last and stops first.
Every verdict also goes to the `GateMonitor`, which raises the `image_quality` alarm and writes `drift`
warnings. Stop: capture first, then every part in flight is scored or failed safe, every scheduled
pulse fires, outputs are switched off, and the trace log is flushed and closed; no thread is left.
While running, the service's supervisor may `restart_stage` a stage thread that died (a fresh thread
from the same factory, on the same queues and state), and SIGHUP calls `reload` (`station.reload`).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import uuid
from typing import Callable

from station.actuators import build_actuator
from station.actuators.base import Actuator
from station.actuators.plc_handshake import ALARM_IMAGE_QUALITY, ALARM_STATION_UNHEALTHY
from station.cameras import build_camera
from station.cameras.base import Camera
from station.capture import CaptureThread
from station.classifier import Classifier, InferenceWorker
from station.config import StationConfig
from station.configfile import LoadedConfig
from station.control import ControlServer
from station.decision import DeadlineWatch, DecisionMaker, DecisionSettings
from station.gate import ALARM as IMAGE_QUALITY_ALARM
from station.gate import Gate, GateMonitor
from station.health import Health, Stats
from station.live_state import LiveState
from station.output_worker import OutputWorker
from station.records import ActuationReport, Frame, Prediction, Reason, Verdict
from station.reload import ReloadResult, apply_reload
from station.scheduler import RejectScheduler
from station.tracelog import RunInfo, TraceLog

log = logging.getLogger("station.app")

VerdictListener = Callable[[Verdict, Frame], None]

# How long start-up waits for each output's first attempt to drive it safe before loading the model.
_OPEN_WAIT_S = 5.0


class Station:
    def __init__(self, loaded: LoadedConfig, *, camera: Camera | None = None,
                 classifier: Classifier | None = None, on_verdict: VerdictListener | None = None) -> None:
        self.loaded = loaded
        self.config = loaded.config
        self.camera = camera
        self.classifier = classifier
        self.listeners: list[VerdictListener] = [on_verdict] if on_verdict else []
        self.report_listeners: list[Callable[[ActuationReport], None]] = []
        self.run_id = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]
        self.stats = Stats()
        self.health = Health()
        self.reject_actuator: Actuator | None = None
        self.alarm_actuator: Actuator | None = None
        self.reject_worker: OutputWorker | None = None  # the only thread that talks to the reject device
        self.alarm_worker: OutputWorker | None = None
        self.tracelog: TraceLog | None = None
        self.capture: CaptureThread | None = None
        self.worker: InferenceWorker | None = None
        self.scheduler: RejectScheduler | None = None
        self.deadline_watch: DeadlineWatch | None = None
        self.decision: DecisionMaker | None = None
        self.frames: queue.Queue = queue.Queue(maxsize=self.config.queues.frames)
        self.gate: Gate | None = None
        self.gate_monitor = GateMonitor(alarm=self.config.gate.alarm, drift=self.config.gate.drift, limits=None,
                                        reference=None, on_alarm=self.set_alarm, on_event=self.record_event)
        self._housekeeping: threading.Thread | None = None
        self._stop_housekeeping = threading.Event()
        self.live = LiveState(self)
        self.control: ControlServer | None = None
        self._trace_rows_lost: str | None = None  # why rows cannot be kept right now, None while they can
        self.started = False
        self.stopped = False

    # ---- start -------------------------------------------------------------------------------------
    def start(self) -> None:
        try:
            self._start()
        except BaseException:
            self._abort_start()
            raise

    def _start(self) -> None:
        cfg = self.config
        self._start_outputs()  # first: a killed station may have left the ejector on; a model loads for seconds
        if self.classifier is None:
            log.info("loading model %s", cfg.model.path)
            self.classifier = Classifier.from_config(cfg.model)
            log.info("model %s loaded", self.classifier.describe())
        if cfg.model.threads:
            import torch
            torch.set_num_threads(cfg.model.threads)
        threshold = cfg.decision.threshold if cfg.decision.threshold is not None \
            else self.classifier.recommended_threshold
        self.gate = self.build_gate(self.classifier, cfg)
        if self.camera is None:
            self.camera = build_camera(cfg.camera)
        self.tracelog = self._new_tracelog(
            RunInfo(run_id=self.run_id, station_id=cfg.station.id, camera_id=self.camera.describe(),
                    model_id=self.classifier.model_id, model_sha256=self.classifier.artifact.sha256,
                    config_sha256=self.loaded.sha256))
        # A log that cannot be opened is an alarm, not a failed start: the writer keeps trying, parts are
        # decided meanwhile (their rows go to the spill reserve), and start-up does not report ready.
        self.tracelog.open()
        first_seq = self.tracelog.next_seq()
        self.decision = DecisionMaker(
            DecisionSettings(threshold=threshold, deadline_ms=cfg.decision.deadline_ms,
                             fail_safe=cfg.decision.fail_safe),
            on_verdict=self._on_verdict, on_late=self._on_late)
        assert self.reject_worker is not None
        self.scheduler = self._new_scheduler(self.reject_worker)
        self.deadline_watch = DeadlineWatch(self.decision)
        self.worker = InferenceWorker(self.frames, self.classifier, self.decision.on_prediction, gate=self.gate,
                                      deadline_ns=self.decision.deadline_ns)
        self.capture = self._new_capture(first_seq)
        self.tracelog.start()
        self.tracelog.event("INFO", "start", f"run {self.run_id}: model {self.classifier.describe()}, "
                                             f"threshold {threshold:g}, camera {self.camera.describe()}, "
                                             f"reject via {self.reject_actuator.describe()}")
        for name, message in self.health.alarms().items():  # raised before the log was open (outputs)
            self.tracelog.event("ERROR", "alarm", f"{name}: {message}")
        for warning in self.gate_warnings(self.classifier, self.gate):
            log.warning("%s", warning)
            self.tracelog.event("WARNING", "gate", warning)
        self.scheduler.start()
        self.deadline_watch.start()
        self.worker.start()
        self.reject_worker.mark_ready()  # queued ahead of the first part's verdict
        self.capture.start()
        self._housekeeping = self._new_housekeeping()
        self._housekeeping.start()
        if cfg.hmi.control_socket is not None:
            self.control = self._new_control()
            self.control.start()
        self.started = True
        log.info("station %s started: run %s, model %s (threshold %g), camera %s, reject via %s",
                 cfg.station.id, self.run_id, self.classifier.describe(), threshold, self.camera.describe(),
                 self.reject_actuator.describe())

    def _start_outputs(self) -> None:
        """Build every output with its worker and wait (boundedly) until each drove its device safe."""
        cfg = self.config
        self.reject_actuator = build_actuator(cfg.reject.actuator, name="reject")
        self.reject_worker = self._new_output_worker(self.reject_actuator, "reject")
        self.reject_worker.start()
        if cfg.alarm.actuator is not None:
            self.alarm_actuator = build_actuator(cfg.alarm.actuator, name="alarm")
            self.alarm_worker = self._new_output_worker(self.alarm_actuator, "alarm")
            self.alarm_worker.start()
        for worker in (w for w in (self.reject_worker, self.alarm_worker) if w is not None):
            if not worker.wait_opened(_OPEN_WAIT_S):
                log.error("%s output %s: no answer within %g s at start; going on, its worker keeps trying",
                          worker.role, worker.actuator.describe(), _OPEN_WAIT_S)

    def _abort_start(self) -> None:
        """Start-up failed (e.g. a bad model): leave nothing running and every output off."""
        self._stop_outputs()

    def _stop_outputs(self) -> None:
        """Stop the output workers, then close each output (drives it off) from this thread."""
        for worker in (w for w in (self.reject_worker, self.alarm_worker) if w is not None and w.is_alive()):
            worker.stop()
            worker.join(timeout=5.0)
        for actuator in (a for a in (self.reject_actuator, self.alarm_actuator) if a is not None):
            with actuator.lock:
                actuator.close()

    # ---- the validity gate -------------------------------------------------------------------------
    def build_gate(self, classifier: Classifier, config: StationConfig) -> Gate | None:
        """The gate for this classifier and config (None: a format-1 model has no validity domain), and the
        monitor set to its limits. Raises GateConfigError (a ModelArtifactError) when the YAML's limits
        do not fit the model."""
        gate = None if classifier.domain is None else Gate.build(classifier.domain, config.gate.limits)
        self._monitor_settings(classifier, gate, config)
        return gate

    def use_scoring(self, classifier: Classifier, gate: Gate | None, config: StationConfig) -> None:
        """Score from the next frame on with this classifier and gate (a live reload of the model or of
        `gate:`); the monitor restarts its windows on the new limits."""
        assert self.worker is not None
        self.worker.use(classifier, gate)
        self.classifier, self.gate = classifier, gate
        self._monitor_settings(classifier, gate, config)

    def _monitor_settings(self, classifier: Classifier, gate: Gate | None, config: StationConfig) -> None:
        domain = classifier.domain
        self.gate_monitor.update_settings(alarm=config.gate.alarm, drift=config.gate.drift,
                                          limits=gate.limits if gate else None,
                                          reference=domain.reference if domain else None,
                                          boundaries=domain.drift_boundaries if domain else None)

    @staticmethod
    def gate_warnings(classifier: Classifier, gate: Gate | None) -> list[str]:
        """What an operator must hear at every start about the gate: off, uncalibrated or widened."""
        domain = classifier.domain
        if domain is None:
            return [f"VALIDITY GATE OFF: {classifier.artifact.legacy_warning()}"]
        out = []
        if not domain.calibrated:
            out.append(f"validity gate of {classifier.model_id} is NOT calibrated by perturbation "
                       f"({domain.method.get('limits', 'limits from the spread of its fit images')})")
        if gate is not None:
            out += [f"{w}: frames beyond the model's validated domain reach the model" for w in gate.widened]
        return out

    def summary_line(self) -> str:
        """Counters and the gate's state: the summary log line and the service's STATUS=."""
        return f"{self.stats.line()}; {self.gate_monitor.line()}"

    # ---- stage factories (start, and the supervisor's restarts) ------------------------------------
    def _new_scheduler(self, worker: OutputWorker) -> RejectScheduler:
        return RejectScheduler(worker, delay_ms=self.config.reject.delay_ms)

    def _new_output_worker(self, actuator: Actuator, role: str, *, opened: bool = False) -> OutputWorker:
        r = self.config.reject
        return OutputWorker(actuator, role=role, pulse_ms=r.pulse_ms, late_tolerance_ms=r.late_tolerance_ms,
                            plc_slow_clear_after=r.plc_slow_clear_after, on_report=self._on_report,
                            on_alarm=self.set_alarm, opened=opened)

    def _new_capture(self, first_seq: int) -> CaptureThread:
        cfg = self.config
        assert self.camera is not None and self.decision is not None
        reconnect = getattr(cfg.camera, "reconnect", None)
        backoff = {} if reconnect is None else {"reconnect_min_s": reconnect.min_backoff_ms / 1000.0,
                                                "reconnect_max_s": reconnect.max_backoff_ms / 1000.0}
        return CaptureThread(self.camera, self.frames, self.decision, first_seq=first_seq, on_alarm=self.set_alarm,
                             expected_size=(cfg.frame.width_px, cfg.frame.height_px), **backoff)

    def _new_tracelog(self, run: RunInfo) -> TraceLog:
        t = self.config.tracelog
        return TraceLog(t.dir, run, images=t.images, sample_every_n=t.sample_every_n, image_format=t.image_format,
                        disk_budget_mb=t.disk_budget_mb, max_backlog=t.max_backlog,
                        spill_reserve_mb=t.spill_reserve_mb, min_free_mb=t.min_free_mb,
                        max_held_image_mb=t.max_held_image_mb, alarm_clear_s=t.alarm_clear_s,
                        on_alarm=self.set_alarm, on_rows_kept=self._trace_rows_kept)

    def _new_housekeeping(self) -> threading.Thread:
        return threading.Thread(target=self._housekeep, name="housekeeping", daemon=True)

    def _new_control(self) -> ControlServer:
        assert self.config.hmi.control_socket is not None
        return ControlServer(self.config.hmi.control_socket, status=self.live.status,
                             acknowledge=self.live.acknowledge, reload=self.live.reload)

    # ---- stage callbacks ---------------------------------------------------------------------------
    def _on_verdict(self, verdict: Verdict, frame: Frame) -> None:
        self.stats.add_verdict(verdict)
        self.live.on_verdict(verdict)
        self.gate_monitor.observe(verdict)
        assert self.scheduler is not None and self.tracelog is not None
        self.scheduler.submit(verdict)
        self.tracelog.record(verdict, frame)
        log.debug("part %d: %s (%s) p_defect=%s", verdict.seq, verdict.decision.value, verdict.reason.value,
                  verdict.p_defect)
        for listener in self.listeners:
            listener(verdict, frame)

    def _on_late(self, prediction: Prediction) -> None:
        assert self.tracelog is not None
        self.tracelog.record_late(prediction)

    def _on_report(self, report: ActuationReport) -> None:
        self.stats.add_report(report)
        self.live.on_report(report)
        assert self.tracelog is not None
        self.tracelog.record_actuation(report)
        for listener in self.report_listeners:
            listener(report)

    def _trace_rows_kept(self, kept: bool, why: str | None) -> None:
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
        if self.tracelog is not None and (message is not None) != was:
            self.tracelog.event("ERROR" if message else "INFO", "alarm" if message else "alarm_cleared",
                                f"{name}: {message}" if message else name)

    def alarm_code(self) -> int:
        """The PLC handshake's ALARM_CODE: bit 0 an alarm other than image_quality (station unhealthy),
        bit 1 image_quality (the camera cannot see: stop the line). 0 when healthy."""
        alarms = self.health.alarms()
        code = ALARM_IMAGE_QUALITY if IMAGE_QUALITY_ALARM in alarms else 0
        if any(name != IMAGE_QUALITY_ALARM for name in alarms):
            code |= ALARM_STATION_UNHEALTHY
        return code

    def _housekeep(self) -> None:
        """Alarm output and the periodic summary line, every 100 ms (the output workers do the I/O)."""
        next_summary = time.monotonic() + self.config.station.summary_interval_s
        while not self._stop_housekeeping.wait(0.1):
            self._sync_alarm_output()
            if time.monotonic() >= next_summary:
                next_summary += self.config.station.summary_interval_s
                log.info("summary: %s; %s", self.summary_line(), self.health.summary())

    def _sync_alarm_output(self) -> None:
        """The alarm output follows health (on while any alarm is up); a PLC handshake link carries the
        alarm code instead, which tells image_quality apart from the other alarms. The output workers
        do the I/O and keep at it until the device confirms."""
        code = self.alarm_code()
        for worker in (self.alarm_worker, self.reject_worker if self.reject_worker is not None
                       and self.reject_worker.owns_timing else None):
            if worker is not None:
                worker.set_level(code)
    def replace_alarm_output(self, actuator: Actuator) -> Actuator | None:
        """Drive the alarm lamp through `actuator` (opened by the caller) from now on; return the previous
        actuator, its worker stopped, for the caller to close (live reload)."""
        previous, previous_worker = self.alarm_actuator, self.alarm_worker
        worker = self._new_output_worker(actuator, "alarm", opened=True)
        worker.set_level(self.alarm_code())
        worker.start()
        self.alarm_actuator, self.alarm_worker = actuator, worker
        if previous_worker is not None:
            previous_worker.stop()
            previous_worker.join(timeout=5.0)
        return previous

    def replace_reject_output(self, actuator: Actuator, *, finish_s: float) -> Actuator:
        """Send every later reject to `actuator` (opened by the caller); the previous output finishes the
        pulse it is giving (up to `finish_s`), its worker stops, and it is returned for the caller to close."""
        assert self.scheduler is not None and self.reject_worker is not None
        previous, previous_worker = self.reject_actuator, self.reject_worker
        worker = self._new_output_worker(actuator, "reject", opened=True)
        worker.start()
        worker.mark_ready()
        self.reject_actuator, self.reject_worker = actuator, worker
        self.scheduler.swap_worker(worker)
        if not previous_worker.drain(finish_s):
            log.warning("the previous reject output had not finished its commands after %.1f s", finish_s)
        previous_worker.stop()
        previous_worker.join(timeout=5.0)
        assert previous is not None
        return previous

    # ---- running and stopping ------------------------------------------------------------------------
    @property
    def source_finished(self) -> bool:
        return self.capture is not None and self.capture.finished.is_set()

    def idle(self) -> bool:
        """No part between camera and actuator (the trace log is flushed by stop(), even on a failing disk)."""
        assert self.decision and self.scheduler
        return self.frames.empty() and self.decision.pending_count == 0 and self.scheduler.in_flight == 0

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
        assert self.capture and self.worker and self.decision and self.deadline_watch and self.scheduler
        assert self.tracelog and self.reject_actuator
        if self.control is not None:
            # First: no settings reload may start while the stages stop.
            self.control.stop()
            self.control.join(timeout=2.0)
        log.info("stopping: capture first, then %d queued part(s)", self.frames.qsize())
        self.capture.stop()
        self.capture.join(timeout=5.0)
        self.worker.stop()
        self.worker.join(timeout=max(2.0, cfg.decision.deadline_ms / 1000.0 * (self.frames.qsize() + 2)))
        # Whatever the worker could not finish in time still gets its (fail-safe) verdict.
        self.decision.expire()
        n = self.decision.fail_all_pending(Reason.SHUTDOWN, "station stopped before the part was classified")
        if n:
            log.warning("%d part(s) failed safe at shutdown", n)
        self.deadline_watch.stop()
        self.deadline_watch.join(timeout=2.0)
        drain_s = (cfg.reject.delay_ms + cfg.reject.pulse_ms) / 1000.0 + 1.0
        if not self.scheduler.drain(drain_s):
            log.error("reject scheduler still had commands after %.1f s", drain_s)
        self.scheduler.stop()
        self.scheduler.join(timeout=2.0)
        self._stop_housekeeping.set()
        if self._housekeeping is not None:
            self._housekeeping.join(timeout=2.0)
        self._stop_outputs()
        summary = self.stats.snapshot()
        summary["model"] = self.classifier.describe() if self.classifier else None
        summary["camera"] = dict(self.camera.counters) if self.camera else {}
        summary["overruns"] = self.capture.overruns
        summary["alarms_raised"] = self.health.raised_total
        summary["gate"] = self.gate_monitor.snapshot()
        self.tracelog.event("INFO", "stop", f"run {self.run_id} stopped: {self.summary_line()}")
        self.tracelog.finish_run(json.dumps(summary, default=str))
        self.tracelog.stop()
        self.tracelog.join(timeout=10.0)
        log.info("station stopped: %s", self.summary_line())
        return summary

    def threads(self) -> list[threading.Thread]:
        return [t for t in self.stages().values() if t is not None]

    def stages(self) -> dict[str, threading.Thread | None]:
        """The stage threads by the names the supervisor, the logs and `restart_stage` use."""
        return {"capture": self.capture, "inference": self.worker, "deadline": self.deadline_watch,
                "scheduler": self.scheduler, "tracelog": self.tracelog, "housekeeping": self._housekeeping,
                "reject_output": self.reject_worker, "alarm_output": self.alarm_worker,
                "control": self.control}

    def record_event(self, level: str, kind: str, message: str) -> None:
        """An event row in the trace log (reloads, supervisor actions) next to the parts it concerns."""
        if self.tracelog is not None:
            self.tracelog.event(level, kind, message)

    # ---- supervisor restarts -----------------------------------------------------------------------
    def restart_stage(self, name: str) -> threading.Thread:
        """Replace a stage thread that has exited (crashed) by a fresh one on the same queues and state.

        Only a dead thread is replaced: a thread that still runs, even a hung one, would end up doubled
        (two threads on one camera, one queue), so a hang is the watchdog's job, not this one's.
        """
        old = self.stages().get(name)
        if old is None or not self.started or self.stopped:
            raise RuntimeError(f"stage {name!r} cannot be restarted now")
        if old.is_alive():
            raise RuntimeError(f"stage {name!r} is still running; only a dead stage is restarted")
        assert self.decision is not None and self.classifier is not None
        new: threading.Thread
        if name == "capture":
            assert isinstance(old, CaptureThread)
            new = self._new_capture(first_seq=old.next_seq)  # seq stays unique: numbering goes on
            for counter in ("captured", "overruns", "bad_frames", "reconnects"):
                setattr(new, counter, getattr(old, counter))
            self.capture = new
        elif name == "inference":
            assert isinstance(old, InferenceWorker)
            # The part it was scoring is still pending: the deadline watch gives it its fail-safe verdict.
            new = InferenceWorker(self.frames, old.classifier, self.decision.on_prediction, gate=old.gate,
                                  deadline_ns=self.decision.deadline_ns)
            new.scored, new.errors = old.scored, old.errors
            self.worker = new
        elif name == "deadline":
            new = self.deadline_watch = DeadlineWatch(self.decision)
        elif name == "scheduler":
            assert isinstance(old, RejectScheduler) and self.reject_worker is not None
            new = self._new_scheduler(self.reject_worker)
            new.adopt(old)
            self.scheduler = new
        elif name in ("reject_output", "alarm_output"):
            # It may have died inside a command: the new worker re-establishes the output (off first).
            assert isinstance(old, OutputWorker)
            new = self._new_output_worker(old.actuator, old.role, opened=True)
            new.adopt(old)
            if name == "reject_output":
                assert self.scheduler is not None
                self.reject_worker = new
                self.scheduler.swap_worker(new)
            else:
                self.alarm_worker = new
        elif name == "tracelog":
            assert isinstance(old, TraceLog)
            new = self._new_tracelog(old.run_info)
            new.adopt(old)
            self.tracelog = new
        elif name == "housekeeping":
            new = self._housekeeping = self._new_housekeeping()
        elif name == "control":
            new = self.control = self._new_control()
        else:
            raise KeyError(name)
        new.start()
        log.warning("stage %s restarted (the previous thread had exited)", name)
        self.record_event("WARNING", "stage_restart", f"{name} restarted after its thread exited")
        return new

    # ---- live reload (SIGHUP) ----------------------------------------------------------------------
    def reload(self, loaded: LoadedConfig) -> ReloadResult:
        """Apply a new, validated config live where it can change; see `station.reload`."""
        return apply_reload(self, loaded)
