"""The systemd unit (systemd-analyze verify, its watchdog, restart and hardening directives, a comment for every line) and
`station install` into a staging root: unit, config with absolute paths, verified model, nothing in --dry-run."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support import REPO, STATION_CLI, make_tiny_model, require_component

from station.configfile import load_config

UNIT = REPO / "systemd" / "inspection-station.service"
HMI_UNIT = REPO / "systemd" / "inspection-station-hmi.service"
PLACEHOLDER = "/opt/inspection-station/venv/bin/station"


def station_bin() -> Path:
    """The `station` command of this venv (systemd-analyze verify checks that ExecStart= exists)."""
    path = Path(sys.executable).parent / "station"
    assert path.exists(), f"{path} missing: pip install -e . creates it"
    return path


def directives(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) for every directive line."""
    section, out = "", []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
        elif line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out.append((section, key, value))
    return out


def verify(unit: Path) -> tuple[int, list[str]]:
    """Run systemd-analyze verify; return its exit code and the lines it printed about this unit."""
    require_component(shutil.which("systemd-analyze") is not None, "systemd-analyze (Debian package systemd)")
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "SYSTEMD_LOG_COLOR": "0"})
    about_unit = [line for line in (result.stdout + result.stderr).splitlines() if unit.name in line]
    return result.returncode, about_unit


def test_systemd_analyze_verify_accepts_the_unit(tmp_path):
    rendered = tmp_path / "inspection-station.service"
    rendered.write_text(UNIT.read_text().replace(PLACEHOLDER, str(station_bin())))
    rc, complaints = verify(rendered)
    assert rc == 0 and complaints == [], complaints
    # The check has teeth: verify names a misspelt directive (it only warns, so warnings count as failure).
    broken = tmp_path / "broken" / "inspection-station.service"
    broken.parent.mkdir()
    broken.write_text(rendered.read_text().replace("WatchdogSec=", "WatchdogSecs="))
    _, complaints = verify(broken)
    assert any("WatchdogSecs" in line for line in complaints)


def test_unit_has_the_directives_the_plant_relies_on():
    found = directives(UNIT.read_text())
    values: dict[str, list[str]] = {}
    for _, key, value in found:
        values.setdefault(key, []).append(value)
    one = {k: v[0] for k, v in values.items()}
    assert one["Type"] == "notify" and one["NotifyAccess"] == "main"
    assert float(one["WatchdogSec"]) > 0 and one["Restart"] == "on-failure"
    assert int(one["StartLimitBurst"]) >= 1 and int(one["StartLimitIntervalSec"]) > 0
    assert one["ExecStartPre"] == f"{PLACEHOLDER} check-config /etc/inspection-station/station.yaml"
    assert one["ExecStart"] == f"{PLACEHOLDER} run -c /etc/inspection-station/station.yaml"
    assert one["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert one["StateDirectory"] == one["LogsDirectory"] == one["ConfigurationDirectory"] == "inspection-station"
    assert one["User"] == "inspection-station" and set(one["SupplementaryGroups"].split()) == {"video", "dialout"}
    assert one["ProtectSystem"] == "strict" and one["ProtectHome"] == "true" and one["NoNewPrivileges"] == "true"
    assert one["DevicePolicy"] == "closed"
    allowed = {v.split()[0] for v in values["DeviceAllow"]}
    assert allowed == {"char-video4linux", "char-ttyUSB", "char-ttyACM", "char-usb_device", "char-nvidia*"}
    assert float(one["TimeoutStopSec"]) >= 10 and one["RestartPreventExitStatus"] == "2"
    assert one["WantedBy"] == "multi-user.target"
    # Hardening: a system call allow list, /proc and mounts private, no realtime, no SysV IPC left.
    assert values["SystemCallFilter"] == ["@system-service", "~@privileged"] and one["SystemCallErrorNumber"] == "EPERM"
    assert one["ProtectProc"] == "invisible" and one["PrivateMounts"] == "true"
    assert one["RestrictRealtime"] == "true" and one["RemoveIPC"] == "true"
    # Network: deny by default; this host, link-local (GigE cameras) and the private plant ranges (the PLC).
    assert one["IPAddressDeny"] == "any"
    allowed_ip = one["IPAddressAllow"].split()
    assert {"localhost", "link-local", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"} <= set(allowed_ip)


def test_every_unit_line_says_why():
    for unit in (UNIT, HMI_UNIT):
        lines = unit.read_text().splitlines()
        for i, line in enumerate(lines):
            if line and not line.startswith(("#", "[")):
                assert lines[i - 1].startswith("#"), f"{unit.name} line {i + 1} ({line}) has no comment above it"


def test_systemd_analyze_verify_accepts_the_hmi_unit(tmp_path):
    rendered = tmp_path / "inspection-station-hmi.service"
    rendered.write_text(HMI_UNIT.read_text().replace(PLACEHOLDER, str(station_bin())))
    rc, complaints = verify(rendered)
    assert rc == 0 and complaints == [], complaints


def test_hmi_unit_is_hardened_and_ranks_below_the_station():
    values: dict[str, list[str]] = {}
    for _, key, value in directives(HMI_UNIT.read_text()):
        values.setdefault(key, []).append(value)
    one = {k: v[0] for k, v in values.items()}
    assert one["ExecStart"] == f"{PLACEHOLDER} hmi -c /etc/inspection-station/station.yaml"
    assert one["ExecStartPre"] == f"{PLACEHOLDER} check-config /etc/inspection-station/station.yaml"
    assert one["User"] == "inspection-station" and one["Restart"] == "on-failure"
    assert one["ProtectSystem"] == "strict" and one["ProtectHome"] == "true" and one["NoNewPrivileges"] == "true"
    assert one["PrivateDevices"] == "true" and one["CapabilityBoundingSet"] == ""
    assert int(one["Nice"]) > 0 and int(one["CPUWeight"]) < 100, "the HMI must yield the CPU to the station"
    assert one["ReadWritePaths"] == "/etc/inspection-station"
    assert "inspection-station.service" in one["After"] and "Requires" not in one, "the HMI runs without the station"
    station = {k: v for _, k, v in directives(UNIT.read_text())}
    # The live-state socket's folder: made by the station's unit and kept across its restarts.
    assert station["RuntimeDirectory"] == "inspection-station" and station["RuntimeDirectoryPreserve"] == "yes"


# ---- station install -------------------------------------------------------------------------------------
def install(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*STATION_CLI, "install", *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})


def test_install_into_a_staging_root(tmp_path):
    model = make_tiny_model(tmp_path / "impeller-test.pt")
    root = tmp_path / "root"
    result = install("--root", str(root), "--model", str(model), "--station-bin", str(station_bin()))
    assert result.returncode == 0, result.stderr
    unit = root / "etc/systemd/system/inspection-station.service"
    config = root / "etc/inspection-station/station.yaml"
    installed_model = root / "var/lib/inspection-station/models/impeller-test.pt"
    assert installed_model.read_bytes() == model.read_bytes()
    assert f"ExecStart={station_bin()} run -c /etc/inspection-station/station.yaml" in unit.read_text()
    assert PLACEHOLDER not in unit.read_text()
    # The config is the commented template with absolute paths the service user can reach.
    loaded = load_config(config).config
    assert loaded.model.path == Path("/var/lib/inspection-station/models/impeller-test.pt")
    assert loaded.tracelog.dir == Path("/var/log/inspection-station/tracelog")
    assert config.read_text().count("#") == (REPO / "config/station.yaml").read_text().count("#")
    # Group-writable for the HMI's settings page (the station's own unit sees /etc read-only).
    assert oct(config.stat().st_mode & 0o777) == "0o660"
    assert oct(config.parent.stat().st_mode & 0o7777) == "0o2770"
    hmi_unit = root / "etc/systemd/system/inspection-station-hmi.service"
    assert f"ExecStart={station_bin()} hmi -c /etc/inspection-station/station.yaml" in hmi_unit.read_text()
    assert loaded.hmi.state_dir == Path("/var/lib/inspection-station/hmi")
    assert loaded.hmi.control_socket == Path("/run/inspection-station/control.sock")
    assert "systemctl enable --now inspection-station-hmi.service" in result.stdout
    assert "systemctl enable --now inspection-station.service" in result.stdout
    assert "journalctl -u inspection-station.service" in result.stdout
    rc, complaints = verify(unit)
    assert rc == 0 and complaints == [], complaints

    # A reinstall keeps the operator's edits; --force replaces them.
    config.write_text(config.read_text().replace("id: station-1 ", "id: line-7   "))
    again = install("--root", str(root), "--model", str(model), "--station-bin", str(station_bin()))
    assert again.returncode == 0 and "exists: kept" in again.stdout
    assert load_config(config).config.station.id == "line-7"
    forced = install("--root", str(root), "--model", str(model), "--station-bin", str(station_bin()), "--force")
    assert forced.returncode == 0 and load_config(config).config.station.id == "station-1"


def test_install_dry_run_changes_nothing_and_a_bad_model_is_refused(tmp_path):
    model = make_tiny_model(tmp_path / "m.pt")
    root = tmp_path / "root"
    dry = install("--root", str(root), "--model", str(model), "--station-bin", str(station_bin()), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert re.search(r"^would write unit .*inspection-station.service", dry.stdout, re.M)
    assert not root.exists()
    (tmp_path / "bad.pt").write_bytes(b"not a model")
    bad = install("--root", str(root), "--model", str(tmp_path / "bad.pt"), "--station-bin", str(station_bin()))
    assert bad.returncode == 2 and "model refused" in bad.stderr and not root.exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="the check is for a non-root user")
def test_install_to_the_real_root_needs_root(tmp_path):
    result = install("--model", str(make_tiny_model(tmp_path / "m.pt")))
    assert result.returncode == 2 and "as root" in result.stderr
