"""The station's configuration schema: pydantic models with bounds, units in names, no unknown keys.

Cross-field checks (a deadline that leaves no time before the ejector, a pulse longer than the
gap between parts) live in validators whose messages name the key path. Loading a YAML file with
line numbers and printing errors is `station.configfile`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from station.config_actuators import (
    ActuatorConfig,
    LogActuatorConfig,
    ModbusRtuActuatorConfig,
    rtu_write_round_trip_ms,
)
from station.config_cameras import CameraConfig
from station.config_gate import GateSection


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StationSection(_Strict):
    """Which station this is and how much it says in the service log."""

    id: str = Field("station-1", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$",
                    description="Station name written into every trace-log row (letters, digits, _ . -).")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Level of the service log (journald); per-part detail is in the trace log.")
    summary_interval_s: float = Field(60.0, ge=1, le=3600,
                                      description="Seconds between counter summary lines in the service log.")


class LineSection(_Strict):
    """The conveyor the station sits on."""

    max_parts_per_s: float = Field(5.0, gt=0, le=1000,
                                   description="Fastest the conveyor presents parts; reject.pulse_ms must be "
                                               "shorter than the gap 1000 / max_parts_per_s ms.")


class ModelSection(_Strict):
    """The classifier: the model artifact and what runs it."""

    path: Path = Field(Path("../models/impeller-resnet18.pt"),
                       description="Model artifact (weights + metadata). The station refuses to start if it is "
                                   "missing, corrupt or of another architecture.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA when present, else CPU.")
    warmup_runs: int = Field(3, ge=0, le=100, description="Dummy inferences before the station is ready.")
    threads: int | None = Field(None, ge=1, le=256,
                                description="CPU inference threads (null: the backend's default, one per core).")
    backend: Literal["torch", "onnxruntime", "auto"] = Field(
        "torch", description="torch: CUDA or CPU. onnxruntime: the model is converted at start and refused "
                             "unless it scores probe images like torch (about half torch's CPU time per image); "
                             "on a GPU with onnxruntime-gpu installed. auto: onnxruntime on a GPU provider, else "
                             "torch on CUDA, else onnxruntime on the CPU.")
    precision: Literal["auto", "fp32", "fp16", "int8"] = Field(
        "auto", description="Arithmetic of the network. auto: fp32. fp16: CUDA only (torch fp16 channels_last, or "
                            "TensorRT fp16 engines); never validated on a GPU here, the start-up reference check "
                            "decides. "
                            "int8: the artifact's INT8 graph (added by `python -m training quantize`) on "
                            "onnxruntime's CPU provider, about 3x faster than fp32; refused at start unless it "
                            "agrees with fp32 on the probe images within the tolerance the artifact records.")
    max_batch: int = Field(
        1, ge=1, le=64,
        description="Most queued frames scored in one forward pass when parts bunch up; a frame joins a batch "
                    "only if the batch is expected to finish before every part's deadline and batching was "
                    "measured to pay. 1: one at a time (on a 2-core CPU batching gave fewer parts/s; measure "
                    "yours with `station bench --max-batch N`).")
    workers: int = Field(
        1, ge=1, le=16,
        description="Inference workers scoring parts in parallel, each with its own copy of the model (and, "
                    "with threads null, cores / workers CPU threads). 1: one part at a time, the lowest "
                    "latency per part. 2 on a 2-core CPU: more parts/s when parts bunch up (INT8 1.5x on "
                    "the development machine), each part slower, verdicts may finish out of order. "
                    "Restart to change.")

    @model_validator(mode="after")
    def _runtime_fits(self) -> ModelSection:
        """`model.precision` int8 runs on onnxruntime's CPU provider, fp16 on CUDA: a combination that can
        never run is an error naming the key."""
        if self.precision == "int8" and self.backend == "torch":
            raise ValueError("model.precision: int8 runs on onnxruntime (the artifact's quantized graph); use "
                             "backend onnxruntime or auto")
        if self.precision == "int8" and self.device == "cuda":
            raise ValueError("model.precision: int8 runs on onnxruntime's CPU provider; use device cpu or auto")
        if self.precision == "fp16" and self.device == "cpu":
            raise ValueError("model.precision: fp16 runs on CUDA only; use fp32 or int8 with device cpu")
        return self


class DecisionSection(_Strict):
    """How a score becomes a verdict, and what happens when there is no score in time."""

    threshold: float | None = Field(
        None, gt=0, lt=1, description="Reject when p_defect >= threshold; null: the model's recommended one.")
    deadline_ms: float = Field(300.0, ge=5, le=60_000,
                               description="Latest a verdict may come after capture, ms; later gets the "
                                           "fail-safe verdict with reason timeout.")
    fail_safe: Literal["reject", "ok"] = Field(
        "reject", description="Verdict when the station cannot decide (timeout, overrun, bad_frame, model_error, "
                              "shutdown). ok is unsafe: it lets undecided parts pass. A frame outside the "
                              "model's validity domain (image_check) is rejected whatever this says.")


class RejectSection(_Strict):
    """When and how long the ejector fires, and what drives it."""

    delay_ms: float = Field(800.0, ge=0, le=600_000,
                            description="Camera-to-ejector travel time, ms: the pulse starts at capture + delay.")
    pulse_ms: float = Field(50.0, ge=1, le=10_000, description="How long the reject output stays on, ms.")
    margin_ms: float = Field(20.0, ge=0, le=10_000,
                             description="Time kept free between the deadline and the ejector, ms.")
    late_tolerance_ms: float = Field(
        5.0, ge=0, le=10_000,
        description="A part whose on (or verdict) the device confirmed later than this past due is logged "
                    "'late', never 'acknowledged'; a device reply slower than this raises the plc_slow alarm, ms.")
    plc_slow_clear_after: int = Field(
        20, ge=1, le=10_000,
        description="Replies within late_tolerance_ms in a row that clear the plc_slow alarm (hysteresis).")
    actuator: ActuatorConfig = Field(default_factory=LogActuatorConfig,
                                     description="What drives the ejector; kind selects the output.")


class AlarmSection(_Strict):
    """An output (stack light, horn, PLC input) held on while the station is unhealthy."""

    actuator: ActuatorConfig | None = Field(
        None, description="Output held on while the station is unhealthy; same kinds as reject.actuator.")


class FrameSection(_Strict):
    """The frame size the model was validated for; another size is a broken part."""

    width_px: int | None = Field(None, ge=16, le=16384,
                                 description="Expected frame width; another width gives the part a bad_frame "
                                             "verdict (null: any).")
    height_px: int | None = Field(None, ge=16, le=16384,
                                  description="Expected frame height; another height gives the part a bad_frame "
                                              "verdict (null: any).")


class QueueSection(_Strict):
    """Bounds of the queues between stages."""

    frames: int = Field(4, ge=1, le=64, description="Frames waiting for inference; a part that finds the queue "
                                                    "full gets the fail-safe verdict overrun.")


class TraceLogSection(_Strict):
    """The traceability log: one SQLite row per part, and the part images as files."""

    dir: Path = Field(Path("../var/tracelog"),
                      description="Folder of trace.sqlite (WAL) and images/YYYY/MM/DD/.")
    images: Literal["all", "rejects", "none"] = Field("all", description="Which parts' images are kept.")
    sample_every_n: int = Field(1, ge=1, le=1_000_000,
                                description="Of the images the policy keeps, keep every n-th.")
    image_format: Literal["png", "jpeg"] = Field("png", description="png is lossless; jpeg is smaller.")
    disk_budget_mb: float = Field(2048.0, gt=0, le=10_000_000,
                                  description="Image folder cap, MB; the oldest images are pruned past it "
                                              "(their rows stay and record the pruning).")
    max_backlog: int = Field(
        10_000, ge=100, le=1_000_000,
        description="Rows held in memory when neither the database nor the spill reserve can take them; "
                    "past it the oldest go to the service log (journald) as CRITICAL JSON lines.")
    spill_reserve_mb: float = Field(
        16.0, ge=0.01, le=10_000,
        description="Space reserved on the log's disk at start (a preallocated spill journal) for rows the "
                    "database cannot take (disk full, I/O error); replayed into it once it writes again, MB. "
                    "About 2000 rows per MB.")
    min_free_mb: float = Field(
        64.0, ge=0, le=1_000_000,
        description="Free space the log's disk must keep; below it the tracelog alarm is up and start-up does "
                    "not report ready, MB.")
    max_held_image_mb: float = Field(
        256.0, ge=1, le=65_536,
        description="Images waiting for the disk are held up to this; a part past it keeps its row but not "
                    "its image (image_error says why), MB.")
    alarm_clear_s: float = Field(
        30.0, ge=0, le=3600,
        description="The tracelog alarms clear only after the log has worked this long without a problem, s.")
    when_rows_cannot_be_kept: Literal["alarm", "fail_safe"] = Field(
        "alarm", description="While rows fit neither in the database nor in the spill reserve: alarm: the "
                             "tracelog alarm is up and parts are decided and rejected as usual; fail_safe: "
                             "every part also gets the fail-safe verdict (reason no_trace_log).")


class ServiceSection(_Strict):
    """How the station runs under systemd: start-up, watchdog and supervisor limits."""

    startup: Literal["wait", "degraded"] = Field(
        "wait", description="wait: report ready only once camera, model and PLC are up, and fail the start "
                            "after startup_timeout_s; degraded: report ready after startup_timeout_s anyway, "
                            "with the alarms raised.")
    startup_timeout_s: float = Field(30.0, ge=1, le=600,
                                     description="How long start-up waits for the camera and the PLC, s.")
    stall_s: float = Field(10.0, ge=1, le=600,
                           description="A stage whose heartbeat is older than this is hung: the watchdog pings "
                                       "stop and systemd restarts the service, s.")
    inference_hang_s: float = Field(10.0, ge=0.5, le=600,
                                    description="Scoring one frame longer than this means the inference "
                                                "worker is hung, s.")
    max_restarts: int = Field(3, ge=0, le=100,
                              description="Restarts of one dead stage allowed within restart_window_s "
                                          "before the supervisor gives up (0: never restart).")
    restart_window_s: float = Field(300.0, ge=1, le=86_400,
                                    description="Window over which max_restarts is counted, s.")


class HmiSection(_Strict):
    """The operator web HMI (`station hmi`, its own process) and the station's live-state socket."""

    listen: str = Field("127.0.0.1", min_length=1, max_length=253, pattern=r"^[A-Za-z0-9.:_-]+$",
                        description="Address the HMI web server listens on: 127.0.0.1 = the line PC only; "
                                    "0.0.0.0 = every network interface.")
    port: int = Field(8080, ge=1, le=65535, description="TCP port of the HMI web server.")
    control_socket: Path | None = Field(
        None, description="Unix socket on which the station serves its live state (status, alarm "
                          "acknowledge, settings reload) to the HMI; null: no live channel.")
    users_file: Path = Field(Path("hmi-users.json"),
                             description="HMI users and their argon2 password hashes (`station users add`).")
    state_dir: Path = Field(Path("../var/hmi"),
                            description="Folder of the HMI's own files: reviews database and session key.")
    session_hours: float = Field(12.0, gt=0, le=168, description="A login stays valid this long, h.")
    login_max_failures: int = Field(5, ge=1, le=100,
                                    description="Failed logins per user name or client address within "
                                                "login_window_s before further attempts are refused.")
    login_window_s: float = Field(300.0, ge=1, le=86_400, description="Window of the login rate limit, s.")
    poll_ms: int = Field(200, ge=50, le=5000,
                         description="How often the HMI asks the station for its live state, ms.")
    shift_starts: list[str] = Field(["06:00", "14:00", "22:00"], min_length=1, max_length=24,
                                    description="Local times (HH:MM) at which a shift starts; the live "
                                                "page counts parts since the latest one.")
    heatmaps: bool = Field(True, description="Compute Grad-CAM heat maps for rejects on demand in the HMI.")
    secure_cookie: bool = Field(False, description="Send the session cookie over HTTPS only (set true "
                                                   "when a TLS reverse proxy serves the HMI).")

    @model_validator(mode="after")
    def _shifts(self) -> HmiSection:
        for value in self.shift_starts:
            m = re.fullmatch(r"(\d{2}):(\d{2})", value)
            if m is None or int(m.group(1)) > 23 or int(m.group(2)) > 59:
                raise ValueError(f"hmi.shift_starts: {value!r} is not a time of day as HH:MM (00:00 to 23:59)")
        if len(set(self.shift_starts)) != len(self.shift_starts):
            raise ValueError("hmi.shift_starts: a shift start is given twice")
        return self


class StationConfig(_Strict):
    """A whole station YAML: one section per stage."""

    station: StationSection = Field(default_factory=StationSection, description="Station identity and service log.")
    line: LineSection = Field(default_factory=LineSection, description="The conveyor's fastest part rate.")
    camera: CameraConfig = Field(..., description="The frame source; kind selects the camera kind.")
    frame: FrameSection = Field(default_factory=FrameSection, description="Expected frame size.")
    model: ModelSection = Field(default_factory=ModelSection, description="The model artifact and its backend.")
    decision: DecisionSection = Field(default_factory=DecisionSection,
                                      description="Threshold, deadline and fail-safe verdict.")
    gate: GateSection = Field(default_factory=GateSection,
                              description="The validity gate: per-station limits, the image_quality alarm, drift.")
    reject: RejectSection = Field(default_factory=RejectSection,
                                  description="Reject timing and the ejector output.")
    alarm: AlarmSection = Field(default_factory=AlarmSection, description="The optional alarm output.")
    queues: QueueSection = Field(default_factory=QueueSection, description="Queue bounds between stages.")
    tracelog: TraceLogSection = Field(default_factory=TraceLogSection,
                                      description="The traceability log (SQLite + images).")
    service: ServiceSection = Field(default_factory=ServiceSection,
                                    description="Start-up, watchdog and supervisor limits under systemd.")
    hmi: HmiSection = Field(default_factory=HmiSection,
                            description="The operator web HMI and the station's live-state socket.")

    @model_validator(mode="after")
    def _timing_fits(self) -> StationConfig:
        """`decision.deadline_ms` must be at most `reject.delay_ms - reject.margin_ms` (a verdict must come
        before the part reaches the ejector), and `reject.pulse_ms` shorter than the gap between parts at
        `line.max_parts_per_s` (1000 / max_parts_per_s ms); on a Modbus RTU output, `reject.late_tolerance_ms`
        at least one coil write and its reply on the wire. Every problem at once, one per line
        (station.config_issues splits them into rows)."""
        problems = []
        room_ms = self.reject.delay_ms - self.reject.margin_ms
        if self.decision.deadline_ms > room_ms:
            problems.append(
                f"decision.deadline_ms: {self.decision.deadline_ms:g} ms leaves no time before the ejector: "
                f"it must be at most reject.delay_ms - reject.margin_ms = {room_ms:g} ms")
        gap_ms = 1000.0 / self.line.max_parts_per_s
        if self.reject.pulse_ms >= gap_ms:
            problems.append(
                f"reject.pulse_ms: {self.reject.pulse_ms:g} ms is not shorter than the {gap_ms:g} ms gap "
                f"between parts at line.max_parts_per_s = {self.line.max_parts_per_s:g}")
        actuator = self.reject.actuator
        if isinstance(actuator, ModbusRtuActuatorConfig):
            wire_ms = rtu_write_round_trip_ms(actuator)
            if self.reject.late_tolerance_ms < wire_ms:
                problems.append(
                    f"reject.late_tolerance_ms: {self.reject.late_tolerance_ms:g} ms is shorter than one coil write "
                    f"and its reply take on the wire at reject.actuator.baudrate = {actuator.baudrate} "
                    f"({wire_ms:.1f} ms): every pulse would be logged late; raise it or the baud rate")
        if problems:
            raise ValueError("\n".join(problems))
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
        hmi = self.hmi.model_copy(update={
            "control_socket": None if self.hmi.control_socket is None else anchor(self.hmi.control_socket),
            "users_file": anchor(self.hmi.users_file), "state_dir": anchor(self.hmi.state_dir)})
        return self.model_copy(update={
            "camera": camera, "hmi": hmi,
            "model": self.model.model_copy(update={"path": anchor(self.model.path)}),
            "tracelog": self.tracelog.model_copy(update={"dir": anchor(self.tracelog.dir)}),
        })
