"""ONNX Runtime inference on the CPU (`model.backend: onnxruntime`).

The torch artifact stays the one source of truth: at start-up the verified torch model is exported to
ONNX in memory (batch 1, opset 17) and handed to an ONNX Runtime session. Before the station accepts
the session, it scores probe images with both and refuses to run when their p_defect differ by more
than `MAX_PROBE_DIFF`, so a faulty export or runtime can never change a verdict unnoticed.
"""

from __future__ import annotations

import io
import logging
import warnings

import numpy as np
import torch
from torch import nn

from station.artifact import ModelArtifactError

log = logging.getLogger("station.classifier")

MAX_PROBE_DIFF = 1e-4  # largest |p_defect(onnxruntime) - p_defect(torch)| accepted on the probes


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class OnnxRuntimeRunner:
    """Logits for one preprocessed image (1x3xSxS float32) through an ONNX Runtime CPU session."""

    def __init__(self, model: nn.Module, *, input_size: int, defective_index: int, threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise ModelArtifactError("model.backend is 'onnxruntime' but the onnxruntime package is not "
                                     "installed (pip install onnxruntime), or use backend: torch") from exc
        model = model.float().cpu().eval()
        example = torch.zeros(1, 3, input_size, input_size)
        buffer = io.BytesIO()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
                torch.onnx.export(model, (example,), buffer, input_names=["image"], output_names=["logits"],
                                  opset_version=17, dynamo=False)
        except (RuntimeError, ValueError, TypeError, ImportError) as exc:
            raise ModelArtifactError(f"the model could not be converted for onnxruntime: {exc}") from exc
        options = ort.SessionOptions()
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.inter_op_num_threads = 1
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for a model it cannot run
            raise ModelArtifactError(f"onnxruntime could not load the converted model: {exc}") from exc
        self.probe_diff = self._verify(model, input_size, defective_index)
        log.info("onnxruntime %s session ready (max |p_defect - torch| on probes %.2g)", ort.__version__,
                 self.probe_diff)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        try:
            return self.session.run(["logits"], {"image": x})[0]
        except Exception as exc:  # onnxruntime's errors derive from Exception only
            # RuntimeError is what the inference worker turns into a `model_error` fail-safe verdict.
            raise RuntimeError(f"onnxruntime: {exc}") from exc

    def _verify(self, model: nn.Module, input_size: int, defective_index: int) -> float:
        gen = torch.Generator().manual_seed(0)
        probes = [torch.zeros(1, 3, input_size, input_size)]
        probes += [torch.randn(1, 3, input_size, input_size, generator=gen) for _ in range(3)]
        worst = 0.0
        for x in probes:
            with torch.inference_mode():
                expected = torch.softmax(model(x).double(), dim=1)[0, defective_index].item()
            got = float(softmax(self(x.numpy()))[0, defective_index])
            worst = max(worst, abs(got - expected))
        if not worst <= MAX_PROBE_DIFF:
            raise ModelArtifactError(f"onnxruntime and torch disagree on a probe image (p_defect differs by "
                                     f"{worst:.3g}, more than {MAX_PROBE_DIFF:g}); refusing backend onnxruntime")
        return worst
