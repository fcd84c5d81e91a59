"""Configuration schema of the camera kinds, one pydantic model per kind, selected by `kind`.

Adding a camera kind means one model here, one module in `station/cameras/` and one line in that
package's registry.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


DEFAULT_LABELS = {"def_front": "defective", "ok_front": "ok"}


class ReplayCameraConfig(_Strict):
    """Recorded frames (a folder of images, optionally in label-named sub-folders, or a video file)."""

    kind: Literal["replay"] = "replay"
    path: Path = Field(..., description="Folder of images or a video file.")
    rate_parts_per_s: float | None = Field(
        5.0, gt=0, le=1000, description="Replay pace in parts/s; null plays as fast as the pipeline takes.")
    order: Literal["sorted", "shuffled"] = Field(
        "shuffled", description="Play files sorted by path, or shuffled with `seed` (classes mixed).")
    seed: int = Field(0, ge=0, description="Shuffle seed.")
    loop: bool = Field(False, description="Start again at the end instead of stopping the run.")
    limit: int | None = Field(None, ge=1, description="Stop after this many frames.")
    labels: dict[str, Literal["defective", "ok"]] = Field(
        default_factory=lambda: dict(DEFAULT_LABELS),
        description="Sub-folder name -> label, used for accuracy in `station replay`.")


class SyntheticCameraConfig(_Strict):
    """Impeller-like frames the station renders itself (the built-in demo; no dataset needed)."""

    kind: Literal["synthetic"] = "synthetic"
    rate_parts_per_s: float | None = Field(4.0, gt=0, le=1000, description="Parts per second.")
    size_px: int = Field(300, ge=32, le=2048, description="Square frame size in pixels.")
    defect_ratio: float = Field(0.3, ge=0, le=1, description="Share of parts drawn with a defect.")
    seed: int = Field(0, ge=0, description="Random seed of the renderer.")
    limit: int | None = Field(None, ge=1, description="Stop after this many parts (null: run until stopped).")


CameraConfig = Annotated[
    Union[ReplayCameraConfig, SyntheticCameraConfig],
    Field(discriminator="kind"),
]
