"""`python -m station.bench_ort`: ONNX Runtime thread-pool options side by side on the bare model.

How the station's session options were chosen (docs/performance.md): the same fp32 (or INT8) graph,
the same input, one session per option set, called at a line's pace (one call per 1/rate s), and for
each set the call latency and the CPU time the whole process spent per call (process_time: the calling
thread plus the intra-op pool's threads, spinning included). Spinning that goes on after a call
returns shows up as CPU per call far above the call's own latency x threads in use; it is CPU the
capture, scheduler and output threads then compete with on a small machine.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from station.health import percentiles

OPTION_SETS = {
    "spin (onnxruntime default)": {"session.intra_op.allow_spinning": "1"},
    "spin, stop at return (station)": {"session.intra_op.allow_spinning": "1", "session.force_spinning_stop": "1"},
    "no spinning": {"session.intra_op.allow_spinning": "0"},
}


def measure(graph: bytes, x: np.ndarray, *, entries: dict[str, str], threads: int, rate: float,
            calls: int) -> dict[str, float | None]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.inter_op_num_threads = 1
    opts.intra_op_num_threads = threads
    for key, value in entries.items():
        opts.add_session_config_entry(key, value)
    session = ort.InferenceSession(graph, opts, providers=["CPUExecutionProvider"])
    for _ in range(5):
        session.run(None, {"image": x})
    period = 1.0 / rate
    times: list[float] = []
    cpu0, wall0 = time.process_time(), time.perf_counter()
    next_call = wall0
    for _ in range(calls):
        pause = next_call - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
        next_call += period
        t0 = time.perf_counter_ns()
        session.run(None, {"image": x})
        times.append((time.perf_counter_ns() - t0) / 1e6)
    cpu = time.process_time() - cpu0
    wall = time.perf_counter() - wall0
    return {**percentiles(times), "cpu_ms_per_call": 1000 * cpu / calls, "cores_busy": cpu / wall}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m station.bench_ort", description=__doc__)
    p.add_argument("--model", default="models/impeller-resnet18.pt", help="model artifact")
    p.add_argument("--precision", choices=("fp32", "int8"), default="fp32")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads")
    p.add_argument("--rate", type=float, default=10.0, help="calls per second (the line's pace)")
    p.add_argument("--calls", type=int, default=100)
    args = p.parse_args(argv)
    if not args.rate > 0:
        p.error(f"--rate must be above 0 calls per second (got {args.rate:g})")
    if args.threads < 1 or args.calls < 1:
        p.error("--threads and --calls must be at least 1")
    from station.artifact import load_artifact
    from station.ort_backend import onnx_bytes

    art = load_artifact(args.model)
    size = art.metadata.preprocess.input_size
    if args.precision == "int8":
        if art.int8 is None:
            p.error(f"{args.model} carries no INT8 graph (python -m training quantize)")
        graph = art.int8.onnx
    else:
        graph = onnx_bytes(art.model, input_size=size)
    x = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
    print(f"{args.precision}, {args.threads} threads, {args.calls} calls at {args.rate:g}/s; latency ms, "
          f"process CPU per call ms, cores busy on average")
    print(f"{'options':<34}{'p50':>8}{'p99':>8}{'cpu/call':>10}{'cores':>7}")
    for name, entries in OPTION_SETS.items():
        r = measure(graph, x, entries=entries, threads=args.threads, rate=args.rate, calls=args.calls)
        print(f"{name:<34}{r['p50']:8.2f}{r['p99']:8.2f}{r['cpu_ms_per_call']:10.2f}{r['cores_busy']:7.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
