"""ONNX Runtime inference (`model.backend: onnxruntime`): the session, its options, and the fp32 check.

The torch artifact stays the one source of truth: for fp32, the verified torch model is exported to
ONNX in memory at start-up (`onnx_bytes`: opset 17, a dynamic batch axis for micro-batching, and both
outputs of one forward pass, `logits` and the pooled `features` the validity gate scores); for INT8,
the quantized graph stored inside the sealed artifact is used (`station.int8_model`). Before the
station accepts an fp32 session it scores probe images with torch and with the session and refuses to
run when their p_defect differ by more than `MAX_PROBE_DIFF` or their features by more than
`MAX_FEATURE_REL_DIFF`, so a faulty export or runtime can never change a verdict unnoticed.

The session options are chosen for a line that scores one part at a time with idle gaps between parts,
on a CPU it shares with the station's other threads (docs/performance.md has the measurements): the
intra-op thread pool spins while a run is in progress (waking a sleeping worker for each of ResNet-18's
twenty-odd parallel layers costs more than the layer) but stops spinning the moment the run returns
(`session.force_spinning_stop`), instead of burning a core for milliseconds after every part, which
the capture, scheduler and output threads then have to fight for.
"""

from __future__ import annotations

import io
import logging
import os
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from station.artifact import ModelArtifactError
from station.artifact_integrity import softmax
from station.network import WithFeatures
from station.runtime_select import CPU_PROVIDER, TENSORRT_PROVIDER
from station.thread_cpu import name_threads_started_by

log = logging.getLogger(__name__)

MAX_PROBE_DIFF = 1e-4        # largest |p_defect(onnxruntime) - p_defect(torch)| accepted on the probes
MAX_FEATURE_REL_DIFF = 1e-3  # largest feature difference, relative to the feature vector's largest value
OPSET = 17


def onnx_bytes(model: nn.Module, *, input_size: int) -> bytes:
    """The network as an ONNX graph (fp32, dynamic batch, outputs `logits` and `features`)."""
    network = WithFeatures(model.float().cpu().eval()).eval()
    example = torch.zeros(1, 3, input_size, input_size)
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
            torch.onnx.export(network, (example,), buffer, input_names=["image"],
                              output_names=["logits", "features"], opset_version=OPSET, dynamo=False,
                              dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}, "features": {0: "batch"}})
    except (RuntimeError, ValueError, TypeError, ImportError) as exc:
        raise ModelArtifactError(f"the model could not be converted for onnxruntime: {exc}") from exc
    return buffer.getvalue()


def physical_cores() -> int:
    """Cores this process may run on (its affinity mask), at least 1."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def session_options(threads: int | None):
    """ONNX Runtime session options for the station (see the module docstring for why)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.inter_op_num_threads = 1
    options.intra_op_num_threads = threads or physical_cores()
    options.add_session_config_entry("session.intra_op.allow_spinning", "1")
    options.add_session_config_entry("session.force_spinning_stop", "1")
    return options


class OnnxRuntimeRunner:
    """(logits, features) for preprocessed images (N x 3 x S x S float32) through an ONNX Runtime session."""

    def __init__(self, graph: bytes, *, providers: Sequence[str] = (CPU_PROVIDER,), threads: int | None = None,
                 fp16: bool = False, what: str = "fp32") -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise ModelArtifactError("model.backend is 'onnxruntime' but the onnxruntime package is not "
                                     "installed (pip install onnxruntime), or use backend: torch") from exc
        provider_list: list = []
        for name in providers:
            # TensorRT builds its engine in fp16 when the runtime asks for it; the others take no options.
            provider_list.append((name, {"trt_fp16_enable": True}) if name == TENSORRT_PROVIDER and fp16 else name)
        try:
            with name_threads_started_by("ort-pool"):  # its intra-op workers, as `top -H` shows them
                self.session = ort.InferenceSession(graph, session_options(threads), providers=provider_list)
        except Exception as exc:  # onnxruntime raises its own exception types for a model it cannot run
            raise ModelArtifactError(f"onnxruntime could not load the {what} model: {exc}") from exc
        self.providers = tuple(self.session.get_providers())
        self.what = what
        self.threads = threads or physical_cores()

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        try:
            logits, features = self.session.run(["logits", "features"], {"image": x})
        except Exception as exc:  # onnxruntime's errors derive from Exception only
            # RuntimeError is what the inference worker turns into a `model_error` fail-safe verdict.
            raise RuntimeError(f"onnxruntime: {exc}") from exc
        return logits, features


def verify_against_torch(runner: OnnxRuntimeRunner, model: nn.Module, *, input_size: int,
                         defective_index: int) -> float:
    """Score probe images with torch (fp32, CPU) and with `runner`; raise ModelArtifactError when p_defect or
    the features differ beyond MAX_PROBE_DIFF / MAX_FEATURE_REL_DIFF. Returns the largest p_defect difference."""
    network = WithFeatures(model.float().cpu().eval()).eval()
    gen = torch.Generator().manual_seed(0)
    probes = [torch.zeros(1, 3, input_size, input_size)]
    probes += [torch.randn(1, 3, input_size, input_size, generator=gen) for _ in range(3)]
    batch = torch.cat(probes)
    with torch.inference_mode():
        logits, features = network(batch)
    expected = torch.softmax(logits.double(), dim=1)[:, defective_index].numpy()
    got_logits, got_features = runner(batch.numpy())
    worst = float(np.abs(softmax(got_logits)[:, defective_index] - expected).max())
    scale = np.maximum(features.abs().amax(dim=1, keepdim=True).numpy(), 1e-6)
    worst_feature = float((np.abs(got_features - features.numpy()) / scale).max())
    if not worst <= MAX_PROBE_DIFF:
        raise ModelArtifactError(f"onnxruntime and torch disagree on a probe image (p_defect differs by "
                                 f"{worst:.3g}, more than {MAX_PROBE_DIFF:g}); refusing backend onnxruntime")
    if not worst_feature <= MAX_FEATURE_REL_DIFF:
        raise ModelArtifactError(f"onnxruntime and torch disagree on a probe image's features (relative "
                                 f"difference {worst_feature:.3g}, more than {MAX_FEATURE_REL_DIFF:g}); "
                                 f"refusing backend onnxruntime")
    return worst
