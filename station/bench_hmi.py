"""`station bench --with-hmi`: does the operator HMI, with a client polling it, disturb the station?

Each repeat runs the pipeline benchmark twice, alternating so that a machine whose load drifts affects
both alike: once bare (no live-state socket), once with the station serving its socket, `station hmi`
running as its own process (niced like its systemd unit) and a client process that does what a busy
browser and Prometheus would: an open server-sent event stream on the live page, the page itself every
second, the status JSON every 200 ms and a /metrics scrape every 5 s. The YAML's reject delay is kept
so pulse lateness (fired minus due) is the real figure. Both columns are medians over the repeats.
Run as `python -m station.bench_hmi URL SECONDS`, this module is that polling client.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from station.configfile import LoadedConfig, load_config

HMI_NICE = 10  # as systemd/inspection-station-hmi.service


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _hmi_yaml(loaded: LoadedConfig, folder: Path, port: int) -> Path:
    """The bench's YAML for the HMI: the real one with the bench's log folder, socket and port."""
    from ruamel.yaml import YAML

    y = YAML()
    doc = y.load(loaded.path.read_text(encoding="utf-8"))
    doc.setdefault("tracelog", {})["dir"] = str(folder)
    hmi = doc.setdefault("hmi", {})
    hmi.update({"control_socket": str(folder / "control.sock"), "state_dir": str(folder / "hmi"),
                "users_file": str(folder / "hmi-users.json"), "listen": "127.0.0.1", "port": port})
    model = doc.setdefault("model", {})
    model["path"] = str(loaded.config.model.path)
    buf = io.StringIO()
    y.dump(doc, buf)
    target = folder / "hmi.yaml"
    target.write_text(buf.getvalue(), encoding="utf-8")
    load_config(target)  # the same schema: a problem shows here, not as a silent HMI exit
    return target


def _wait_http(url: str, timeout_s: float, proc: subprocess.Popen) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"the HMI exited with {proc.returncode} before answering")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            time.sleep(0.2)
    raise RuntimeError(f"the HMI did not answer {url} within {timeout_s:g} s")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def hmi_and_client(loaded: LoadedConfig, folder: Path) -> Iterator[None]:
    """`station hmi` and the polling client beside the station, both stopped (by pid) on exit."""
    port = _free_port()
    config = _hmi_yaml(loaded, folder, port)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).resolve().parent.parent),
                                                                     os.environ.get("PYTHONPATH")]))}
    with contextlib.ExitStack() as files:
        hmi_err = files.enter_context(open(folder / "hmi.stderr", "w"))
        client_err = files.enter_context(open(folder / "client.stderr", "w"))
        hmi = subprocess.Popen([sys.executable, "-m", "station.cli", "hmi", "-c", str(config)], env=env,
                               stdout=subprocess.DEVNULL, stderr=hmi_err, preexec_fn=_lower_priority)
        client = None
        try:
            _wait_http(f"http://127.0.0.1:{port}/healthz", 60, hmi)
            client = subprocess.Popen([sys.executable, "-m", "station.bench_hmi", f"http://127.0.0.1:{port}",
                                       "3600"], env=env, stdout=subprocess.DEVNULL, stderr=client_err)
            yield
        finally:
            if client is not None:
                _stop(client)
            _stop(hmi)
            client_err.flush()
            done = (folder / "client.stderr").read_text(encoding="utf-8", errors="replace").strip().splitlines()
            print(f"  HMI client requests: {done[-1] if done else 'none recorded'}", file=sys.stderr)


def _lower_priority() -> None:
    os.nice(HMI_NICE)  # the HMI unit's Nice=


def run_with_hmi(args: argparse.Namespace, loaded: LoadedConfig) -> int:
    from station.bench import bench_once

    rate = args.rate if args.rate is not None else loaded.config.line.max_parts_per_s
    frames = Path(args.frames) if args.frames else None
    runs: dict[str, list[dict]] = {"without HMI": [], "with HMI": []}
    for i in range(args.repeats):
        for label, companion in (("without HMI", None), ("with HMI", lambda d: hmi_and_client(loaded, d))):
            try:
                result = bench_once(loaded, parts=args.parts, frames=frames, keep_actuator=args.keep_actuator,
                                    rate=rate, keep_delay=True, companion=companion)
            except RuntimeError as exc:
                print(f"bench --with-hmi: {exc}", file=sys.stderr)
                return 1
            if result is None:
                return 2
            runs[label].append(result)
            print(f"repeat {i + 1}/{args.repeats} {label}: {result['parts']} parts", file=sys.stderr)
    print(format_side_by_side(runs, parts=args.parts, rate=rate, delay_ms=loaded.config.reject.delay_ms))
    return 0


def format_side_by_side(runs: dict[str, list[dict]], *, parts: int, rate: float, delay_ms: float) -> str:
    def med(label: str, stage: str, key: str) -> str:
        vals = [r["stages"][stage][key] for r in runs[label] if r["stages"][stage][key] is not None]
        return f"{statistics.median(vals):8.2f}" if vals else "     n/a"

    labels = list(runs)
    first = runs[labels[0]][0]
    lines = [f"station bench --with-hmi: {parts} parts x {len(runs[labels[0]])} repeat(s) per column at {rate:g} "
             f"parts/s, reject delay {delay_ms:g} ms, backend {first['backend']}; medians over repeats, ms",
             f"{'':<34}{labels[0]:^24}{labels[1]:^24}",
             f"{'stage':<34}" + f"{'p50':>8}{'p99':>8}{'max':>8}" * 2]
    for stage in first["stages"]:
        lines.append(f"{stage:<34}" + "".join(med(label, stage, key) for label in labels
                                             for key in ("p50", "p99", "max")))
    lines.append(f"{'parts/s':<34}" + "".join(
        f"{statistics.median(r['parts_per_s'] for r in runs[label]):24.2f}" for label in labels))
    return "\n".join(lines)


# ---- the polling client (a process of its own, like a browser) -----------------------------------------
def _poll(base: str, seconds: float) -> None:
    stop = threading.Event()
    counts = {"status": 0, "page": 0, "metrics": 0, "events": 0, "errors": 0}

    def events() -> None:
        try:
            with urllib.request.urlopen(base + "/live/events", timeout=30) as stream:
                while not stop.is_set():
                    if not stream.readline():
                        return
                    counts["events"] += 1
        except (urllib.error.URLError, OSError):
            counts["errors"] += 1

    reader = threading.Thread(target=events, name="sse-reader", daemon=True)
    reader.start()
    end = time.monotonic() + seconds
    try:
        _loop(base, end, counts)
    finally:
        stop.set()
        print(counts, file=sys.stderr)


def _loop(base: str, end: float, counts: dict[str, int]) -> None:
    tick = 0
    while time.monotonic() < end:
        for path, every, key in (("/api/status", 1, "status"), ("/live", 5, "page"), ("/metrics", 25, "metrics")):
            if tick % every == 0:
                try:
                    with urllib.request.urlopen(base + path, timeout=10) as r:
                        r.read()
                    counts[key] += 1
                except (urllib.error.URLError, OSError):
                    counts["errors"] += 1
        tick += 1
        time.sleep(0.2)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    _poll(sys.argv[1], float(sys.argv[2]))
