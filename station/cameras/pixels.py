"""Conversion of camera pixel layouts to the station's image layout, in one place.

The station works on uint8 arrays, HxW (mono) or HxWx3 (RGB). Cameras deliver mono8/mono16,
BGR (OpenCV), RGB, or raw Bayer mosaics; `to_station_image` turns each into the station layout
and raises `ValueError` for a layout it does not know or a buffer of the wrong size.
`check_declared_size` holds the frame size limits every file and buffer path checks against the
size a file or buffer *declares*, before a single pixel is decoded or converted: a 12000x12000 PNG
would otherwise cost half a gigabyte before any check could refuse it.
"""

from __future__ import annotations

import numpy as np

# Frame sides the station accepts, px; the trace log never stores an image outside them either.
MIN_SIDE_PX = 16
MAX_SIDE_PX = 8192


def check_declared_size(width: int, height: int, *, what: str = "frame") -> None:
    """ValueError when a frame declares a side over MAX_SIDE_PX (or none at all). Frames below
    MIN_SIDE_PX are cheap to decode and are refused afterwards, as a bad frame, by the image check."""
    if width < 1 or height < 1:
        raise ValueError(f"{what} declares an empty {width}x{height} px frame")
    if width > MAX_SIDE_PX or height > MAX_SIDE_PX:
        raise ValueError(f"{what} declares {width}x{height} px, over the {MAX_SIDE_PX} px frame limit "
                         f"(not decoded)")


# Bayer pattern name (as GenICam spells it) -> offsets (row, col) of R and B in the 2x2 cell.
_BAYER = {"bayer_rg8": ((0, 0), (1, 1)), "bayer_bg8": ((1, 1), (0, 0)),
          "bayer_gr8": ((0, 1), (1, 0)), "bayer_gb8": ((1, 0), (0, 1))}

# Mono formats whose significant bit depth is declared by the camera (GenICam Mono10/12/14/16, LSB
# aligned in 16-bit words): scaled by that fixed depth, so a frame's brightness never depends on its
# content. Plain "mono16" (16-bit image files of unknown depth) keeps the peak-based scaling.
_MONO_BITS = {"mono10": 10, "mono12": 12, "mono14": 14, "mono16_full": 16}

PIXEL_FORMATS = ("mono8", "mono16", "mono32", *_MONO_BITS, "rgb8", "bgr8", "rgba8", "bgra8", *_BAYER)

# GenICam PFNC names -> station pixel format names (the formats the camera modules can convert).
GENICAM_FORMATS = {
    "Mono8": "mono8", "Mono10": "mono10", "Mono12": "mono12", "Mono14": "mono14", "Mono16": "mono16_full",
    "RGB8": "rgb8", "RGB8Packed": "rgb8", "BGR8": "bgr8", "BGR8Packed": "bgr8",
    "RGBa8": "rgba8", "BGRa8": "bgra8",
    "BayerRG8": "bayer_rg8", "BayerBG8": "bayer_bg8", "BayerGR8": "bayer_gr8", "BayerGB8": "bayer_gb8",
}
# Bytes per pixel of each station format as it arrives in a camera buffer.
BYTES_PER_PIXEL = {"mono8": 1, "mono10": 2, "mono12": 2, "mono14": 2, "mono16_full": 2, "mono16": 2,
                   "rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, **{k: 1 for k in _BAYER}}


def station_format(genicam_name: str) -> str:
    """The station pixel format for a GenICam PixelFormat name; ValueError for one not supported."""
    try:
        return GENICAM_FORMATS[genicam_name]
    except KeyError:
        raise ValueError(f"camera pixel format {genicam_name!r} is not supported "
                         f"(supported: {', '.join(GENICAM_FORMATS)})") from None


def from_buffer(data: bytes | memoryview | np.ndarray, *, width: int, height: int, pixel_format: str) -> np.ndarray:
    """Interpret a raw camera buffer (row-major, no padding) and convert it to the station layout."""
    fmt = pixel_format.lower()
    bpp = BYTES_PER_PIXEL.get(fmt)
    if bpp is None:
        raise ValueError(f"unknown pixel format {pixel_format!r} (known: {', '.join(BYTES_PER_PIXEL)})")
    check_declared_size(width, height, what=f"{pixel_format} buffer")
    raw = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data.reshape(-1).view(np.uint8)
    need = width * height * bpp
    if raw.size < need:
        raise ValueError(f"{pixel_format} buffer holds {raw.size} bytes, expected {need} for {width}x{height}")
    raw = raw[:need]
    if bpp == 2:
        arr = raw.view("<u2").reshape(height, width)
    elif bpp == 1:
        arr = raw.reshape(height, width)
    else:
        arr = raw.reshape(height, width, bpp)
    return to_station_image(arr, fmt)


def to_station_image(data: np.ndarray, pixel_format: str) -> np.ndarray:
    fmt = pixel_format.lower()
    arr = np.asarray(data)
    if fmt == "mono8":
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[:, :, 0]
        _need(arr, 2, np.uint8, fmt)
        return np.ascontiguousarray(arr)
    if fmt in ("mono16", "mono32"):
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[:, :, 0]
        if arr.ndim != 2:
            raise ValueError(f"{fmt} buffer has shape {arr.shape}, expected HxW")
        peak = float(arr.max()) if arr.size else 0.0
        # Scale by the sensor's used bit depth (10/12/16-bit data all arrive as mono16).
        bits = max(8, int(np.ceil(np.log2(peak + 1)))) if peak > 0 else 8
        return np.ascontiguousarray((arr.astype(np.float32) * (255.0 / (2 ** bits - 1))).round().astype(np.uint8))
    if fmt in _MONO_BITS:
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[:, :, 0]
        _need(arr, 2, np.uint16, fmt)
        shift = _MONO_BITS[fmt] - 8
        # Values above the declared depth (a misconfigured camera) saturate instead of wrapping.
        return np.ascontiguousarray(np.minimum(arr >> shift, 255).astype(np.uint8))
    if fmt in ("rgba8", "bgra8"):
        _need(arr, 3, np.uint8, fmt)
        if arr.shape[2] != 4:
            raise ValueError(f"{fmt} buffer has {arr.shape[2]} channels, expected 4")
        return np.ascontiguousarray(arr[:, :, :3] if fmt == "rgba8" else arr[:, :, 2::-1])
    if fmt in ("rgb8", "bgr8"):
        _need(arr, 3, np.uint8, fmt)
        if arr.shape[2] != 3:
            raise ValueError(f"{fmt} buffer has {arr.shape[2]} channels, expected 3")
        return np.ascontiguousarray(arr if fmt == "rgb8" else arr[:, :, ::-1])
    if fmt in _BAYER:
        _need(arr, 2, np.uint8, fmt)
        return _demosaic(arr, *_BAYER[fmt])
    raise ValueError(f"unknown pixel format {pixel_format!r} (known: {', '.join(PIXEL_FORMATS)})")


def _need(arr: np.ndarray, ndim: int, dtype: type, fmt: str) -> None:
    if arr.ndim != ndim or arr.dtype != dtype:
        raise ValueError(f"{fmt} buffer is {arr.dtype} with shape {arr.shape}, expected {ndim}-D {np.dtype(dtype)}")


def _demosaic(raw: np.ndarray, r_at: tuple[int, int], b_at: tuple[int, int]) -> np.ndarray:
    """Half-resolution-free demosaic: each 2x2 cell gives R, mean(G, G), B to its four pixels."""
    h, w = raw.shape
    if h % 2 or w % 2:
        raw = raw[: h - h % 2, : w - w % 2]
        h, w = raw.shape
    cells = raw.reshape(h // 2, 2, w // 2, 2).astype(np.uint16)
    r = cells[:, r_at[0], :, r_at[1]]
    b = cells[:, b_at[0], :, b_at[1]]
    g_at = [(i, j) for i in (0, 1) for j in (0, 1) if (i, j) not in (r_at, b_at)]
    g = (cells[:, g_at[0][0], :, g_at[0][1]] + cells[:, g_at[1][0], :, g_at[1][1]]) // 2
    rgb = np.stack([r, g, b], axis=-1).astype(np.uint8)
    return np.ascontiguousarray(rgb.repeat(2, axis=0).repeat(2, axis=1))
