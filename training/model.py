"""The network: torchvision's ResNet-18 with a two-class head, and where its starting weights come from.

`--weights imagenet` asks torchvision for its ImageNet weights (a download, so only where the
machine is online or the torch hub cache already holds them), `--weights FILE` loads a ResNet-18
state dict from a file for an offline plant (torchvision's `resnet18-*.pth`, a training checkpoint
or a model artifact), and `--weights none` trains from scratch. A file that is not a ResNet-18
raises `WeightsError` naming the mismatching tensors, before any training starts.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from station.artifact import build_model

log = logging.getLogger(__name__)

ARCHITECTURE = "resnet18"


class WeightsError(ValueError):
    """Starting weights could not be obtained or do not fit the architecture."""


def create_model(weights: str, *, num_classes: int = 2) -> nn.Module:
    """Build ResNet-18 with `num_classes` outputs and load the requested starting weights."""
    model = build_model(ARCHITECTURE, num_classes)
    if weights in ("none", "", "scratch"):
        return model
    if weights == "imagenet":
        state = _download_imagenet()
        source = "torchvision ImageNet weights"
    else:
        state = _read_state_dict(Path(weights))
        source = f"weights file {weights}"
    load_backbone(model, state, source=source)
    return model


def _download_imagenet() -> dict[str, torch.Tensor]:
    from torchvision.models import ResNet18_Weights

    try:
        return ResNet18_Weights.IMAGENET1K_V1.get_state_dict(progress=False)
    except (OSError, RuntimeError) as exc:  # URLError is an OSError
        raise WeightsError(
            f"could not get torchvision's ImageNet ResNet-18 weights ({exc}); offline, pass "
            f"--weights FILE (a resnet18-*.pth state dict) or --weights none to train from scratch") from exc


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    try:
        payload: Any = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # torch's own message advises weights_only=False, which would run code from the file: not ours to give.
        raise WeightsError(f"weights file {path} holds pickled Python objects, not a state dict of tensors; "
                           f"save the network's state_dict() instead") from None
    except Exception as exc:  # torch.load raises many unrelated types for a bad file
        raise WeightsError(f"weights file {path} is not a readable torch state dict "
                           f"({type(exc).__name__})") from exc
    if isinstance(payload, dict):
        for key in ("state_dict", "model"):
            if isinstance(payload.get(key), dict):
                payload = payload[key]
                break
    if not isinstance(payload, dict) or not all(isinstance(v, torch.Tensor) for v in payload.values()):
        raise WeightsError(f"weights file {path} does not hold a state dict of tensors")
    # Checkpoints written from a DistributedDataParallel model prefix every key with "module.".
    return {k.removeprefix("module."): v for k, v in payload.items()}


def load_backbone(model: nn.Module, state: dict[str, torch.Tensor], *, source: str) -> None:
    """Copy every tensor except the classifier head; any other mismatch is a `WeightsError`."""
    expected = model.state_dict()
    backbone = {k for k in expected if not k.startswith("fc.")}
    missing = sorted(backbone - set(state))
    unexpected = sorted(k for k in set(state) - set(expected) if not k.startswith("fc."))
    wrong_shape = sorted(k for k in backbone & set(state) if state[k].shape != expected[k].shape)
    if missing or unexpected or wrong_shape:
        raise WeightsError(
            f"{source} is not a {ARCHITECTURE} checkpoint: {len(missing)} missing tensors {missing[:3]}, "
            f"{len(unexpected)} unexpected {unexpected[:3]}, {len(wrong_shape)} with wrong shape {wrong_shape[:3]}")
    filtered = {k: state[k].to(expected[k].dtype) for k in backbone}
    head_fits = all(k in state and state[k].shape == expected[k].shape for k in expected if k.startswith("fc."))
    if head_fits:
        filtered.update({k: state[k].to(expected[k].dtype) for k in expected if k.startswith("fc.")})
    model.load_state_dict(filtered, strict=head_fits)
    log.info("loaded %s (%s head)", source, "its" if head_fits else "a new")
