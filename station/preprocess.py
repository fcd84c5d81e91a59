"""Image preprocessing shared by the station and the training package.

The model artifact records a `Preprocess` (input size, mean/std, grayscale handling); the
classifier worker and the training data loader both go through `Preprocess.model_pixels` /
`_resized` (Pillow's resampling, the very C code the model was trained with) and
`Preprocess.normalize`, so a part seen on the line takes exactly the pixel path the model was
trained and evaluated on. `normalize` maps the uint8 pixels through a 256-entry table per channel,
built with the same float32 operations the per-pixel arithmetic used (`(v / 255 - mean) / std`), so
its output is bit for bit that arithmetic's, about ten times faster, and it can write into a
caller's buffer (the inference worker's batch) instead of allocating. Images inside the station are
uint8 numpy arrays, either HxW (mono) or HxWx3 (RGB); cameras convert their native pixel formats to
that layout before a `Frame` is built.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import cached_property
from typing import Any

import numpy as np
import torch
from PIL import Image

from station.cameras.pixels import MAX_SIDE_PX, MIN_SIDE_PX

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class FrameFormatError(ValueError):
    """The image is not a uint8 HxW or HxWx3 array the classifier can use."""


@dataclass(frozen=True)
class Preprocess:
    """How a raw camera image becomes the model's input tensor."""

    input_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    # The casting images are grey (R == G == B): convert to one luminance channel, then
    # repeat it three times so ImageNet-pretrained first layers still apply.
    grayscale: bool = True
    resize: str = "bilinear"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["mean"] = list(self.mean)
        data["std"] = list(self.std)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocess:
        known = {"input_size", "mean", "std", "grayscale", "resize"}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown preprocessing keys: {sorted(unknown)}")
        mean = tuple(float(v) for v in data.get("mean", IMAGENET_MEAN))
        std = tuple(float(v) for v in data.get("std", IMAGENET_STD))
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError("preprocessing mean/std must be three numbers, std > 0")
        size = int(data.get("input_size", 224))
        if not 16 <= size <= 2048:
            raise ValueError(f"preprocessing input_size {size} out of range 16..2048")
        resize = str(data.get("resize", "bilinear"))
        if resize not in _RESAMPLE:
            raise ValueError(f"preprocessing resize {resize!r} not one of {sorted(_RESAMPLE)}")
        return cls(input_size=size, mean=mean, std=std,  # type: ignore[arg-type]
                   grayscale=bool(data.get("grayscale", True)), resize=resize)

    def to_pil(self, image: np.ndarray) -> Image.Image:
        """Validate a station image and return it as a PIL image in the model's colour mode."""
        check_image(image)
        if image.ndim == 3 and image.shape[2] == 1:
            image = image[:, :, 0]
        pil = Image.fromarray(image)
        mode = "L" if self.grayscale else "RGB"
        # convert() to the mode it already has would only copy the frame.
        return pil if pil.mode == mode else pil.convert(mode)

    def model_pixels(self, image: np.ndarray) -> np.ndarray:
        """A station image resized to the model input: uint8 SxS (grey models) or SxSx3 (RGB models).

        These are the pixels the model sees; the validity gate's image checks measure them too."""
        return self._resized(self.to_pil(image))

    def _resized(self, pil: Image.Image) -> np.ndarray:
        if pil.size != (self.input_size, self.input_size):
            pil = pil.resize((self.input_size, self.input_size), _RESAMPLE[self.resize])
        return np.asarray(pil)

    @cached_property
    def _table(self) -> np.ndarray:
        """3 x 256 float32: the normalised value of each grey level per channel, computed with exactly the
        float32 operations of `normalize_arithmetic` (IEEE float32 division and subtraction, so the
        table's entries are bit for bit what that arithmetic gives each pixel)."""
        levels = np.arange(256, dtype=np.float32) / 255.0
        mean = np.asarray(self.mean, dtype=np.float32)
        std = np.asarray(self.std, dtype=np.float32)
        return np.ascontiguousarray((levels[None, :] - mean[:, None]) / std[:, None])

    def normalize(self, pixels: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Model-input pixels (uint8 SxS or SxSx3) to the normalised float32 3xSxS array the network takes;
        written into `out` (a C-contiguous float32 3xSxS array, e.g. one row of a batch) when given."""
        if pixels.dtype != np.uint8 or (pixels.ndim == 3 and self.grayscale):
            # An RGB image for a grey model is averaged in float first: no table gives that mean.
            result = self.normalize_arithmetic(pixels)
            if out is None:
                return result
            out[...] = result
            return out
        if out is None:
            out = np.empty((3, *pixels.shape[:2]), dtype=np.float32)
        table = self._table
        if pixels.ndim == 2:
            np.take(table, pixels, axis=1, out=out)  # one pass writes all three channels
        else:
            for c in range(3):
                np.take(table[c], pixels[:, :, c], out=out[c])
        return out

    def normalize_arithmetic(self, pixels: np.ndarray) -> np.ndarray:
        """The per-pixel float32 arithmetic `normalize` reproduces through its table (and still uses for an
        RGB image given to a grey model); kept as the definition the table is tested against."""
        arr = pixels.astype(np.float32) / 255.0
        if arr.ndim == 2:
            arr = np.repeat(arr[:, :, None], 3, axis=2)
        elif self.grayscale:
            arr = np.repeat(arr.mean(axis=2, keepdims=True), 3, axis=2)
        mean = np.asarray(self.mean, dtype=np.float32)
        std = np.asarray(self.std, dtype=np.float32)
        arr = (arr - mean) / std
        return np.ascontiguousarray(arr.transpose(2, 0, 1))

    def pil_to_tensor(self, pil: Image.Image) -> torch.Tensor:
        """Resize and normalise a PIL image (mode L or RGB) to a float CHW tensor."""
        return torch.from_numpy(self.normalize(self._resized(pil)))

    def to_tensor(self, image: np.ndarray) -> torch.Tensor:
        """The one path from a station image (uint8 HxW or HxWx3 RGB) to a CHW model input."""
        return torch.from_numpy(self.normalize(self.model_pixels(image)))


_RESAMPLE = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}


def check_image(image: object, *, min_side: int = MIN_SIDE_PX, max_side: int = MAX_SIDE_PX) -> None:
    """Raise FrameFormatError unless `image` is a usable uint8 HxW / HxWx1 / HxWx3 array."""
    if not isinstance(image, np.ndarray):
        raise FrameFormatError(f"image is {type(image).__name__}, expected a numpy array")
    if image.dtype != np.uint8:
        raise FrameFormatError(f"image dtype {image.dtype}, expected uint8")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
        raise FrameFormatError(f"image shape {image.shape}, expected HxW or HxWx3")
    h, w = image.shape[:2]
    if not (min_side <= h <= max_side and min_side <= w <= max_side):
        raise FrameFormatError(f"image size {w}x{h} outside {min_side}..{max_side} px")
