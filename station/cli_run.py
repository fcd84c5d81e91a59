"""`station run` and `station replay`: run the pipeline until a signal (or the end of the recording).

Both build the same `Station`; replay swaps the camera for a `ReplayCamera` over the given folder or
video (in the YAML's `camera.order`, shuffled by default, so a `--limit` sees both classes), writes
its trace log to its own folder (`--log DIR`, default `./replay-log`) so test parts never land in a
plant's audit log, and prints the labelled summary, where the log went, and whether it was
interrupted.
`station run` loads its YAML as the plant's (`ConfigUse.RUN`: safety sections written out, files
present). The station itself (torch, the cameras) is imported inside the commands, so building the
parser stays light.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from station.config_cameras import DEFAULT_LABELS, ReplayCameraConfig
from station.configfile import ConfigError, ConfigUse, LoadedConfig, load_config

if TYPE_CHECKING:
    from station.app import Station

log = logging.getLogger(__name__)

# Where `station replay` logs when no --log is given: a folder of its own in the working directory,
# never the YAML's tracelog.dir (which, for a plant YAML, is the plant's audit log).
DEFAULT_REPLAY_LOG = Path("replay-log")
EXIT_INTERRUPTED = 130  # the shell's code for a run ended by SIGINT


def load_or_report(path: str, *, use: ConfigUse) -> LoadedConfig | None:
    """The loaded config, or None after printing every problem (the caller exits 2)."""
    try:
        return load_config(path, use=use)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return None


def install_stop_signals(stop: threading.Event) -> Callable[[], None]:
    """SIGINT/SIGTERM set `stop`; returns a function restoring the previous handlers."""
    previous = {}

    def handler(signum: int, _frame) -> None:
        log.info("signal %s: stopping", signal.Signals(signum).name)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, handler)

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    return restore


def run_station(station: Station, *, until_source_ends: bool, stop: threading.Event | None = None) -> dict | None:
    """Start, run until a signal (or the end of a finite source), stop in order. None: could not start.

    The summary's `interrupted` is True when a signal ended the run before a finite source did."""
    from station.artifact import ModelArtifactError

    stop = stop or threading.Event()
    restore = install_stop_signals(stop)
    try:
        try:
            station.start()
        except ModelArtifactError as exc:
            print(f"station not started: {exc}", file=sys.stderr)
            return None
        # A signal is how `station run` ends normally; it only interrupts a finite source.
        interrupted = False
        if until_source_ends:
            interrupted = not station.wait_source_finished(stop_event=stop)
        else:
            while not stop.wait(0.2):
                if station.source_finished and station.idle():
                    break
        summary = station.stop()
        summary["interrupted"] = interrupted
        return summary
    finally:
        if station.started and not station.stopped:
            station.stop()
        restore()


def add_run_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("run", help="run the station until SIGINT/SIGTERM")
    p.add_argument("-c", "--config", required=True, help="station YAML")
    return p


def run_run(args: argparse.Namespace) -> int:
    loaded = load_or_report(args.config, use=ConfigUse.RUN)
    if loaded is None:
        return 2
    from station.cli import setup_logging

    if not args.verbose:
        setup_logging(loaded.config.station.log_level)
    # Before the pipeline's imports and the model load (seconds): a killed station may have left the ejector on.
    from station.safe_outputs import drive_outputs_safe

    drive_outputs_safe(loaded.config)
    from station.service import run_service

    return run_service(loaded)


def add_replay_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("replay", help="feed recorded frames through the same pipeline and score them")
    p.add_argument("frames", help="folder of images (label sub-folders optional) or a video file")
    p.add_argument("-c", "--config", required=True, help="station YAML")
    pace = p.add_mutually_exclusive_group()
    pace.add_argument("--rate", type=float, default=None, metavar="PARTS_PER_S", help="replay pace")
    pace.add_argument("--as-fast-as-possible", action="store_true", help="no pacing: the pipeline sets the pace")
    p.add_argument("--limit", type=int, default=None, help="replay at most this many frames")
    p.add_argument("--log", type=Path, default=None, metavar="DIR",
                   help=f"trace log folder for this replay (default: ./{DEFAULT_REPLAY_LOG}); the YAML's "
                        "tracelog.dir is used only when named here")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    return p


def replay_camera_config(loaded: LoadedConfig, frames: Path, *, rate: float | None, fast: bool,
                         limit: int | None) -> ReplayCameraConfig:
    base = loaded.config.camera
    if isinstance(base, ReplayCameraConfig):
        labels, order, seed = dict(base.labels), base.order, base.seed
    else:
        # A YAML for a real camera says nothing about replay order: take the replay kind's defaults
        # (shuffled, seed 0), so the classes come mixed, as on a line.
        fields = ReplayCameraConfig.model_fields
        labels, order, seed = dict(DEFAULT_LABELS), fields["order"].default, fields["seed"].default
    if fast:
        pace = None
    elif rate is not None:
        pace = rate
    else:
        pace = base.rate_parts_per_s if isinstance(base, ReplayCameraConfig) else loaded.config.line.max_parts_per_s
    return ReplayCameraConfig(path=frames.resolve(), rate_parts_per_s=pace, labels=labels, limit=limit,
                              order=order, seed=seed)


def with_log_dir(loaded: LoadedConfig, log_dir: Path) -> LoadedConfig:
    """The same config with its trace log moved to `log_dir` (the YAML file and its hash unchanged)."""
    config = loaded.config.model_copy(update={
        "tracelog": loaded.config.tracelog.model_copy(update={"dir": log_dir})})
    return LoadedConfig(config=config, path=loaded.path, sha256=loaded.sha256)


def report_interrupted(command: str, summary: dict) -> None:
    print(f"{command}: interrupted after {summary['parts']} part(s); the summary covers only those",
          file=sys.stderr)


def run_replay(args: argparse.Namespace) -> int:
    from station.app import Station
    from station.cameras.replay import ReplayCamera

    loaded = load_or_report(args.config, use=ConfigUse.REPLAY)
    if loaded is None:
        return 2
    frames = Path(args.frames)
    if not frames.exists():
        print(f"replay: {frames} does not exist", file=sys.stderr)
        return 2
    if args.limit is not None and args.limit < 1:
        print("replay: --limit must be at least 1", file=sys.stderr)
        return 2
    log_dir = (args.log if args.log is not None else DEFAULT_REPLAY_LOG).expanduser().resolve()
    try:
        log_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"replay: cannot create the trace log folder {log_dir}: {exc.strerror}; pass --log DIR",
              file=sys.stderr)
        return 2
    from station.cli import setup_logging

    if not args.verbose:
        setup_logging("WARNING")
    loaded = with_log_dir(loaded, log_dir)
    cam_cfg = replay_camera_config(loaded, frames, rate=args.rate, fast=args.as_fast_as_possible, limit=args.limit)
    print(f"replay: trace log in {log_dir}", file=sys.stderr, flush=True)
    station = Station(loaded, camera=ReplayCamera(cam_cfg))
    summary = run_station(station, until_source_ends=True)
    if summary is None:
        return 2
    summary["trace_log"] = str(log_dir / "trace.sqlite")
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        print(format_summary(summary))
        print(f"trace log       {summary['trace_log']}")
    if summary["interrupted"]:
        report_interrupted("replay", summary)
        return EXIT_INTERRUPTED
    return 0


def format_gate(s: dict) -> list[str]:
    """The validity gate's lines of a run summary: image_check rejects by check, alarm, drift."""
    gate = s.get("gate")
    if gate is None:
        return []
    if not gate["enabled"]:
        return ["validity gate   OFF (format-1 model: no validity domain; re-export it with training calibrate)"]
    n = s["fail_safe"].get("image_check", 0)
    by_check = ", ".join(f"{k} {v}" for k, v in sorted(s.get("image_checks", {}).items()))
    lines = [f"image checks    {n} part(s) outside the validity domain" + (f" ({by_check})" if by_check else "")]
    raised = gate["image_quality_raised"]
    up = "UP" if gate["image_quality_alarm"] else "not up"
    lines.append(f"gate alarm      image_quality raised {raised} time(s), {up} at the end "
                 f"({gate['recent_failed']} of the last {gate['recent']} measured parts failed)")
    lines.append(f"drift           {gate['drift_warnings']} warning(s)" +
                 (": still drifting: " + "; ".join(gate["drift"].values()) if gate["drift"] else ""))
    return lines


def _ms(p: dict) -> str:
    if p.get("p50") is None:
        return "n/a"
    return f"p50 {p['p50']:.1f} / p99 {p['p99']:.1f} / max {p['max']:.1f} ms"


def format_summary(s: dict) -> str:
    lines = [f"model           {s['model']}"] if s.get("model") else []
    lines.append(f"parts           {s['parts']}  (ok {s['ok']}, reject {s['reject']})")
    if s["labelled"]:
        lines.append(f"labelled        {s['labelled']}  accuracy {100 * s['accuracy']:.2f}%")
        lines.append(f"escapes         {s['escapes']}  (defective parts passed)")
        lines.append(f"false rejects   {s['false_rejects']}")
    fs = s["fail_safe"]
    lines.append("fail-safe       " + (", ".join(f"{k} {v}" for k, v in sorted(fs.items())) if fs else "none"))
    lines.extend(format_gate(s))
    act = s["actuator"]
    merged = f" ({s['merged_pulses']} merged into an overlapping pulse)" if s.get("merged_pulses") else ""
    lines.append("actuator        " + (", ".join(f"{k} {v}" for k, v in sorted(act.items())) if act else "no commands")
                 + merged)
    lines.append(f"inference       {_ms(s['infer_ms'])}")
    lines.append(f"capture->verdict {_ms(s['decide_ms'])}")
    lines.append(f"pulse lateness  {_ms(s['fire_lateness_ms'])}")
    return "\n".join(lines)
