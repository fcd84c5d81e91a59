"""The networks an artifact may hold, and the two-output view the station runs them through.

`build_model` makes an untrained network of a supported architecture (its weights come from the
artifact): torchvision's ResNet-18 with a two-class head, or `TinyNet`, a very small CNN that only the
test suite uses. `WithFeatures` wraps either so that one forward pass returns both the logits and the
pooled feature vector in front of the classifier head (512 values for ResNet-18, 16 for TinyNet):
the validity gate scores the feature's distance to the training images from the same pass, in torch
and in the ONNX graph the onnxruntime backend builds (outputs `logits` and `features`).
"""

from __future__ import annotations

import torch
from torch import nn

SUPPORTED_ARCHITECTURES = ("resnet18", "tinynet")


class UnknownArchitecture(ValueError):
    """The artifact names an architecture this station cannot build."""


def build_model(architecture: str, num_classes: int = 2) -> nn.Module:
    """Build an untrained network of a supported architecture (weights come from the artifact)."""
    if architecture == "resnet18":
        from torchvision.models import resnet18

        return resnet18(weights=None, num_classes=num_classes)
    if architecture == "tinynet":
        return TinyNet(num_classes)
    raise UnknownArchitecture(f"unknown architecture {architecture!r} (expected one of {SUPPORTED_ARCHITECTURES})")


class TinyNet(nn.Module):
    """A very small CNN for the test suite's pipeline tests; never shipped as a product model."""

    feature_dim = 16

    def __init__(self, num_classes: int = 2) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
            nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
        )
        self.fc = nn.Linear(16, num_classes)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.features(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pooled(x))


def _resnet_pooled(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    # torchvision's ResNet.forward, stopped in front of `fc`.
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    x = model.layer4(model.layer3(model.layer2(model.layer1(x))))
    return torch.flatten(model.avgpool(x), 1)


class WithFeatures(nn.Module):
    """`forward(x) -> (logits, features)`: the classifier's own forward pass, exposing the pooled feature."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        if isinstance(model, TinyNet):
            self._pooled = model.pooled
        elif all(hasattr(model, name) for name in ("conv1", "layer4", "avgpool", "fc")):
            self._pooled = lambda x: _resnet_pooled(model, x)
        else:
            raise UnknownArchitecture(f"{type(model).__name__} has no pooled feature this station knows")

    @property
    def feature_dim(self) -> int:
        return int(self.model.fc.in_features)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self._pooled(x)
        return self.model.fc(features), features
