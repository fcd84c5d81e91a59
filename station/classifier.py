"""The classifier: a verified model artifact on CUDA or CPU, and the inference worker thread around it.

`Classifier` turns one station image into p_defect with the artifact's own preprocessing, through torch
(CUDA when present, else CPU) or, with `backend="onnxruntime"`, through ONNX Runtime on the CPU
(`station/ort_backend.py`; about half torch's time per image on a small CPU). The
`InferenceWorker` takes frames from the bounded queue, checks each against the validity gate (the
image checks and the novelty of the same forward pass's pooled feature, `station.gate`) and hands the
prediction to the decision module; an image the preprocessing rejects, or a model that raises, still
produces a Prediction (with its typed `failure`) so the part gets its fail-safe verdict instead of
vanishing.
"""

from __future__ import annotations

import logging
import queue
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from station.artifact import LoadedArtifact, ModelArtifactError, load_artifact
from station.config import ModelSection
from station.gate import Gate
from station.image_checks import ImageChecks
from station.network import WithFeatures
from station.ort_backend import OnnxRuntimeRunner
from station.preprocess import FrameFormatError
from station.records import Frame, GateResult, Prediction, Reason
from station.artifact_integrity import ReferenceMismatch, compare_references, score_references, softmax
from station.stage import IDLE_WAIT_S, STOP, Stage

log = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class Assessment:
    """One image scored: p_defect, and (with a validity domain) every gate measure incl. novelty."""

    p_defect: float
    measures: dict[str, float] | None  # None: the model has no validity domain (format 1)
    measure_ms: float = 0.0            # image checks + novelty, the gate's own cost


class Classifier:
    """A loaded, verified model ready to score images (and to measure them for the validity gate)."""

    def __init__(self, artifact: LoadedArtifact, *, device: str = "auto", warmup_runs: int = 3,
                 backend: str = "torch", threads: int | None = None) -> None:
        backend = resolve_backend(backend, device)
        if backend == "onnxruntime" and device == "cuda":
            raise ModelArtifactError("model.backend 'onnxruntime' runs on the CPU; use backend 'torch' for cuda")
        self.artifact = artifact
        self.backend = backend
        self.device = torch.device("cpu") if backend == "onnxruntime" else select_device(device)
        self.model = artifact.model.to(self.device).eval()
        self.network = WithFeatures(self.model).eval()
        self.preprocess = artifact.metadata.preprocess
        self.defective_index = artifact.metadata.defective_index
        self.model_id = artifact.model_id
        self.domain = artifact.validity
        self.checks = ImageChecks()
        size = self.preprocess.input_size
        with torch.inference_mode():
            probe, _ = self.network(torch.zeros(1, 3, size, size, device=self.device))
        if tuple(probe.shape) != (1, len(artifact.metadata.class_names)):
            raise ModelArtifactError(
                f"model output shape {tuple(probe.shape)} does not match {len(artifact.metadata.class_names)} classes")
        self.runner = None
        if backend == "onnxruntime":
            self.runner = OnnxRuntimeRunner(self.model, input_size=size, defective_index=self.defective_index,
                                            threads=threads)
        if self.domain is not None and artifact.reference_images is not None:
            # The recorded reference scores must come out of this backend on this device too.
            try:
                compare_references(artifact.reference_scores, score_references(
                    artifact.reference_images, forward=self.forward, preprocess=self.preprocess,
                    novelty=self.domain.novelty, defective_index=self.defective_index))
            except ReferenceMismatch as exc:
                raise ModelArtifactError(f"model {self.model_id} fails its reference check on "
                                         f"{self.describe()}: {exc}") from exc
        blank = np.zeros((1, 3, size, size), dtype=np.float32)
        for _ in range(warmup_runs):
            self.forward(blank)

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

    def forward(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(logits, features) of a normalised batch (N x 3 x S x S float32) from one forward pass."""
        if self.runner is not None:
            return self.runner(batch)
        with torch.inference_mode():
            logits, features = self.network(torch.from_numpy(batch).to(self.device))
        return logits.float().cpu().numpy(), features.float().cpu().numpy()

    def assess(self, image: np.ndarray) -> Assessment:
        """p_defect and the gate measures of one station image; raises FrameFormatError for an unusable image."""
        pixels = self.preprocess.model_pixels(image)
        measures = None
        measure_ns = 0
        if self.domain is not None:
            # Measured before the network runs: right after a run, the inference library's worker threads
            # may still be spinning on the cores, and these few numpy passes would wait for them.
            t0 = time.perf_counter_ns()
            measures = self.checks.measure(pixels)
            measure_ns = time.perf_counter_ns() - t0
        logits, features = self.forward(self.preprocess.normalize(pixels)[None])
        p_defect = float(softmax(logits)[0, self.defective_index])
        if measures is None:
            return Assessment(p_defect=p_defect, measures=None)
        t0 = time.perf_counter_ns()
        measures["novelty"] = float(self.domain.novelty.score(features)[0])
        measure_ns += time.perf_counter_ns() - t0
        return Assessment(p_defect=p_defect, measures=measures, measure_ms=measure_ns / 1e6)

    def predict(self, image: np.ndarray) -> float:
        """p_defect for one image; raises FrameFormatError for an unusable image."""
        return self.assess(image).p_defect


class InferenceWorker(Stage):
    """Scores frames from `frames`, checks them against the validity gate and calls
    `on_prediction(frame, prediction)` for each one."""

    busy_doing = "scoring one frame"

    def __init__(self, frames: queue.Queue, classifier: Classifier,
                 on_prediction: Callable[[Frame, Prediction], None], *, gate: Gate | None = None,
                 name: str = "inference") -> None:
        super().__init__(name, inbox=frames)
        self.frames = frames
        # Classifier and gate are swapped together (model reload): one tuple, read once per frame.
        self._scoring: tuple[Classifier, Gate | None] = (classifier, gate)
        self.on_prediction = on_prediction
        self.scored = 0
        self.errors = 0

    @property
    def classifier(self) -> Classifier:
        return self._scoring[0]

    @property
    def gate(self) -> Gate | None:
        return self._scoring[1]

    def use(self, classifier: Classifier, gate: Gate | None) -> None:
        """Score from the next frame on with this classifier and gate (a live reload)."""
        self._scoring = (classifier, gate)

    def adopt(self, old: Stage) -> None:
        """Score with the dead worker's classifier and gate and go on counting. The part it was scoring is
        still pending: the deadline watch gives it its fail-safe verdict."""
        assert isinstance(old, InferenceWorker)
        self._scoring = old._scoring
        self.scored, self.errors = old.scored, old.errors

    def step(self) -> bool:
        try:
            item = self.frames.get(timeout=IDLE_WAIT_S)
        except queue.Empty:
            return not self.stop_event.is_set()
        if item is STOP:
            # Drain what is still queued so every captured part is scored before the thread ends.
            return not self.frames.empty()
        self.score(item)
        return True

    def score(self, frame: Frame) -> None:
        classifier, gate = self._scoring
        start = time.perf_counter_ns()
        self.busy_since_ns = time.monotonic_ns()
        p_defect: float | None = None
        failure: Reason | None = None
        error: str | None = None
        result: GateResult | None = None
        try:
            assessment = classifier.assess(frame.image)
            p_defect = assessment.p_defect
            if gate is not None and assessment.measures is not None:
                result = gate.check(assessment.measures, spent_ms=assessment.measure_ms)
        except FrameFormatError as exc:
            failure, error = Reason.BAD_FRAME, str(exc)
        except (RuntimeError, ValueError, TypeError) as exc:
            # torch raises RuntimeError for device/out-of-memory faults; the part fails safe.
            failure, error = Reason.MODEL_ERROR, str(exc)
            log.error("inference failed on part %d: %s", frame.seq, exc)
        finally:
            self.busy_since_ns = None
        infer_ms = (time.perf_counter_ns() - start) / 1e6
        if failure is not None:
            self.errors += 1
        else:
            self.scored += 1
        self.on_prediction(frame, Prediction(seq=frame.seq, p_defect=p_defect, model_id=classifier.model_id,
                                             infer_ms=infer_ms, t_done_ns=time.monotonic_ns(), failure=failure,
                                             error=error, gate=result))
