"""Every output driven to its safe state first thing at start, before the heavy imports and the model load.

A station that was killed mid-pulse (kill -9, power loss, OOM kill, watchdog abort) may have left the
ejector on, and nothing but a station switches it off. `station run` calls `drive_outputs_safe` as soon
as the YAML is valid, before it imports the pipeline (torch alone takes over a second) and loads the
model (seconds more): each configured output gets one attempt to connect and go safe (a coil or relay
off, a PLC handshake READY = 0), then the connection is let go. The station's own output workers open
the devices again right after and keep retrying a device that did not answer here; this step never
delays start-up by more than one connection attempt per output.
"""

from __future__ import annotations

import logging

from station.actuators import build_actuator
from station.actuators.base import ActuatorError
from station.config import StationConfig

log = logging.getLogger(__name__)


def drive_outputs_safe(config: StationConfig) -> list[str]:
    """One attempt per configured output; returns the outputs that answered (their descriptions)."""
    done = []
    for role, actuator_config in (("reject", config.reject.actuator), ("alarm", config.alarm.actuator)):
        if actuator_config is None:
            continue
        actuator = build_actuator(actuator_config, name=role)
        try:
            with actuator.lock:
                actuator.open_safe()
        except ActuatorError as exc:
            log.error("%s output %s could not be driven off first thing at start (the station keeps trying): %s",
                      role, actuator.describe(), exc)
        else:
            done.append(actuator.describe())
            log.info("%s output %s driven to its safe state (off) first thing at start", role, actuator.describe())
        finally:
            with actuator.lock:
                actuator.release()
    return done
