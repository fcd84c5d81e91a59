"""The `station` command: parses arguments and hands each sub-command to the module that holds it.

Sub-commands: run, replay, demo, check-config, trace export, bench, cameras, record, hmi, users,
review export, config-reference and install. Every command returns a process exit code:
0 success, 1 the run found a problem (e.g. escapes in a labelled replay with --strict), 2 bad input
(config, model, path). A command whose reader closes the pipe (`station trace export | head`) ends
quietly with 141 (128 + SIGPIPE), as Unix tools do. Command modules keep heavy imports (torch, the
cameras) inside their runner functions, so building the parser, `check-config` and `trace export`
never load torch.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys

# (module, adder function, runner function): each module adds its own sub-parser.
COMMANDS = [
    ("station.cli_run", "add_run_parser", "run_run"),
    ("station.cli_run", "add_replay_parser", "run_replay"),
    ("station.cli_demo", "add_demo_parser", "run_demo"),
    ("station.cli_config", "add_check_config_parser", "run_check_config"),
    ("station.cli_trace", "add_trace_parser", "run_trace"),
    ("station.bench", "add_bench_parser", "run_bench"),
    ("station.cli_cameras", "add_cameras_parser", "run_cameras"),
    ("station.cli_cameras", "add_record_parser", "run_record"),
    ("station.cli_hmi", "add_hmi_parser", "run_hmi"),
    ("station.cli_hmi", "add_users_parser", "run_users"),
    ("station.cli_hmi", "add_review_parser", "run_review"),
    ("station.cli_reference", "add_reference_parser", "run_reference"),
    ("station.cli_install", "add_install_parser", "run_install"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="station", description="Impeller inspection station.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name, adder, runner in COMMANDS:
        module = importlib.import_module(module_name)
        p = getattr(module, adder)(sub)
        p.set_defaults(handler=getattr(module, runner))
    return parser


def setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", stream=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verbose:
        setup_logging("DEBUG")
    try:
        return int(args.handler(args) or 0)
    except BrokenPipeError:
        # Point stdout at /dev/null so the interpreter's last flush at exit does not fail a second time.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 128 + signal.SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
