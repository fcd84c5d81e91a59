"""`station check-config FILE [--model]`: validate a station YAML as `station run` would and print each
problem as line / key / value / message, every problem in one pass; exit 2 when there is any.

This is the systemd unit's ExecStartPre, so it stays light: the model file's presence is checked here,
its content (which needs torch) only with `--model`: then the model file is loaded and verified too
(seal, digests, reference inputs), and the validity gate's effective limits are printed with where
each comes from (the model's calibration or this YAML), with a warning for a format-1 model (gate off),
an uncalibrated domain or a widened limit.
"""

from __future__ import annotations

import argparse
import sys

from station.config import StationConfig
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
        code = check_model(args.file, loaded.config)
        if code:
            return code
    print(f"{args.file}: OK (sha256 {loaded.sha256[:12]})")
    return 0


def check_model(file: str, config: StationConfig) -> int:
    """Load and verify the model, print it and its gate's limits; 2 (and one line) when it is refused."""
    import logging

    from station.artifact import ModelArtifactError, load_artifact
    from station.gate import Gate, GateConfigError
    from station.validity import limits_table

    logging.getLogger("station.artifact").setLevel(logging.ERROR)  # the legacy warning is printed below
    try:
        artifact = load_artifact(config.model.path)
    except ModelArtifactError as exc:
        print(f"{file}: model.path: {exc}", file=sys.stderr)
        return 2
    try:
        gate = Gate.build(artifact.validity, config.gate.limits) if artifact.validity is not None else None
    except GateConfigError as exc:
        print(f"{file}: {exc}", file=sys.stderr)
        return 2
    meta = artifact.metadata
    print(f"model {artifact.model_id}: {meta.architecture}, {artifact.format}, "
          f"threshold {meta.recommended_threshold:g}")
    if artifact.validity is None or gate is None:
        print(f"WARNING: VALIDITY GATE OFF: {artifact.legacy_warning()}")
        return 0
    domain = artifact.validity
    state = "calibrated" if domain.calibrated else "NOT calibrated (limits from the spread of its fit images)"
    print(f"validity gate ({state}); alarm image_quality at {config.gate.alarm.k} of the last "
          f"{config.gate.alarm.n} parts:")
    sources = {m: ", ".join(f"{side} {gate.sources[f'{m}_{side}']}" for side in sides)
               for m, sides in gate.limits.items()}
    print(limits_table(gate.limits, reference=domain.reference, sources=sources))
    for line in gate.widened:
        print(f"WARNING: {line}: frames beyond the model's validated domain reach the model")
    return 0
