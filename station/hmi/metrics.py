"""`/metrics`: the station in Prometheus format, computed in the HMI process (never in the station's).

Per-part series come from the trace log, read incrementally on each scrape: rows old enough to be
final (`tracelog.SETTLE_S`, so their actuator result is in) are counted once, by seq, from the HMI's
start on (counters restart at zero with the HMI, which Prometheus' rate() handles). Live gauges
(health, alarms, queue depth, reconnects, trace-log backlog) come from the station's live-state
socket through the `LiveHub`. Reasons, alarms and actuator results are label values as the station
wrote them, so new ones (a newer station) appear without a change here.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections import Counter
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from station.hmi.tracedb import SETTLE_S, TraceDb, TraceLogUnavailable, iso

if TYPE_CHECKING:
    from station.hmi.live import LiveHub

log = logging.getLogger(__name__)

# Seconds. Latency buckets span a fast GPU verdict (a few ms) to a deadline-sized stall.
LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0)
LATENESS_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5)


class Histogram:
    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.bounds = buckets
        self.counts = [0] * len(buckets)
        self.total = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.total += 1
        self.sum += value
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[i] += 1
                break

    def family(self, name: str, doc: str) -> HistogramMetricFamily:
        cumulative, running = [], 0
        for bound, n in zip(self.bounds, self.counts):
            running += n
            cumulative.append((repr(bound), running))
        cumulative.append(("+Inf", self.total))
        return HistogramMetricFamily(name, doc, buckets=cumulative, sum_value=self.sum)


class StationCollector(Collector):
    def __init__(self, db: TraceDb, hub: LiveHub) -> None:
        self.db = db
        self.hub = hub
        self._lock = threading.Lock()
        self._cursor: int | None = None
        self.parts: Counter[tuple[str, str]] = Counter()
        self.actuator: Counter[str] = Counter()
        self.image_checks: Counter[tuple[str, str]] = Counter()
        self.capture_to_verdict = Histogram(LATENCY_BUCKETS)
        self.capture_to_command = Histogram(LATENCY_BUCKETS)
        self.inference = Histogram(LATENCY_BUCKETS)
        self.lateness = Histogram(LATENESS_BUCKETS)
        self.read_errors = 0
        try:
            self._cursor = db.max_seq()  # counters start with the HMI: history is the trace log's job
        except TraceLogUnavailable:
            self._cursor = None  # no log yet: start at its first part

    def _scan(self) -> None:
        """Count the rows that became final since the last scrape."""
        with self._lock:
            try:
                if self._cursor is None:
                    self._cursor = 0
                settle = iso(datetime.now(timezone.utc) - timedelta(seconds=SETTLE_S))
                conn = self.db.connect()
                try:
                    rows = conn.execute(
                        "SELECT seq, t_capture_ns, decision, reason, detail, decide_ms, infer_ms, fired_ns, "
                        "fire_lateness_ms, actuator_result FROM parts WHERE seq > ? AND captured_at < ? ORDER BY seq",
                        (self._cursor, settle)).fetchall()
                finally:
                    conn.close()
            except (TraceLogUnavailable, sqlite3.Error) as exc:
                self.read_errors += 1
                log.warning("metrics: trace log not read: %s", exc)
                return
            for r in rows:
                self._cursor = max(self._cursor, r["seq"])
                self.parts[(r["decision"], r["reason"])] += 1
                self.actuator[r["actuator_result"]] += 1
                if r["reason"] == "image_check":
                    # The gate names the failed check first in the detail ("focus: ..."); generic on purpose.
                    check = (r["detail"] or "unknown").split(":", 1)[0].strip()[:40] or "unknown"
                    self.image_checks[(check, "fail")] += 1
                elif r["reason"] == "model":
                    self.image_checks[("all", "pass")] += 1
                self.capture_to_verdict.observe(r["decide_ms"] / 1000.0)
                if r["infer_ms"] is not None:
                    self.inference.observe(r["infer_ms"] / 1000.0)
                if r["fired_ns"] is not None:
                    self.capture_to_command.observe((r["fired_ns"] - r["t_capture_ns"]) / 1e9)
                if r["fire_lateness_ms"] is not None and r["actuator_result"] in ("acknowledged", "late"):
                    self.lateness.observe(max(0.0, r["fire_lateness_ms"]) / 1000.0)

    def collect(self) -> Iterator[Metric]:
        self._scan()
        parts = CounterMetricFamily("station_parts", "Parts decided, by decision and reason (fail-safe reasons "
                                                     "other than model)", labels=["decision", "reason"])
        for (decision, reason), n in sorted(self.parts.items()):
            parts.add_metric([decision, reason], n)
        yield parts
        actuator = CounterMetricFamily("station_actuator_results", "Reject/handshake command outcomes per part",
                                       labels=["result"])
        for result, n in sorted(self.actuator.items()):
            actuator.add_metric([result], n)
        yield actuator
        checks = CounterMetricFamily("station_image_check_results", "Image validity checks: parts that passed "
                                     "every check, and failures by check", labels=["check", "result"])
        for (check, result), n in sorted(self.image_checks.items()):
            checks.add_metric([check, result], n)
        yield checks
        yield self.capture_to_verdict.family("station_capture_to_verdict_seconds", "Capture to verdict")
        yield self.capture_to_command.family("station_capture_to_command_seconds", "Capture to actuator command")
        yield self.inference.family("station_inference_seconds", "Preprocess + model per part")
        yield self.lateness.family("station_pulse_lateness_seconds", "Reject command fired minus due")
        yield from self._live()

    def _live(self) -> Iterator[Metric]:
        status = self.hub.status
        up = GaugeMetricFamily("station_up", "1 while the station answers on its live-state socket")
        up.add_metric([], 1 if status else 0)
        yield up
        yield CounterMetricFamily("station_hmi_trace_read_errors", "Trace-log reads that failed in the HMI",
                                  value=self.read_errors)
        if not status:
            return
        yield GaugeMetricFamily("station_healthy", "1 while no alarm is active", value=1 if status["healthy"] else 0)
        alarms = GaugeMetricFamily("station_alarm_active", "Active alarms (1) by name", labels=["alarm"])
        for a in status["alarms"]:
            alarms.add_metric([a["name"]], 1)
        yield alarms
        yield CounterMetricFamily("station_alarms_raised", "Alarms raised since the station started",
                                  value=status["alarms_raised_total"])
        q = status["queue"]
        yield GaugeMetricFamily("station_queue_depth", "Frames waiting for inference", value=q["depth"])
        yield GaugeMetricFamily("station_queue_capacity", "Bound of the inference queue", value=q["max"])
        yield GaugeMetricFamily("station_commands_in_flight", "Reject commands scheduled, not yet fired",
                                value=q["in_flight_commands"])
        cam = status["camera"]
        yield CounterMetricFamily("station_camera_reconnects", "Camera losses (each followed by a reopen)",
                                  value=cam["reconnects"])
        yield GaugeMetricFamily("station_camera_open", "1 while the camera is open", value=1 if cam["open"] else 0)
        outputs = CounterMetricFamily("station_output_reconnects", "Reconnects of each output's link",
                                      labels=["output"])
        connected = GaugeMetricFamily("station_output_connected", "1 while the output's link is up", labels=["output"])
        for role, out in status["outputs"].items():
            outputs.add_metric([role], out["reconnects"])
            connected.add_metric([role], 1 if out["connected"] else 0)
        yield outputs
        yield connected
        tl = status["tracelog"]
        if tl:
            yield GaugeMetricFamily("station_tracelog_backlog", "Trace-log records not yet on disk", value=tl["backlog"])
            yield CounterMetricFamily("station_tracelog_write_errors", "Failed trace-log writes",
                                      value=tl["write_errors"])
            yield GaugeMetricFamily("station_tracelog_image_bytes", "Size of the image folder", value=tl["image_bytes"])
