"""Grad-CAM heat maps: where in the image the classifier looked when it scored a part.

Shared by the training report (heat maps of every misclassified test image) and the HMI (heat maps
of rejects, computed on demand in the HMI process, never on the station's hot path). `grad_cam`
returns the map for one preprocessed input; `heat_overlay` blends it over the part's grey image as
an RGB picture with a blue-to-red colour scale, without a plotting library.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn


def grad_cam(model: nn.Module, image: torch.Tensor, target_index: int) -> np.ndarray:
    """Grad-CAM heat map (HxW of the input, 0..1) for one CHW input and one output class."""
    layer = getattr(model, "layer4", None)
    if layer is None:
        layer = [m for m in model.modules() if isinstance(m, nn.Conv2d)][-1]
    store: dict[str, torch.Tensor] = {}

    def keep(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        store["act"] = output
        output.register_hook(lambda grad: store.__setitem__("grad", grad))

    handle = layer.register_forward_hook(keep)
    try:
        model.eval()
        with torch.enable_grad():
            x = image.unsqueeze(0).float().requires_grad_(True)
            logits = model(x)
            model.zero_grad(set_to_none=True)
            logits[0, target_index].backward()
    finally:
        handle.remove()
    weights = store["grad"].mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((weights * store["act"]).sum(dim=1))[0].detach()
    cam = torch.nn.functional.interpolate(cam[None, None], size=image.shape[1:], mode="bilinear",
                                          align_corners=False)[0, 0]
    cam = cam - cam.min()
    return (cam / cam.max()).numpy() if float(cam.max()) > 0 else cam.numpy()


def jet(values: np.ndarray) -> np.ndarray:
    """The classic blue-cyan-yellow-red colour scale for values 0..1, as HxWx3 uint8."""
    v = np.clip(values, 0.0, 1.0)[..., None]
    rgb = np.clip(np.concatenate([1.5 - np.abs(4 * v - 3), 1.5 - np.abs(4 * v - 2), 1.5 - np.abs(4 * v - 1)],
                                 axis=-1), 0.0, 1.0)
    return (rgb * 255).astype(np.uint8)


def heat_overlay(gray: np.ndarray, cam: np.ndarray, *, alpha: float = 0.45) -> np.ndarray:
    """The heat map resized to the image and blended over it: HxWx3 uint8."""
    if gray.ndim == 3:
        gray = np.asarray(Image.fromarray(gray).convert("L"))
    h, w = gray.shape
    cam_img = np.asarray(Image.fromarray((cam * 255).astype(np.uint8)).resize((w, h), Image.BILINEAR)) / 255.0
    base = np.repeat(gray[..., None].astype(np.float32), 3, axis=-1)
    return np.clip((1 - alpha) * base + alpha * jet(cam_img).astype(np.float32), 0, 255).astype(np.uint8)
