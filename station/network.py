"""The networks an artifact may hold, and the two-output view the station runs them through.

A production station accepts one architecture: torchvision's ResNet-18 with a two-class head
(`build_model` makes it untrained; its weights come from the artifact). The table of architectures
is `ARCHITECTURES`; `register_architecture` adds one for the lifetime of the process, which is how
the test suite brings in its tiny test network (tests/tinynet.py, registered by the tests and by the
test launcher of the `station` command): nothing a YAML, an environment variable or a model file
says can make a station accept anything else. `WithFeatures` wraps a network so that one forward pass
returns both the logits and the pooled feature vector in front of the classifier head (512 values
for ResNet-18): the validity gate scores the feature's distance to the training images from the same
pass, in torch and in the ONNX graph the onnxruntime backend builds (outputs `logits` and `features`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn


class UnknownArchitecture(ValueError):
    """The artifact names an architecture this station cannot build."""


@dataclass(frozen=True)
class Architecture:
    """How to build one architecture, recognise a network of it, and read its pooled feature."""

    name: str
    build: Callable[[int], nn.Module]                           # num_classes -> an untrained network
    owns: Callable[[nn.Module], bool]                           # is this network one of ours?
    pooled: Callable[[nn.Module, torch.Tensor], torch.Tensor]   # the feature in front of `fc`


def _build_resnet18(num_classes: int) -> nn.Module:
    from torchvision.models import resnet18

    return resnet18(weights=None, num_classes=num_classes)


def _is_resnet(model: nn.Module) -> bool:
    return all(hasattr(model, name) for name in ("conv1", "layer4", "avgpool", "fc"))


def _resnet_pooled(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    # torchvision's ResNet.forward, stopped in front of `fc`.
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    x = model.layer4(model.layer3(model.layer2(model.layer1(x))))
    return torch.flatten(model.avgpool(x), 1)


ARCHITECTURES: dict[str, Architecture] = {
    "resnet18": Architecture("resnet18", build=_build_resnet18, owns=_is_resnet, pooled=_resnet_pooled),
}


def register_architecture(architecture: Architecture) -> None:
    """Accept `architecture` in this process from now on (the test suite's tiny network). Registering the
    same name again replaces the entry (a test module imported twice), never ResNet-18's."""
    if architecture.name == "resnet18":
        raise ValueError("resnet18 is built in and cannot be replaced")
    ARCHITECTURES[architecture.name] = architecture


def supported_architectures() -> tuple[str, ...]:
    """The names an artifact may give as its architecture in this process."""
    return tuple(ARCHITECTURES)


def build_model(architecture: str, num_classes: int = 2) -> nn.Module:
    """Build an untrained network of a supported architecture (weights come from the artifact)."""
    entry = ARCHITECTURES.get(architecture)
    if entry is None:
        raise UnknownArchitecture(f"unknown architecture {architecture!r} "
                                  f"(expected one of {supported_architectures()})")
    return entry.build(num_classes)


class WithFeatures(nn.Module):
    """`forward(x) -> (logits, features)`: the classifier's own forward pass, exposing the pooled feature."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        # Registered architectures first (a test network may look like none of the built-in ones).
        entry = next((a for a in reversed(ARCHITECTURES.values()) if a.owns(model)), None)
        if entry is None:
            raise UnknownArchitecture(f"{type(model).__name__} has no pooled feature this station knows")
        self._pooled = entry.pooled

    @property
    def feature_dim(self) -> int:
        return int(self.model.fc.in_features)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self._pooled(self.model, x)
        return self.model.fc(features), features
