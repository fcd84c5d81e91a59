"""`station hmi`, `station users` and `station review export`: the operator web HMI and its helpers.

The web stack (FastAPI, uvicorn, argon2) is imported only when one of these commands runs, never by
the station itself or by check-config. Bad input (config, user name, role, password, export folder)
is one clear line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import sys
from pathlib import Path

from station.cli_run import load_or_report
from station.configfile import ConfigUse

log = logging.getLogger(__name__)

MISSING_EXTRA = "the HMI needs its extra: pip install 'inspection-station[hmi]'"


def add_hmi_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("hmi", help="run the operator web HMI (a process of its own beside the station)")
    p.add_argument("-c", "--config", required=True, help="station YAML (its hmi: section, trace log and model)")
    p.add_argument("--listen", default=None, help="address to listen on (default: hmi.listen)")
    p.add_argument("--port", type=int, default=None, help="TCP port (default: hmi.port)")
    return p


def run_hmi(args: argparse.Namespace) -> int:
    loaded = load_or_report(args.config, use=ConfigUse.TOOL)
    if loaded is None:
        return 2
    if args.port is not None and not 1 <= args.port <= 65535:
        print(f"hmi: --port {args.port}: 1 to 65535", file=sys.stderr)
        return 2
    from station.cli import setup_logging

    setup_logging("DEBUG" if args.verbose else loaded.config.station.log_level)
    try:
        from station.hmi.server import serve
    except ModuleNotFoundError as exc:
        print(f"hmi: {MISSING_EXTRA} ({exc.name} is missing)", file=sys.stderr)
        return 2
    return serve(loaded, listen=args.listen, port=args.port)


# ---- users ---------------------------------------------------------------------------------------------
def add_users_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("users", help="HMI users: add, list, set a role or password, remove")
    p.add_argument("-c", "--config", default="/etc/inspection-station/station.yaml",
                   help="station YAML (the users file is hmi.users_file, beside it)")
    usub = p.add_subparsers(dest="users_command", required=True, metavar="ACTION")
    add = usub.add_parser("add", help="add a user (asks for the password)")
    add.add_argument("name")
    add.add_argument("--role", required=True, choices=("operator", "engineer", "admin"))
    add.add_argument("--password-stdin", action="store_true", help="read the password from stdin (one line)")
    usub.add_parser("list", help="list users and roles")
    role = usub.add_parser("set-role", help="change a user's role")
    role.add_argument("name")
    role.add_argument("role", choices=("operator", "engineer", "admin"))
    pw = usub.add_parser("passwd", help="set a user's password")
    pw.add_argument("name")
    pw.add_argument("--password-stdin", action="store_true")
    rm = usub.add_parser("remove", help="remove a user")
    rm.add_argument("name")
    return p


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("password: ")
    if getpass.getpass("again: ") != first:
        raise ValueError("the two passwords differ")
    return first


def run_users(args: argparse.Namespace) -> int:
    loaded = load_or_report(args.config, use=ConfigUse.TOOL)
    if loaded is None:
        return 2
    try:
        from station.hmi.users import UserError, UserStore
    except ModuleNotFoundError as exc:
        print(f"users: {MISSING_EXTRA} ({exc.name} is missing)", file=sys.stderr)
        return 2
    store = UserStore(loaded.config.hmi.users_file)
    action = args.users_command
    try:
        if action == "list":
            for u in store.list():
                print(f"{u['name']:<24} {u['role']:<10} {u['created_at'] or ''}")
            return 0
        if action == "add":
            store.add(args.name, args.role, _read_password(args.password_stdin), by="station users (cli)")
            print(f"user {args.name} ({args.role}) added to {store.path}")
        elif action == "set-role":
            store.set_role(args.name, args.role)
            print(f"{args.name} is now {args.role}")
        elif action == "passwd":
            store.set_password(args.name, _read_password(args.password_stdin))
            print(f"password of {args.name} changed")
        elif action == "remove":
            store.remove(args.name)
            print(f"user {args.name} removed")
    except (UserError, ValueError) as exc:
        print(f"users {action}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"users {action}: {store.path}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    return 0


# ---- review export ---------------------------------------------------------------------------------------
def add_review_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("review", help="QA reviews made in the HMI")
    rsub = p.add_subparsers(dest="review_command", required=True, metavar="ACTION")
    e = rsub.add_parser("export", help="write reviewed images in the training layout (def_front/, ok_front/) "
                                       "with manifest.csv")
    e.add_argument("-c", "--config", default="/etc/inspection-station/station.yaml", help="station YAML")
    e.add_argument("--out", required=True, help="a new (or empty) folder")
    return p


def run_review(args: argparse.Namespace) -> int:
    loaded = load_or_report(args.config, use=ConfigUse.TOOL)
    if loaded is None:
        return 2
    from station.hmi.reviews import ReviewError, ReviewStore, export_reviews
    from station.hmi.tracedb import TraceDb, TraceLogUnavailable

    cfg = loaded.config
    store = ReviewStore(cfg.hmi.state_dir / "reviews.sqlite")
    try:
        result = export_reviews(store, TraceDb(cfg.tracelog.dir), Path(args.out))
    except (ReviewError, TraceLogUnavailable) as exc:
        print(f"review export: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"review export: {exc.filename or args.out}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    for line in result.missing or []:
        print(f"not exported: {line}", file=sys.stderr)
    print(f"{result.line()} -> {args.out} (manifest.csv)")
    return 0
