"""`station demo`: the built-in demo. Rendered frames (or `--frames DIR`), a simulated PLC, a local log.

It starts pymodbus's own server on 127.0.0.1 as the PLC, points the reject coil at it, runs the
station from `config/demo.yaml`, prints a live line per part (with what the renderer drew: a defect,
no defect, a covered lens, a broken buffer) and, at the end, the summary plus what the simulated PLC
saw (pulses and their widths, measured on the server side). The rendered frames are not castings;
the output says so, and says how the validity gate treats them.
"""

from __future__ import annotations

import argparse
import sys
import threading
from collections import Counter
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
RENDERED_KINDS = ("drawn with a defect", "drawn without defect", "lens covered", "broken buffer")
RENDERED_NOTE = """\
demo: the frames are impellers the station renders itself, not castings. The model was never trained
      on them and passes most rendered defects: its verdicts here show the pipeline working, they are
      no accuracy claim (`station demo --frames DIR` replays real images). Each line says what was
      drawn. The validity gate measures every frame with the model's calibrated limits, except what
      config/demo.yaml widens for the renders (the warning above says which); a simulated lens-cover
      episode is rejected as image_check and raises the image_quality alarm."""


def rendered_as(frame: Frame) -> str:
    """What the synthetic camera drew for this part (the demo's per-part note)."""
    if frame.image is None:
        return "broken buffer"
    if frame.meta.get("lens_covered"):
        return "lens covered"
    return "drawn with a defect" if frame.meta.get("rendered_defect") else "drawn without defect"


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
    from station.testbench.plc_sim import start_sim_server
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
        rendered: Counter[str] = Counter()
        rejected: Counter[str] = Counter()

        def live(verdict: Verdict, frame: Frame) -> None:
            what = rendered_as(frame)
            with lock:
                rendered[what] += 1
                rejected[what] += verdict.decision.value == "reject"
            if args.quiet:
                return
            p = "   n/a" if verdict.p_defect is None else f"{verdict.p_defect:6.3f}"
            label = f" label={verdict.label}" if verdict.label else ""
            why = "" if verdict.reason.value == "model" else f" FAIL-SAFE {verdict.reason.value}"
            if verdict.gate is not None and verdict.gate.failed:
                why += f" ({', '.join(verdict.gate.failed)})"
            shown = "" if args.frames else f"  [{what}]"
            with lock:
                print(f"part {verdict.seq:6d}  {verdict.decision.value:<6} p_defect={p}  "
                      f"verdict after {verdict.decide_ms:6.1f} ms{shown}{why}{label}", flush=True)

        station = Station(loaded, camera=camera, on_verdict=live)
        print(f"demo: PLC simulated by pymodbus on 127.0.0.1:{plc.port}, coil {coil}; "
              f"trace log in {config.tracelog.dir}", flush=True)
        if not args.frames:
            print(RENDERED_NOTE, flush=True)
        summary = run_station(station, until_source_ends=True)
        if summary is None:
            return 2
        print()
        print(format_summary(summary))
        if not args.frames:
            print("rendered        " + "; ".join(f"{rendered[k]} {k} (rejected {rejected[k]})" for k in RENDERED_KINDS
                                                 if rendered[k]))
            for line in station.gate.widened if station.gate else []:
                print(f"gate            {line} for the rendered frames (config/demo.yaml)")
        widths = [(off - on) / 1e6 for on, off in plc.pulses(coil) if off > 0]
        if widths:
            print(f"PLC saw         {len(widths)} reject pulse(s), width {min(widths):.1f}-{max(widths):.1f} ms "
                  f"(pulse_ms {config.reject.pulse_ms:g})")
        else:
            print("PLC saw         no reject pulse")
        print(f"trace log       {config.tracelog.dir / 'trace.sqlite'}")
        if not args.frames:
            print("note: rendered demo frames are not casting images and the model was never trained on them: "
                  "their verdicts say nothing about accuracy (`station demo --frames DIR` replays real images)")
        if summary["interrupted"]:
            report_interrupted("demo", summary)
            return EXIT_INTERRUPTED
        return 0
    finally:
        plc.stop()
