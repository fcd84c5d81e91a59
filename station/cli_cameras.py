"""The `station cameras` and `station record` commands (registered by `station.cli`).

`station cameras` lists what each camera kind can see; `station record -c FILE --out DIR` records
frames from the configured camera into a folder that `station replay` plays back unchanged.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def add_cameras_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("cameras", help="list the cameras each camera kind can see",
                                   description="List the cameras each kind (aravis, genicam, opencv) can "
                                   "see, with the ids, models and serials to put in the YAML.")
    parser.add_argument("--kind", choices=("all", "aravis", "genicam", "opencv"), default="all",
                        help="ask only this kind (default: all)")
    parser.add_argument("--producer", action="append", type=Path, default=None, metavar="CTI",
                        help="GenTL producer file or folder for the genicam kind (repeatable; "
                        "default: GENICAM_GENTL64_PATH)")
    return parser


def run_cameras(args: argparse.Namespace) -> int:
    from station.cameras.listing import KINDS, list_cameras

    kinds = KINDS if args.kind == "all" else (args.kind,)
    cameras, notes = list_cameras(kinds, producers=args.producer)
    rows = [("KIND", "DEVICE_ID", "MODEL", "SERIAL", "VENDOR", "WHERE")]
    rows += [(c.kind, c.device_id, c.model, c.serial, c.vendor, c.detail) for c in cameras]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(value.ljust(width) for value, width in zip(row, widths)).rstrip())
    if not cameras:
        print("(no cameras found)")
    for kind, why in notes.items():
        print(f"{kind}: not searched: {why}", file=sys.stderr)
    return 0


def add_record_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("record", help="record frames from the configured camera",
                                   description="Record frames from the camera configured in FILE, "
                                   "losslessly (PNG + frames.jsonl), into a folder `station replay` plays.")
    parser.add_argument("-c", "--config", required=True, type=Path, help="station YAML")
    parser.add_argument("--out", required=True, type=Path, help="folder for the recording (new or empty)")
    limit = parser.add_mutually_exclusive_group()
    limit.add_argument("--parts", type=int, help="stop after this many parts")
    limit.add_argument("--seconds", type=float, help="stop after this many seconds")
    return parser


def missing_source(camera_config: Any) -> tuple[str, Path] | None:
    """(key, path) of a camera source file or folder the config names and the disk lacks, else None."""
    path = getattr(camera_config, "path", None)
    if isinstance(path, Path) and not path.exists():
        return "path", path
    source = getattr(camera_config, "source", None)
    # opencv: a device index, /dev node or stream URL is not a file; anything else names a video file.
    if isinstance(source, str) and not source.isdigit() and "://" not in source and not source.startswith("/dev/"):
        if not Path(source).exists():
            return "source", Path(source)
    return None


def run_record(args: argparse.Namespace) -> int:
    from station.cameras import build_camera
    from station.cameras.base import CameraError
    from station.cameras.recorder import MANIFEST, Recorder
    from station.configfile import ConfigError, load_config

    if args.parts is not None and args.parts < 1:
        print("station record: --parts must be at least 1", file=sys.stderr)
        return 2
    if args.seconds is not None and args.seconds <= 0:
        print("station record: --seconds must be positive", file=sys.stderr)
        return 2
    try:
        loaded = load_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    camera_config = loaded.config.camera
    # Bad input is exit code 2 like every other command's: a recording that is already there (never
    # overwritten) or a file source that does not exist. A camera that fails at run time stays 1.
    if (args.out / MANIFEST).exists():
        print(f"station record: {args.out} already holds a recording; choose another --out folder",
              file=sys.stderr)
        return 2
    missing = missing_source(camera_config)
    if missing is not None:
        print(f"station record: camera.{missing[0]} {missing[1]} does not exist ({args.config})", file=sys.stderr)
        return 2
    reconnect = getattr(camera_config, "reconnect", None)
    try:
        camera = build_camera(camera_config)
    except CameraError as exc:
        print(f"station record: {exc}", file=sys.stderr)
        return 1
    recorder = Recorder(camera, args.out, camera_config=camera_config,
                        min_backoff_ms=reconnect.min_backoff_ms if reconnect else 500.0,
                        max_backoff_ms=reconnect.max_backoff_ms if reconnect else 10_000.0)
    previous = signal.getsignal(signal.SIGTERM)

    def stop(_signum: int, _frame: Any) -> None:
        recorder.stop_event.set()

    signal.signal(signal.SIGTERM, stop)
    try:
        summary = recorder.run(parts=args.parts, seconds=args.seconds)
    except CameraError as exc:
        print(f"station record: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        recorder.stop_event.set()
        print("station record: interrupted", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(f"recorded {summary.parts} parts ({summary.images} images, {summary.broken} broken, "
          f"{summary.losses} camera losses) in {summary.seconds:.1f} s into {summary.out_dir} "
          f"[ended by {summary.ended_by}]")
    print(f"replay it with: station replay {summary.out_dir} -c {args.config}")
    return 0 if summary.parts else 1
