"""Holding the CPU's wake-up latency low while a benchmark runs (Linux PM QoS, `/dev/cpu_dma_latency`).

Between parts the inference thread sleeps; an idle core drops into an idle state (on a virtual machine,
the vCPU halts and the hypervisor deschedules it), and the next part pays for waking it: measured on the
2-vCPU development machine at 10 parts/s, the image checks took 0.76 ms after a 100 ms sleep against
0.25 ms back to back, and the whole inference step 15.7 ms against 10.0 ms with the latency held at 0
(docs/performance.md). Linux's PM QoS interface caps that: while a process keeps `/dev/cpu_dma_latency`
open with a 32-bit value written to it, the kernel keeps the cores out of idle states whose exit takes
longer than that many microseconds (0: poll, never halt). The request ends when the file is closed,
so `hold_wakeup_latency` is a context manager. It needs write access to the device (root, or a udev
rule giving the service's group access); `station bench --cpu-latency-us N` uses it to measure what a
host tuned this way gains. It costs power: a core that never halts draws its active power all the time.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

PM_QOS_DEVICE = Path("/dev/cpu_dma_latency")
MAX_LATENCY_US = 2_000_000_000  # the kernel's PM QoS value is a signed 32-bit microsecond count


class CpuLatencyError(OSError):
    """The wake-up latency request could not be made (no such device, no permission)."""


@contextlib.contextmanager
def hold_wakeup_latency(microseconds: int, *, device: Path = PM_QOS_DEVICE) -> Iterator[int]:
    """Keep the CPU wake-up latency at most `microseconds` until the block ends; yields what the kernel
    reads back (the request in force, which another process may hold lower)."""
    if not 0 <= microseconds <= MAX_LATENCY_US:
        raise ValueError(f"CPU wake-up latency {microseconds} us is outside 0..{MAX_LATENCY_US}")
    try:
        fd = os.open(device, os.O_RDWR)
    except OSError as exc:
        raise CpuLatencyError(exc.errno, f"cannot hold the CPU wake-up latency: {device}: {exc.strerror} "
                                         f"(it needs write access to the PM QoS device, e.g. root)") from exc
    try:
        os.write(fd, struct.pack("i", microseconds))
        in_force = _read_back(fd)
        log.info("CPU wake-up latency held at %d us (%s reads %s)", microseconds, device, in_force)
        yield in_force if in_force is not None else microseconds
    finally:
        os.close(fd)  # closing the file is what ends the request


def _read_back(fd: int) -> int | None:
    """The value the device reports (the latency in force); None where it cannot be read back."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        data = os.read(fd, 4)
    except OSError:
        return None
    return struct.unpack("i", data)[0] if len(data) == 4 else None
