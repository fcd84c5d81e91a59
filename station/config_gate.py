"""The `gate:` section of the station YAML: per-station limits of the validity gate, its alarm and drift monitor.

Every limit defaults to null, meaning the model's calibrated limit (the artifact carries them; `station
check-config FILE --model` prints the table). A number replaces it for this station: smaller ranges
tighten the gate, larger ones widen it past what the model was validated on (the station then warns
at every start). `alarm` raises `image_quality` when k of the last n parts fail the gate; `drift`
warns when rolling statistics move toward a limit before the gate trips.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GateLimits(_Strict):
    brightness_min: float | None = Field(
        None, ge=0, le=255, description="Lowest mean grey level of the model-input image (0-255); null: the model's.")
    brightness_max: float | None = Field(
        None, ge=0, le=255, description="Highest mean grey level (0-255); null: the model's.")
    contrast_min: float | None = Field(
        None, ge=0, le=128, description="Lowest grey-level standard deviation; null: the model's.")
    contrast_max: float | None = Field(
        None, ge=0, le=128, description="Highest grey-level standard deviation; null: the model's.")
    dark_clip_max: float | None = Field(
        None, ge=0, le=1, description="Highest share of pixels at grey level 0-5 (0-1); null: the model's.")
    bright_clip_max: float | None = Field(
        None, ge=0, le=1, description="Highest share of pixels at grey level 250-255 (0-1); null: the model's.")
    focus_min: float | None = Field(
        None, ge=0, le=10, description="Lowest edge sharpness (steepness of the strongest edges at full "
                                       "resolution over half resolution: about 0.8 sharp, toward 0.5 defocused); "
                                       "null: the model's.")
    noise_max: float | None = Field(
        None, ge=0, le=255, description="Highest estimated sensor noise, grey levels; null: the model's.")
    part_offset_max: float | None = Field(
        None, ge=0, le=1, description="Farthest the part's centre may sit from the frame centre, share of the frame "
                                      "width; null: the model's.")
    part_size_min: float | None = Field(
        None, ge=0, le=2, description="Smallest apparent part size (equivalent diameter of its dark eye), share of "
                                      "the frame width; null: the model's.")
    part_size_max: float | None = Field(
        None, ge=0, le=2, description="Largest apparent part size, share of the frame width; null: the model's.")
    novelty_max: float | None = Field(
        None, gt=0, le=1e6, description="Largest feature-space distance to the training images (Mahalanobis, RMS per "
                                        "feature; about 1 for a typical training image); null: the model's.")

    @model_validator(mode="after")
    def _ranges(self) -> GateLimits:
        for name in ("brightness", "contrast", "part_size"):
            lo, hi = getattr(self, f"{name}_min"), getattr(self, f"{name}_max")
            if lo is not None and hi is not None and lo >= hi:
                raise ValueError(f"gate.limits.{name}_min: {lo:g} must be below gate.limits.{name}_max ({hi:g})")
        return self

    def overrides(self) -> dict[str, float]:
        """The limit keys this station sets (e.g. {"brightness_min": 90.0})."""
        return {k: float(v) for k, v in self.model_dump().items() if v is not None}


class GateAlarm(_Strict):
    k: int = Field(5, ge=1, le=10_000, description="Failed parts among the last n that raise the image_quality alarm.")
    n: int = Field(20, ge=1, le=10_000, description="Window of recent parts the alarm counts over.")

    @model_validator(mode="after")
    def _k_within_n(self) -> GateAlarm:
        if self.k > self.n:
            raise ValueError(f"gate.alarm.k: {self.k} parts cannot fail among the last gate.alarm.n = {self.n}")
        return self


class GateDrift(_Strict):
    window_parts: int = Field(200, ge=10, le=100_000,
                              description="Parts in the rolling window the drift statistics are taken over.")
    warn_share: float = Field(
        0.5, gt=0, lt=1, description="Warn when a measure's rolling mean has moved this share of the way from the "
                                     "training reference to the nearer of its gate limit and the value at which "
                                     "the model starts to misjudge parts (calibrated).")
    max_uncertain_share: float = Field(
        0.05, gt=0, le=1, description="Warn when more than this share of parts get a p_defect between 0.1 and 0.9 "
                                      "(the model is unsure).")
    max_reject_rate: float = Field(
        0.3, gt=0, le=1, description="Warn when more than this share of parts are rejected (set a few times the "
                                     "line's normal defect rate).")
    max_fail_safe_rate: float = Field(
        0.02, gt=0, le=1, description="Warn when more than this share of parts get a fail-safe verdict "
                                      "(image_check, timeout, bad_frame, ...).")


class GateSection(_Strict):
    limits: GateLimits = Field(default_factory=GateLimits,
                               description="Per-station limits; null keeps the model's calibrated limit.")
    alarm: GateAlarm = Field(default_factory=GateAlarm, description="The image_quality alarm (k of the last n parts).")
    drift: GateDrift = Field(default_factory=GateDrift, description="The drift warning on rolling statistics.")
