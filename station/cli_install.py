"""`station install`: put the systemd unit, a station config and the model in place on a Debian machine.

It creates the `inspection-station` system user, writes `/etc/inspection-station/station.yaml`
from `config/station.yaml` with absolute paths (model under `/var/lib/inspection-station/models/`,
trace log under `/var/log/inspection-station/`), copies and verifies the model, renders the unit
into `/etc/systemd/system/` with the real path of the `station` command, and prints the systemctl
commands to enable it. The operator HMI's unit (`inspection-station-hmi.service`) is installed beside
it, and the config folder is shared with the HMI's settings and users pages (group-writable for the
service account, whose station unit still sees /etc read-only). `--root DIR` installs into a staging root (packaging, tests) and never
touches users; `--dry-run` prints the actions only. An existing config is kept unless `--force`:
the operator's edits survive a reinstall. The unit file, the config template and the default model
come from the project checkout (`station.checkout`): on an install without one, the command says so.
Paths the unit's sandbox hides (home folders, /tmp) are flagged before anything is written.
"""

from __future__ import annotations

import argparse
import os
import pwd
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from station.checkout import CHECKOUT, CheckoutFileMissing, checkout_file, checkout_path
from station.configfile import ConfigError, parse_config_text

UNIT_NAME = "inspection-station.service"
UNIT_SOURCE = f"systemd/{UNIT_NAME}"          # in the project checkout
HMI_UNIT_NAME = "inspection-station-hmi.service"
HMI_UNIT_SOURCE = f"systemd/{HMI_UNIT_NAME}"
CONFIG_SOURCE = "config/station.yaml"
DEFAULT_MODEL = "models/impeller-resnet18.pt"
UNIT_STATION_BIN = "/opt/inspection-station/venv/bin/station"  # placeholder in the unit file

USER = "inspection-station"
CONFIG_DIR = Path("/etc/inspection-station")
STATE_DIR = Path("/var/lib/inspection-station")
LOGS_DIR = Path("/var/log/inspection-station")
UNIT_DIR = Path("/etc/systemd/system")


@dataclass(frozen=True)
class Action:
    describe: str
    apply: Callable[[], None]


def add_install_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("install", help="install the systemd unit, config and model (Debian)")
    p.add_argument("--root", default="/", help="install below this folder instead of / (staging, tests)")
    p.add_argument("--dry-run", action="store_true", help="print what would be done, change nothing")
    p.add_argument("--model", default=None, help=f"model artifact to install (default: {checkout_path(DEFAULT_MODEL)})")
    p.add_argument("--config", default=None, help=f"station YAML to start from (default: {checkout_path(CONFIG_SOURCE)})")
    p.add_argument("--station-bin", default=None,
                   help="path of the `station` command the unit runs (default: the one beside this Python)")
    p.add_argument("--force", action="store_true", help="overwrite an existing /etc/inspection-station/station.yaml")
    return p


def default_station_bin() -> Path | None:
    beside = Path(sys.executable).parent / "station"
    if beside.exists():
        return beside
    found = shutil.which("station")
    return Path(found) if found else None


def set_yaml_value(text: str, dotted_key: str, value: str) -> str:
    """Replace the value of `section.key` (a key of a top-level section), keeping its comment and column."""
    section, key = dotted_key.split(".")
    out, current, done = [], None, False
    pattern = re.compile(rf"^(  {re.escape(key)}:)(\s*)([^#\n]*?)(\s*)(#.*)?$")
    for line in text.splitlines(keepends=True):
        head = re.match(r"^([A-Za-z_]\w*):", line)
        if head:
            current = head.group(1)
        m = pattern.match(line.rstrip("\n"))
        if not done and current == section and m:
            body = f"{m.group(1)} {value}"
            comment = m.group(5)
            if comment:
                column = len(m.group(1)) + len(m.group(2)) + len(m.group(3)) + len(m.group(4))
                body = body.ljust(column - 1) + " " + comment
            line = body + "\n"
            done = True
        out.append(line)
    if not done:
        raise ValueError(f"{dotted_key} not found in the config template")
    return "".join(out)


def render_config(template: str, model_name: str) -> str:
    text = set_yaml_value(template, "model.path", str(STATE_DIR / "models" / model_name))
    text = set_yaml_value(text, "tracelog.dir", str(LOGS_DIR / "tracelog"))
    try:
        text = set_yaml_value(text, "hmi.state_dir", str(STATE_DIR / "hmi"))
    except ValueError:
        pass  # a template without an hmi: section: the schema default is relative, the HMI still works
    try:
        text = set_yaml_value(text, "camera.path", str(STATE_DIR / "frames"))
    except ValueError:
        pass  # a camera kind without a path (a real camera): nothing to anchor
    return text


def render_unit(template: str, station_bin: Path) -> str:
    return template.replace(UNIT_STATION_BIN, str(station_bin))


def plan(args: argparse.Namespace) -> tuple[list[Action], list[str]]:
    """The install actions, and warnings; raises SystemExit(2) with a message on bad input."""
    root = Path(args.root).resolve()
    staging = root != Path("/")

    def at(path: Path) -> Path:
        return root / path.relative_to("/")

    warnings: list[str] = []
    try:
        model = Path(args.model) if args.model else checkout_file(DEFAULT_MODEL, needed_for="station install")
        config_source = Path(args.config) if args.config else checkout_file(CONFIG_SOURCE,
                                                                             needed_for="station install")
        unit_source = checkout_file(UNIT_SOURCE, needed_for="station install")
        hmi_unit_source = checkout_file(HMI_UNIT_SOURCE, needed_for="station install")
    except CheckoutFileMissing as exc:
        raise _fail(str(exc)) from exc
    if not model.is_file():
        raise _fail(f"model {model} does not exist: build it (docs/training.md) or pass --model FILE")
    from station.artifact import ModelArtifactError, load_artifact

    try:
        artifact = load_artifact(model)
    except ModelArtifactError as exc:
        raise _fail(f"model refused: {exc}") from exc
    station_bin = Path(args.station_bin) if args.station_bin else default_station_bin()
    if station_bin is None or not station_bin.exists():
        raise _fail("the `station` command was not found; pass --station-bin PATH")
    station_bin = station_bin.absolute()
    for what, path in (("the `station` command", station_bin), ("the project checkout (editable install)", CHECKOUT)):
        hidden = hidden_from_service(path)
        if hidden:
            warnings.append(f"{what} {path} is under {hidden}: the service cannot run it; put the checkout "
                            f"and the venv under /opt/inspection-station (deployment manual) and pass --station-bin")
    try:
        config_text = render_config(config_source.read_text(encoding="utf-8"), model.name)
        parse_config_text(config_text, source=config_source)
    except (OSError, ValueError) as exc:  # ConfigError is a ValueError
        detail = str(exc) if isinstance(exc, ConfigError) else f"{config_source}: {exc}"
        raise _fail(f"config template unusable: {detail}") from exc
    unit_text = render_unit(unit_source.read_text(encoding="utf-8"), station_bin)

    actions: list[Action] = []
    if staging:
        warnings.append(f"staging root {root}: system user {USER!r} not created; on the target run: "
                        + shlex.join(useradd_command()))
    elif _user_exists(USER):
        warnings.append(f"system user {USER!r} exists: kept")
    else:
        actions.append(Action(f"create system user {USER!r}: {shlex.join(useradd_command())}",
                              lambda: _run(useradd_command())))
    for folder in (CONFIG_DIR, STATE_DIR / "models", LOGS_DIR, UNIT_DIR):
        actions.append(Action(f"create folder {at(folder)}", lambda f=at(folder): f.mkdir(parents=True, exist_ok=True)))
    model_dest = at(STATE_DIR / "models" / model.name)
    actions.append(Action(f"install model {model} -> {model_dest} ({artifact.model_id})",
                          lambda: _copy(model, model_dest, mode=0o644)))
    config_dest = at(CONFIG_DIR / "station.yaml")
    if config_dest.exists() and not args.force:
        warnings.append(f"{config_dest} exists: kept (use --force to replace it)")
    else:
        actions.append(Action(f"write config {config_dest} (model and trace log paths absolute)",
                              lambda: _write(config_dest, config_text, mode=0o640, group=None if staging else USER)))
    unit_dest = at(UNIT_DIR / UNIT_NAME)
    actions.append(Action(f"write unit {unit_dest} (ExecStart={station_bin} run ...)",
                          lambda: _write(unit_dest, unit_text, mode=0o644)))
    hmi_unit_dest = at(UNIT_DIR / HMI_UNIT_NAME)
    hmi_unit_text = render_unit(hmi_unit_source.read_text(encoding="utf-8"), station_bin)
    actions.append(Action(f"write unit {hmi_unit_dest} (ExecStart={station_bin} hmi ...)",
                          lambda: _write(hmi_unit_dest, hmi_unit_text, mode=0o644)))
    actions.append(Action(f"share {at(CONFIG_DIR)} with the HMI's settings and users pages (group {USER}, "
                          f"folder 2770, station.yaml 0660)",
                          lambda: _share_config(at(CONFIG_DIR), config_dest, group=None if staging else USER)))
    return actions, warnings


def hidden_from_service(path: Path) -> str | None:
    """The folder of the unit's sandbox that hides `path` from the service, or None.

    ProtectHome=true hides /home, /root and /run/user; PrivateTmp=true gives the service empty
    /tmp and /var/tmp of its own, so a venv or checkout there is gone for it."""
    parts = path.parts
    for hidden in (("home",), ("root",), ("run", "user"), ("tmp",), ("var", "tmp")):
        if parts[1:1 + len(hidden)] == hidden:
            why = "PrivateTmp=true" if hidden[-1] == "tmp" else "ProtectHome=true"
            return f"/{'/'.join(hidden)} ({why} in the unit hides it)"
    return None


def useradd_command() -> list[str]:
    return ["useradd", "--system", "--user-group", "--home-dir", str(STATE_DIR), "--no-create-home",
            "--shell", "/usr/sbin/nologin", "--comment", "inspection station service", USER]


NEXT_STEPS = f"""next steps:
  systemctl daemon-reload
  systemctl enable --now {UNIT_NAME}
  station users -c {CONFIG_DIR / 'station.yaml'} add NAME --role admin   # the first HMI user (no default)
  systemctl enable --now {HMI_UNIT_NAME}   # operator HMI: http://127.0.0.1:8080 on the line PC
  systemctl status {UNIT_NAME}
  journalctl -u {UNIT_NAME} -f          # the service log (alarms, reloads, summaries)
  systemctl reload {UNIT_NAME}          # after editing {CONFIG_DIR / 'station.yaml'}"""


def run_install(args: argparse.Namespace) -> int:
    staging = Path(args.root).resolve() != Path("/")
    if not staging and not args.dry_run and os.geteuid() != 0:
        print("station install writes to /etc and /var/lib: run it as root (or use --root DIR / --dry-run)",
              file=sys.stderr)
        return 2
    try:
        actions, warnings = plan(args)
    except SystemExit as exc:
        return int(exc.code or 2)
    for warning in warnings:
        print(f"note: {warning}")
    for action in actions:
        print(("would " if args.dry_run else "") + action.describe)
        if not args.dry_run:
            try:
                action.apply()
            except (OSError, subprocess.CalledProcessError) as exc:
                print(f"install failed at: {action.describe}: {exc}", file=sys.stderr)
                return 1
    print(NEXT_STEPS)
    return 0


def _fail(message: str) -> SystemExit:
    print(f"station install: {message}", file=sys.stderr)
    return SystemExit(2)


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _run(cmd: list[str]) -> None:
    subprocess.run(cmd, check=True)


def _copy(src: Path, dest: Path, *, mode: int) -> None:
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.copyfile(src, tmp)
    tmp.chmod(mode)
    tmp.replace(dest)  # atomic: a running station never sees half a model file


def _share_config(folder: Path, config: Path, *, group: str | None) -> None:
    """The HMI (service account) writes station.yaml atomically and hmi-users.json: it needs the folder."""
    if group is not None:
        shutil.chown(folder, user="root", group=group)
    folder.chmod(0o2770)  # setgid: files made there (the HMI's rewrites) keep the service group
    if config.exists():
        if group is not None:
            shutil.chown(config, user="root", group=group)
        config.chmod(0o660)


def _write(dest: Path, text: str, *, mode: int, group: str | None = None) -> None:
    tmp = dest.with_name(dest.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.chmod(mode)
    if group is not None:
        shutil.chown(tmp, user="root", group=group)  # readable by the service, writable by root only
    tmp.replace(dest)
