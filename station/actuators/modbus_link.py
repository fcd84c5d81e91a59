"""One reused pymodbus client connection with capped reconnect backoff and error classification.

Shared by every Modbus actuator (TCP or RTU, coil or registers); `tcp_link`/`rtu_link` build one from a
config, and `ModbusCoil` is the coil output both `modbus_tcp` and `modbus_rtu` are made of. `call()` runs one request:
transport trouble (refused, timeout, garbage, lost link) becomes `ActuatorTransportError` and drops
the connection so the next call reconnects after the backoff (every `reconnect_busy_ms` while a
command waits, see `Backoff`); an exception reply from the device (`response.isError()`) becomes
`ActuatorDeviceError` and keeps the link.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable

from pymodbus.client import ModbusSerialClient, ModbusTcpClient
from pymodbus.client.base import ModbusBaseSyncClient
from pymodbus.exceptions import ModbusException
from pymodbus.framer import FramerType

from station.actuators.base import (
    ActuatorDeviceError,
    ActuatorNotConnected,
    ActuatorTransportError,
    Backoff,
    SwitchedOutput,
)

log = logging.getLogger(__name__)


class ModbusLink:
    def __init__(self, client_factory: Callable[[], ModbusBaseSyncClient], *, endpoint: str,
                 reconnect_min_ms: float, reconnect_max_ms: float, reconnect_busy_ms: float = 100.0,
                 precheck: Callable[[], str | None] | None = None) -> None:
        self._factory = client_factory
        # Returns why a connect cannot work (e.g. the serial port is missing) before pymodbus tries.
        self._precheck = precheck
        self.endpoint = endpoint
        self.client: ModbusBaseSyncClient | None = None
        self.backoff = Backoff(reconnect_min_ms / 1000.0, reconnect_max_ms / 1000.0,
                               busy_s=reconnect_busy_ms / 1000.0)
        self.connects = 0
        self.reconnects = 0
        self.transport_errors = 0
        self.device_errors = 0
        self.ever_connected = False

    @property
    def connected(self) -> bool:
        return self.client is not None

    def connect(self) -> None:
        """Open the connection now (ignores the backoff); raise ActuatorTransportError on failure."""
        self.drop()
        problem = self._precheck() if self._precheck is not None else None
        if problem is not None:
            self.backoff.failed()
            self.transport_errors += 1
            raise ActuatorTransportError(f"cannot connect to {self.endpoint}: {problem}")
        client = self._factory()
        try:
            ok = client.connect()
        except (ModbusException, OSError) as exc:
            ok = False
            reason = str(exc)
        else:
            reason = "connection refused or timed out"
        if not ok:
            client.close()
            self.backoff.failed()
            self.transport_errors += 1
            raise ActuatorTransportError(f"cannot connect to {self.endpoint}: {reason}")
        self.client = client
        self.backoff.succeeded()
        self.connects += 1
        if self.ever_connected:
            self.reconnects += 1
            log.warning("reconnected to %s", self.endpoint)
        self.ever_connected = True

    def drop(self) -> None:
        if self.client is not None:
            try:
                self.client.close()
            except (ModbusException, OSError) as exc:
                log.debug("closing %s: %s", self.endpoint, exc)
            self.client = None

    def call(self, what: str, request: Callable[[ModbusBaseSyncClient], Any]) -> Any:
        """Run one request, reconnecting first when the (busy) backoff allows: a call means a command
        is waiting to be sent."""
        if self.client is None:
            if not self.backoff.ready(busy=True):
                raise ActuatorNotConnected(f"{self.endpoint} is down; {what} not sent (waiting to reconnect)")
            self.connect()
        assert self.client is not None
        try:
            response = request(self.client)
        except (ModbusException, OSError, ValueError) as exc:
            # pymodbus raises ModbusIOException/ConnectionException for timeouts and lost links,
            # and can raise ValueError/struct errors on garbled frames: all transport faults.
            self.transport_errors += 1
            self.drop()
            self.backoff.failed()
            raise ActuatorTransportError(f"{what} to {self.endpoint} failed: {exc}") from exc
        if response is None:
            self.transport_errors += 1
            self.drop()
            self.backoff.failed()
            raise ActuatorTransportError(f"{what} to {self.endpoint}: no response")
        if response.isError():
            self.device_errors += 1
            code = getattr(response, "exception_code", None)
            raise ActuatorDeviceError(f"{what} to {self.endpoint}: device replied with exception code {code}")
        return response


def tcp_link(cfg: Any) -> ModbusLink:
    """A link to a Modbus TCP device from any config with host/port/device_id/timeout_ms/retries/reconnect_*."""
    return ModbusLink(
        lambda: ModbusTcpClient(cfg.host, port=cfg.port, timeout=cfg.timeout_ms / 1000.0,
                                retries=cfg.retries, reconnect_delay=0, reconnect_delay_max=0),
        endpoint=f"modbus_tcp://{cfg.host}:{cfg.port}/{cfg.device_id}",
        reconnect_min_ms=cfg.reconnect_min_ms, reconnect_max_ms=cfg.reconnect_max_ms,
        reconnect_busy_ms=cfg.reconnect_busy_ms)


def rtu_link(cfg: Any) -> ModbusLink:
    """A link to a Modbus RTU device from any config with port/baudrate/parity/stopbits/bytesize/...."""

    def precheck() -> str | None:
        return None if os.path.exists(cfg.port) else f"serial port {cfg.port} does not exist"

    return ModbusLink(
        lambda: ModbusSerialClient(cfg.port, framer=FramerType.RTU, baudrate=cfg.baudrate, parity=cfg.parity,
                                   stopbits=cfg.stopbits, bytesize=cfg.bytesize,
                                   timeout=cfg.timeout_ms / 1000.0, retries=cfg.retries,
                                   reconnect_delay=0, reconnect_delay_max=0),
        endpoint=f"modbus_rtu://{cfg.port}@{cfg.baudrate}{cfg.parity}/{cfg.device_id}",
        reconnect_min_ms=cfg.reconnect_min_ms, reconnect_max_ms=cfg.reconnect_max_ms,
        reconnect_busy_ms=cfg.reconnect_busy_ms, precheck=precheck)


class ModbusCoil(SwitchedOutput):
    """A coil pulsed by the reject scheduler, on any Modbus link (TCP or RTU)."""

    def __init__(self, config: Any, link: ModbusLink, *, name: str = "reject") -> None:
        super().__init__()
        self.config = config
        self.name = name
        self.link = link
        self.retry_interval_s = link.backoff.busy_s

    def describe(self) -> str:
        return f"{self.link.endpoint} coil {self.config.coil}"

    def _connect(self) -> None:
        self.link.connect()

    def _link_up(self) -> bool:
        return self.link.connected

    def _backoff(self) -> Backoff:
        return self.link.backoff

    def _disconnect(self) -> None:
        self.link.drop()

    def _write(self, on: bool) -> None:
        self.link.call(f"coil {self.config.coil} {'on' if on else 'off'}",
                       lambda c: c.write_coil(self.config.coil, on, device_id=self.config.device_id))
