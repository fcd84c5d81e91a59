"""The training augmentation: zoom and shift move the part as asked, keep it in the frame, fill the uncovered
border with the background grey, cover their whole range, and are seeded and reproducible.

Real components: the augmentation as the training loop builds it (`training.data.build_augment`), the
station's own image checks (`ImageChecks` on `Preprocess.model_pixels`, the pixels the model sees), and
real casting training images read from ../shared/data/casting (never copied into the repository). A drawn
disc stands in for a part where the test must know the exact geometry it put in.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from station.image_checks import ImageChecks
from station.preprocess import Preprocess
from training import data as tdata

FRAME_PX = 300          # the casting images' side
GREY = 150              # background of the drawn test disc


def _disc(radius_px: float = 40.0, *, centre: tuple[float, float] = (150.0, 150.0)) -> Image.Image:
    """A dark disc on a flat grey background: its area and centroid give the applied zoom and shift exactly."""
    yy, xx = np.mgrid[0:FRAME_PX, 0:FRAME_PX] + 0.5
    inside = np.hypot(xx - centre[0], yy - centre[1]) <= radius_px
    return Image.fromarray(np.where(inside, 20, GREY).astype(np.uint8))


def _geometry(img: Image.Image) -> tuple[float, np.ndarray]:
    """(equivalent radius in px, centroid offset from the frame centre in frame widths) of the dark pixels."""
    dark = np.asarray(img) < (20 + GREY) / 2
    ys, xs = np.nonzero(dark)
    centroid = np.array([xs.mean() + 0.5, ys.mean() + 0.5]) - FRAME_PX / 2
    return math.sqrt(dark.sum() / math.pi), centroid / FRAME_PX


def test_zoom_and_shift_alone_match_pillows_rotate_convention() -> None:
    """One affine warp replaces Image.rotate: rotated-only images are bit-identical to what training made
    before zoom and shift existed, and a shift goes where Image.rotate(translate=...) puts it."""
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (FRAME_PX, FRAME_PX), dtype=np.uint8))
    for angle, shift in ((17.3, (0.0, 0.0)), (-40.0, (12.5, -7.2)), (0.0, (5.0, 3.0))):
        arr = np.asarray(img)
        fill = int(np.median(np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]])))
        want = img.rotate(angle, resample=Image.BILINEAR, translate=shift, fillcolor=fill)
        assert np.array_equal(np.asarray(tdata.warp(img, angle_deg=angle, shift_px=shift)), np.asarray(want))


@pytest.mark.parametrize("zoom", [0.85, 1.0, 1.15])
def test_warp_scales_about_the_centre_and_moves_by_the_shift(zoom: float) -> None:
    radius, centre = _geometry(_disc())
    for direction in np.linspace(0, 2 * np.pi, 8, endpoint=False):
        shift = 0.08 * FRAME_PX * np.array([np.cos(direction), np.sin(direction)])
        got_radius, got_centre = _geometry(tdata.warp(_disc(), zoom=zoom, shift_px=(shift[0], shift[1])))
        assert got_radius / radius == pytest.approx(zoom, abs=0.01)
        assert got_centre - centre == pytest.approx(shift / FRAME_PX, abs=0.002)


def test_the_uncovered_border_takes_the_background_grey() -> None:
    out = np.asarray(tdata.warp(_disc(), zoom=0.85, shift_px=(20.0, 0.0)))
    # Zoomed out by 15 % and moved right: the left 10 % of the frame and a band at every edge were never
    # part of the picture; they are the background grey, not black (a black border is a covered lens).
    assert np.all(out[:, :40] == GREY) and np.all(out[:5, :] == GREY) and np.all(out[-5:, :] == GREY)


def test_zoom_and_shift_are_drawn_over_their_whole_range_and_never_beyond() -> None:
    augment = tdata.build_augment(rotate_deg=0.0, brightness=0.0, contrast=0.0, zoom=0.15, shift=0.08)
    radius, centre = _geometry(_disc())
    zooms, shifts = [], []
    for index in range(300):
        r, c = _geometry(augment(_disc(), random.Random(f"0-0-{index}")))
        zooms.append(r / radius)
        shifts.append(float(np.hypot(*(c - centre))))
    zooms_a, shifts_a = np.array(zooms), np.array(shifts)
    assert zooms_a.min() >= 0.85 - 0.01 and zooms_a.max() <= 1.15 + 0.01
    assert zooms_a.min() < 0.87 and zooms_a.max() > 1.13, "the zoom reaches both ends of its range"
    assert shifts_a.max() <= 0.08 + 0.003 and shifts_a.max() > 0.075
    # Uniform over the disc: three quarters of the shifts lie beyond half the radius.
    assert 0.65 < float(np.mean(shifts_a > 0.04)) < 0.85


def test_the_augmentation_is_seeded_and_reproducible(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (FRAME_PX, FRAME_PX), dtype=np.uint8) for _ in range(4)]
    pre = Preprocess(input_size=64)

    def epoch_items(seed: int, epoch: int, order: list[int]) -> dict[int, torch.Tensor]:
        ds = tdata.CachedImageDataset(images, [0, 1, 0, 1], pre, augment=tdata.build_augment(), seed=seed)
        ds.set_epoch(epoch)
        return {i: ds[i][0] for i in order}

    first = epoch_items(0, 3, [0, 1, 2, 3])
    again = epoch_items(0, 3, [3, 1, 0, 2])   # another order, another dataset instance (another worker)
    assert all(torch.equal(first[i], again[i]) for i in range(4))
    assert not torch.equal(first[0], epoch_items(0, 4, [0])[0]), "a new epoch draws new augmentations"
    assert not torch.equal(first[0], epoch_items(1, 3, [0])[0]), "another seed draws new augmentations"


@pytest.mark.parametrize("option, value", [("zoom", 0.6), ("zoom", -0.1), ("shift", 0.3), ("brightness", 1.0)])
def test_options_outside_their_bounds_are_refused(option: str, value: float) -> None:
    with pytest.raises(tdata.DataError, match=f"--{option} {value} is outside"):
        tdata.build_augment(**{option: value})


def test_real_parts_stay_in_the_frame_at_the_ends_of_the_range(data_dir: Path) -> None:
    """Casting training images at the extreme zoom and shift, measured as the station measures parts on
    the model's pixels: the part (its dark eye, what part_offset and part_size see) moves by the shift and
    scales by the zoom, stays wholly inside the frame, and no frame loses its part."""
    root = data_dir / "train"
    paths = sorted((root / "def_front").iterdir())[:12] + sorted((root / "ok_front").iterdir())[:12]
    pre, checks = Preprocess(input_size=160), ImageChecks()
    worst_offset = 0.0
    for k, path in enumerate(paths):
        with Image.open(path) as im:
            img = im.convert("L")
        base = checks.measure(pre.model_pixels(np.asarray(img)))
        direction = k * 2 * np.pi / 8
        for zoom in (0.85, 1.15):
            shift = 0.08 * FRAME_PX * np.array([np.cos(direction), np.sin(direction)])
            pixels = pre.model_pixels(np.asarray(tdata.warp(img, zoom=zoom, shift_px=(shift[0], shift[1]))))
            got = checks.measure(pixels)
            # part_size counts every dark pixel (rim shadows too), so it follows the zoom to within a few percent.
            assert got["part_size"] / base["part_size"] == pytest.approx(zoom, abs=0.06), path.name
            assert got["part_offset"] <= base["part_offset"] + 0.08 + 0.01, path.name
            worst_offset = max(worst_offset, got["part_offset"])
            # The eye: the largest region of dark pixels (the image checks' rule: below 0.4 x the median).
            # The casting's rim may be cut at these extremes (it nearly fills the frame, as it does when the
            # camera is closer); the eye, which the part measures come from, must stay whole.
            regions, count = ndimage.label(pixels < 0.4 * np.median(pixels))
            eye = regions == 1 + int(np.argmax(np.bincount(regions.ravel())[1:]))
            assert count and not (eye[:4].any() or eye[-4:].any() or eye[:, :4].any() or eye[:, -4:].any()), (
                f"{path.name}: zoom {zoom}, the part's eye reaches the frame edge")
    assert worst_offset > 0.08, "the extreme shift moved parts well off centre (the test would see a no-op)"
