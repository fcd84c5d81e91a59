"""The station's configuration schema: pydantic models with bounds, units in names, no unknown keys.

Cross-field checks (a deadline that leaves no time before the ejector, a pulse longer than the
gap between parts) live in validators whose messages name the key path. Loading a YAML file with
line numbers and printing errors is `station.configfile`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from station.config_actuators import ActuatorConfig, LogActuatorConfig
from station.config_cameras import CameraConfig
from station.config_gate import GateSection


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StationSection(_Strict):
    id: str = Field("station-1", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$",
                    description="Station name written into every log row.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Level of the service log (journald); per-part detail is in the trace log.")
    summary_interval_s: float = Field(60.0, ge=1, le=3600,
                                      description="Period of the counters summary line in the service log.")


class LineSection(_Strict):
    max_parts_per_s: float = Field(5.0, gt=0, le=1000,
                                   description="Fastest the conveyor presents parts; sizes the pulse check.")


class ModelSection(_Strict):
    path: Path = Field(Path("../models/impeller-resnet18.pt"),
                       description="Model artifact; relative paths are relative to the YAML file.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA when present, else CPU.")
    warmup_runs: int = Field(3, ge=0, le=100, description="Dummy inferences before the station is ready.")
    threads: int | None = Field(None, ge=1, le=256,
                                description="CPU inference threads (null: the backend's default, one per core).")
    backend: Literal["torch", "onnxruntime", "auto"] = Field(
        "torch", description="torch: CUDA or CPU. onnxruntime: CPU only, converted and checked against torch "
                             "at start-up. auto: torch on CUDA when the device allows, else onnxruntime.")

    @model_validator(mode="after")
    def _backend_device(self) -> ModelSection:
        if self.backend == "onnxruntime" and self.device == "cuda":
            raise ValueError("model.backend: onnxruntime runs on the CPU; use device cpu or auto, or backend torch")
        return self


class DecisionSection(_Strict):
    threshold: float | None = Field(
        None, gt=0, lt=1, description="p_defect at or above which a part is rejected; null: the model's own.")
    deadline_ms: float = Field(300.0, ge=5, le=60_000,
                               description="Latest a verdict may come after capture; later is fail-safe.")
    fail_safe: Literal["reject", "ok"] = Field(
        "reject", description="Verdict when the station cannot decide in time (timeout, overrun, bad_frame, "
                              "model_error, shutdown). 'ok' lets such parts pass. A frame outside the model's "
                              "validity domain (image_check) is rejected whatever this says.")


class RejectSection(_Strict):
    delay_ms: float = Field(800.0, ge=0, le=600_000, description="Camera-to-ejector travel time, ms.")
    pulse_ms: float = Field(50.0, ge=1, le=10_000, description="How long the reject output stays on, ms.")
    margin_ms: float = Field(20.0, ge=0, le=10_000,
                             description="Time kept free between the deadline and the ejector, ms.")
    late_tolerance_ms: float = Field(5.0, ge=0, le=10_000,
                                     description="A pulse fired later than this past due is logged 'late'.")
    actuator: ActuatorConfig = Field(default_factory=LogActuatorConfig,
                                     description="What drives the ejector.")


class AlarmSection(_Strict):
    actuator: ActuatorConfig | None = Field(None, description="Output held on while the station is unhealthy.")


class FrameSection(_Strict):
    width_px: int | None = Field(None, ge=16, le=16384,
                                 description="Expected frame width; another width is a bad_frame (null: any).")
    height_px: int | None = Field(None, ge=16, le=16384,
                                  description="Expected frame height; another height is a bad_frame (null: any).")


class QueueSection(_Strict):
    frames: int = Field(4, ge=1, le=64, description="Frames waiting for inference; a full queue is 'overrun'.")


class TraceLogSection(_Strict):
    dir: Path = Field(Path("../var/tracelog"), description="Folder of trace.sqlite and images/.")
    images: Literal["all", "rejects", "none"] = Field("all", description="Which parts' images are kept.")
    sample_every_n: int = Field(1, ge=1, le=1_000_000,
                                description="Of the parts the policy keeps, keep every n-th image.")
    image_format: Literal["png", "jpeg"] = Field("png", description="png is lossless; jpeg is smaller.")
    disk_budget_mb: float = Field(2048.0, gt=0, le=10_000_000,
                                  description="Image folder size cap; oldest images are pruned past it.")
    max_backlog: int = Field(10_000, ge=100, le=10_000_000,
                             description="Rows held in memory while the disk fails before alarming.")


class ServiceSection(_Strict):
    startup: Literal["wait", "degraded"] = Field(
        "wait", description="wait: report ready only once camera, model and PLC are up, and fail the start "
                            "after startup_timeout_s; degraded: report ready after startup_timeout_s anyway, "
                            "with the alarms raised.")
    startup_timeout_s: float = Field(30.0, ge=1, le=600,
                                     description="How long start-up waits for the camera and the PLC, s.")
    stall_s: float = Field(10.0, ge=1, le=600,
                           description="A stage whose heartbeat is older than this is silent (hung), s.")
    inference_hang_s: float = Field(10.0, ge=0.5, le=600,
                                    description="Scoring one frame longer than this means the inference "
                                                "worker is hung, s.")
    max_restarts: int = Field(3, ge=0, le=100,
                              description="Restarts of one dead stage allowed within restart_window_s "
                                          "before the supervisor gives up (0: never restart).")
    restart_window_s: float = Field(300.0, ge=1, le=86_400,
                                    description="Window over which max_restarts is counted, s.")


class StationConfig(_Strict):
    station: StationSection = Field(default_factory=StationSection)
    line: LineSection = Field(default_factory=LineSection)
    camera: CameraConfig
    frame: FrameSection = Field(default_factory=FrameSection)
    model: ModelSection = Field(default_factory=ModelSection)
    decision: DecisionSection = Field(default_factory=DecisionSection)
    gate: GateSection = Field(default_factory=GateSection)
    reject: RejectSection = Field(default_factory=RejectSection)
    alarm: AlarmSection = Field(default_factory=AlarmSection)
    queues: QueueSection = Field(default_factory=QueueSection)
    tracelog: TraceLogSection = Field(default_factory=TraceLogSection)
    service: ServiceSection = Field(default_factory=ServiceSection)

    @model_validator(mode="after")
    def _timing_fits(self) -> StationConfig:
        room_ms = self.reject.delay_ms - self.reject.margin_ms
        if self.decision.deadline_ms > room_ms:
            raise ValueError(
                f"decision.deadline_ms: {self.decision.deadline_ms:g} ms leaves no time before the ejector: "
                f"it must be at most reject.delay_ms - reject.margin_ms = {room_ms:g} ms")
        gap_ms = 1000.0 / self.line.max_parts_per_s
        if self.reject.pulse_ms >= gap_ms:
            raise ValueError(
                f"reject.pulse_ms: {self.reject.pulse_ms:g} ms is not shorter than the {gap_ms:g} ms gap "
                f"between parts at line.max_parts_per_s = {self.line.max_parts_per_s:g}")
        return self

    def resolve_paths(self, base: Path) -> StationConfig:
        """Return a copy whose relative paths are anchored at `base` (the YAML file's folder)."""

        def anchor(p: Path) -> Path:
            p = p.expanduser()
            return p if p.is_absolute() else (base / p).resolve()

        camera = self.camera
        if getattr(camera, "path", None) is not None:
            camera = camera.model_copy(update={"path": anchor(camera.path)})
        if getattr(camera, "producers", None):
            camera = camera.model_copy(update={"producers": [anchor(p) for p in camera.producers]})
        source = getattr(camera, "source", None)
        if isinstance(source, str) and "://" not in source and not source.startswith("/dev/") \
                and not source.isdigit() and not Path(source).is_absolute():
            camera = camera.model_copy(update={"source": str(anchor(Path(source)))})
        return self.model_copy(update={
            "camera": camera,
            "model": self.model.model_copy(update={"path": anchor(self.model.path)}),
            "tracelog": self.tracelog.model_copy(update={"dir": anchor(self.tracelog.dir)}),
        })
