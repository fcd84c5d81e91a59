"""The model artifact: one file holding the classifier's weights and everything needed to trust them.

Format `impeller-artifact/2`: a `torch.save` of plain data that loads with `torch.load(weights_only=True)`
(opening a model file never runs code from it): `metadata_json` (architecture, classes and which one is
"defective", preprocessing, recommended threshold, training data fingerprint and split, test metrics,
training code version, the validity domain's limits, reference statistics and calibration table, and
the reference inputs' expected scores), `state_dict` (the weights), `validity_tensors` (the novelty
fit), `reference_images`, optionally `int8` (an INT8 copy of the network for `model.precision: int8`,
with its own metadata section; `station.int8_model`), and `digests` (sha256 of the tensors and of the
metadata text, taken at export). The zip archive's comment carries a seal over every other byte
(`station.artifact_integrity`).
`load_artifact` checks the seal before parsing, then the digests, shapes, finite weights, and scores
the reference inputs; anything missing, corrupt or mismatched raises a one-line `ModelArtifactError`.
Format `impeller-artifact/1` (no seal, no validity domain) still loads, with `legacy` set: the station
runs it with the gate off and warns at every start.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from station.int8_model import TENSOR_GROUP as INT8_GROUP
from station.int8_model import Int8Error, Int8Graph
from station.artifact_integrity import (
    ReferenceMismatch, SealError, compare_references, has_seal, reference_images, score_references, seal, tensor_digest,
    text_digest, verify_seal,
)
from station.network import UnknownArchitecture, WithFeatures, supported_architectures
from station.network import build_model as _build_network
from station.preprocess import Preprocess
from station.validity import ValidityDomain, ValidityError

log = logging.getLogger(__name__)

ARTIFACT_FORMAT = "impeller-artifact/2"
LEGACY_FORMAT = "impeller-artifact/1"
__all__ = ["ARTIFACT_FORMAT", "LEGACY_FORMAT", "ArtifactMetadata", "LoadedArtifact", "ModelArtifactError",
           "build_model", "save_artifact", "load_artifact", "file_sha256"]


class ModelArtifactError(RuntimeError):
    """The model file is missing, unreadable, corrupt or does not match what the station expects."""


@dataclass(frozen=True)
class ArtifactMetadata:
    """What the station needs to know about a model, stored inside the artifact."""

    architecture: str
    class_names: tuple[str, ...]
    defective_class: str
    preprocess: Preprocess
    recommended_threshold: float = 0.5
    model_name: str = "impeller-classifier"
    created_utc: str = ""
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def defective_index(self) -> int:
        return self.class_names.index(self.defective_class)

    def to_dict(self) -> dict[str, Any]:
        return {
            "architecture": self.architecture,
            "class_names": list(self.class_names),
            "defective_class": self.defective_class,
            "preprocess": self.preprocess.to_dict(),
            "recommended_threshold": self.recommended_threshold,
            "model_name": self.model_name,
            "created_utc": self.created_utc,
            "training": self.training,
            "metrics": self.metrics,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ArtifactMetadata:
        try:
            arch = str(data["architecture"])
            names = tuple(str(n) for n in data["class_names"])
            defective = str(data["defective_class"])
            pre = Preprocess.from_dict(dict(data["preprocess"]))
            threshold = float(data.get("recommended_threshold", 0.5))
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelArtifactError(f"model metadata is incomplete or invalid: {exc}") from exc
        if arch not in supported_architectures():
            raise ModelArtifactError(
                f"model architecture {arch!r} is not supported (expected one of {supported_architectures()})")
        if len(names) != 2 or defective not in names:
            raise ModelArtifactError(
                f"model classes {list(names)} must be two names including the defective class {defective!r}")
        if not 0.0 < threshold < 1.0:
            raise ModelArtifactError(f"model recommended_threshold {threshold} must be in (0, 1)")
        return cls(architecture=arch, class_names=names, defective_class=defective, preprocess=pre,
                   recommended_threshold=threshold, model_name=str(data.get("model_name", "")),
                   created_utc=str(data.get("created_utc", "")),
                   training=dict(data.get("training", {})), metrics=dict(data.get("metrics", {})))


@dataclass(frozen=True)
class LoadedArtifact:
    """A verified model: the network (eval mode, on CPU), its metadata, validity domain and file identity."""

    model: nn.Module
    metadata: ArtifactMetadata
    sha256: str
    path: Path
    format: str = ARTIFACT_FORMAT
    validity: ValidityDomain | None = None      # None only for a legacy (format 1) artifact: gate off
    reference_images: np.ndarray | None = None  # uint8 N x S x S
    reference_scores: list[dict[str, Any]] = field(default_factory=list)
    int8: Int8Graph | None = None                # the quantized graph, when `training quantize` added one

    @property
    def model_id(self) -> str:
        return f"{self.metadata.model_name}@{self.sha256[:12]}"

    @property
    def legacy(self) -> bool:
        return self.format == LEGACY_FORMAT

    def legacy_warning(self) -> str:
        return (f"model {self.path} is a format-1 artifact ({LEGACY_FORMAT}): no integrity seal and no "
                f"validity domain, so the validity gate is OFF and frames the model was never validated on "
                f"(covered lens, failed lamp, lost focus) get ordinary verdicts; re-export it with "
                f"`python -m training calibrate --model {self.path.name} --data DATA --out NEW.pt`")


def build_model(architecture: str, num_classes: int = 2) -> nn.Module:
    """Build an untrained network of a supported architecture (weights come from the artifact)."""
    try:
        return _build_network(architecture, num_classes)
    except UnknownArchitecture as exc:
        raise ModelArtifactError(str(exc)) from exc


def torch_forward(model: nn.Module):
    """The reference scoring path on torch/CPU: normalised numpy batch -> (logits, features)."""
    net = WithFeatures(model).eval()

    def forward(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode():
            logits, features = net(torch.from_numpy(batch))
        return logits.float().numpy(), features.float().numpy()

    return forward


def stored_state(model: nn.Module, *, half: bool) -> dict[str, torch.Tensor]:
    """The weights as the artifact stores them: on the CPU, float tensors as fp16 when `half`."""
    state = {}
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu()
        state[name] = t.half() if half and t.is_floating_point() else t.clone()
    return state


def network_from_state(metadata: ArtifactMetadata, state: dict[str, torch.Tensor]) -> nn.Module:
    """The fp32 network exactly as a station will run it from these stored weights (eval, CPU)."""
    net = build_model(metadata.architecture, len(metadata.class_names))
    net.load_state_dict({k: v.to(net.state_dict()[k].dtype) for k, v in state.items()})
    return net.eval()


def save_artifact(path: Path | str, model: nn.Module, metadata: ArtifactMetadata, *, validity: ValidityDomain,
                  half: bool = False, int8: Int8Graph | None = None) -> str:
    """Write a sealed format-2 artifact atomically and return its sha256. `half` stores fp16 weights;
    `int8` adds the quantized graph (`training.quantize`).

    The reference inputs are scored here with the weights as stored, so the recorded results are what
    a station loading this file must reproduce."""
    state = stored_state(model, half=half)
    refs = reference_images(metadata.preprocess.input_size)
    expected = score_references(refs, forward=torch_forward(network_from_state(metadata, state)),
                                preprocess=metadata.preprocess, novelty=validity.novelty,
                                defective_index=metadata.defective_index)
    meta = {**metadata.to_dict(), "validity": validity.to_dict(), "reference_scores": expected}
    if int8 is not None:
        meta["int8"] = int8.info
    metadata_json = json.dumps(meta, sort_keys=True)
    groups = {"state_dict": state, "validity_tensors": validity.novelty.tensors(),
              "reference": {"images": torch.from_numpy(refs)}}
    if int8 is not None:
        groups[INT8_GROUP] = int8.tensors()
    payload = {"format": ARTIFACT_FORMAT, "metadata_json": metadata_json, "state_dict": state,
               "validity_tensors": groups["validity_tensors"], "reference_images": groups["reference"]["images"],
               "digests": {"tensors_sha256": tensor_digest(groups), "metadata_sha256": text_digest(metadata_json)}}
    if int8 is not None:
        payload[INT8_GROUP] = groups[INT8_GROUP]
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(seal(buffer.getvalue()))
    tmp.replace(path)
    return file_sha256(path)


def file_sha256(path: Path | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_artifact(path: Path | str) -> LoadedArtifact:
    """Load and verify a model artifact; raise ModelArtifactError naming the problem in one line."""
    path = Path(path)
    if not path.is_file():
        raise ModelArtifactError(f"model file {path} does not exist")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ModelArtifactError(f"model file {path} cannot be read: {exc.strerror or exc}") from exc
    if not raw:
        raise ModelArtifactError(f"model file {path} is empty")
    sealed = has_seal(raw)
    if sealed:
        try:
            verify_seal(raw)
        except SealError as exc:
            raise ModelArtifactError(f"model file {path} is corrupt: {exc}") from exc
    payload = _torch_payload(raw, path)
    found = payload.get("format")
    if found == LEGACY_FORMAT:
        return _load_legacy(payload, raw, path)
    if found != ARTIFACT_FORMAT:
        raise ModelArtifactError(f"model file {path} has format {found!r}, expected {ARTIFACT_FORMAT!r}")
    if not sealed:
        raise ModelArtifactError(f"model file {path} is corrupt: its integrity seal is missing or damaged "
                                 f"(a format-2 artifact is always sealed at export)")
    try:
        metadata_json, state = str(payload["metadata_json"]), dict(payload["state_dict"])
        validity_tensors, refs = dict(payload["validity_tensors"]), payload["reference_images"]
        digests = dict(payload["digests"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelArtifactError(f"model file {path}: a part of the artifact is missing: {exc}") from exc
    if text_digest(metadata_json) != digests.get("metadata_sha256"):
        raise ModelArtifactError(f"model file {path} is corrupt: its metadata does not match the digest taken "
                                 f"at export")
    groups = {"state_dict": state, "validity_tensors": validity_tensors, "reference": {"images": refs}}
    if INT8_GROUP in payload:
        groups[INT8_GROUP] = payload[INT8_GROUP]
    try:
        digest_ok = tensor_digest(groups) == digests.get("tensors_sha256")
    except (AttributeError, TypeError) as exc:  # a group that is not a dictionary of tensors
        raise ModelArtifactError(f"model file {path} is corrupt: its tensors are malformed ({exc})") from None
    if not digest_ok:
        raise ModelArtifactError(f"model file {path} is corrupt: its tensors do not match the digest taken at export")
    try:
        meta_dict = json.loads(metadata_json)
        metadata = ArtifactMetadata.from_dict(meta_dict)
        validity = ValidityDomain.from_parts(meta_dict["validity"], validity_tensors)
        expected = list(meta_dict["reference_scores"])
    except (KeyError, TypeError, json.JSONDecodeError, ValidityError) as exc:
        raise ModelArtifactError(f"model file {path}: metadata or validity domain invalid: {exc}") from exc
    int8 = None
    if "int8" in meta_dict or INT8_GROUP in payload:
        try:
            int8 = Int8Graph.from_parts(meta_dict.get("int8"), payload.get(INT8_GROUP))
        except Int8Error as exc:
            raise ModelArtifactError(f"model file {path}: its INT8 graph is invalid: {exc}") from exc
    model = _network(metadata, state, path)
    if validity.novelty.feature_dim != WithFeatures(model).feature_dim:
        raise ModelArtifactError(f"model file {path}: the novelty fit is for {validity.novelty.feature_dim}-d "
                                 f"features, the network has {WithFeatures(model).feature_dim}")
    ref_images = refs.numpy()
    try:
        got = score_references(ref_images, forward=torch_forward(model), preprocess=metadata.preprocess,
                               novelty=validity.novelty, defective_index=metadata.defective_index)
        compare_references(expected, got)
    except (ReferenceMismatch, KeyError, TypeError, ValueError) as exc:
        raise ModelArtifactError(f"model file {path} fails its reference check on this machine: {exc}") from exc
    return LoadedArtifact(model=model, metadata=metadata, sha256=hashlib.sha256(raw).hexdigest(), path=path,
                          format=ARTIFACT_FORMAT, validity=validity, reference_images=ref_images,
                          reference_scores=expected, int8=int8)


def _torch_payload(raw: bytes, path: Path) -> dict[str, Any]:
    """torch.load(weights_only=True) of the bytes, with errors told in the station's words: torch's own
    messages advise `weights_only=False`, which would run code from the file."""
    if not raw.startswith(b"PK\x03\x04"):
        raise ModelArtifactError(f"model file {path} is not a model artifact (not a torch zip archive; "
                                 f"it starts with {raw[:8]!r})")
    try:
        payload = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ModelArtifactError(
            f"model file {path} is not a station artifact: it holds pickled Python objects (a whole network "
            f"or a training checkpoint), which the station never loads because that would run code from the "
            f"file; export an artifact with `python -m training export`") from None
    except (RuntimeError, zipfile.BadZipFile, EOFError, ValueError, OSError, AttributeError, TypeError,
            KeyError, IndexError) as exc:
        raise ModelArtifactError(f"model file {path} is corrupt: torch cannot read it "
                                 f"({type(exc).__name__}: the zip archive or its records are damaged)") from None
    if not isinstance(payload, dict):
        raise ModelArtifactError(f"model file {path} is not a station artifact (it holds a "
                                 f"{type(payload).__name__}, not the artifact's dictionary)")
    return payload


def _network(metadata: ArtifactMetadata, state: Any, path: Path) -> nn.Module:
    """The network of `metadata.architecture` with `state` loaded; refuses any mismatch or non-finite weight."""
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelArtifactError(f"model file {path}: the weights are not a dictionary of tensors")
    model = build_model(metadata.architecture, len(metadata.class_names))
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ModelArtifactError(
            f"model file {path} does not match architecture {metadata.architecture!r}: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    for name, tensor in expected.items():
        if tuple(state[name].shape) != tuple(tensor.shape):
            raise ModelArtifactError(
                f"model file {path}: tensor {name} has shape {tuple(state[name].shape)}, "
                f"expected {tuple(tensor.shape)}")
        if tensor.is_floating_point() and not torch.isfinite(state[name].float()).all():
            raise ModelArtifactError(f"model file {path}: tensor {name} holds NaN or infinite values")
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})
    return model.eval()


def _load_legacy(payload: dict[str, Any], raw: bytes, path: Path) -> LoadedArtifact:
    try:
        meta_dict = json.loads(payload["metadata_json"])
        state = payload["state_dict"]
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise ModelArtifactError(f"model file {path}: metadata or weights missing: {exc}") from exc
    metadata = ArtifactMetadata.from_dict(meta_dict)
    model = _network(metadata, state, path)
    loaded = LoadedArtifact(model=model, metadata=metadata, sha256=hashlib.sha256(raw).hexdigest(), path=path,
                            format=LEGACY_FORMAT)
    log.warning("%s", loaded.legacy_warning())
    return loaded
