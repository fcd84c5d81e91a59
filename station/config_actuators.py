"""Configuration schema of the reject and alarm actuators, one pydantic model per actuator kind.

Each model is selected by its `kind` key (a pydantic discriminated union). Adding an actuator
kind means one model here, one module in `station/actuators/` and one line in that package's
registry.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LogActuatorConfig(_Strict):
    """Writes what it would do to the station log; for dry runs and lines without an ejector yet."""

    kind: Literal["log"] = "log"


class ModbusTcpActuatorConfig(_Strict):
    """A coil on a Modbus TCP PLC or I/O module, pulsed on for `reject.pulse_ms`."""

    kind: Literal["modbus_tcp"] = "modbus_tcp"
    host: str = Field("127.0.0.1", description="PLC address (IP or host name).")
    port: int = Field(502, ge=1, le=65535, description="Modbus TCP port.")
    device_id: int = Field(1, ge=0, le=255, description="Modbus unit / slave id.")
    coil: int = Field(0, ge=0, le=65535, description="Coil address (0-based) that drives the ejector.")
    timeout_ms: float = Field(200.0, ge=5, le=10_000, description="Per-request timeout in ms.")
    retries: int = Field(0, ge=0, le=5, description="Retries per request on a transport error.")
    reconnect_min_ms: float = Field(200.0, ge=10, le=60_000,
                                     description="First reconnect delay after a failure, ms.")
    reconnect_max_ms: float = Field(5_000.0, ge=10, le=600_000,
                                     description="Cap of the doubling reconnect delay, ms.")


ActuatorConfig = Annotated[
    Union[LogActuatorConfig, ModbusTcpActuatorConfig],
    Field(discriminator="kind"),
]
