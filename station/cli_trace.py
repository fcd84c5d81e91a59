"""`station trace export`: the traceability log as CSV (or JSON lines) for an audit.

Every bad input is one line on stderr and exit 2: a config that does not load, no log at the path, a
`--since` that is not a date or a span (or reaches before year 1), an output file that cannot be
created. The rows are read from the log opened read-only, so an export never disturbs a running
station. A reader that closes the pipe early (`| head`) ends the export quietly, as Unix tools do.
"""

from __future__ import annotations

import argparse
import csv
import json
import sqlite3
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import IO

from station.configfile import ConfigError, load_config


def add_trace_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("trace", help="read the traceability log")
    tsub = p.add_subparsers(dest="trace_command", required=True, metavar="ACTION")
    e = tsub.add_parser("export", help="export parts rows")
    src = e.add_mutually_exclusive_group(required=True)
    src.add_argument("-c", "--config", help="station YAML (its tracelog.dir)")
    src.add_argument("--db", help="path of trace.sqlite")
    e.add_argument("--since", default=None,
                   help="ISO date/time (UTC) or a span such as 30m, 8h, 2d; default: everything")
    fmt = e.add_mutually_exclusive_group()
    fmt.add_argument("--csv", action="store_true", help="CSV with a header row (default)")
    fmt.add_argument("--jsonl", action="store_true", help="one JSON object per line")
    e.add_argument("-o", "--output", default="-", help="output file; - for stdout")
    return p


def parse_since(text: str | None, now: datetime | None = None) -> str | None:
    """The ISO UTC time a `--since` value stands for; ValueError naming the value when it is none."""
    if not text:
        return None
    now = now or datetime.now(timezone.utc)
    units = {"m": "minutes", "h": "hours", "d": "days"}
    if text[-1] in units and text[:-1].replace(".", "", 1).isdigit():
        try:
            when = now - timedelta(**{units[text[-1]]: float(text[:-1])})
        except OverflowError:
            raise ValueError(f"--since {text} reaches back before the year 1; give a shorter span "
                             f"or an ISO date such as 2024-01-31") from None
        return when.isoformat(timespec="milliseconds")
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"--since {text!r} is neither an ISO date/time nor a span like 30m, 8h or 2d") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.astimezone(timezone.utc).isoformat(timespec="milliseconds")


def _open_output(name: str) -> IO[str]:
    """stdout, or the file (created or replaced); OSError names why it cannot be written."""
    return sys.stdout if name == "-" else open(name, "w", newline="", encoding="utf-8")


def run_trace(args: argparse.Namespace) -> int:
    if args.config:
        try:
            db = load_config(args.config).config.tracelog.dir / "trace.sqlite"
        except ConfigError as exc:
            print(str(exc), file=sys.stderr)
            return 2
    else:
        db = Path(args.db)
    if not db.is_file():
        print(f"trace export: no trace log at {db}", file=sys.stderr)
        return 2
    from station.tracelog import rows_since

    try:
        since = parse_since(args.since)
        cols, rows = rows_since(db, since)
    except ValueError as exc:
        print(f"trace export: {exc}", file=sys.stderr)
        return 2
    except sqlite3.Error as exc:
        print(f"trace export: cannot read {db}: {exc}", file=sys.stderr)
        return 2
    try:
        out = _open_output(args.output)
    except OSError as exc:
        print(f"trace export: cannot write {args.output}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    try:
        if args.jsonl:
            for row in rows:
                out.write(json.dumps(dict(zip(cols, row))) + "\n")
        else:
            writer = csv.writer(out)
            writer.writerow(cols)
            writer.writerows(rows)
        out.flush()
    except BrokenPipeError:
        raise  # the reader went away (`| head`): station.cli ends quietly
    except OSError as exc:
        print(f"trace export: writing {args.output} failed: {exc.strerror or exc}", file=sys.stderr)
        return 1
    finally:
        if out is not sys.stdout:
            out.close()
    print(f"exported {len(rows)} part(s) from {db}", file=sys.stderr)
    return 0
