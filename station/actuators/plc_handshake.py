"""The `plc_handshake` actuator: the PLC owns reject timing; the station hands it every verdict.

For plants where a host-timed pulse is not acceptable (a host that dies between on and off would
latch the ejector), the station only writes holding registers and the PLC does the rest: per part
the part block (seq, verdict code, reason code, p_defect, threshold, age) together with the status
counters, in one write-multiple-registers request so the PLC never sees half a part; and at a fixed
period, from its own thread, a heartbeat counter with the ready flag, alarm code and counters, even
when no parts pass. When the heartbeat stops changing the PLC stops the line or diverts every part
(sample logic in docs/plc-integration.md). `REGISTER_MAP` below is the register table of that manual
(generated from it by `station config-reference --write`).
"""

from __future__ import annotations

import logging
import time

from station.actuators.base import Actuator, ActuatorError
from station.actuators.modbus_link import ModbusLink, rtu_link, tcp_link
from station.config_actuators import HANDSHAKE_REGISTER_COUNT, ModbusRtuLinkConfig, PlcHandshakeActuatorConfig
from station.records import Decision, Reason, Verdict
from station.stage import IDLE_WAIT_S, Stage

log = logging.getLogger(__name__)

# Offsets from `register_base`. 32-bit values are two registers, high word first.
HEARTBEAT = 0
READY = 1
ALARM_CODE = 2
PARTS_SEEN_HI, PARTS_SEEN_LO = 3, 4
REJECTS_HI, REJECTS_LO = 5, 6
FAIL_SAFES_HI, FAIL_SAFES_LO = 7, 8
RESERVED = 9
PART_SEQ_HI, PART_SEQ_LO = 10, 11
VERDICT_CODE = 12
REASON_CODE = 13
P_DEFECT_X10000 = 14
THRESHOLD_X10000 = 15
PART_AGE_MS = 16
STATUS_BLOCK = (HEARTBEAT, FAIL_SAFES_LO + 1)     # written by every heartbeat
PART_BLOCK = (PARTS_SEEN_HI, PART_AGE_MS + 1)     # written once per part (counters included)
assert PART_AGE_MS + 1 == HANDSHAKE_REGISTER_COUNT

# Verdict codes.
VERDICT_NONE = 0          # no part yet since the station started
VERDICT_PASS = 1          # the model said ok
VERDICT_REJECT = 2        # the model said defective
VERDICT_FAIL_SAFE_REJECT = 3  # could not decide in time: reject (the default fail-safe)
VERDICT_FAIL_SAFE_PASS = 4    # could not decide in time, and decision.fail_safe is 'ok'

REASON_CODES: dict[Reason, int] = {
    Reason.MODEL: 0, Reason.TIMEOUT: 1, Reason.OVERRUN: 2, Reason.BAD_FRAME: 3,
    Reason.MODEL_ERROR: 4, Reason.SHUTDOWN: 5, Reason.IMAGE_CHECK: 6,
}

# ALARM_CODE bits. The station writes bit 1 on its own so the PLC can stop the line on it.
ALARM_NONE = 0
ALARM_STATION_UNHEALTHY = 1   # bit 0: an alarm other than image_quality (camera, PLC link, disk, stage ...)
ALARM_IMAGE_QUALITY = 2       # bit 1: image_quality: k of the last n parts failed the validity gate

P_DEFECT_MISSING = 65535      # no probability (bad frame, timeout, model error)

# (offset, name, written, meaning): the table in docs/plc-integration.md (generated from this list).
REGISTER_MAP: list[tuple[int, str, str, str]] = [
    (HEARTBEAT, "HEARTBEAT", "every heartbeat_ms", "counter +1 per period, wraps 65535 -> 0; stops when the station stops"),
    (READY, "READY", "every heartbeat; 0 on close", "1 = station running and deciding, 0 = stopping/stopped"),
    (ALARM_CODE, "ALARM_CODE", "every heartbeat",
     "bits: 1 = station unhealthy (camera, model, disk, link...), 2 = image_quality (the camera cannot see: "
     "stop the line); 0 = none, 3 = both"),
    (PARTS_SEEN_HI, "PARTS_SEEN_HI", "heartbeat + each part", "parts decided since start, high word"),
    (PARTS_SEEN_LO, "PARTS_SEEN_LO", "heartbeat + each part", "parts decided since start, low word"),
    (REJECTS_HI, "REJECTS_HI", "heartbeat + each part", "reject verdicts since start (incl. fail-safe), high word"),
    (REJECTS_LO, "REJECTS_LO", "heartbeat + each part", "reject verdicts since start, low word"),
    (FAIL_SAFES_HI, "FAIL_SAFES_HI", "heartbeat + each part", "fail-safe verdicts since start, high word"),
    (FAIL_SAFES_LO, "FAIL_SAFES_LO", "heartbeat + each part", "fail-safe verdicts since start, low word"),
    (RESERVED, "RESERVED", "never", "0"),
    (PART_SEQ_HI, "PART_SEQ_HI", "each part", "part sequence number (the log's seq), high word"),
    (PART_SEQ_LO, "PART_SEQ_LO", "each part", "part sequence number, low word; a change = a new part"),
    (VERDICT_CODE, "VERDICT_CODE", "each part", "1 pass, 2 reject, 3 fail-safe reject, 4 fail-safe pass"),
    (REASON_CODE, "REASON_CODE", "each part",
     "0 model, 1 timeout, 2 overrun, 3 bad_frame, 4 model_error, 5 shutdown, 6 image_check"),
    (P_DEFECT_X10000, "P_DEFECT_X10000", "each part", "p_defect x 10000 (0-10000); 65535 = none"),
    (THRESHOLD_X10000, "THRESHOLD_X10000", "each part", "decision threshold x 10000"),
    (PART_AGE_MS, "PART_AGE_MS", "each part", "ms from capture to this write (saturates at 65535)"),
]


def verdict_code(verdict: Verdict) -> int:
    if verdict.is_fail_safe:
        return VERDICT_FAIL_SAFE_REJECT if verdict.decision is Decision.REJECT else VERDICT_FAIL_SAFE_PASS
    return VERDICT_REJECT if verdict.decision is Decision.REJECT else VERDICT_PASS


def _words(value: int) -> list[int]:
    value &= 0xFFFFFFFF
    return [value >> 16, value & 0xFFFF]


def _scaled(p: float | None) -> int:
    if p is None:
        return P_DEFECT_MISSING
    return max(0, min(10000, round(p * 10000)))


class HandshakeHeartbeat(Stage):
    """The handshake's heartbeat thread: every `heartbeat_ms` one status write (counter +1, READY, alarm
    code, counters), also while the PLC is down: its write is what reconnects the link."""

    busy_doing = "writing the heartbeat"

    def __init__(self, actuator: PlcHandshake) -> None:
        super().__init__(f"{actuator.name}-plc-heartbeat")
        self.actuator = actuator
        self.period_s = actuator.config.heartbeat_ms / 1000.0
        self._next_t = time.monotonic() + self.period_s

    def step(self) -> bool:
        wait_s = self._next_t - time.monotonic()
        if wait_s > 0:
            return not self.stop_event.wait(min(wait_s, IDLE_WAIT_S))
        # Poll the lock so close(), called with the lock held, never waits on this thread.
        if not self.actuator.lock.acquire(timeout=0.05):
            return not self.stop_event.is_set()
        try:
            if self.stop_event.is_set():
                return False
            self._next_t += self.period_s
            if self._next_t < time.monotonic():  # fell behind (link timeouts): keep the period, skip beats
                self._next_t = time.monotonic() + self.period_s
            with self.busy():
                self.actuator.beat()
        finally:
            self.actuator.lock.release()
        return True


class PlcHandshake(Actuator):
    kind = "plc_handshake"
    owns_timing = True
    io_thread_name = "plc_heartbeat"

    def __init__(self, config: PlcHandshakeActuatorConfig, *, name: str = "reject") -> None:
        super().__init__()
        self.config = config
        self.name = name
        self.link: ModbusLink = rtu_link(config.link) if isinstance(config.link, ModbusRtuLinkConfig) \
            else tcp_link(config.link)
        self.retry_interval_s = self.link.backoff.busy_s
        self.heartbeat = 0
        self.alarm_code = ALARM_NONE
        self.parts_seen = 0
        self.rejects = 0
        self.fail_safes = 0
        self.heartbeats_sent = 0
        self._ready = 0
        self._thread: HandshakeHeartbeat | None = None

    def describe(self) -> str:
        return f"{self.link.endpoint} handshake registers {self.config.register_base}.." \
               f"{self.config.register_base + HANDSHAKE_REGISTER_COUNT - 1}"

    # ---- register writes (caller holds self.lock) -------------------------------------------------
    def _counters(self) -> list[int]:
        return [*_words(self.parts_seen), *_words(self.rejects), *_words(self.fail_safes)]

    def _write(self, offset: int, values: list[int], what: str) -> None:
        cfg = self.config
        device_id = cfg.link.device_id
        try:
            self.link.call(what, lambda c: c.write_registers(cfg.register_base + offset, values, device_id=device_id))
        except ActuatorError as exc:
            self.note_failure(exc)
            self.connected = self.link.connected
            raise
        self.connected = True

    def _write_status(self) -> None:
        self._write(HEARTBEAT, [self.heartbeat, self._ready, self.alarm_code, *self._counters()], "heartbeat")

    # ---- the Actuator interface ---------------------------------------------------------------------
    def open(self) -> None:
        self._open(ready=1)

    def open_safe(self) -> None:
        """Connect and tell the PLC the station is not deciding yet (READY = 0, heartbeat running), so a
        restart after a crash shows the PLC a live but not-ready station until `mark_ready()`."""
        self._open(ready=0)

    def mark_ready(self) -> None:
        """READY = 1, written now; every heartbeat repeats it (so a failed write is repaired within heartbeat_ms)."""
        self._ready = 1
        self._write_status()

    def link_wait_s(self, *, busy: bool) -> float:
        return 0.0 if self.link.connected else self.link.backoff.wait_s(busy=busy)

    def _open(self, *, ready: int) -> None:
        self._ready = ready
        if self._thread is None or not self._thread.is_alive():
            self.heartbeat = 0
            # The heartbeat runs even when the PLC is down at start: it is what reconnects.
            self._thread = HandshakeHeartbeat(self)
            self._thread.start()
        with self.lock:
            self.link.connect()
            self._write_status()

    def send_verdict(self, verdict: Verdict) -> None:
        self.parts_seen += 1
        self.rejects += verdict.decision is Decision.REJECT
        self.fail_safes += verdict.is_fail_safe
        age_ms = max(0, min(65535, (time.monotonic_ns() - verdict.t_capture_ns) // 1_000_000))
        block = [*self._counters(), 0, *_words(verdict.seq), verdict_code(verdict),
                 REASON_CODES.get(verdict.reason, 255), _scaled(verdict.p_defect), _scaled(verdict.threshold),
                 int(age_ms)]
        self._write(PARTS_SEEN_HI, block, f"part {verdict.seq} verdict")
        self.counters["verdicts"] += 1

    def set_alarm_code(self, code: int) -> None:
        """Show a station alarm to the PLC (written now and by every heartbeat)."""
        self.alarm_code = code & 0xFFFF
        self._write_status()

    def set_alarm_level(self, code: int) -> None:
        self.set_alarm_code(code)

    def set_output(self, on: bool) -> None:
        """Used as a plain alarm output: on = ALARM_CODE 1 (station unhealthy), off = 0. The station writes
        the full code (`set_alarm_code`, image_quality included) where it knows it."""
        self.set_alarm_code(ALARM_STATION_UNHEALTHY if on else ALARM_NONE)

    def beat(self) -> None:
        """One heartbeat (the heartbeat thread, holding the lock): counter +1 and the status block."""
        self.heartbeat = (self.heartbeat + 1) & 0xFFFF
        try:
            self._write_status()
            self.heartbeats_sent += 1
        except ActuatorError as exc:
            self.counters["heartbeat_failed"] += 1
            log.debug("heartbeat %d not delivered: %s", self.heartbeat, exc)

    # ---- the heartbeat thread as the supervisor sees it -------------------------------------------------
    def io_thread(self) -> Stage | None:
        return self._thread

    def new_io_thread(self) -> Stage:
        return HandshakeHeartbeat(self)

    def adopt_io_thread(self, new: Stage) -> None:
        """The heartbeat counter goes on from where the dead thread left it: the PLC sees no reset."""
        assert isinstance(new, HandshakeHeartbeat)
        with self.lock:
            self._thread = new

    def _stop_heartbeat(self) -> None:
        if self._thread is not None:
            self._thread.stop()
            self._thread.join(timeout=5.0)
            if self._thread.is_alive():
                log.error("%s: heartbeat thread did not stop", self.describe())
            self._thread = None

    def release(self) -> None:
        self._stop_heartbeat()
        with self.lock:
            self.link.drop()
            self.connected = False

    def close(self) -> None:
        self._stop_heartbeat()
        with self.lock:
            self._ready = 0
            try:
                if not self.link.connected:
                    self.link.connect()
                self._write_status()
            except ActuatorError as exc:
                log.error("%s: could not write READY=0 on close (the PLC will see the heartbeat stop): %s",
                          self.describe(), exc)
            self.link.drop()
            self.connected = False
