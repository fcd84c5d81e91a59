"""TinyNet: a very small CNN for the test suite's pipeline tests, and its registration with the station.

A production station accepts ResNet-18 only (`station.network.ARCHITECTURES`). The tests register this
network under the name `tinynet` for their own process (`register()`, called by tests/conftest.py) and,
for `station` subprocesses, run the command through tests/station_cli.py, which registers it first. An
artifact that names `tinynet` is therefore refused by every installed `station` command.
"""

from __future__ import annotations

import torch
from torch import nn

from station.network import Architecture, register_architecture

NAME = "tinynet"


class TinyNet(nn.Module):
    """Two strided convolutions and a 16-value pooled feature: fast, untrained, meaningless verdicts."""

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


def _pooled(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    assert isinstance(model, TinyNet)
    return model.pooled(x)


def register() -> None:
    """Let this process's station accept `tinynet` artifacts."""
    register_architecture(Architecture(NAME, build=TinyNet, owns=lambda m: isinstance(m, TinyNet), pooled=_pooled))
