"""The `serial_relay` actuator: a USB / RS-232 relay board switched by byte commands (pyserial).

The on/off commands come from the YAML (a preset such as the LC Technology boards, or your own hex
bytes). Such boards do not answer, so a command counts as delivered once the bytes are written and
flushed to the port. A missing port, or one that vanishes mid-run (USB unplugged), is a transport
error: the port is closed and reopened after a capped, doubling backoff (every `reconnect_busy_ms`
while a command is waiting).
"""

from __future__ import annotations

import logging
import os

import serial

from station.actuators.base import (
    ActuatorNotConnected,
    ActuatorTransportError,
    Backoff,
    SwitchedOutput,
)
from station.config_actuators import SerialRelayActuatorConfig

log = logging.getLogger(__name__)


class SerialRelay(SwitchedOutput):
    kind = "serial_relay"

    def __init__(self, config: SerialRelayActuatorConfig, *, name: str = "reject") -> None:
        super().__init__()
        self.config = config
        self.name = name
        self.on_command = config.on_command
        self.off_command = config.off_command
        self.port: serial.Serial | None = None
        self.backoff = Backoff(config.reconnect_min_ms / 1000.0, config.reconnect_max_ms / 1000.0,
                               busy_s=config.reconnect_busy_ms / 1000.0)
        self.retry_interval_s = self.backoff.busy_s
        self.ever_connected = False

    def describe(self) -> str:
        return f"serial_relay://{self.config.port}@{self.config.baudrate} ({self.config.preset})"

    def _link_up(self) -> bool:
        return self.port is not None

    def _backoff(self) -> Backoff:
        return self.backoff

    def _fail(self, message: str) -> ActuatorTransportError:
        self._disconnect()
        self.backoff.failed()
        return ActuatorTransportError(message)

    def _connect(self) -> None:
        self._disconnect()
        cfg = self.config
        if not os.path.exists(cfg.port):
            raise self._fail(f"serial port {cfg.port} does not exist")
        try:
            self.port = serial.Serial(cfg.port, baudrate=cfg.baudrate, bytesize=cfg.bytesize, parity=cfg.parity,
                                      stopbits=cfg.stopbits, timeout=0, write_timeout=cfg.write_timeout_ms / 1000.0)
        except (serial.SerialException, OSError, ValueError) as exc:
            raise self._fail(f"cannot open serial port {cfg.port}: {exc}") from exc
        self.backoff.succeeded()
        if self.ever_connected:
            self.counters["reconnects"] += 1
            log.warning("reopened %s", self.describe())
        self.ever_connected = True

    def _disconnect(self) -> None:
        if self.port is not None:
            try:
                self.port.close()
            except (serial.SerialException, OSError) as exc:
                log.debug("closing %s: %s", self.config.port, exc)
            self.port = None

    def _write(self, on: bool) -> None:
        if self.port is None:
            if not self.backoff.ready(busy=True):
                raise ActuatorNotConnected(f"{self.describe()} is down; {'on' if on else 'off'} not sent "
                                           f"(waiting to reopen)")
            self._connect()
        assert self.port is not None
        command = self.on_command if on else self.off_command
        try:
            written = self.port.write(command)
            self.port.flush()
        except (serial.SerialException, serial.SerialTimeoutException, OSError) as exc:
            raise self._fail(f"writing {'on' if on else 'off'} to {self.config.port} failed: {exc}") from exc
        if written != len(command):
            raise self._fail(f"short write to {self.config.port}: {written} of {len(command)} bytes")
