"""`station demo`: the built-in demo. Rendered frames (or `--frames DIR`), a simulated PLC, a local log.

It starts pymodbus's own server on 127.0.0.1 as the PLC, points the reject coil at it, runs the
station from `config/demo.yaml`, prints a live line per part and, at the end, the summary plus what
the simulated PLC saw (pulses and their widths, measured on the server side).
"""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path

from typing import TYPE_CHECKING

from station.checkout import CheckoutFileMissing, checkout_file, checkout_path
from station.cli_run import (EXIT_INTERRUPTED, format_summary, load_or_report, replay_camera_config,
                             report_interrupted, run_station)
from station.config_actuators import ModbusTcpActuatorConfig
from station.configfile import ConfigUse

if TYPE_CHECKING:
    from station.records import Frame, Verdict

DEMO_CONFIG = "config/demo.yaml"  # in the project checkout


def add_demo_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("demo", help="run the built-in demo (no camera, PLC or dataset needed)")
    p.add_argument("-c", "--config", default=None,
                   help=f"demo station YAML (default: {checkout_path(DEMO_CONFIG)})")
    p.add_argument("--frames", default=None, help="replay this folder of real images instead of rendered frames")
    p.add_argument("--parts", type=int, default=None, help="number of parts (default: the YAML's limit)")
    p.add_argument("--rate", type=float, default=None, help="parts per second")
    p.add_argument("--quiet", action="store_true", help="no line per part")
    return p


def run_demo(args: argparse.Namespace) -> int:
    from station.actuators.sim_server import start_sim_server
    from station.app import Station
    from station.cameras.replay import ReplayCamera
    from station.cli import setup_logging

    config_path = args.config
    if config_path is None:
        try:
            config_path = str(checkout_file(DEMO_CONFIG, needed_for="station demo"))
        except CheckoutFileMissing as exc:
            print(f"demo: {exc}", file=sys.stderr)
            return 2
    loaded = load_or_report(config_path, use=ConfigUse.DEMO)
    if loaded is None:
        return 2
    if not args.verbose:
        setup_logging("WARNING")
    plc = start_sim_server("127.0.0.1", 0)
    try:
        actuator = loaded.config.reject.actuator
        coil = actuator.coil if isinstance(actuator, ModbusTcpActuatorConfig) else 0
        act_cfg = ModbusTcpActuatorConfig(host="127.0.0.1", port=plc.port, coil=coil)
        config = loaded.config.model_copy(update={
            "reject": loaded.config.reject.model_copy(update={"actuator": act_cfg})})
        camera_cfg = config.camera
        if args.parts is not None or args.rate is not None:
            updates = {}
            if args.parts is not None:
                updates["limit"] = args.parts
            if args.rate is not None:
                updates["rate_parts_per_s"] = args.rate
            camera_cfg = camera_cfg.model_copy(update=updates)
            config = config.model_copy(update={"camera": camera_cfg})
        loaded = type(loaded)(config=config, path=loaded.path, sha256=loaded.sha256)
        camera = None
        if args.frames:
            frames = Path(args.frames)
            if not frames.exists():
                print(f"demo: {frames} does not exist", file=sys.stderr)
                return 2
            camera = ReplayCamera(replay_camera_config(loaded, frames, rate=args.rate, fast=False,
                                                       limit=args.parts))
        lock = threading.Lock()

        def live(verdict: Verdict, frame: Frame) -> None:
            if args.quiet:
                return
            p = "   n/a" if verdict.p_defect is None else f"{verdict.p_defect:6.3f}"
            label = f" label={verdict.label}" if verdict.label else ""
            why = "" if verdict.reason.value == "model" else f" FAIL-SAFE {verdict.reason.value}"
            with lock:
                print(f"part {verdict.seq:6d}  {verdict.decision.value:<6} p_defect={p}  "
                      f"verdict after {verdict.decide_ms:6.1f} ms{why}{label}", flush=True)

        station = Station(loaded, camera=camera, on_verdict=live)
        print(f"demo: PLC simulated by pymodbus on 127.0.0.1:{plc.port}, coil {coil}; "
              f"trace log in {config.tracelog.dir}", flush=True)
        summary = run_station(station, until_source_ends=True)
        if summary is None:
            return 2
        print()
        print(format_summary(summary))
        widths = [(off - on) / 1e6 for on, off in plc.pulses(coil) if off > 0]
        if widths:
            print(f"PLC saw         {len(widths)} reject pulse(s), width {min(widths):.1f}-{max(widths):.1f} ms "
                  f"(pulse_ms {config.reject.pulse_ms:g})")
        else:
            print("PLC saw         no reject pulse")
        print(f"trace log       {config.tracelog.dir / 'trace.sqlite'}")
        if not args.frames:
            print("note: rendered demo frames are not casting images; their verdicts say nothing about accuracy")
        if summary["interrupted"]:
            report_interrupted("demo", summary)
            return EXIT_INTERRUPTED
        return 0
    finally:
        plc.stop()
