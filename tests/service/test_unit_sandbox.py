"""The unit's sandbox, for real where it can be: the station runs under the unit's own system call filter.

systemd is not PID 1 on a test machine, so the filter is applied the way systemd applies it: a seccomp
filter (libseccomp, through pyseccomp) loaded in the child before it runs `station demo`, allowing the
system calls of the unit's `SystemCallFilter=` lines (groups resolved by `systemd-analyze syscall-filter`)
and failing the rest with the unit's `SystemCallErrorNumber=`. The demo exercises what the plant does:
torch and ONNX Runtime on the CPU, threads, SQLite in WAL mode, image files and Modbus TCP to the
simulated PLC on 127.0.0.1. (IPAddressAllow= is a cgroup BPF filter only systemd can install: its
directives are checked in test_unit_and_install.py.)
"""

from __future__ import annotations

import errno
import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support import REPO, STATION_CLI, make_tiny_model, query, require_component, write_config

UNIT = REPO / "systemd" / "inspection-station.service"


@functools.lru_cache(maxsize=None)
def syscalls_of(group: str) -> frozenset[str]:
    out = subprocess.run(["systemd-analyze", "syscall-filter", group], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    names: set[str] = set()
    for line in out.splitlines()[1:]:
        line = line.strip()
        if line.startswith("@"):
            names |= syscalls_of(line)
        elif line and not line.startswith("#"):
            names.add(line)
    return frozenset(names)


def unit_filter() -> tuple[set[str], int]:
    """(allowed system calls, errno for the others) from the unit's directives."""
    allowed: set[str] | None = None
    error = errno.EPERM
    for line in UNIT.read_text().splitlines():
        key, _, value = line.partition("=")
        if key == "SystemCallFilter":
            deny = value.startswith("~")
            names = set().union(*(syscalls_of(v) if v.startswith("@") else {v} for v in value.lstrip("~").split()))
            assert allowed is not None or not deny, "the unit starts with an allow list"
            allowed = (allowed or set()) - names if deny else (allowed or set()) | names
        elif key == "SystemCallErrorNumber":
            error = getattr(errno, value)
    assert allowed, "the unit has a SystemCallFilter="
    return allowed, error


@pytest.fixture
def seccomp():
    require_component(shutil.which("systemd-analyze") is not None, "systemd-analyze (Debian package systemd)")
    try:
        import pyseccomp
    except (ImportError, OSError) as exc:  # OSError: libseccomp.so.2 missing
        require_component(False, f"pyseccomp and libseccomp2 ({exc})")
    return pyseccomp


def run_filtered(seccomp, allowed: set[str], error: int, args: list[str], *, cwd: Path) -> subprocess.CompletedProcess:
    def load_filter() -> None:  # in the child, after fork, before exec; kept across exec (no_new_privs)
        f = seccomp.SyscallFilter(defaction=seccomp.ERRNO(error))
        for name in sorted(allowed):
            try:
                f.add_rule(seccomp.ALLOW, name)
            except (RuntimeError, ValueError, OSError):
                pass  # a name this kernel/architecture does not have
        f.load()

    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300, preexec_fn=load_filter,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


def test_the_station_runs_under_the_units_system_call_filter(tmp_path, seccomp):
    allowed, error = unit_filter()
    assert "chroot" not in allowed and "mount" not in allowed and "read" in allowed
    # The filter has teeth: a privileged call is refused with the unit's errno.
    refused = run_filtered(seccomp, allowed, error, [sys.executable, "-c", "import os; os.chroot('/')"], cwd=tmp_path)
    assert refused.returncode == 1 and "Operation not permitted" in refused.stderr

    make_tiny_model(tmp_path / "tiny.pt")
    demo = (REPO / "config" / "demo.yaml").read_text()
    demo = demo.replace("../models/impeller-resnet18.pt", str(tmp_path / "tiny.pt")).replace("../var/demo", "log")
    cfg = write_config(tmp_path / "demo.yaml", demo)
    result = run_filtered(seccomp, allowed, error,
                          [*STATION_CLI, "demo", "-c", str(cfg), "--parts", "6", "--rate", "10"],
                          cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "(onnxruntime on cpu)" in result.stdout or "(torch on cuda)" in result.stdout
    assert "PLC saw" in result.stdout
    rows = query(tmp_path / "log" / "trace.sqlite", "SELECT decision, actuator_result FROM parts")
    assert len(rows) == 6
    assert all(r["actuator_result"] in ("acknowledged", "late") for r in rows if r["decision"] == "reject")
