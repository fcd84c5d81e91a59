"""`station check-config FILE`: validate a station YAML as `station run` would and print each problem
as line / key / value / message, every problem in one pass; exit 2 when there is any.

This is the systemd unit's ExecStartPre, so it stays light: the model file's presence is checked
here, its content (which needs torch) only with `--model`.
"""

from __future__ import annotations

import argparse
import sys

from station.configfile import ConfigError, ConfigIssue, ConfigUse, load_config


def add_check_config_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("check-config", help="validate a station YAML file as `station run` would")
    p.add_argument("file", help="station YAML")
    p.add_argument("--model", action="store_true", help="also load and verify the model file it names")
    return p


def print_issues(file: str, issues: list[ConfigIssue]) -> None:
    """The error table on stderr: a count, a header, one row per problem."""
    print(f"{file}: {len(issues)} error(s)", file=sys.stderr)
    print(f"{'line':>5}  {'key':<32} {'value':<20} message", file=sys.stderr)
    for issue in issues:
        line = str(issue.line) if issue.line else "-"
        print(f"{line:>5}  {issue.key or '<top>':<32} {issue.value:<20} {issue.message}", file=sys.stderr)


def run_check_config(args: argparse.Namespace) -> int:
    try:
        loaded = load_config(args.file, use=ConfigUse.RUN)
    except ConfigError as exc:
        print_issues(args.file, exc.issues)
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
