"""Configuration schema of the reject and alarm actuators, one pydantic model per actuator kind.

Each model is selected by its `kind` key (a pydantic discriminated union). Adding an actuator
kind means one model here, one module in `station/actuators/` and one line in that package's
registry. The schema checks values only; whether a serial port exists is a property of the machine,
not of the file, so it is checked when the actuator opens and by `serial_port_problem()` (which
`station check-config` and `station run` call through `station.config_checks`), never by the schema.
"""

from __future__ import annotations

import os
import re
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# Holding registers the PLC handshake uses, counted from its `register_base` (see plc_handshake.py).
HANDSHAKE_REGISTER_COUNT = 17


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LogActuatorConfig(_Strict):
    """Writes what it would do to the station log; for dry runs and lines without an ejector yet."""

    kind: Literal["log"] = "log"


# ---- Modbus links ---------------------------------------------------------------------------------------
class _ModbusCommon(_Strict):
    device_id: int = Field(1, ge=0, le=255, description="Modbus unit id (TCP gateways may use up to 255).")
    timeout_ms: float = Field(200.0, ge=5, le=10_000, description="Per-request timeout in ms.")
    retries: int = Field(0, ge=0, le=5, description="Retries per request on a transport error.")
    reconnect_min_ms: float = Field(200.0, ge=10, le=60_000,
                                     description="First reconnect delay after a failure, ms.")
    reconnect_max_ms: float = Field(5_000.0, ge=10, le=600_000,
                                     description="Cap of the doubling reconnect delay, ms.")
    reconnect_busy_ms: float = Field(
        100.0, ge=10, le=5_000,
        description="Reconnect attempt interval while a command is waiting (a part's on, a pending off, an "
                    "alarm-lamp change, a verdict), ms; the doubling reconnect_min_ms..reconnect_max_ms "
                    "delay applies only while nothing waits.")

    @model_validator(mode="after")
    def _backoff_order(self) -> _ModbusCommon:
        """`reconnect_max_ms` must be at least `reconnect_min_ms`."""
        if self.reconnect_max_ms < self.reconnect_min_ms:
            raise ValueError(f"reconnect_max_ms: {self.reconnect_max_ms:g} ms is below "
                             f"reconnect_min_ms = {self.reconnect_min_ms:g} ms")
        return self


class _ModbusTcpFields(_ModbusCommon):
    host: str = Field("127.0.0.1", min_length=1, description="PLC address (IP or host name).")
    port: int = Field(502, ge=1, le=65535, description="Modbus TCP port.")


class _SerialFields(_Strict):
    port: str = Field(..., min_length=1, description="Serial device, e.g. /dev/ttyUSB0 or /dev/serial/by-id/...")
    baudrate: int = Field(19200, description="Bits per second.")
    parity: Literal["N", "E", "O"] = Field("N", description="N(one), E(ven) or O(dd).")
    stopbits: Literal[1, 2] = Field(1, description="Stop bits.")
    bytesize: Literal[7, 8] = Field(8, description="Data bits.")

    @field_validator("baudrate")
    @classmethod
    def _standard_baudrate(cls, v: int) -> int:
        """`baudrate` must be a standard rate: 1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400,
        460800 or 921600."""
        if v not in _BAUDRATES:
            raise ValueError(f"baudrate {v} is not a standard rate ({', '.join(map(str, _BAUDRATES))})")
        return v


_BAUDRATES = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600)


def rtu_write_round_trip_ms(link: _SerialFields) -> float:
    """The least time one Modbus RTU coil write and its reply take on the wire: 8 bytes each way plus
    the 3.5-character silence that ends each frame (1.75 ms above 19200 Bd, as the standard says).
    No device answers faster, so no on can be confirmed sooner after it was sent."""
    bits = 1 + link.bytesize + (link.parity != "N") + link.stopbits
    char_ms = bits * 1000.0 / link.baudrate
    gap_ms = 1.75 if link.baudrate > 19200 else 3.5 * char_ms
    return 2 * (8 * char_ms + gap_ms)


class _ModbusRtuFields(_SerialFields, _ModbusCommon):
    device_id: int = Field(1, ge=1, le=247, description="Modbus RTU slave address on the bus (1-247).")


class ModbusTcpActuatorConfig(_ModbusTcpFields):
    """A coil on a Modbus TCP PLC or I/O module, pulsed on for `reject.pulse_ms`."""

    kind: Literal["modbus_tcp"] = "modbus_tcp"
    coil: int = Field(0, ge=0, le=65535, description="Coil address (0-based) that drives the ejector.")


class ModbusRtuActuatorConfig(_ModbusRtuFields):
    """A coil on a Modbus RTU (RS-485/RS-232) PLC or relay module, pulsed on for `reject.pulse_ms`."""

    kind: Literal["modbus_rtu"] = "modbus_rtu"
    coil: int = Field(0, ge=0, le=65535, description="Coil address (0-based) that drives the ejector.")


class ModbusTcpLinkConfig(_ModbusTcpFields):
    """The PLC handshake over Modbus TCP."""

    transport: Literal["tcp"] = "tcp"


class ModbusRtuLinkConfig(_ModbusRtuFields):
    """The PLC handshake over Modbus RTU."""

    transport: Literal["rtu"] = "rtu"


class PlcHandshakeActuatorConfig(_Strict):
    """The PLC owns reject timing: per part the station writes seq, verdict and p_defect to holding
    registers, plus a heartbeat counter at a fixed period (register map: docs/plc-integration.md)."""

    kind: Literal["plc_handshake"] = "plc_handshake"
    link: Annotated[Union[ModbusTcpLinkConfig, ModbusRtuLinkConfig], Field(discriminator="transport")] = Field(
        default_factory=ModbusTcpLinkConfig, description="How to reach the PLC: transport tcp or rtu.")
    register_base: int = Field(0, ge=0, le=65536 - HANDSHAKE_REGISTER_COUNT,
                               description=f"First of the {HANDSHAKE_REGISTER_COUNT} holding registers used.")
    heartbeat_ms: float = Field(200.0, ge=20, le=5_000,
                                description="Period of the heartbeat counter write, ms (runs with no parts).")


# ---- serial relay boards --------------------------------------------------------------------------------
_HEX_BYTE = re.compile(r"^(0x)?[0-9a-fA-F]{2}$")


def parse_byte_string(text: str, *, key: str) -> bytes:
    """'A0 01 01 A2', 'A0,01,01,A2', '0xA0 0x01 ...' or 'A00101A2' -> bytes; errors name the key."""
    tokens = [t for t in re.split(r"[\s,:]+", text.strip()) if t]
    if len(tokens) == 1 and len(tokens[0]) > 4 and len(tokens[0]) % 2 == 0 and not tokens[0].lower().startswith("0x"):
        tokens = [tokens[0][i:i + 2] for i in range(0, len(tokens[0]), 2)]
    if not tokens:
        raise ValueError(f"{key}: empty byte string; write hex bytes like 'A0 01 01 A2'")
    bad = [t for t in tokens if not _HEX_BYTE.match(t)]
    if bad:
        raise ValueError(f"{key}: {text!r} is not a list of hex bytes (bad: {', '.join(bad)}); "
                         f"write them like 'A0 01 01 A2'")
    return bytes(int(t[-2:], 16) for t in tokens)


def lctech_command(channel: int, on: bool) -> bytes:
    """LC Technology USB/serial relay boards: A0 <channel> <state> <sum of the three bytes>."""
    body = bytes([0xA0, channel, 1 if on else 0])
    return body + bytes([sum(body) & 0xFF])


class SerialRelayActuatorConfig(_SerialFields):
    """A USB / RS-232 relay board switched by byte commands (`preset`, or your own on/off bytes)."""

    kind: Literal["serial_relay"] = "serial_relay"
    baudrate: int = Field(9600, description="Bits per second (LC-type boards: 9600).")
    preset: Literal["lctech", "generic"] = Field(
        "generic", description="lctech: LC Technology boards (A0 ch 01 sum / A0 ch 00 sum); "
                               "generic: give on_bytes and off_bytes yourself.")
    channel: int = Field(1, ge=1, le=8, description="Relay channel (lctech preset).")
    on_bytes: str | None = Field(None, description="Hex bytes that switch the relay on, e.g. 'A0 01 01 A2'.")
    off_bytes: str | None = Field(None, description="Hex bytes that switch the relay off, e.g. 'A0 01 00 A1'.")
    write_timeout_ms: float = Field(200.0, ge=5, le=10_000, description="Longest a command write may block, ms.")
    reconnect_min_ms: float = Field(200.0, ge=10, le=60_000, description="First reopen delay after a failure, ms.")
    reconnect_max_ms: float = Field(5_000.0, ge=10, le=600_000, description="Cap of the reopen delay, ms.")
    reconnect_busy_ms: float = Field(
        100.0, ge=10, le=5_000,
        description="Reopen attempt interval while a command is waiting, ms; the doubling "
                    "reconnect_min_ms..reconnect_max_ms delay applies only while nothing waits.")

    @field_validator("on_bytes", "off_bytes")
    @classmethod
    def _hex(cls, v: str | None, info) -> str | None:  # type: ignore[no-untyped-def]
        """`on_bytes` / `off_bytes` are hex bytes ('A0 01 01 A2', 'A0,01,01,A2', '0xA0 0x01 ...' or
        'A00101A2'); an error names the key and the bad token."""
        if v is not None:
            parse_byte_string(v, key=info.field_name)
        return v

    @model_validator(mode="after")
    def _commands_known(self) -> SerialRelayActuatorConfig:
        """preset generic needs both `on_bytes` and `off_bytes`; any other preset defines the commands and
        forbids them. `reconnect_max_ms` must be at least `reconnect_min_ms`."""
        given = [k for k in ("on_bytes", "off_bytes") if getattr(self, k) is not None]
        if self.preset == "generic" and len(given) != 2:
            missing = [k for k in ("on_bytes", "off_bytes") if k not in given]
            raise ValueError(f"{', '.join(missing)}: required with preset 'generic' (or pick a preset)")
        if self.preset != "generic" and given:
            raise ValueError(f"{', '.join(given)}: preset '{self.preset}' defines the commands; "
                             f"use preset 'generic' to give your own bytes")
        if self.reconnect_max_ms < self.reconnect_min_ms:
            raise ValueError(f"reconnect_max_ms: {self.reconnect_max_ms:g} ms is below "
                             f"reconnect_min_ms = {self.reconnect_min_ms:g} ms")
        return self

    @property
    def on_command(self) -> bytes:
        if self.preset == "lctech":
            return lctech_command(self.channel, True)
        assert self.on_bytes is not None
        return parse_byte_string(self.on_bytes, key="on_bytes")

    @property
    def off_command(self) -> bytes:
        if self.preset == "lctech":
            return lctech_command(self.channel, False)
        assert self.off_bytes is not None
        return parse_byte_string(self.off_bytes, key="off_bytes")


ActuatorConfig = Annotated[
    Union[LogActuatorConfig, ModbusTcpActuatorConfig, ModbusRtuActuatorConfig, PlcHandshakeActuatorConfig,
          SerialRelayActuatorConfig],
    Field(discriminator="kind"),
]


def serial_port_of(config: object) -> tuple[str, str] | None:
    """(key path below the actuator, device path) of the serial port an actuator config uses, if any."""
    if isinstance(config, (ModbusRtuActuatorConfig, SerialRelayActuatorConfig)):
        return "port", config.port
    if isinstance(config, PlcHandshakeActuatorConfig) and isinstance(config.link, ModbusRtuLinkConfig):
        return "link.port", config.link.port
    return None


def serial_port_problem(port: str) -> str | None:
    """Why a serial device path cannot be used for writing on this machine, or None."""
    if not os.path.exists(port):
        return f"serial port {port} does not exist (is the adapter plugged in?)"
    if not os.access(port, os.R_OK | os.W_OK):
        return (f"serial port {port} is not readable/writable by this user "
                f"(add the user to the 'dialout' group)")
    return None


def check_actuator_ports(config: object, *, key: str = "reject.actuator") -> list[tuple[str, str, str]]:
    """Machine checks that a schema cannot make: the serial port exists and can be opened for writing.
    Returns (key path, value, message) per problem; empty when fine or when no serial port is used."""
    found = serial_port_of(config)
    if found is None:
        return []
    sub, port = found
    problem = serial_port_problem(port)
    return [] if problem is None else [(f"{key}.{sub}", port, problem)]
