"""`station run` as a systemd service: start-up policy, READY/STATUS/WATCHDOG notifications, signals, reload.

`run_service` starts the `Station`, waits until the camera, the model, the PLC and the trace log are up (or, with
`service.startup: degraded`, until `service.startup_timeout_s` has passed) and only then sends
READY=1. The main thread then loops: the `Supervisor` inspects every stage, and WATCHDOG=1 goes
out at half of `$WATCHDOG_USEC` only while every stage is alive and moving, so a hung stage gets the
process restarted by systemd. STATUS= carries a one-line health summary. SIGTERM/SIGINT stop the
station in order (STOPPING=1, exit 0 when every stage thread has ended); SIGHUP re-reads and
validates the YAML and applies it live (RELOADING=1 ... READY=1); a reload that fails changes
nothing and says why in the service log and in the trace log's events. A reload asked for by the
HMI's settings page (over the live-state socket) takes the same path, one reload at a time.
Under journald (`$JOURNAL_STREAM` names our stderr) each log line carries its syslog priority.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping
from types import FrameType
from typing import Callable

from station.app import Station
from station.artifact import ModelArtifactError
from station.configfile import ConfigError, ConfigUse, LoadedConfig, load_config
from station.reload import ReloadError
from station.sdnotify import Notifier
from station.supervisor import Supervisor

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1      # start-up timed out, or a stage thread survived the stop: systemd may restart us
EXIT_BAD_INPUT = 2   # config or model unusable: restarting will not help (RestartPreventExitStatus=2)

_TICK_S = 0.25       # main loop period: supervision and signal handling latency
_STATUS_EVERY_S = 5.0


def run_service(loaded: LoadedConfig) -> int:
    """Run the station until SIGTERM/SIGINT (or the end of a finite source); return the exit code."""
    return StationService(loaded).run()


# ---- journald-friendly logging ---------------------------------------------------------------------
_SYSLOG_PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}


class JournaldFormatter(logging.Formatter):
    """`<priority>logger: message`: journald reads the prefix as the entry's level (SyslogLevelPrefix=)
    and adds its own timestamp; continuation lines (tracebacks) keep the same priority."""

    def __init__(self) -> None:
        super().__init__("%(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        priority = _SYSLOG_PRIORITY.get(record.levelno, 3 if record.levelno > logging.ERROR else 6)
        return "\n".join(f"<{priority}>{line}" for line in super().format(record).splitlines())


def stderr_is_journal(env: Mapping[str, str] | None = None) -> bool:
    """systemd sets JOURNAL_STREAM=dev:inode of the stream it connected to the journal."""
    value = (os.environ if env is None else env).get("JOURNAL_STREAM", "")
    try:
        dev, inode = (int(x) for x in value.split(":"))
        st = os.fstat(sys.stderr.fileno())
    except (ValueError, OSError):
        return False
    return (st.st_dev, st.st_ino) == (dev, inode)


def configure_logging(level: str) -> None:
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=level, stream=sys.stderr)
    if stderr_is_journal():
        for handler in root.handlers:
            handler.setFormatter(JournaldFormatter())


# ---- the service ---------------------------------------------------------------------------------------
class StationService:
    def __init__(self, loaded: LoadedConfig, *, notifier: Notifier | None = None,
                 station_factory: Callable[[LoadedConfig], Station] = Station) -> None:
        self.loaded = loaded
        self.notifier = notifier or Notifier()
        self.station_factory = station_factory
        self.station: Station | None = None
        self.supervisor: Supervisor | None = None
        self.stop_requested = threading.Event()
        self.reload_requested = threading.Event()
        self._wake = threading.Event()
        self._last_status = ""
        self._reload_lock = threading.Lock()  # SIGHUP (main loop) and the HMI (control thread) never overlap
        self._next_status = 0.0
        self._next_ping = 0.0

    # Called from signal handlers (and tests): only set flags, the main loop does the work.
    def request_stop(self) -> None:
        self.stop_requested.set()
        self._wake.set()

    def request_reload(self) -> None:
        self.reload_requested.set()
        self._wake.set()

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            self.request_reload()
        else:
            self.request_stop()

    def run(self) -> int:
        configure_logging(self.loaded.config.station.log_level)
        previous_handlers = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                previous_handlers[sig] = signal.signal(sig, self._on_signal)
        previous_hook = threading.excepthook
        threading.excepthook = _log_thread_crash
        # The watchdog's SIGABRT then prints every thread's stack (which stage hung, where) to the journal.
        own_faulthandler = not faulthandler.is_enabled()
        if own_faulthandler:
            faulthandler.enable(all_threads=True)
        try:
            return self._run()
        finally:
            if own_faulthandler:
                faulthandler.disable()
            threading.excepthook = previous_hook
            for sig, handler in previous_handlers.items():
                signal.signal(sig, handler)
            self.notifier.close()

    def _run(self) -> int:
        cfg = self.loaded.config
        log.info("starting station %s from %s (start-up policy %s, watchdog %s)", cfg.station.id, self.loaded.path,
                 cfg.service.startup,
                 f"{self.notifier.watchdog_s:g} s" if self.notifier.watchdog_s else "off")
        self.notifier.status(f"starting: loading model {cfg.model.path.name}")
        station = self.station = self.station_factory(self.loaded)
        station.live.route_reloads(self.reload_for_hmi)
        try:
            station.start()
        except ModelArtifactError as exc:
            log.error("station not started: %s", exc)
            self.notifier.status(f"not started: {exc}")
            return EXIT_BAD_INPUT
        self.supervisor = Supervisor.from_config(station, cfg.service)
        try:
            if not self._wait_until_ready():
                if self.stop_requested.is_set():
                    return self._stop()
                self._stop()
                return EXIT_FAILED
            self._loop()
            return self._stop()
        finally:
            if station.started and not station.stopped:
                station.stop()  # an unexpected exception above still stops the line in order

    # ---- start-up ------------------------------------------------------------------------------------
    def missing_for_ready(self) -> list[str]:
        """What start-up still waits for: the camera, the PLC outputs and a working trace log (the model
        is loaded by then). A station must never report ready while its parts cannot be traced."""
        station = self.station
        assert station is not None and station.capture is not None
        missing = []
        if not (station.capture.is_open or station.capture.captured or station.source_finished):
            missing.append("camera")
        trace_problem = station.tracelog.problem if station.tracelog is not None else "not started"
        if trace_problem is not None:
            missing.append(trace_problem)
        for role, actuator in (("reject output", station.reject_actuator), ("alarm output", station.alarm_actuator)):
            if actuator is not None and not actuator.connected:
                missing.append(f"{role} ({actuator.describe()})")
        return missing

    def _wait_until_ready(self) -> bool:
        """Wait for camera and PLC; True: send READY=1 and run. False: stop requested or start-up failed."""
        svc = self.loaded.config.service
        end = time.monotonic() + svc.startup_timeout_s
        self.notifier.extend_timeout(svc.startup_timeout_s + 30)
        while True:
            missing = self.missing_for_ready()
            if not missing:
                self._ready("running")
                return True
            if time.monotonic() >= end:
                break
            self._supervise(f"starting: waiting for {', '.join(missing)}")
            if self.stop_requested.is_set():
                return False
            self._wake.wait(_TICK_S)
            self._wake.clear()
        what = ", ".join(missing)
        if svc.startup == "degraded":
            log.error("start-up: %s not up after %g s; running degraded (service.startup: degraded)",
                      what, svc.startup_timeout_s)
            assert self.station is not None
            self.station.record_event("ERROR", "degraded_start", f"{what} not up after {svc.startup_timeout_s:g} s")
            self._ready("DEGRADED")
            return True
        log.error("start-up failed: %s not up after %g s (service.startup: wait); exiting for systemd to retry",
                  what, svc.startup_timeout_s)
        self.notifier.status(f"start-up failed: {what} not up after {svc.startup_timeout_s:g} s")
        return False

    def _ready(self, phase: str) -> None:
        self.notifier.ready(self.status_line(phase))
        log.info("ready (%s): %s", phase, self.status_line(phase))

    # ---- running -------------------------------------------------------------------------------------
    def _loop(self) -> None:
        station = self.station
        assert station is not None
        while not self.stop_requested.is_set():
            if self.reload_requested.is_set():
                self.reload_requested.clear()
                self.reload()
            self._supervise()
            if station.source_finished and station.idle():
                log.info("the camera source has ended and every part is logged: stopping")
                return
            self._wake.wait(_TICK_S)
            self._wake.clear()

    def _supervise(self, phase: str = "running") -> None:
        """One supervision round: restart dead stages, ping the watchdog only if all stages move."""
        assert self.supervisor is not None
        moving = self.supervisor.check()
        now = time.monotonic()
        interval = self.notifier.ping_interval_s
        if moving and interval is not None and now >= self._next_ping:
            self.notifier.watchdog()
            self._next_ping = now + interval
        assert self.station is not None
        # STATUS= at once when phase or health change; the counters ride along every few seconds.
        key = f"{phase}|{self.station.health.summary()}|{self.supervisor.summary()}"
        if key != self._last_status or now >= self._next_status:
            self.notifier.status(self.status_line(phase))
            self._last_status, self._next_status = key, now + _STATUS_EVERY_S

    def status_line(self, phase: str) -> str:
        station = self.station
        assert station is not None
        sup = f"; {self.supervisor.summary()}" if self.supervisor is not None else ""
        return f"{phase}: {station.summary_line()}; {station.health.summary()}{sup}"

    def reload_for_hmi(self, user: str, changes: list[dict]) -> dict:
        """The HMI's settings page: the SIGHUP reload, run in the control thread, naming the user."""
        station = self.station
        assert station is not None
        with self._reload_lock:
            self.notifier.reloading(f"reloading {self.loaded.path} (settings changed by {user} in the HMI)")
            answer = station.live.reload_in_station(user, changes)
            if answer["ok"]:
                self.loaded = station.loaded
                if self.supervisor is not None:
                    self.supervisor.update_limits(station.config.service)
                self.notifier.ready(self.status_line("running"))
            else:
                self.notifier.ready(self.status_line(f"running (last reload failed: {answer['error']})"))
        return answer

    def reload(self) -> bool:
        """SIGHUP: re-read and validate the YAML, apply what can change live. False: nothing changed."""
        with self._reload_lock:
            return self._reload()

    def _reload(self) -> bool:
        station = self.station
        assert station is not None and self.supervisor is not None
        path = self.loaded.path
        self.notifier.reloading(f"reloading {path}")
        log.info("reload requested: re-reading %s", path)
        try:
            try:
                loaded = load_config(path, use=ConfigUse.RUN)
                result = station.reload(loaded)
            except ConfigError as exc:
                why = "invalid config: " + "; ".join(str(issue) for issue in exc.issues)
                raise ReloadError(why) from exc
        except ReloadError as exc:
            log.error("reload failed, nothing changed, the running config stays: %s", exc)
            station.record_event("ERROR", "reload_failed", str(exc))
            self.notifier.ready(self.status_line(f"running (last reload failed: {exc})"))
            return False
        self.loaded = station.loaded
        self.supervisor.update_limits(station.config.service)
        log.info("reloaded %s: %s", path, result.line())
        for key in result.needs_restart:
            log.warning("reload: %s changed but needs a restart (systemctl restart); not applied", key)
        self.notifier.ready(self.status_line("running"))
        return True

    # ---- stopping ------------------------------------------------------------------------------------
    def _stop(self) -> int:
        station = self.station
        assert station is not None
        cfg = station.config
        # Time the orderly stop needs: parts in flight reach the ejector, the log flushes.
        need_s = (cfg.decision.deadline_ms + cfg.reject.delay_ms + cfg.reject.pulse_ms) / 1000.0 + 15.0
        self.notifier.stopping(f"stopping: {station.stats.line()}")
        self.notifier.extend_timeout(need_s)
        log.info("stopping: finishing parts in flight, outputs off, flushing the trace log")
        station.stop()
        left = [t.name for t in station.threads() if t.is_alive()]
        if left:
            # E.g. the reject scheduler still retrying to switch an unreachable output off: say why.
            log.error("stopped, but stage thread(s) still running: %s; %s", ", ".join(left), station.health.summary())
            return EXIT_FAILED
        log.info("stopped cleanly: %s", station.stats.line())
        return EXIT_OK


def _log_thread_crash(args: threading.ExceptHookArgs) -> None:
    """A stage thread that dies logs one error (with its traceback); the supervisor restarts it."""
    name = args.thread.name if args.thread is not None else "?"
    log.error("stage thread %s crashed: %s: %s", name, args.exc_type.__name__, args.exc_value,
              exc_info=(args.exc_type, args.exc_value, args.exc_traceback))
