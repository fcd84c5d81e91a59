"""A simulated PLC on 127.0.0.1 (or a serial pty) built from pymodbus's own server, for tests, the demo and
the pulse timing bench.

The server runs its asyncio loop in one background thread. Every coil and holding-register write is
timestamped server-side with `time.monotonic_ns()` the moment the request is handled (the same clock the
station uses for due times, so lateness and pulse widths can be read straight off `coil_events`). A test can
make the device answer every write with a Modbus exception reply (`fail_writes_with`) to exercise the
device-error path, and stop/start the server on the same port to exercise reconnects.
`emulate_handshake_plc` adds the sample PLC logic of a handshake station (docs/plc-integration.md). For
serial links, see `station.testbench.serial_pty`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerType
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

log = logging.getLogger(__name__)

# Function codes that write coils / holding registers.
_COIL_WRITES = {5, 15}
_REGISTER_WRITES = {6, 16, 23}


@dataclass
class SimPlcHandle:
    """A running simulated PLC. Lists are appended by the server thread; read them after the writes of
    interest have been acknowledged (a write is recorded before its reply is sent)."""

    host: str
    port: int | str  # TCP port, or the serial device path for RTU
    coil_events: list[tuple[int, int, bool]] = field(default_factory=list)  # (t_ns, address, value)
    register_writes: list[tuple[int, int, int]] = field(default_factory=list)  # (t_ns, address, value)
    fail_writes_with: ExcCodes | None = None  # answer every write with this exception reply
    _loop: asyncio.AbstractEventLoop | None = None
    _server: Any = None
    _thread: threading.Thread | None = None
    _coils: dict[int, bool] = field(default_factory=dict)
    _registers: dict[int, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    plc_logic: HandshakePlcLogic | None = None  # set by emulate_handshake_plc()

    # ---- what the server saw ------------------------------------------------------------------
    def coil(self, address: int) -> bool:
        with self._lock:
            return self._coils.get(address, False)

    def register(self, address: int) -> int:
        with self._lock:
            return self._registers.get(address, 0)

    def registers(self, address: int, count: int) -> list[int]:
        with self._lock:
            return [self._registers.get(address + i, 0) for i in range(count)]

    def pulses(self, address: int, *, since: int = 0) -> list[tuple[int, int]]:
        """(on_ns, off_ns) for each on->off transition of one coil in `coil_events[since:]`, the coil taken
        as off at `since` (repeated writes of the same value are not edges). An on without an off yet is
        reported with off_ns = -1."""
        pulses: list[tuple[int, int]] = []
        state, on_ns = False, 0
        for t_ns, addr, value in self.coil_events[since:]:
            if addr != address or value == state:
                continue
            if value:
                on_ns = t_ns
            else:
                pulses.append((on_ns, t_ns))
            state = value
        if state:
            pulses.append((on_ns, -1))
        return pulses

    # ---- server side --------------------------------------------------------------------------
    async def _action(self, func_code: int, _start: int, address: int, _count: int,
                      _registers: list[int], values: list[int] | list[bool] | None) -> ExcCodes | None:
        if values is None:
            return None
        if self.fail_writes_with is not None:
            return self.fail_writes_with
        t_ns = time.monotonic_ns()
        with self._lock:
            if func_code in _COIL_WRITES:
                for i, value in enumerate(values):
                    self._coils[address + i] = bool(value)
                    self.coil_events.append((t_ns, address + i, bool(value)))
            elif func_code in _REGISTER_WRITES:
                for i, value in enumerate(values):
                    self._registers[address + i] = int(value)
                    self.register_writes.append((t_ns, address + i, int(value)))
        if self.plc_logic is not None and func_code in _REGISTER_WRITES:
            self.plc_logic.on_registers_written(self, t_ns)
        return None

    def emulate_handshake_plc(self, *, register_base: int = 0, coil: int = 0, delay_ms: float = 800.0,
                              pulse_ms: float = 50.0, watchdog_ms: float = 600.0) -> HandshakePlcLogic:
        """Make this server behave like the PLC of the sample logic (docs/plc-integration.md) for
        `plc_handshake`: it fires `coil` for reject verdicts at capture + delay_ms (from PART_AGE_MS), counts
        gaps in PART_SEQ, and trips its watchdog (`line_stopped`) when the heartbeat stops changing or READY drops to 0."""
        assert self._loop is not None, "start the server first"
        logic = HandshakePlcLogic(register_base=register_base, coil=coil, delay_ms=delay_ms, pulse_ms=pulse_ms,
                                  watchdog_ms=watchdog_ms)
        self.plc_logic = logic
        logic.task = asyncio.run_coroutine_threadsafe(logic.watchdog(self), self._loop)
        return logic

    def stop(self, timeout_s: float = 5.0) -> None:
        """Shut the server down (clients see the connection drop) and join its thread."""
        if self._loop is None or self._thread is None:
            return
        loop, server = self._loop, self._server
        if self.plc_logic is not None and self.plc_logic.task is not None:
            self.plc_logic.task.cancel()
            self.plc_logic.task = None
        if server is not None and loop.is_running():
            fut = asyncio.run_coroutine_threadsafe(server.shutdown(), loop)
            try:
                fut.result(timeout_s)
            except (TimeoutError, RuntimeError, OSError) as exc:
                log.warning("sim PLC shutdown: %s", exc)
        self._thread.join(timeout_s)
        self._thread = None
        self._loop = None
        self._server = None

    def __enter__(self) -> SimPlcHandle:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


@dataclass
class HandshakePlcLogic:
    """The sample PLC logic for the handshake mode, run inside the simulated PLC's event loop."""

    register_base: int
    coil: int
    delay_ms: float
    pulse_ms: float
    watchdog_ms: float
    last_seq: int | None = None
    rejects_fired: list[int] = field(default_factory=list)  # part seqs the PLC ejected
    missed_parts: int = 0           # gaps in PART_SEQ: parts the PLC never heard of (treated as rejects)
    line_stopped: bool = False      # the watchdog tripped: heartbeat silent or READY = 0
    watchdog_trips: list[int] = field(default_factory=list)  # t_ns of each trip
    task: Any = None
    _last_beat: int | None = None
    _last_beat_ns: int = 0

    def on_registers_written(self, plc: SimPlcHandle, t_ns: int) -> None:
        from station.actuators import plc_handshake as hs

        base = self.register_base
        beat = plc._registers.get(base + hs.HEARTBEAT)
        if beat != self._last_beat:
            self._last_beat, self._last_beat_ns = beat, t_ns
        seq = (plc._registers.get(base + hs.PART_SEQ_HI, 0) << 16) | plc._registers.get(base + hs.PART_SEQ_LO, 0)
        verdict = plc._registers.get(base + hs.VERDICT_CODE, hs.VERDICT_NONE)
        if verdict == hs.VERDICT_NONE or seq == self.last_seq:
            return
        if self.last_seq is not None and seq > self.last_seq + 1:
            self.missed_parts += seq - self.last_seq - 1
        self.last_seq = seq
        if verdict in (hs.VERDICT_REJECT, hs.VERDICT_FAIL_SAFE_REJECT):
            age_ms = plc._registers.get(base + hs.PART_AGE_MS, 0)
            loop = asyncio.get_running_loop()
            wait_s = max(0.0, (self.delay_ms - age_ms) / 1000.0)
            loop.call_later(wait_s, self._output, plc, True, seq)
            loop.call_later(wait_s + self.pulse_ms / 1000.0, self._output, plc, False, seq)

    def _output(self, plc: SimPlcHandle, on: bool, seq: int) -> None:
        with plc._lock:
            plc._coils[self.coil] = on
            plc.coil_events.append((time.monotonic_ns(), self.coil, on))
        if on:
            self.rejects_fired.append(seq)

    async def watchdog(self, plc: SimPlcHandle) -> None:
        from station.actuators import plc_handshake as hs

        while True:
            await asyncio.sleep(0.02)
            if self._last_beat is None:
                continue  # not armed until the station has sent a first heartbeat
            stale = (time.monotonic_ns() - self._last_beat_ns) / 1e6 > self.watchdog_ms
            not_ready = plc._registers.get(self.register_base + hs.READY, 0) == 0
            if (stale or not_ready) and not self.line_stopped:
                self.line_stopped = True
                self.watchdog_trips.append(time.monotonic_ns())
            elif not stale and not not_ready and self.line_stopped:
                self.line_stopped = False  # a real PLC would also want an operator acknowledge


def _device(handle: SimPlcHandle, *, coils: int, registers: int) -> SimDevice:
    # Separate coil / discrete / holding / input blocks, every address valid up to the sizes given;
    # anything past them answers ILLEGAL_ADDRESS like a real PLC.
    return SimDevice(
        id=0,  # 0 = answer for every device id
        simdata=(
            [SimData(0, count=coils, values=False, datatype=DataType.BITS)],
            [SimData(0, count=16, values=False, datatype=DataType.BITS)],
            [SimData(0, count=registers, values=0, datatype=DataType.REGISTERS)],
            [SimData(0, count=16, values=0, datatype=DataType.REGISTERS)],
        ),
        action=handle._action,
    )


def _serve(handle: SimPlcHandle, make_server: Any, started: threading.Event, errors: list[BaseException]) -> None:
    async def main() -> None:
        try:
            server = make_server()
            handle._server = server
            await server.serve_forever(background=True)
            if isinstance(handle.port, int) and handle.port == 0:
                handle.port = server.transport.sockets[0].getsockname()[1]
        except BaseException as exc:  # reported to the starting thread, which raises it
            errors.append(exc)
            started.set()
            return
        started.set()
        await server.serving

    loop = asyncio.new_event_loop()
    handle._loop = loop
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()


def _start(handle: SimPlcHandle, make_server: Any, timeout_s: float) -> SimPlcHandle:
    started = threading.Event()
    errors: list[BaseException] = []
    handle._thread = threading.Thread(target=_serve, args=(handle, make_server, started, errors),
                                      name=f"sim-plc-{handle.port}", daemon=True)
    handle._thread.start()
    if not started.wait(timeout_s):
        handle.stop()
        raise RuntimeError(f"simulated PLC on {handle.host}:{handle.port} did not start in {timeout_s} s")
    if errors:
        handle._thread.join(timeout_s)
        raise RuntimeError(f"simulated PLC on {handle.host}:{handle.port} failed to start: {errors[0]}")
    return handle


def start_sim_server(host: str = "127.0.0.1", port: int = 0, *, coils: int = 64, registers: int = 128,
                     timeout_s: float = 5.0, record_into: SimPlcHandle | None = None) -> SimPlcHandle:
    """Start a Modbus TCP simulated PLC; `port=0` picks a free port (read it from `.port`).

    `record_into`: continue recording into an earlier (stopped) handle's event lists, for a restart on
    the same port in the middle of a run.
    """
    handle = record_into if record_into is not None else SimPlcHandle(host=host, port=port)
    handle.host = host
    if port or record_into is None:
        handle.port = port

    def make() -> ModbusTcpServer:
        return ModbusTcpServer(_device(handle, coils=coils, registers=registers),
                               address=(host, int(handle.port)), framer=FramerType.SOCKET)

    return _start(handle, make, timeout_s)


def start_sim_serial_server(port: str, *, baudrate: int = 115200, parity: str = "N", stopbits: int = 1,
                            bytesize: int = 8, coils: int = 64, registers: int = 128, timeout_s: float = 5.0,
                            record_into: SimPlcHandle | None = None) -> SimPlcHandle:
    """Start a Modbus RTU simulated PLC on a serial device (for tests: one end of a socat pty pair)."""
    handle = record_into if record_into is not None else SimPlcHandle(host="serial", port=port)
    handle.port = port

    def make() -> ModbusSerialServer:
        return ModbusSerialServer(_device(handle, coils=coils, registers=registers), framer=FramerType.RTU,
                                  port=port, baudrate=baudrate, parity=parity, stopbits=stopbits,
                                  bytesize=bytesize, reconnect_delay=0.2)

    return _start(handle, make, timeout_s)
