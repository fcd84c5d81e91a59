"""The model artifact: one file holding the classifier's weights and everything needed to trust them.

Format (`impeller-artifact/1`): a `torch.save` of a plain dict
`{"format": str, "metadata_json": str, "state_dict": {name: tensor}}` that loads with
`torch.load(weights_only=True)`, so opening a model file never runs code from it. The metadata
holds the architecture, class names and which one is "defective", the preprocessing, the
recommended threshold, the training data fingerprint, test metrics and the training code version.
`load_artifact` refuses anything missing, corrupt or mismatched with a `ModelArtifactError` that
says what is wrong; the station never falls back to a heuristic.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from station.preprocess import Preprocess

ARTIFACT_FORMAT = "impeller-artifact/1"
SUPPORTED_ARCHITECTURES = ("resnet18", "tinynet")


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
        if arch not in SUPPORTED_ARCHITECTURES:
            raise ModelArtifactError(
                f"model architecture {arch!r} is not supported (expected one of {SUPPORTED_ARCHITECTURES})")
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
    """A verified model: the network (eval mode, on CPU), its metadata and the file's identity."""

    model: nn.Module
    metadata: ArtifactMetadata
    sha256: str
    path: Path

    @property
    def model_id(self) -> str:
        return f"{self.metadata.model_name}@{self.sha256[:12]}"


def build_model(architecture: str, num_classes: int = 2) -> nn.Module:
    """Build an untrained network of a supported architecture (weights come from the artifact)."""
    if architecture == "resnet18":
        from torchvision.models import resnet18

        return resnet18(weights=None, num_classes=num_classes)
    if architecture == "tinynet":
        return TinyNet(num_classes)
    raise ModelArtifactError(f"unknown architecture {architecture!r}")


class TinyNet(nn.Module):
    """A very small CNN for pipeline tests and the offline demo fallback; never shipped as a product model."""

    def __init__(self, num_classes: int = 2) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
            nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
        )
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.features(x), 1))


def save_artifact(path: Path | str, model: nn.Module, metadata: ArtifactMetadata, *,
                  half: bool = False) -> str:
    """Write the artifact atomically and return its sha256. `half` stores float weights as fp16."""
    state = {}
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu()
        state[name] = t.half() if half and t.is_floating_point() else t.clone()
    payload = {"format": ARTIFACT_FORMAT, "metadata_json": json.dumps(metadata.to_dict(), sort_keys=True),
               "state_dict": state}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return file_sha256(path)


def file_sha256(path: Path | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_metadata(path: Path | str) -> ArtifactMetadata:
    """Read only the metadata (still a full, safe load of the file)."""
    return load_artifact(path).metadata


def load_artifact(path: Path | str) -> LoadedArtifact:
    """Load and verify a model artifact; raise ModelArtifactError naming the problem."""
    path = Path(path)
    if not path.is_file():
        raise ModelArtifactError(f"model file {path} does not exist")
    raw = path.read_bytes()
    if not raw:
        raise ModelArtifactError(f"model file {path} is empty")
    sha = hashlib.sha256(raw).hexdigest()
    try:
        payload = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError, ValueError,
            OSError, AttributeError, TypeError) as exc:
        raise ModelArtifactError(f"model file {path} is corrupt or not a model artifact: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != ARTIFACT_FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise ModelArtifactError(f"model file {path} has format {found!r}, expected {ARTIFACT_FORMAT!r}")
    try:
        meta_dict = json.loads(payload["metadata_json"])
        state = payload["state_dict"]
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise ModelArtifactError(f"model file {path}: metadata or weights missing: {exc}") from exc
    metadata = ArtifactMetadata.from_dict(meta_dict)
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
    model.eval()
    return LoadedArtifact(model=model, metadata=metadata, sha256=sha, path=path)
