"""`station bench`: replay N frames through the full pipeline and print per-stage latency and throughput.

Each repeat runs a fresh `Station` built from the YAML, with the camera swapped for the frames
(a folder, or frames the station renders itself) played as fast as the pipeline takes them
(sustained throughput) or at `--rate` parts/s (latency at line speed), every
part forced to a reject with zero ejector delay so the actuator command follows the verdict at
once: capture -> actuator command is then the true end-to-end latency. The validity gate (image checks,
novelty, limit comparison) runs inside the inference step and is also timed on its own. After each
repeat the same loaded model is timed bare on one frame of the run (`station.bench_bare`), back to back
and at the bench's pace, and the report prints the pipeline's overhead over it. Parts that would have
missed the YAML's decision deadline (the bench itself runs with a 60 s one, so nothing is forced to a
fail-safe verdict) and queue overruns are counted. The log goes to a temporary folder. Figures are
medians over the repeats of each run's p50/p99/max and parts/s.
`--actuator KIND` instead benchmarks the pulse timing of one actuator kind (station.cli_bench_actuator).
`--with-hmi` runs each repeat twice, without and with the operator HMI and a polling client beside the
station (station.bench_hmi), and prints both side by side.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from station.cli_run import load_or_report, replay_camera_config
from station.config_actuators import LogActuatorConfig
from station.config_cameras import SyntheticCameraConfig
from station.configfile import ConfigUse, LoadedConfig

if TYPE_CHECKING:
    from station.records import ActuationReport, Frame, Verdict


def add_bench_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("bench", help="measure pipeline latency and throughput (or actuator timing)")
    p.add_argument("-c", "--config", help="station YAML (model, queues, actuator)")
    p.add_argument("--frames", default=None, help="folder of images to replay (default: rendered frames)")
    p.add_argument("-n", "--parts", type=int, default=200, help="frames per repeat")
    p.add_argument("--repeats", type=int, default=3, help="runs; figures are medians over them")
    p.add_argument("--rate", type=float, default=None, metavar="PARTS_PER_S",
                   help="present parts at this pace (latency at line speed); default: as fast as the "
                        "pipeline takes them (sustained throughput)")
    p.add_argument("--backend", choices=("torch", "onnxruntime", "auto"), default=None,
                   help="inference backend to time (default: the YAML's model.backend)")
    p.add_argument("--model", default=None, metavar="PATH",
                   help="model artifact to time (default: the YAML's model.path)")
    p.add_argument("--precision", choices=("auto", "fp32", "fp16", "int8"), default=None,
                   help="model precision to time (default: the YAML's model.precision)")
    p.add_argument("--max-batch", type=int, default=None, metavar="N",
                   help="micro-batch limit to time (default: the YAML's model.max_batch; 1: no batching)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="inference workers to time (default: the YAML's model.workers)")
    p.add_argument("--cpu-latency-us", type=int, default=None, metavar="US",
                   help="hold the CPU wake-up latency at most US microseconds while the bench runs (Linux PM "
                        "QoS, /dev/cpu_dma_latency; 0: cores never halt between parts); needs write access "
                        "to the device (default: the host's setting)")
    p.add_argument("--keep-actuator", action="store_true",
                   help="use the YAML's reject actuator (default: the log actuator, to time the pipeline alone)")
    p.add_argument("--with-hmi", action="store_true",
                   help="compare each repeat without and with `station hmi` plus a client polling its pages, "
                        "event stream and /metrics (at line speed: --rate, default line.max_parts_per_s); "
                        "keeps the YAML's reject delay so pulse lateness is the real figure")
    from station.cli_bench_actuator import add_actuator_bench_arguments

    add_actuator_bench_arguments(p)  # --actuator KIND: pulse timing of one actuator instead
    return p


def run_bench(args: argparse.Namespace) -> int:
    if args.actuator:
        from station.cli_bench_actuator import run_bench_actuator

        return run_bench_actuator(args)
    if not args.config:
        print("bench: -c/--config is required for the pipeline benchmark", file=sys.stderr)
        return 2
    loaded = load_or_report(args.config, use=ConfigUse.BENCH)
    if loaded is None:
        return 2
    overrides = {k: v for k, v in (("backend", args.backend), ("precision", args.precision),
                                   ("max_batch", args.max_batch), ("workers", args.workers),
                                   ("path", Path(args.model).resolve() if args.model else None)) if v is not None}
    if overrides:
        model = loaded.config.model.model_copy(update=overrides)
        try:
            model = type(model).model_validate(model.model_dump())
        except ValueError as exc:
            print(f"bench: {' '.join(f'--{k.replace(chr(95), chr(45))} {v}' for k, v in overrides.items())}: "
                  f"{exc}", file=sys.stderr)
            return 2
        loaded = dataclasses.replace(loaded, config=loaded.config.model_copy(update={"model": model}))
    if args.cpu_latency_us is None:
        return _run_pipeline_bench(args, loaded)
    from station.cpu_latency import CpuLatencyError, hold_wakeup_latency

    with contextlib.ExitStack() as held:
        try:
            in_force = held.enter_context(hold_wakeup_latency(args.cpu_latency_us))
        except (CpuLatencyError, ValueError) as exc:
            print(f"bench: --cpu-latency-us {args.cpu_latency_us}: {exc}", file=sys.stderr)
            return 2
        print(f"CPU wake-up latency held at {args.cpu_latency_us} us while the bench runs "
              f"(PM QoS; in force: {in_force} us)")
        return _run_pipeline_bench(args, loaded)


def _run_pipeline_bench(args: argparse.Namespace, loaded: LoadedConfig) -> int:
    if args.with_hmi:
        from station.bench_hmi import run_with_hmi

        return run_with_hmi(args, loaded)
    runs = []
    for i in range(args.repeats):
        result = bench_once(loaded, parts=args.parts, frames=Path(args.frames) if args.frames else None,
                            keep_actuator=args.keep_actuator, rate=args.rate)
        if result is None:
            return 2
        runs.append(result)
        print(f"repeat {i + 1}/{args.repeats}: {result['parts_per_s']:.1f} parts/s", file=sys.stderr)
    print(format_bench(runs, parts=args.parts, rate=args.rate, backend=runs[0]["backend"],
                       deadline_ms=loaded.config.decision.deadline_ms))
    return 0


def bench_config(loaded: LoadedConfig, log_dir: Path, *, keep_actuator: bool, keep_delay: bool = False,
                 control_socket: Path | None = None) -> LoadedConfig:
    cfg = loaded.config
    # model_copy skips validation on purpose: zero delay and a 60 s deadline are bench-only settings.
    delay = {} if keep_delay else {"delay_ms": 0.0}
    reject = cfg.reject.model_copy(update={**delay, "pulse_ms": 1.0, "late_tolerance_ms": 1e9,
                                           **({} if keep_actuator else {"actuator": LogActuatorConfig()})})
    config = cfg.model_copy(update={
        "reject": reject,
        "alarm": cfg.alarm.model_copy(update={"actuator": None}),
        "decision": cfg.decision.model_copy(update={"threshold": 1e-12, "deadline_ms": 60_000.0}),
        # Every part is forced to a reject: a drift warning about the reject rate would only be noise.
        "gate": cfg.gate.model_copy(update={"drift": cfg.gate.drift.model_copy(update={"window_parts": 100_000})}),
        "tracelog": cfg.tracelog.model_copy(update={"dir": log_dir, "images": "none"}),
        "hmi": cfg.hmi.model_copy(update={"control_socket": control_socket}),
    })
    return LoadedConfig(config=config, path=loaded.path, sha256=loaded.sha256)


def bench_once(loaded: LoadedConfig, *, parts: int, frames: Path | None, keep_actuator: bool,
               rate: float | None = None, keep_delay: bool = False,
               companion: Callable[[Path], contextlib.AbstractContextManager] | None = None) -> dict | None:
    """One run. `companion(log_dir)`, when given, is entered before the station starts and left after it
    stopped (the HMI and its client for `--with-hmi`); the station then serves its live-state socket."""
    # The station (torch, the cameras) is imported here, not at the top: building the CLI stays light.
    from station.app import Station
    from station.cameras.replay import ReplayCamera
    from station.cameras.synthetic import SyntheticCamera
    from station.bench_bare import BACK_TO_BACK_CALLS, time_bare
    from station.health import percentiles
    from station.thread_cpu import cpu_by_thread, cpu_spent

    first_image: list = []
    verdicts: dict[int, Verdict] = {}
    reports: dict[int, ActuationReport] = {}
    lock = threading.Lock()

    def on_verdict(v: Verdict, f: Frame) -> None:
        with lock:
            verdicts[v.seq] = v
            if not first_image and f.image is not None:
                first_image.append(f.image)

    def on_report(r: ActuationReport) -> None:
        with lock:
            reports[r.seq] = r

    with tempfile.TemporaryDirectory(prefix="station-bench-") as tmp, contextlib.ExitStack() as beside:
        bl = bench_config(loaded, Path(tmp), keep_actuator=keep_actuator, keep_delay=keep_delay,
                          control_socket=Path(tmp) / "control.sock" if companion else None)
        if companion is not None:
            beside.enter_context(companion(Path(tmp)))
        if frames is not None:
            camera = ReplayCamera(replay_camera_config(bl, frames, rate=rate, fast=rate is None, limit=parts))
        else:
            camera = SyntheticCamera(SyntheticCameraConfig(rate_parts_per_s=rate, limit=parts, defect_ratio=0.5))
        station = Station(bl, camera=camera, on_verdict=on_verdict)
        station.report_listeners.append(on_report)
        from station.artifact import ModelArtifactError

        try:
            station.start()
        except ModelArtifactError as exc:
            print(f"bench: {exc}", file=sys.stderr)
            return None
        t0 = time.monotonic()
        cpu_start = cpu_by_thread()
        try:
            station.wait_source_finished(timeout_s=600)
            elapsed = time.monotonic() - t0
            cpu = cpu_spent(cpu_start, cpu_by_thread())  # before stop: the stage threads still exist
        finally:
            station.stop()
    # The station has stopped; its classifier (same session, threads, precision) is timed bare.
    bare = time_bare(station.classifier, first_image[0], rate=rate) if first_image else {}
    deadline_ms = loaded.config.decision.deadline_ms
    infer = [v.infer_ms for v in verdicts.values() if v.infer_ms is not None]
    decide = [v.decide_ms for v in verdicts.values()]
    e2e = [(r.fired_ns - verdicts[s].t_capture_ns) / 1e6 for s, r in reports.items()
           if r.fired_ns is not None and s in verdicts]
    command = [(r.fired_ns - verdicts[s].t_decided_ns) / 1e6 for s, r in reports.items()
               if r.fired_ns is not None and s in verdicts]
    queue_wait = [v.decide_ms - v.infer_ms for v in verdicts.values() if v.infer_ms is not None]
    gate = [v.gate.gate_ms for v in verdicts.values() if v.gate is not None]
    return {"parts": len(verdicts), "parts_per_s": len(verdicts) / elapsed if elapsed > 0 else 0.0,
            "backend": station.classifier.describe(), "bare": bare, "bare_calls": BACK_TO_BACK_CALLS,
            "cpu": cpu, "elapsed_s": elapsed,
            "batched": (sum(w.batches for w in station.inference_workers()),
                        sum(w.batched_frames for w in station.inference_workers())),
            "missed": sum(1 for v in verdicts.values() if v.decide_ms > deadline_ms),
            "overruns": sum(1 for v in verdicts.values() if v.reason.value in ("overrun", "timeout")),
            "image_check": sum(1 for v in verdicts.values() if v.gate is not None and not v.gate.passed),
            "stages": {"queue wait + decision": percentiles(queue_wait),
                       "inference (preprocess + model + gate)": percentiles(infer),
                       "  of which validity gate": percentiles(gate),
                       "capture -> verdict": percentiles(decide),
                       "verdict -> actuator command": percentiles(command),
                       "capture -> actuator command": percentiles(e2e),
                       "pulse lateness (fired - due)": percentiles(
                           [r.lateness_ms for r in reports.values() if r.lateness_ms is not None])}}


def format_bench(runs: list[dict], *, parts: int, rate: float | None = None, backend: str | None = None,
                 deadline_ms: float | None = None) -> str:
    def med(values: list[float | None]) -> str:
        vals = [v for v in values if v is not None]
        return f"{statistics.median(vals):8.2f}" if vals else "     n/a"

    pace = "as fast as possible" if rate is None else f"{rate:g} parts/s"
    on = f", model {backend}" if backend else ""
    lines = [f"station bench: {parts} parts x {len(runs)} repeat(s) at {pace}{on}; medians over repeats, ms",
             f"{'stage':<40}{'p50':>8}{'p99':>8}{'max':>8}"]
    for stage in runs[0]["stages"]:
        row = [run["stages"][stage] for run in runs]
        lines.append(f"{stage:<40}{med([r['p50'] for r in row])}{med([r['p99'] for r in row])}"
                     f"{med([r['max'] for r in row])}")
    lines.append(f"{'sustained parts/s':<40}{statistics.median(r['parts_per_s'] for r in runs):8.1f}")
    if deadline_ms is not None and "missed" in runs[0]:
        lines.append(f"parts over the YAML's {deadline_ms:g} ms deadline: {max(r['missed'] for r in runs)}; queue "
                     f"overruns/timeouts: {max(r['overruns'] for r in runs)} (worst repeat); micro-batches: "
                     f"{runs[0]['batched'][0]} holding {runs[0]['batched'][1]} parts in repeat 1")
    if runs[0]["stages"]["  of which validity gate"]["p50"] is None:
        lines.append("validity gate: OFF (format-1 model)")
    else:
        lines.append("validity gate: image checks + novelty + limit comparison, timed inside inference; "
                     f"{runs[0]['image_check']} of {runs[0]['parts']} parts outside the domain in repeat 1")
    if runs[0].get("bare"):
        from station.bench_bare import format_bare

        lines += format_bare(runs, rate=rate)
    from station.thread_cpu import format_cpu_per_part

    lines += format_cpu_per_part(runs)
    return "\n".join(lines)
