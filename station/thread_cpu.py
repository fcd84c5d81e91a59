"""Thread names the operating system sees, and CPU time per thread: where the station's cores go.

Every stage thread names itself (`name_os_thread`, from `Stage.run`), and the inference runtime's own
worker threads are named after the session that made them (`name_threads_started_by`), so `top -H -p
<pid>`, `ps -T`, `py-spy dump` and /proc/<pid>/task/*/comm show "inference", "capture", "tracelog",
"ort-pool"... instead of one "python" per thread. `station bench` reads each thread's CPU time from
/proc at the start and the end of a run (`cpu_by_thread`) and reports CPU milliseconds per part by
thread: on a 2-core station at full speed that table says which thread the cores are spent on.
Linux keeps at most 15 bytes of a thread name. Everything here is best effort: on a system without
/proc or pthread_setname_np the names stay the defaults and the CPU table is left out.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import ctypes.util
import os
import statistics
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path

OS_NAME_BYTES = 15    # Linux: TASK_COMM_LEN 16, with the terminating NUL
TASKS = Path("/proc/self/task")
ENDED_KEPT = 256      # ended threads whose final CPU time is remembered (a supervisor restart adds one)

# Threads that ended (a finite camera source, a restarted stage): their last CPU time, which /proc no
# longer shows, by kernel thread id. Written by `record_thread_end` in the ending thread itself.
_ended: OrderedDict[int, tuple[str, float]] = OrderedDict()
_ended_lock = threading.Lock()


def _pthread_setname() -> Callable | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        setname = libc.pthread_setname_np
    except (OSError, AttributeError):
        return None
    setname.argtypes = (ctypes.c_ulong, ctypes.c_char_p)
    setname.restype = ctypes.c_int
    return setname


_SETNAME = _pthread_setname()


def os_name(name: str) -> bytes:
    """`name` as the kernel will keep it: UTF-8, cut to 15 bytes."""
    return name.encode("utf-8", "replace")[:OS_NAME_BYTES]


def name_os_thread(name: str) -> None:
    """Give the calling thread `name` in the operating system too."""
    if _SETNAME is not None:
        _SETNAME(threading.get_ident(), os_name(name))


def thread_ids() -> set[int]:
    """Kernel ids of this process's threads (empty without /proc)."""
    try:
        return {int(t) for t in os.listdir(TASKS)}
    except OSError:
        return set()


def _comm(tid: int) -> bytes | None:
    try:
        return (TASKS / str(tid) / "comm").read_bytes().rstrip(b"\n")
    except OSError:
        return None


@contextlib.contextmanager
def name_threads_started_by(name: str) -> Iterator[None]:
    """Name `name` the threads that appear while the block runs (a runtime's thread pool) and still carry
    the name they inherited from the calling thread (a pool an inner block named keeps its name)."""
    before = thread_ids()
    try:
        inherited: bytes | None = Path("/proc/thread-self/comm").read_bytes().rstrip(b"\n")
    except OSError:
        inherited = None
    yield
    for tid in thread_ids() - before:
        if inherited is not None and _comm(tid) == inherited:
            with contextlib.suppress(OSError):
                (TASKS / str(tid) / "comm").write_bytes(os_name(name))


def record_thread_end(name: str) -> None:
    """Called by a thread as it ends: keep its CPU time for `cpu_by_thread` (/proc drops the thread)."""
    with _ended_lock:
        _ended[threading.get_native_id()] = (os_name(name).decode("utf-8", "replace"), time.thread_time())
        while len(_ended) > ENDED_KEPT:
            _ended.popitem(last=False)


def cpu_by_thread() -> dict[int, tuple[str, float]]:
    """{kernel thread id: (name, CPU seconds used so far, user + system)} for this process's threads,
    the ones that ended included (`record_thread_end`)."""
    tick = os.sysconf("SC_CLK_TCK")
    with _ended_lock:
        result = dict(_ended)
    for tid in thread_ids():
        try:
            stat = (TASKS / str(tid) / "stat").read_text()
        except OSError:
            continue  # the thread ended in between
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        result[tid] = (name, (int(fields[11]) + int(fields[12])) / tick)  # utime, stime
    return result


def cpu_spent(start: dict[int, tuple[str, float]], end: dict[int, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds per thread name between two `cpu_by_thread` snapshots (threads of one name summed; a
    thread started in between counts from zero), largest first."""
    spent: collections.Counter[str] = collections.Counter()
    for tid, (name, seconds) in end.items():
        before_name, before = start.get(tid, (name, 0.0))
        if before_name != name or before > seconds:
            before = 0.0  # a new thread under a reused id
        spent[name] += seconds - before
    return dict(spent.most_common())


def format_cpu_per_part(runs: list[dict]) -> list[str]:
    """The bench's lines: CPU ms per part by thread name (median over the runs' `cpu` and `parts`), and
    how many cores the whole process kept busy. Runs without CPU figures (no /proc) give no lines."""
    runs = [r for r in runs if r.get("cpu") and r.get("parts") and r.get("elapsed_s")]
    if not runs:
        return []
    names = list(dict.fromkeys(name for r in runs for name in r["cpu"]))
    per_part = {n: statistics.median(1000 * r["cpu"].get(n, 0.0) / r["parts"] for r in runs) for n in names}
    total = statistics.median(1000 * sum(r["cpu"].values()) / r["parts"] for r in runs)
    busy = statistics.median(sum(r["cpu"].values()) / r["elapsed_s"] for r in runs)
    lines = ["", f"CPU per part by thread (user + system, from /proc; medians over repeats; {os.cpu_count()} "
                 f"cores), ms", f"{'':<40}{'ms/part':>8}{'share':>8}"]
    for name, ms in sorted(per_part.items(), key=lambda kv: -kv[1]):
        if ms >= 0.005:
            lines.append(f"{'  ' + name:<40}{ms:8.2f}{100 * ms / total if total else 0:7.0f}%")
    lines.append(f"{'  all threads':<40}{total:8.2f}   ({busy:.2f} cores busy on average)")
    return lines
