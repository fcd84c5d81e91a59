"""The PM QoS wake-up latency request `station bench --cpu-latency-us` holds (station.cpu_latency), against
the kernel's real /dev/cpu_dma_latency: the request is in force while held and gone when released."""

from __future__ import annotations

import os
import struct
import subprocess
from pathlib import Path

import pytest

from station.cpu_latency import PM_QOS_DEVICE, CpuLatencyError, hold_wakeup_latency
from support import REPO, STATION_CLI, make_tiny_model, require_component, write_config


def station(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*STATION_CLI, *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


def latency_in_force() -> int:
    """What the kernel enforces now (the lowest request of all processes), read as any process can."""
    fd = os.open(PM_QOS_DEVICE, os.O_RDONLY)
    try:
        return struct.unpack("i", os.read(fd, 4))[0]
    finally:
        os.close(fd)


def test_the_request_is_in_force_while_held_and_ends_on_release():
    require_component(PM_QOS_DEVICE.exists() and os.access(PM_QOS_DEVICE, os.W_OK),
                      f"a writable {PM_QOS_DEVICE} (Linux PM QoS; root)")
    before = latency_in_force()
    if before <= 7:
        pytest.skip(f"another process holds the wake-up latency at {before} us already")
    with hold_wakeup_latency(7) as in_force:
        assert in_force == 7 and latency_in_force() == 7
    assert latency_in_force() == before, "closing the device ends the request"


def test_a_missing_device_or_a_bad_value_is_a_clear_error(tmp_path):
    with pytest.raises(CpuLatencyError, match="cannot hold the CPU wake-up latency: .*no-such-device"):
        with hold_wakeup_latency(0, device=tmp_path / "no-such-device"):
            pass
    with pytest.raises(ValueError, match="outside 0.."):
        with hold_wakeup_latency(-1):
            pass


def test_bench_holds_it_for_the_run_and_refuses_a_bad_value(tmp_path):
    require_component(PM_QOS_DEVICE.exists() and os.access(PM_QOS_DEVICE, os.W_OK),
                      f"a writable {PM_QOS_DEVICE} (Linux PM QoS; root)")
    make_tiny_model(tmp_path / "tiny.pt")
    cfg = write_config(tmp_path / "s.yaml", """
camera: {kind: synthetic}
model: {path: tiny.pt, device: cpu}
reject: {actuator: {kind: log}}
""")
    held = station("bench", "-c", str(cfg), "-n", "5", "--repeats", "1", "--cpu-latency-us", "0", cwd=tmp_path)
    assert held.returncode == 0, held.stderr
    assert "CPU wake-up latency held at 0 us while the bench runs (PM QoS; in force: 0 us)" in held.stdout
    assert "sustained parts/s" in held.stdout
    bad = station("bench", "-c", str(cfg), "-n", "5", "--cpu-latency-us", "-3", cwd=tmp_path)
    assert bad.returncode == 2 and "--cpu-latency-us -3" in bad.stderr and "outside 0.." in bad.stderr
    assert "Traceback" not in bad.stderr
