"""Training data: scanning a class-per-folder image tree, content hashes, seeded splits and datasets.

A data folder holds one sub-folder per class (`def_front/`, `ok_front/`) of image files. `scan_folder`
checks it before anything trains (empty folder, a single class, unreadable images each raise a
`DataError` that names the problem), hashes every file's bytes (sha256) so exact duplicates are
found by content rather than by name, and the list of hashes gives the data fingerprint recorded in
the model artifact. Images are decoded once into a grayscale uint8 cache; every model input, in
training and in evaluation, goes through `station.preprocess.Preprocess.pil_to_tensor`, the same
pixel path the station uses on the line.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageEnhance, UnidentifiedImageError

from station.preprocess import Preprocess

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".bmp", ".tif", ".tiff")
DEFECTIVE_CLASS = "def_front"


class DataError(ValueError):
    """The data folder cannot be trained or evaluated on: empty, a single class, unreadable images."""


@dataclass(frozen=True)
class Sample:
    """One labelled image file and the sha256 of its bytes."""

    path: Path
    label: int
    sha256: str


@dataclass(frozen=True)
class ImageFolderScan:
    """The verified content of a class-per-folder tree."""

    root: Path
    class_names: tuple[str, ...]
    samples: tuple[Sample, ...]

    def labels(self) -> list[int]:
        return [s.label for s in self.samples]

    def fingerprint(self) -> str:
        """sha256 over the sorted per-file hashes: the same images give the same fingerprint."""
        return fingerprint([s.sha256 for s in self.samples])


def fingerprint(hashes: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for h in sorted(hashes):
        digest.update(h.encode("ascii"))
    return digest.hexdigest()


def scan_folder(root: Path | str, *, class_names: Sequence[str] | None = None,
                verify_images: bool = True) -> ImageFolderScan:
    """List, hash and (optionally) decode-check every image under `root/<class>/`."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist or is not a folder")
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and _images_in(p))
    names = tuple(class_names) if class_names is not None else tuple(found)
    if not found:
        raise DataError(f"data folder {root} holds no images: expected one sub-folder per class "
                        f"(e.g. {root}/def_front/*.jpeg and {root}/ok_front/*.jpeg)")
    if len(names) < 2 or len(found) < 2:
        raise DataError(f"data folder {root} has images of only one class ({', '.join(found)}): "
                        f"need at least two class sub-folders with images")
    missing = [n for n in names if n not in found]
    if missing:
        raise DataError(f"data folder {root} has no images for class(es) {missing}; found {found}")
    samples: list[Sample] = []
    unreadable: list[str] = []
    for label, name in enumerate(names):
        for path in _images_in(root / name):
            raw = path.read_bytes()
            if verify_images:
                try:
                    with Image.open(path) as im:
                        im.load()
                except (UnidentifiedImageError, OSError, SyntaxError) as exc:
                    unreadable.append(f"{path} ({exc})")
                    continue
            samples.append(Sample(path=path, label=label, sha256=hashlib.sha256(raw).hexdigest()))
    if unreadable:
        shown = "; ".join(unreadable[:5])
        raise DataError(f"{len(unreadable)} unreadable image file(s) under {root}: {shown}"
                        + (" ..." if len(unreadable) > 5 else ""))
    return ImageFolderScan(root=root, class_names=names, samples=tuple(samples))


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def drop_duplicates(samples: Sequence[Sample]) -> tuple[list[Sample], int]:
    """Keep the first sample of each content hash; return the kept samples and how many were dropped."""
    seen: set[str] = set()
    kept = []
    for s in samples:
        if s.sha256 not in seen:
            seen.add(s.sha256)
            kept.append(s)
    return kept, len(samples) - len(kept)


def stratified_split(labels: Sequence[int], *, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Split indices into train/val keeping the class ratio; the same seed gives the same split."""
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"validation fraction {val_fraction} must be between 0 and 1")
    rng = random.Random(seed)
    train_idx: list[int] = []
    val_idx: list[int] = []
    for cls in sorted(set(labels)):
        idx = [i for i, lab in enumerate(labels) if lab == cls]
        rng.shuffle(idx)
        n_val = max(1, round(len(idx) * val_fraction))
        if n_val >= len(idx):
            raise DataError(f"class {cls} has only {len(idx)} image(s): too few to carve out a validation set")
        val_idx += idx[:n_val]
        train_idx += idx[n_val:]
    return sorted(train_idx), sorted(val_idx)


def decode_gray(paths: Sequence[Path]) -> list[np.ndarray]:
    """Decode images once to grayscale uint8 arrays (the casting images are grey: R == G == B)."""
    out = []
    for p in paths:
        with Image.open(p) as im:
            out.append(np.asarray(im.convert("L")))
    return out


# Bounds on the augmentation options: past them the part leaves the frame or the jitter stops being a
# plausible picture of a good part (a brightness factor of 0 is a black frame).
MAX_ZOOM = 0.5
MAX_SHIFT = 0.25
MAX_JITTER = 0.9


def build_augment(*, rotate_deg: float = 180.0, brightness: float = 0.2, contrast: float = 0.2,
                  zoom: float = 0.15, shift: float = 0.08) -> Callable[[Image.Image, random.Random], Image.Image]:
    """Augmentations for top-view parts: dihedral flips/quarter turns, then one affine warp (a free
    rotation, a zoom, a shift), then brightness/contrast.

    A top-view impeller has no preferred orientation, so every rotation and mirror is a plausible
    part. The camera's distance and the part's place on the belt vary too: the zoom factor is drawn
    uniformly from 1 - zoom .. 1 + zoom (above 1: camera closer, part larger), the shift uniformly over a
    disc of radius `shift` x the frame width (so large shifts are as common as the area they cover).
    Rotation, zoom and shift are one resampling, not three, so the augmented part is no blurrier than a
    rotated one; the exposed border takes the image's own background grey (the median of its border).
    Raises `DataError` for options outside their bounds.
    """
    for name, value, hi in (("rotate-deg", rotate_deg, 360.0), ("brightness", brightness, MAX_JITTER),
                            ("contrast", contrast, MAX_JITTER), ("zoom", zoom, MAX_ZOOM), ("shift", shift, MAX_SHIFT)):
        if not (0.0 <= value <= hi):
            raise DataError(f"augmentation --{name} {value} is outside 0..{hi:g}")

    def augment(img: Image.Image, rng: random.Random) -> Image.Image:
        if rng.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        quarter = rng.randrange(4)
        if quarter:
            img = img.transpose((Image.ROTATE_90, Image.ROTATE_180, Image.ROTATE_270)[quarter - 1])
        angle = rng.uniform(-rotate_deg / 4, rotate_deg / 4) if rotate_deg > 0 and rng.random() < 0.5 else 0.0
        factor = rng.uniform(1.0 - zoom, 1.0 + zoom) if zoom > 0 else 1.0
        dx = dy = 0.0
        if shift > 0:
            radius = shift * math.sqrt(rng.random())
            direction = rng.uniform(0.0, 2.0 * math.pi)
            dx, dy = radius * img.size[0] * math.cos(direction), radius * img.size[1] * math.sin(direction)
        if angle or factor != 1.0 or dx or dy:
            img = warp(img, angle_deg=angle, zoom=factor, shift_px=(dx, dy))
        if brightness > 0:
            img = ImageEnhance.Brightness(img).enhance(rng.uniform(1 - brightness, 1 + brightness))
        if contrast > 0:
            img = ImageEnhance.Contrast(img).enhance(rng.uniform(1 - contrast, 1 + contrast))
        return img

    return augment


def warp(img: Image.Image, *, angle_deg: float = 0.0, zoom: float = 1.0,
         shift_px: tuple[float, float] = (0.0, 0.0)) -> Image.Image:
    """Rotate by `angle_deg` (counter-clockwise, as `Image.rotate`), scale by `zoom` about the centre, then
    move by `shift_px`, in one bilinear resampling; uncovered pixels take the border's median grey.

    With zoom 1 this is exactly `img.rotate(angle_deg, BILINEAR, translate=shift_px, fillcolor=...)`:
    the same pixel-centre convention, so a rotated-only training image is unchanged by this code."""
    arr = np.asarray(img)
    fill = int(np.median(np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]])))
    w, h = img.size
    cx, cy = w / 2.0, h / 2.0
    a = -math.radians(angle_deg)
    # Output pixel -> input pixel: centre + R(-a) (out - centre - shift) / zoom (Image.rotate's inverse map).
    m = [round(math.cos(a), 15) / zoom, round(math.sin(a), 15) / zoom,
         round(-math.sin(a), 15) / zoom, round(math.cos(a), 15) / zoom]
    ox, oy = -cx - shift_px[0], -cy - shift_px[1]
    matrix = (m[0], m[1], m[0] * ox + m[1] * oy + cx, m[2], m[3], m[2] * ox + m[3] * oy + cy)
    return img.transform((w, h), Image.AFFINE, matrix, resample=Image.BILINEAR, fillcolor=fill)


class CachedImageDataset(torch.utils.data.Dataset):
    """Grayscale images decoded once and kept in RAM; items are `(tensor, label)` via `Preprocess`.

    Decoding a 300x300 JPEG costs about as much as the augmentation, and the whole training folder
    is ~0.6 GB as grayscale uint8, so the cache saves a core's worth of work per epoch on a small CPU.
    """

    def __init__(self, images: Sequence[np.ndarray], labels: Sequence[int], preprocess: Preprocess, *,
                 augment: Callable[[Image.Image, random.Random], Image.Image] | None = None,
                 seed: int = 0) -> None:
        if len(images) != len(labels):
            raise ValueError("images and labels differ in length")
        self.images = list(images)
        self.labels = list(labels)
        self.preprocess = preprocess
        self.augment = augment
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        img = Image.fromarray(self.images[index])
        if self.augment is not None:
            # Seeded per (seed, epoch, index): reproducible regardless of worker count or order.
            img = self.augment(img, random.Random(f"{self.seed}-{self.epoch}-{index}"))
        return self.preprocess.pil_to_tensor(img), self.labels[index]
