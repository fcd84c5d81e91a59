"""The classifier: a verified model artifact on the runtime the YAML asks for, and the inference worker.

`Classifier` turns station images into p_defect with the artifact's own preprocessing, on the runtime
`station.runtime_select` resolves from `model.backend`, `model.device` and `model.precision`: torch on
the CPU, or on CUDA (fp32, or fp16 and channels_last when asked); ONNX Runtime on the CPU in fp32 (the model converted
at start, `station.ort_backend`) or INT8 (the quantized graph inside the artifact, `station.int8_model`),
or on a GPU provider with onnxruntime-gpu. Whatever runs it must first reproduce the artifact's
recorded reference results (and, for onnxruntime, agree with torch or fp32 on probe images). One
forward pass gives the logits and the pooled feature the validity gate's novelty is scored from
(`station.gate`); the image checks run beside it. The `InferenceWorker` takes frames from the bounded
queue, scores what is already waiting in one batch when the batch still ends before every part's
deadline (`station.microbatch`), and hands each prediction to the decision module; an image the
preprocessing rejects, or a model that raises, still produces a Prediction (with its typed `failure`)
so the part gets its fail-safe verdict instead of vanishing.
"""

from __future__ import annotations

import copy
import logging
import queue
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from station.artifact import LoadedArtifact, ModelArtifactError, load_artifact
from station.artifact_integrity import ReferenceMismatch, compare_references, score_references, softmax
from station.config import ModelSection
from station.gate import Gate
from station.image_checks import ImageChecks
from station.int8_model import Int8Error, check_int8, int8_domain
from station.microbatch import BatchPlanner
from station.network import WithFeatures
from station.ort_backend import OnnxRuntimeRunner, onnx_bytes, physical_cores, verify_against_torch
from station.preprocess import FrameFormatError
from station.records import Frame, GateResult, Prediction, Reason
from station.runtime_select import CPU_PROVIDER, Runtime, available_ort_providers, cuda_available, resolve_runtime
from station.stage import IDLE_WAIT_S, STOP, Stage
from station.thread_cpu import name_threads_started_by

log = logging.getLogger(__name__)


def resolve_backend(backend: str, device: str) -> str:
    """The backend `auto` and friends resolve to on this machine (fp32); see `station.runtime_select`."""
    return resolve_runtime(backend, device, "auto", cuda=cuda_available(),
                           ort_providers=available_ort_providers()).backend


def worker_threads(model: ModelSection) -> int | None:
    """CPU threads for each inference worker's runtime: `model.threads` when set; with several workers and
    no setting, the cores shared out between them (one runtime per core on a 2-core CPU with 2 workers)."""
    if model.threads is not None or model.workers == 1:
        return model.threads
    return max(1, physical_cores() // model.workers)


@dataclass(frozen=True)
class Assessment:
    """One image scored: p_defect, and (with a validity domain) every gate measure incl. novelty."""

    p_defect: float
    measures: dict[str, float] | None  # None: the model has no validity domain (format 1)
    measure_ms: float = 0.0            # image checks + novelty, the gate's own cost


class Classifier:
    """A loaded, verified model ready to score images (and to measure them for the validity gate).

    It keeps work arrays between calls (the batch buffer, the image checks' arrays): one thread at a time
    scores with it, the inference worker that owns it."""

    def __init__(self, artifact: LoadedArtifact, *, device: str = "auto", warmup_runs: int = 3,
                 backend: str = "torch", threads: int | None = None, precision: str = "auto",
                 max_batch: int = 1) -> None:
        self.runtime: Runtime = resolve_runtime(backend, device, precision, cuda=cuda_available(),
                                                ort_providers=available_ort_providers())
        self.artifact = artifact
        self.backend = self.runtime.backend
        self.precision = self.runtime.precision
        on_torch_cuda = self.backend == "torch" and self.runtime.device == "cuda"
        self.device = torch.device("cuda" if on_torch_cuda else "cpu")
        # The artifact's network stays fp32 on the CPU: the reference for the onnxruntime checks.
        self.model = copy.deepcopy(artifact.model).to(self.device).eval() if on_torch_cuda else artifact.model.eval()
        self.half = on_torch_cuda and self.precision == "fp16"
        if self.half:
            self.model = self.model.half().to(memory_format=torch.channels_last)
        self.network = WithFeatures(self.model).eval()
        self.preprocess = artifact.metadata.preprocess
        self.defective_index = artifact.metadata.defective_index
        self.model_id = artifact.model_id
        self.domain = artifact.validity
        self.checks = ImageChecks()
        self.int8 = None
        size = self.preprocess.input_size
        self.runner: OnnxRuntimeRunner | None = None
        # torch starts its intra-op threads on its first parallel operation; ONNX Runtime's session names
        # its own pool "ort-pool" (station.thread_cpu: the names `top -H` and `station bench` show).
        with name_threads_started_by("torch-pool"):
            if self.backend == "onnxruntime":
                self.runner = self._ort_runner(artifact, threads, device)
            logits, _ = self.forward(np.zeros((1, 3, size, size), dtype=np.float32))
        if logits.shape != (1, len(artifact.metadata.class_names)):
            raise ModelArtifactError(
                f"model output shape {logits.shape} does not match {len(artifact.metadata.class_names)} classes")
        self._check_references()
        self.max_batch = max(1, int(max_batch))
        self._batch = np.empty((self.max_batch, 3, size, size), dtype=np.float32)
        self.planner = BatchPlanner(self.max_batch)
        self._warm_up(warmup_runs)

    def _ort_runner(self, artifact: LoadedArtifact, threads: int | None, device: str) -> OnnxRuntimeRunner:
        size = self.preprocess.input_size
        if self.precision == "int8":
            if artifact.int8 is None:
                raise ModelArtifactError(
                    f"model {artifact.model_id} carries no INT8 graph (model.precision: int8); add one with "
                    f"`python -m training quantize --model {artifact.path} --data DATA --out NEW.pt`, or use fp32")
            self.int8 = artifact.int8
            return OnnxRuntimeRunner(artifact.int8.onnx, providers=self.runtime.providers, threads=threads,
                                     what="INT8")
        runner = OnnxRuntimeRunner(onnx_bytes(artifact.model, input_size=size), providers=self.runtime.providers,
                                   threads=threads, fp16=self.precision == "fp16", what="fp32")
        if self.runtime.device == "cuda" and set(runner.providers) <= {CPU_PROVIDER}:
            # onnxruntime-gpu lists its GPU providers even where no GPU (or no CUDA library) loads; the
            # session then quietly runs on the CPU. Asked for cuda: refuse; auto: say so and go on on the CPU.
            if device == "cuda":
                raise ModelArtifactError("model.device is 'cuda' but onnxruntime's GPU providers did not load "
                                         f"(session has {', '.join(runner.providers)}): check the CUDA/TensorRT "
                                         "libraries onnxruntime-gpu needs, or use device cpu")
            log.warning("onnxruntime GPU providers did not load; inference runs on onnxruntime's CPU provider")
            self.runtime = Runtime("onnxruntime", "cpu", "fp32", (CPU_PROVIDER,))
            self.precision = "fp32"
        diff = verify_against_torch(runner, artifact.model, input_size=size, defective_index=self.defective_index)
        log.info("onnxruntime session on %s ready (max |p_defect - torch| on probes %.2g)",
                 ", ".join(runner.providers), diff)
        return runner

    def _check_references(self) -> None:
        """The recorded reference results must come out of this runtime on this machine too."""
        art = self.artifact
        if self.domain is None or art.reference_images is None:
            return
        got = score_references(art.reference_images, forward=self.forward, preprocess=self.preprocess,
                               novelty=self.domain.novelty, defective_index=self.defective_index)
        try:
            if self.int8 is not None:
                worst = check_int8(self.int8, int8_scores=got, fp32_scores=art.reference_scores, domain=self.domain)
                log.info("INT8 graph agrees with fp32 on the probes (p_defect within %.3g, novelty within %.1f%%)",
                         worst["p_defect_abs"], 100 * worst["novelty_rel"])
                self.domain = int8_domain(self.domain, self.int8)
            else:
                compare_references(art.reference_scores, got)
        except (ReferenceMismatch, Int8Error) as exc:
            raise ModelArtifactError(f"model {self.model_id} fails its reference check on {self.describe()}: "
                                     f"{exc}") from exc

    def _warm_up(self, runs: int) -> None:
        """Run every batch size a few times: first calls allocate and plan; the batch planner starts from
        these times."""
        for n in range(1, self.max_batch + 1):
            for _ in range(max(runs, 1 if self.max_batch > 1 else 0)):
                self._batch[:n] = 0.0
                t0 = time.perf_counter_ns()
                self.forward(self._batch[:n])
                self.planner.observe(n, (time.perf_counter_ns() - t0) / 1e6)

    @classmethod
    def from_file(cls, path: Path | str, *, device: str = "auto", warmup_runs: int = 3, backend: str = "torch",
                  threads: int | None = None, precision: str = "auto", max_batch: int = 1) -> Classifier:
        return cls(load_artifact(path), device=device, warmup_runs=warmup_runs, backend=backend, threads=threads,
                   precision=precision, max_batch=max_batch)

    @classmethod
    def from_config(cls, model: ModelSection) -> Classifier:
        """The classifier a station YAML's `model:` section asks for (one per inference worker)."""
        return cls.from_file(model.path, device=model.device, warmup_runs=model.warmup_runs, backend=model.backend,
                             threads=worker_threads(model), precision=model.precision, max_batch=model.max_batch)

    def describe(self) -> str:
        return f"{self.model_id} ({self.runtime.describe()})"

    @property
    def recommended_threshold(self) -> float:
        return self.artifact.metadata.recommended_threshold

    def forward(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(logits, features) of a normalised batch (N x 3 x S x S float32) from one forward pass."""
        if self.runner is not None:
            return self.runner(batch)
        with torch.inference_mode():
            x = torch.from_numpy(batch).to(self.device, non_blocking=True)
            if self.half:
                x = x.half().contiguous(memory_format=torch.channels_last)
            logits, features = self.network(x)
        return logits.float().cpu().numpy(), features.float().cpu().numpy()

    def assess(self, image: np.ndarray) -> Assessment:
        """p_defect and the gate measures of one station image; raises FrameFormatError for an unusable image."""
        result = self.assess_batch([image])[0]
        if isinstance(result, FrameFormatError):
            raise result
        return result

    def assess_batch(self, images: list[np.ndarray]) -> list[Assessment | FrameFormatError]:
        """Each image scored (one forward pass for all usable ones), or the FrameFormatError that makes it
        unusable. At most `max_batch` images (the batch buffer's size)."""
        if len(images) > self.max_batch:
            raise ValueError(f"{len(images)} images for a batch of at most {self.max_batch}")
        results: list[Assessment | FrameFormatError | None] = [None] * len(images)
        rows: list[int] = []
        measures: list[dict[str, float] | None] = []
        measure_ns: list[int] = []
        for i, image in enumerate(images):
            try:
                pixels = self.preprocess.model_pixels(image)
            except FrameFormatError as exc:
                results[i] = exc
                continue
            t0 = time.perf_counter_ns()
            # Measured before the network runs: right after a run, the inference library's worker threads
            # may still be busy on the cores, and these few numpy passes would wait for them.
            measures.append(self.checks.measure(pixels) if self.domain is not None else None)
            measure_ns.append(time.perf_counter_ns() - t0)
            self.preprocess.normalize(pixels, out=self._batch[len(rows)])
            rows.append(i)
        if rows:
            logits, features = self.forward(self._batch[:len(rows)])
            p_defect = softmax(logits)[:, self.defective_index]
            novelty = None
            if self.domain is not None:
                t0 = time.perf_counter_ns()
                novelty = self.domain.novelty.score(features)
                if self.int8 is not None:
                    novelty = novelty * self.int8.novelty_scale  # onto the fp32 limit's side (int8_model)
                share_ns = (time.perf_counter_ns() - t0) // len(rows)
            for k, i in enumerate(rows):
                m = measures[k]
                if m is None or novelty is None:
                    results[i] = Assessment(p_defect=float(p_defect[k]), measures=None)
                    continue
                m["novelty"] = float(novelty[k])
                results[i] = Assessment(p_defect=float(p_defect[k]), measures=m,
                                        measure_ms=(measure_ns[k] + share_ns) / 1e6)
        return results  # type: ignore[return-value]

    def predict(self, image: np.ndarray) -> float:
        """p_defect for one image; raises FrameFormatError for an unusable image."""
        return self.assess(image).p_defect


class InferenceWorker(Stage):
    """Scores frames from `frames`, checks them against the validity gate and calls
    `on_prediction(frame, prediction)` for each one."""

    busy_doing = "scoring one frame"

    def __init__(self, frames: queue.Queue, classifier: Classifier,
                 on_prediction: Callable[[Frame, Prediction], None], *, gate: Gate | None = None,
                 name: str = "inference", deadline_ns: Callable[[Frame], int] | None = None) -> None:
        super().__init__(name, inbox=frames)
        self.frames = frames
        # Classifier and gate are swapped together (model reload): one tuple, read once per frame.
        self._scoring: tuple[Classifier, Gate | None] = (classifier, gate)
        self.on_prediction = on_prediction
        self.scored = 0
        self.errors = 0
        # Micro-batching (station.microbatch): a part's deadline bounds the batch it may join; without it,
        # one frame at a time.
        self.deadline_ns = deadline_ns
        self.batches = 0          # forward passes that scored more than one frame
        self.batched_frames = 0   # frames scored in them

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
        self.batches, self.batched_frames = old.batches, old.batched_frames

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
        """Score `frame`, together with the frames already queued behind it that fit its batch."""
        pending: Frame | None = frame
        while pending is not None:
            classifier, gate = self._scoring
            batch, pending = self._gather(pending, classifier)
            self._score_batch(batch, classifier, gate)

    def _gather(self, first: Frame, classifier: Classifier) -> tuple[list[Frame], Frame | None]:
        """`first` and the queued frames that join its batch; the frame taken that did not fit comes back
        as the next batch's first (it is never put back: the queue order is the parts' order)."""
        batch = [first]
        if self.deadline_ns is None or classifier.max_batch == 1:
            return batch, None
        earliest = self.deadline_ns(first)
        while len(batch) < classifier.max_batch:
            try:
                item = self.frames.get_nowait()
            except queue.Empty:
                break
            if item is STOP:
                try:
                    self.frames.put_nowait(STOP)  # run() sees it after this batch and drains the rest
                except queue.Full:
                    pass  # run() still sees stop_event within its get() timeout
                break
            deadline = min(earliest, self.deadline_ns(item))
            if not classifier.planner.fits(len(batch) + 1, now_ns=time.monotonic_ns(), earliest_deadline_ns=deadline):
                return batch, item
            batch.append(item)
            earliest = deadline
        return batch, None

    def _score_batch(self, frames: list[Frame], classifier: Classifier, gate: Gate | None) -> None:
        start = time.perf_counter_ns()
        self.busy_since_ns = time.monotonic_ns()
        outcomes: list[tuple[float | None, Reason | None, str | None, GateResult | None]] = []
        try:
            if len(frames) == 1:
                # One frame: through `assess` (the single-image entry point, where tests inject faults).
                try:
                    results: list = [classifier.assess(frames[0].image)]
                except FrameFormatError as exc:
                    results = [exc]
            else:
                results = classifier.assess_batch([f.image for f in frames])
            for result in results:
                if isinstance(result, FrameFormatError):
                    outcomes.append((None, Reason.BAD_FRAME, str(result), None))
                    continue
                checked = None
                if gate is not None and result.measures is not None:
                    checked = gate.check(result.measures, spent_ms=result.measure_ms)
                outcomes.append((result.p_defect, None, None, checked))
        except (RuntimeError, ValueError, TypeError) as exc:
            # torch raises RuntimeError for device/out-of-memory faults; every part of the batch fails safe.
            outcomes = [(None, Reason.MODEL_ERROR, str(exc), None)] * len(frames)
            log.error("inference failed on part(s) %s: %s", ", ".join(str(f.seq) for f in frames), exc)
        finally:
            self.busy_since_ns = None
        infer_ms = (time.perf_counter_ns() - start) / 1e6
        if len(frames) > 1:
            self.batches += 1
            self.batched_frames += len(frames)
        if outcomes[0][1] is not Reason.MODEL_ERROR:
            classifier.planner.observe(len(frames), infer_ms)
        done_ns = time.monotonic_ns()
        for frame, (p_defect, failure, error, checked) in zip(frames, outcomes):
            if failure is not None:
                self.errors += 1
            else:
                self.scored += 1
            self.on_prediction(frame, Prediction(seq=frame.seq, p_defect=p_defect, model_id=classifier.model_id,
                                                 infer_ms=infer_ms, t_done_ns=done_ns, failure=failure,
                                                 error=error, gate=checked))
