"""ONNX Runtime inference on the CPU (`model.backend: onnxruntime`).

The torch artifact stays the one source of truth: at start-up the verified torch model is exported to
ONNX in memory (batch 1, opset 17) with both outputs of one forward pass, `logits` and the pooled
`features` the validity gate scores, and handed to an ONNX Runtime session. Before the station accepts
the session, it scores probe images with both and refuses to run when their p_defect differ by more
than `MAX_PROBE_DIFF` or their features by more than `MAX_FEATURE_REL_DIFF`, so a faulty export or
runtime can never change a verdict or a gate decision unnoticed.
"""

from __future__ import annotations

import io
import logging
import warnings

import numpy as np
import torch
from torch import nn

from station.artifact import ModelArtifactError
from station.network import WithFeatures
from station.artifact_integrity import softmax

log = logging.getLogger(__name__)

MAX_PROBE_DIFF = 1e-4        # largest |p_defect(onnxruntime) - p_defect(torch)| accepted on the probes
MAX_FEATURE_REL_DIFF = 1e-3  # largest feature difference, relative to the feature vector's largest value


class OnnxRuntimeRunner:
    """(logits, features) for preprocessed images (N x 3 x S x S float32) through an ONNX Runtime CPU session."""

    def __init__(self, model: nn.Module, *, input_size: int, defective_index: int, threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise ModelArtifactError("model.backend is 'onnxruntime' but the onnxruntime package is not "
                                     "installed (pip install onnxruntime), or use backend: torch") from exc
        network = WithFeatures(model.float().cpu().eval()).eval()
        example = torch.zeros(1, 3, input_size, input_size)
        buffer = io.BytesIO()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
                torch.onnx.export(network, (example,), buffer, input_names=["image"],
                                  output_names=["logits", "features"], opset_version=17, dynamo=False)
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
        self.probe_diff = self._verify(network, input_size, defective_index)
        log.info("onnxruntime %s session ready (max |p_defect - torch| on probes %.2g)", ort.__version__,
                 self.probe_diff)

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if len(x) != 1:
            # The session is built for one frame at a time (the line's case); the reference check and
            # the tests score a few images: one run each, stacked.
            outs = [self(x[i:i + 1]) for i in range(len(x))]
            return np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs])
        try:
            logits, features = self.session.run(["logits", "features"], {"image": x})
        except Exception as exc:  # onnxruntime's errors derive from Exception only
            # RuntimeError is what the inference worker turns into a `model_error` fail-safe verdict.
            raise RuntimeError(f"onnxruntime: {exc}") from exc
        return logits, features

    def _verify(self, network: WithFeatures, input_size: int, defective_index: int) -> float:
        gen = torch.Generator().manual_seed(0)
        probes = [torch.zeros(1, 3, input_size, input_size)]
        probes += [torch.randn(1, 3, input_size, input_size, generator=gen) for _ in range(3)]
        worst = worst_feature = 0.0
        for x in probes:
            with torch.inference_mode():
                logits, features = network(x)
            expected = torch.softmax(logits.double(), dim=1)[0, defective_index].item()
            got_logits, got_features = self(x.numpy())
            worst = max(worst, abs(float(softmax(got_logits)[0, defective_index]) - expected))
            scale = max(float(features.abs().max()), 1e-6)
            worst_feature = max(worst_feature, float(np.abs(got_features - features.numpy()).max()) / scale)
        if not worst <= MAX_PROBE_DIFF:
            raise ModelArtifactError(f"onnxruntime and torch disagree on a probe image (p_defect differs by "
                                     f"{worst:.3g}, more than {MAX_PROBE_DIFF:g}); refusing backend onnxruntime")
        if not worst_feature <= MAX_FEATURE_REL_DIFF:
            raise ModelArtifactError(f"onnxruntime and torch disagree on a probe image's features (relative "
                                     f"difference {worst_feature:.3g}, more than {MAX_FEATURE_REL_DIFF:g}); "
                                     f"refusing backend onnxruntime")
        return worst
