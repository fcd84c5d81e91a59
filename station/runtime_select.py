"""Which runtime scores the model: backend, device, precision and ONNX Runtime execution providers.

`resolve_runtime` turns the YAML's `model.backend`, `model.device` and `model.precision` into one
`Runtime`, from what this machine offers: whether torch sees a CUDA device, and which execution
providers the installed onnxruntime has (`onnxruntime-gpu` adds CUDA and TensorRT). `auto` prefers,
in order: onnxruntime on a GPU provider (TensorRT, then CUDA), torch on CUDA, onnxruntime on the CPU,
torch on the CPU; precision `auto` is fp32 everywhere (fp16, torch channels_last on CUDA or TensorRT
fp16 engines, only when `model.precision: fp16` asks for it: no GPU was available to validate it).
INT8 is the artifact's quantized graph on onnxruntime's CPU provider only: it was calibrated and
validated there. It is a pure function of its inputs, so the
selection is tested on machines without a GPU; a choice that cannot run here is a one-line
`ModelArtifactError` naming the key, never a silent fallback to something else.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from station.artifact import ModelArtifactError

log = logging.getLogger(__name__)

BACKENDS = ("torch", "onnxruntime", "auto")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "fp16", "int8")
CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"
TENSORRT_PROVIDER = "TensorrtExecutionProvider"


@dataclass(frozen=True)
class Runtime:
    """What runs the model: `backend` torch | onnxruntime, `device` cpu | cuda, `precision` fp32 | fp16 |
    int8, and for onnxruntime the execution providers in order of preference."""

    backend: str
    device: str
    precision: str
    providers: tuple[str, ...] = ()

    def describe(self) -> str:
        """`onnxruntime on cpu`, `onnxruntime on cpu, int8`, `torch on cuda, fp16` (fp32 is not named)."""
        where = self.device
        if self.backend == "onnxruntime" and self.providers != (CPU_PROVIDER,):
            where = "+".join(p.removesuffix("ExecutionProvider").lower() for p in self.providers if p != CPU_PROVIDER)
        return f"{self.backend} on {where}" + ("" if self.precision == "fp32" else f", {self.precision}")


def available_ort_providers() -> tuple[str, ...] | None:
    """The installed onnxruntime's execution providers, or None when onnxruntime does not import."""
    try:
        import onnxruntime
    except ImportError:
        return None
    return tuple(onnxruntime.get_available_providers())


def cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def resolve_runtime(backend: str, device: str, precision: str, *, cuda: bool,
                    ort_providers: Sequence[str] | None) -> Runtime:
    """The runtime for these settings on a machine where torch sees CUDA (`cuda`) and onnxruntime offers
    `ort_providers` (None: not installed). Raises ModelArtifactError for a choice that cannot run here."""
    if backend not in BACKENDS:
        raise ModelArtifactError(f"unknown inference backend {backend!r} ({' | '.join(BACKENDS)})")
    if device not in DEVICES:
        raise ModelArtifactError(f"unknown model.device {device!r} ({' | '.join(DEVICES)})")
    if precision not in PRECISIONS:
        raise ModelArtifactError(f"unknown model.precision {precision!r} ({' | '.join(PRECISIONS)})")
    providers = tuple(ort_providers) if ort_providers is not None else None
    gpu_providers = tuple(p for p in (TENSORRT_PROVIDER, CUDA_PROVIDER) if providers and p in providers)
    if precision == "int8":
        return _int8(backend, device, providers)
    if backend == "auto":
        if device != "cpu" and gpu_providers:
            return _ort_gpu(precision, gpu_providers)
        if device != "cpu" and cuda:
            return _torch_cuda(precision)
        if device == "cuda":
            raise ModelArtifactError("model.device is 'cuda' but neither torch nor onnxruntime sees a CUDA device")
        if precision == "fp16":
            raise ModelArtifactError("model.precision fp16 needs a CUDA device; this machine has none (use fp32 "
                                     "or int8 on the CPU)")
        if providers is None:
            log.warning("model.backend auto: onnxruntime is not installed, inference runs on torch (CPU)")
            return Runtime("torch", "cpu", "fp32")
        return Runtime("onnxruntime", "cpu", "fp32", (CPU_PROVIDER,))
    if backend == "torch":
        if device == "cuda" and not cuda:
            raise ModelArtifactError("model.device is 'cuda' but no CUDA device is available")
        if device != "cpu" and cuda:
            return _torch_cuda(precision)
        if precision == "fp16":
            raise ModelArtifactError("model.precision fp16 runs on CUDA only; torch runs on the CPU here "
                                     "(use fp32)")
        return Runtime("torch", "cpu", "fp32")
    if providers is None:
        raise ModelArtifactError("model.backend is 'onnxruntime' but the onnxruntime package is not installed "
                                 "(pip install onnxruntime), or use backend: torch")
    if device == "cuda" and not gpu_providers:
        raise ModelArtifactError(
            f"model.device is 'cuda' with backend onnxruntime, but this onnxruntime has no CUDA or TensorRT "
            f"provider (it has {', '.join(providers) or 'none'}): install onnxruntime-gpu (docs/performance.md), "
            f"or use backend torch on CUDA")
    if device != "cpu" and gpu_providers:
        return _ort_gpu(precision, gpu_providers)
    if precision == "fp16":
        raise ModelArtifactError("model.precision fp16 needs onnxruntime's TensorRT provider or torch on CUDA; "
                                 "onnxruntime runs on the CPU here (use fp32 or int8)")
    return Runtime("onnxruntime", "cpu", "fp32", (CPU_PROVIDER,))


def _int8(backend: str, device: str, providers: tuple[str, ...] | None) -> Runtime:
    if backend == "torch":
        raise ModelArtifactError("model.precision int8 runs on onnxruntime (the artifact's quantized graph); "
                                 "use backend onnxruntime or auto")
    if device == "cuda":
        raise ModelArtifactError("model.precision int8 runs on onnxruntime's CPU provider, where it was calibrated "
                                 "and validated; use device cpu or auto (or fp16 on CUDA)")
    if providers is None:
        raise ModelArtifactError("model.precision int8 needs onnxruntime (pip install onnxruntime)")
    return Runtime("onnxruntime", "cpu", "int8", (CPU_PROVIDER,))


def _torch_cuda(precision: str) -> Runtime:
    # fp16 only when asked: whether it reproduces the artifact's reference scores was never measured on a GPU.
    return Runtime("torch", "cuda", "fp16" if precision == "fp16" else "fp32")


def _ort_gpu(precision: str, gpu_providers: tuple[str, ...]) -> Runtime:
    if precision == "fp16" and TENSORRT_PROVIDER not in gpu_providers:
        raise ModelArtifactError("model.precision fp16 on onnxruntime needs the TensorRT provider (the CUDA provider "
                                 "runs the fp32 graph); use precision fp32 or auto, or backend torch")
    # TensorRT builds fp16 engines from the fp32 graph; the CUDA provider runs it as it is (fp32).
    fp16 = precision == "fp16" and TENSORRT_PROVIDER in gpu_providers
    return Runtime("onnxruntime", "cuda", "fp16" if fp16 else "fp32", (*gpu_providers, CPU_PROVIDER))
