"""Configuration schema of the camera kinds, one pydantic model per kind, selected by `kind`.

Adding a camera kind means one model here, one module in `station/cameras/` and one line in that
package's registry.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


DEFAULT_LABELS = {"def_front": "defective", "ok_front": "ok"}


class ReplayCameraConfig(_Strict):
    """Recorded frames (a folder of images, optionally in label-named sub-folders, or a video file)."""

    kind: Literal["replay"] = "replay"
    path: Path = Field(..., description="Folder of images (label sub-folders optional), a video file, or a "
                                        "`station record` folder; `station replay FOLDER` plays FOLDER instead.")
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


class LensCoverEpisode(_Strict):
    """A run of parts during which the synthetic camera's lens is covered (frames nearly black)."""

    first_part: int = Field(..., ge=1, le=10_000_000, description="Number (1-based) of the first covered part.")
    parts: int = Field(..., ge=1, le=10_000_000, description="How many parts in a row are covered.")


class SyntheticCameraConfig(_Strict):
    """Impeller-like frames the station renders itself (the built-in demo; no dataset needed)."""

    kind: Literal["synthetic"] = "synthetic"
    rate_parts_per_s: float | None = Field(4.0, gt=0, le=1000, description="Parts per second.")
    size_px: int = Field(300, ge=32, le=2048, description="Square frame size in pixels.")
    defect_ratio: float = Field(0.3, ge=0, le=1, description="Share of parts drawn with a defect.")
    broken_ratio: float = Field(0.0, ge=0, le=1,
                                description="Share of parts delivered as broken buffers (fail-safe demo).")
    seed: int = Field(0, ge=0, description="Random seed of the renderer.")
    limit: int | None = Field(None, ge=1, description="Stop after this many parts (null: run until stopped).")
    lens_cover: LensCoverEpisode | None = Field(
        None, description="A simulated camera fault: the lens is covered for a run of parts (the validity "
                          "gate rejects them and raises the image_quality alarm); null: none.")


# --- Industrial and live cameras ------------------------------------------------------------------

class RegionSettings(_Strict):
    """Sensor region of interest, in pixels of the full sensor."""

    x: int = Field(0, ge=0, le=65_535, description="Left edge of the region (OffsetX), px.")
    y: int = Field(0, ge=0, le=65_535, description="Top edge of the region (OffsetY), px.")
    width: int = Field(..., ge=1, le=65_535, description="Region width (Width), px.")
    height: int = Field(..., ge=1, le=65_535, description="Region height (Height), px.")


class TriggerSettings(_Strict):
    """How a frame is started: free running, by the station (software), or by a camera input line."""

    mode: Literal["free_run", "software", "hardware"] = Field(
        "free_run", description="free_run: the camera streams at frame_rate_hz and every frame is a part; "
        "software: the station fires one trigger per part at rate_parts_per_s; hardware: a camera "
        "input line (photo-eye) starts each frame and every frame is a part.")
    rate_parts_per_s: float | None = Field(
        None, gt=0, le=1000, description="Software trigger: parts per second the station triggers at "
        "(required for mode software).")
    frame_timeout_ms: float = Field(
        1000.0, ge=1, le=60_000, description="Software trigger: a trigger whose frame has not arrived "
        "within this time becomes a broken part (fail-safe verdict `bad_frame`), ms.")
    line: str = Field("Line0", min_length=1, max_length=64,
                      description="Hardware trigger: the camera input (GenICam TriggerSource), e.g. Line0.")
    activation: Literal["RisingEdge", "FallingEdge", "AnyEdge", "LevelHigh", "LevelLow"] = Field(
        "RisingEdge", description="Hardware trigger: the edge or level that starts a frame "
        "(GenICam TriggerActivation).")
    selector: str = Field("FrameStart", min_length=1, max_length=64,
                          description="The GenICam TriggerSelector the trigger applies to.")
    delay_us: float | None = Field(None, ge=0, le=10_000_000,
                                   description="Hardware trigger: camera-side TriggerDelay, us (null: keep).")

    @model_validator(mode="after")
    def _software_needs_rate(self) -> TriggerSettings:
        """`trigger.rate_parts_per_s` is required when `trigger.mode` is software."""
        if self.mode == "software" and self.rate_parts_per_s is None:
            raise ValueError("trigger.rate_parts_per_s is required when trigger.mode is software")
        return self


class ReconnectSettings(_Strict):
    """Backoff between attempts to reopen a lost camera: doubles from min to max."""

    min_backoff_ms: float = Field(500.0, ge=10, le=600_000, description="First wait before reopening, ms.")
    max_backoff_ms: float = Field(10_000.0, ge=10, le=600_000, description="Longest wait between attempts, ms.")

    @model_validator(mode="after")
    def _ordered(self) -> ReconnectSettings:
        """`max_backoff_ms` must be at least `min_backoff_ms`."""
        if self.max_backoff_ms < self.min_backoff_ms:
            raise ValueError(f"reconnect.max_backoff_ms ({self.max_backoff_ms:g}) must be at least "
                             f"reconnect.min_backoff_ms ({self.min_backoff_ms:g})")
        return self


class _IndustrialCameraConfig(_Strict):
    """Settings shared by the GenICam camera kinds (Aravis and GenTL producers)."""

    device_id: str | None = Field(
        None, max_length=256, description="Device id as `station cameras` lists it (for Aravis also an IP "
        "address); null: select by serial, or the first camera found.")
    serial: str | None = Field(None, max_length=128, description="Device serial number to select.")
    pixel_format: str | None = Field(
        None, max_length=64, description="GenICam PixelFormat to set (Mono8, Mono12, Mono16, RGB8, BGR8, "
        "BayerRG8, BayerBG8, BayerGR8, BayerGB8, RGBa8, BGRa8); null: keep the camera's.")
    region: RegionSettings | None = Field(None, description="Region of interest; null: keep the camera's.")
    exposure_us: float | None = Field(None, gt=0, le=60_000_000,
                                      description="Exposure time (ExposureTime, auto off), us; null: keep.")
    gain_db: float | None = Field(None, ge=-50, le=100, description="Gain (Gain, auto off), dB; null: keep.")
    frame_rate_hz: float | None = Field(None, gt=0, le=10_000,
                                        description="Free-run frame rate (AcquisitionFrameRate), Hz; null: keep.")
    trigger: TriggerSettings = Field(default_factory=TriggerSettings, description="Frame triggering.")
    lost_after_ms: float = Field(
        3000.0, ge=100, le=600_000, description="No frame (free run, software trigger) or no answer to a "
        "control read (hardware trigger, checked when idle) for this long: the camera is lost and reopened, ms.")
    reconnect: ReconnectSettings = Field(default_factory=ReconnectSettings,
                                         description="Backoff between reopen attempts of a lost camera.")
    buffer_count: int = Field(8, ge=2, le=256, description="Stream buffers queued to the driver.")
    use_camera_timestamps: bool = Field(
        True, description="Stamp frames with the camera's buffer timestamp mapped to the host's monotonic "
        "clock (else the arrival time).")

    @model_validator(mode="after")
    def _frame_timeout_fits(self) -> _IndustrialCameraConfig:
        """With a software trigger, `trigger.frame_timeout_ms` must be shorter than `lost_after_ms`; in free
        run, `lost_after_ms` must cover at least two frame periods at `frame_rate_hz`."""
        if self.trigger.mode == "software" and self.trigger.frame_timeout_ms >= self.lost_after_ms:
            raise ValueError(f"trigger.frame_timeout_ms ({self.trigger.frame_timeout_ms:g}) must be shorter "
                             f"than lost_after_ms ({self.lost_after_ms:g})")
        if (self.trigger.mode == "free_run" and self.frame_rate_hz is not None
                and 2000.0 / self.frame_rate_hz > self.lost_after_ms):
            raise ValueError(f"lost_after_ms ({self.lost_after_ms:g}) must cover at least two frame periods "
                             f"at frame_rate_hz = {self.frame_rate_hz:g}")
        return self


class AravisCameraConfig(_IndustrialCameraConfig):
    """A GigE Vision or USB3 Vision camera through Aravis (PyGObject, gir1.2-aravis-0.8)."""

    kind: Literal["aravis"] = "aravis"
    packet_size: int | None = Field(None, ge=576, le=9000,
                                    description="GigE Vision stream packet size, bytes; null: auto-negotiate.")


class GenicamCameraConfig(_IndustrialCameraConfig):
    """A camera behind any GenTL producer (.cti) through harvesters."""

    kind: Literal["genicam"] = "genicam"
    producers: list[Path] = Field(
        default_factory=list, description="GenTL producer files (.cti) or folders holding them; empty: "
        "the folders in GENICAM_GENTL64_PATH.")


class OpenCvCameraConfig(_Strict):
    """A V4L2 device, a video file or a network stream (RTSP/HTTP) through OpenCV."""

    kind: Literal["opencv"] = "opencv"
    source: str = Field(..., min_length=1, max_length=2048,
                        description="Device index (0), device path (/dev/video0), video file, or stream URL.")
    backend: Literal["auto", "v4l2", "ffmpeg", "gstreamer"] = Field(
        "auto", description="OpenCV capture backend.")
    width: int | None = Field(None, ge=1, le=16_384, description="Requested frame width (devices), px.")
    height: int | None = Field(None, ge=1, le=16_384, description="Requested frame height (devices), px.")
    frame_rate_hz: float | None = Field(None, gt=0, le=1000, description="Requested frame rate (devices), Hz.")
    rate_parts_per_s: float | None = Field(
        None, gt=0, le=1000, description="Video files only: playback pace in parts/s; null: as fast as "
        "the pipeline takes them.")
    loop: bool = Field(False, description="Video files only: start again at the end instead of ending the run.")
    lost_after_ms: float = Field(3000.0, ge=100, le=600_000,
                                 description="Live sources: no frame for this long means the camera is lost, ms.")
    reconnect: ReconnectSettings = Field(default_factory=ReconnectSettings,
                                         description="Backoff between reopen attempts of a lost source.")
    queue_frames: int = Field(4, ge=1, le=64, description="Live sources: frames buffered between the "
                              "reader and the station; an older frame is dropped (and counted) past it.")


CameraConfig = Annotated[
    Union[ReplayCameraConfig, SyntheticCameraConfig, AravisCameraConfig, GenicamCameraConfig,
          OpenCvCameraConfig],
    Field(discriminator="kind"),
]
