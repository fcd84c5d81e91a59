"""What `station install` and `station demo` tell a newcomer before anything goes wrong at boot.

The printed useradd line pastes into a shell as it is; a venv under /tmp (hidden by the unit's
PrivateTmp=true) is flagged; and an install without the project checkout (a plain `pip install .`,
which ships the Python packages only) gets one clear line naming the editable install, not a
traceback. That last case is the real layout of such an install: the `station` package copied into
a folder of its own, with no config/, systemd/ or models/ beside it.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

from support import REPO, STATION_CLI, make_tiny_model

from station.cli_install import useradd_command


def station(*args: str, pythonpath: Path, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*STATION_CLI, *args], capture_output=True, text=True,
                          timeout=120, cwd=cwd, env={**os.environ, "PYTHONPATH": str(pythonpath)})


def test_useradd_line_pastes_and_a_venv_under_tmp_is_flagged(tmp_path):
    model = make_tiny_model(tmp_path / "m.pt")
    fake_bin = tmp_path / "venv" / "bin" / "station"  # pytest's tmp_path is under /tmp
    fake_bin.parent.mkdir(parents=True)
    fake_bin.write_text("#!/bin/sh\n")
    result = station("install", "--root", str(tmp_path / "root"), "--model", str(model), "--station-bin",
                     str(fake_bin), "--dry-run", pythonpath=REPO, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    note = next(line for line in result.stdout.splitlines() if "on the target run:" in line)
    pasted = note.split("on the target run: ", 1)[1]
    assert shlex.split(pasted) == useradd_command(), pasted  # the comment with spaces survives the shell
    flagged = [line for line in result.stdout.splitlines() if str(fake_bin) in line and "PrivateTmp=true" in line]
    assert flagged, result.stdout


def test_without_the_checkout_demo_and_install_name_the_editable_install(tmp_path):
    site = tmp_path / "site-packages"
    shutil.copytree(REPO / "station", site / "station", ignore=shutil.ignore_patterns("__pycache__"))
    demo = station("demo", pythonpath=site, cwd=tmp_path)
    assert demo.returncode == 2
    assert "config/demo.yaml" in demo.stderr and "pip install -e" in demo.stderr
    assert "Traceback" not in demo.stderr and len(demo.stderr.strip().splitlines()) == 1, demo.stderr
    install = station("install", "--root", str(tmp_path / "root"), "--dry-run", pythonpath=site, cwd=tmp_path)
    assert install.returncode == 2
    assert "models/impeller-resnet18.pt" in install.stderr and "pip install -e" in install.stderr
    assert "Traceback" not in install.stderr and not (tmp_path / "root").exists()
    # Given its files explicitly, install still needs the unit file, which only the checkout has.
    model = make_tiny_model(tmp_path / "m.pt")
    unit = station("install", "--root", str(tmp_path / "root"), "--dry-run", "--model", str(model),
                   "--config", str(REPO / "config" / "station.yaml"), pythonpath=site, cwd=tmp_path)
    assert unit.returncode == 2 and "systemd/inspection-station.service" in unit.stderr, unit.stderr
