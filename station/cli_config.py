"""`station check-config FILE`: validate a station YAML and print each error as line / key / value / message."""

from __future__ import annotations

import argparse
import sys

from station.configfile import ConfigError, load_config


def add_check_config_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("check-config", help="validate a station YAML file")
    p.add_argument("file", help="station YAML")
    p.add_argument("--model", action="store_true", help="also load and verify the model file it names")
    return p


def run_check_config(args: argparse.Namespace) -> int:
    try:
        loaded = load_config(args.file)
    except ConfigError as exc:
        print(f"{args.file}: {len(exc.issues)} error(s)", file=sys.stderr)
        print(f"{'line':>5}  {'key':<32} {'value':<20} message", file=sys.stderr)
        for issue in exc.issues:
            line = str(issue.line) if issue.line else "?"
            print(f"{line:>5}  {issue.key or '<top>':<32} {issue.value:<20} {issue.message}", file=sys.stderr)
        return 2
    from station.config_actuators import check_actuator_ports

    cfg = loaded.config
    port_issues = check_actuator_ports(cfg.reject.actuator, key="reject.actuator")
    if cfg.alarm.actuator is not None:
        port_issues += check_actuator_ports(cfg.alarm.actuator, key="alarm.actuator")
    if port_issues:
        print(f"{args.file}: {len(port_issues)} error(s)", file=sys.stderr)
        for key, value, message in port_issues:
            print(f"{'?':>5}  {key:<32} {value:<20} {message}", file=sys.stderr)
        return 2
    if args.model:
        from station.artifact import ModelArtifactError, load_artifact

        try:
            artifact = load_artifact(loaded.config.model.path)
        except ModelArtifactError as exc:
            print(f"{args.file}: model.path: {exc}", file=sys.stderr)
            return 2
        print(f"model {artifact.model_id}: {artifact.metadata.architecture}, "
              f"threshold {artifact.metadata.recommended_threshold:g}")
    print(f"{args.file}: OK (sha256 {loaded.sha256[:12]})")
    return 0
