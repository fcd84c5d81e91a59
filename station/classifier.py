"""The classifier: a verified model artifact on CUDA or CPU, and the inference worker thread around it.

`Classifier` turns one station image into p_defect with the artifact's own preprocessing, through torch
(CUDA when present, else CPU) or, with `backend="onnxruntime"`, through ONNX Runtime on the CPU
(`station/ort_backend.py`; about half torch's time per image on a small CPU). The
`InferenceWorker` takes frames from the bounded queue and hands each prediction to the decision
module; an image the preprocessing rejects, or a model that raises, still produces a Prediction
(with `error`) so the part gets its fail-safe verdict instead of vanishing.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from pathlib import Path
from typing import Callable

import torch

from station.artifact import LoadedArtifact, ModelArtifactError, load_artifact
from station.config import ModelSection
from station.ort_backend import OnnxRuntimeRunner, softmax
from station.preprocess import FrameFormatError
from station.records import Frame, Prediction

log = logging.getLogger("station.classifier")

STOP = object()  # sentinel put on the frame queue by stop()


def select_device(preference: str) -> torch.device:
    if preference == "cuda":
        if not torch.cuda.is_available():
            raise ModelArtifactError("model.device is 'cuda' but no CUDA device is available")
        return torch.device("cuda")
    if preference == "auto" and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def resolve_backend(backend: str, device: str) -> str:
    """`auto`: torch where it runs on CUDA, else onnxruntime (about half torch's CPU time), else torch."""
    if backend not in ("torch", "onnxruntime", "auto"):
        raise ModelArtifactError(f"unknown inference backend {backend!r} (torch | onnxruntime | auto)")
    if backend != "auto":
        return backend
    if device != "cpu" and torch.cuda.is_available():
        return "torch"
    try:
        import onnxruntime  # noqa: F401  (only whether it imports)
    except ImportError:
        log.warning("model.backend auto: onnxruntime is not installed, inference runs on torch (CPU)")
        return "torch"
    return "onnxruntime"


class Classifier:
    """A loaded, verified model ready to score images."""

    def __init__(self, artifact: LoadedArtifact, *, device: str = "auto", warmup_runs: int = 3,
                 backend: str = "torch", threads: int | None = None) -> None:
        backend = resolve_backend(backend, device)
        if backend == "onnxruntime" and device == "cuda":
            raise ModelArtifactError("model.backend 'onnxruntime' runs on the CPU; use backend 'torch' for cuda")
        self.artifact = artifact
        self.backend = backend
        self.device = torch.device("cpu") if backend == "onnxruntime" else select_device(device)
        self.model = artifact.model.to(self.device).eval()
        self.preprocess = artifact.metadata.preprocess
        self.defective_index = artifact.metadata.defective_index
        self.model_id = artifact.model_id
        size = self.preprocess.input_size
        with torch.inference_mode():
            probe = self.model(torch.zeros(1, 3, size, size, device=self.device))
        if tuple(probe.shape) != (1, len(artifact.metadata.class_names)):
            raise ModelArtifactError(
                f"model output shape {tuple(probe.shape)} does not match {len(artifact.metadata.class_names)} classes")
        self.runner = None
        if backend == "onnxruntime":
            self.runner = OnnxRuntimeRunner(self.model, input_size=size, defective_index=self.defective_index,
                                            threads=threads)
        blank = torch.zeros(1, 3, size, size, device=self.device)
        for _ in range(warmup_runs):
            self._logits(blank)

    @classmethod
    def from_file(cls, path: Path | str, *, device: str = "auto", warmup_runs: int = 3, backend: str = "torch",
                  threads: int | None = None) -> Classifier:
        return cls(load_artifact(path), device=device, warmup_runs=warmup_runs, backend=backend, threads=threads)

    @classmethod
    def from_config(cls, model: ModelSection) -> Classifier:
        """The classifier a station YAML's `model:` section asks for."""
        return cls.from_file(model.path, device=model.device, warmup_runs=model.warmup_runs, backend=model.backend,
                             threads=model.threads)

    def describe(self) -> str:
        where = "onnxruntime on cpu" if self.backend == "onnxruntime" else f"torch on {self.device}"
        return f"{self.model_id} ({where})"

    @property
    def recommended_threshold(self) -> float:
        return self.artifact.metadata.recommended_threshold

    def predict(self, image) -> float:
        """p_defect for one image; raises FrameFormatError for an unusable image."""
        x = self.preprocess.to_tensor(image).unsqueeze(0).to(self.device)
        if self.runner is not None:
            return float(softmax(self.runner(x.numpy()))[0, self.defective_index])
        with torch.inference_mode():
            probs = torch.softmax(self.model(x).float(), dim=1)
        return float(probs[0, self.defective_index])

    def _logits(self, x: torch.Tensor):
        if self.runner is not None:
            return self.runner(x.cpu().numpy())
        with torch.inference_mode():
            return self.model(x)


class InferenceWorker(threading.Thread):
    """Scores frames from `frames` and calls `on_prediction(frame, prediction)` for each one."""

    def __init__(self, frames: queue.Queue, classifier: Classifier,
                 on_prediction: Callable[[Frame, Prediction], None], *, name: str = "inference") -> None:
        super().__init__(name=name, daemon=True)
        self.frames = frames
        self.classifier = classifier  # replaced as a whole on a model reload
        self.on_prediction = on_prediction
        self.stop_event = threading.Event()
        self.last_beat_ns = time.monotonic_ns()
        self.busy_since_ns: int | None = None
        self.scored = 0
        self.errors = 0

    def stop(self) -> None:
        self.stop_event.set()
        try:
            self.frames.put_nowait(STOP)
        except queue.Full:
            pass  # the loop still sees stop_event within its get() timeout

    def run(self) -> None:
        while True:
            self.last_beat_ns = time.monotonic_ns()
            try:
                item = self.frames.get(timeout=0.2)
            except queue.Empty:
                if self.stop_event.is_set():
                    return
                continue
            if item is STOP:
                # Drain what is still queued so every captured part is scored before we exit.
                if self.frames.empty():
                    return
                continue
            self.score(item)

    def score(self, frame: Frame) -> None:
        classifier = self.classifier
        start = time.perf_counter_ns()
        self.busy_since_ns = time.monotonic_ns()
        p_defect: float | None = None
        error: str | None = None
        try:
            p_defect = classifier.predict(frame.image)
        except FrameFormatError as exc:
            error = f"bad_frame: {exc}"
        except (RuntimeError, ValueError, TypeError) as exc:
            # torch raises RuntimeError for device/out-of-memory faults; the part fails safe.
            error = f"model_error: {exc}"
            log.error("inference failed on part %d: %s", frame.seq, exc)
        finally:
            self.busy_since_ns = None
        infer_ms = (time.perf_counter_ns() - start) / 1e6
        if error:
            self.errors += 1
        else:
            self.scored += 1
        self.on_prediction(frame, Prediction(seq=frame.seq, p_defect=p_defect, model_id=classifier.model_id,
                                             infer_ms=infer_ms, t_done_ns=time.monotonic_ns(), error=error))
