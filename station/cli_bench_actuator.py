"""`station bench --actuator KIND`: pulse timing of one reject actuator (the arguments and the runner).

Fires N pulses at a fixed period through the real actuator module and prints lateness p50/p99/max on the
host side and, with `--simulate`, what the simulated device saw (on-edge lateness, pulse width).
The actuator comes from a station YAML (`--actuator-config`: its reject.actuator, or alarm.actuator with
--output alarm) or is the KIND's default config. The measuring is `station.testbench.pulse_bench`.
"""

from __future__ import annotations

import argparse
import json

from pydantic import TypeAdapter, ValidationError

from station.config_actuators import ActuatorConfig

KINDS = ("modbus_tcp", "modbus_rtu", "plc_handshake", "serial_relay", "log")


def add_actuator_bench_arguments(parser: argparse.ArgumentParser) -> None:
    """`station bench`'s actuator options: with --actuator KIND it times that actuator instead of the pipeline."""
    parser.add_argument("--actuator", choices=KINDS, help="actuator kind to benchmark (instead of the pipeline)")
    parser.add_argument("--actuator-config", metavar="FILE", dest="actuator_config_file",
                        help="station YAML whose reject.actuator (or alarm.actuator) is benchmarked")
    parser.add_argument("--output", choices=("reject", "alarm"), default="reject",
                        help="which output of --actuator-config")
    parser.add_argument("--simulate", action="store_true",
                        help="start a simulated device and point the actuator at it: the pymodbus server on 127.0.0.1 "
                             "(TCP), or behind a socat pty pair (RTU); a byte recorder for serial_relay")
    parser.add_argument("--pulses", type=int, default=1000, help="number of pulses")
    parser.add_argument("--pulse-ms", type=float, default=10.0, help="pulse width, ms")
    parser.add_argument("--gap-ms", type=float, default=25.0, help="period between pulse starts, ms")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def _actuator_config(args: argparse.Namespace) -> object:
    if args.actuator_config_file:
        from station.configfile import load_config

        cfg = load_config(args.actuator_config_file).config
        act = cfg.reject.actuator if args.output == "reject" else cfg.alarm.actuator
        if act is None or act.kind != args.actuator:
            raise ValueError(f"{args.actuator_config_file}: {args.output}.actuator is "
                             f"{getattr(act, 'kind', None)!r}, not {args.actuator!r}")
        return act
    data: dict[str, object] = {"kind": args.actuator}
    if args.simulate and args.actuator in ("modbus_rtu", "serial_relay"):
        data["port"] = "simulated"  # replaced by the socat pty the simulation creates
        data["baudrate"] = 115200
    if args.actuator == "serial_relay":
        data["preset"] = "lctech"
    return TypeAdapter(ActuatorConfig).validate_python(data)


def run_bench_actuator(args: argparse.Namespace) -> int:
    # Imported here: `station bench` adds these arguments to its parser, which must stay light.
    from station.actuators.base import ActuatorError
    from station.testbench.pulse_bench import format_result, run_pulse_bench

    try:
        config = _actuator_config(args)
        result = run_pulse_bench(config, pulses=args.pulses, pulse_ms=args.pulse_ms, gap_ms=args.gap_ms,
                                 simulate=args.simulate)
    except (ValueError, ValidationError) as exc:  # bad arguments or config (ConfigError is a ValueError)
        print(f"station bench: {exc}")
        return 2
    except ActuatorError as exc:
        print(f"station bench: actuator unavailable: {exc}")
        return 1
    print(json.dumps(result, indent=2) if args.json else format_result(result))
    return 0 if result["failures"] == 0 else 1

