"""The `genicam` camera: any camera behind a GenTL producer (.cti) through `harvesters`.

The producers come from the YAML (`producers`: files or folders) or from `GENICAM_GENTL64_PATH`
(a path list, as GenTL defines it). The device is selected by id or serial; pixel format, region,
exposure, gain, frame rate and trigger nodes are written from the YAML, and a node the YAML sets
but the device lacks is a clear `CameraError` at open. Incomplete buffers (which harvesters drops
itself) are counted through its INCOMPLETE_BUFFER callback and handed on as broken parts.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from station.cameras.base import CameraError, CameraLost
from station.cameras.pixels import check_declared_size, from_buffer, station_format
from station.cameras.streaming import RawFrame, StreamingCamera
from station.config_cameras import GenicamCameraConfig

log = logging.getLogger(__name__)


def find_producers(paths: list[Path] | None = None) -> list[Path]:
    """The .cti files named by `paths` (files or folders), else by GENICAM_GENTL64_PATH."""
    if paths:
        entries = [Path(p).expanduser() for p in paths]
    else:
        entries = [Path(p) for p in os.environ.get("GENICAM_GENTL64_PATH", "").split(os.pathsep) if p]
    found: list[Path] = []
    for entry in entries:
        if entry.is_dir():
            found.extend(sorted(entry.glob("*.cti")))
        elif entry.is_file():
            found.append(entry)
        elif paths:
            raise CameraError(f"GenTL producer {entry} does not exist")
    return found


def load_harvesters() -> tuple[Any, Any]:
    """Return (Harvester class, genicam.gentl module); CameraError with the install hint when missing."""
    try:
        from genicam import gentl
        from harvesters.core import Harvester
    except ImportError as exc:
        raise CameraError(f"the genicam camera needs harvesters: pip install harvesters ({exc})") from exc
    return Harvester, gentl


def _info(dev: Any, name: str) -> str:
    _, gentl = load_harvesters()
    try:
        return str(getattr(dev, name))
    except gentl.GenericException:
        return ""


def list_genicam_devices(producers: list[Path] | None = None) -> list[dict[str, str]]:
    """Every device the producers see: id, model, serial, vendor, producer."""
    harvester_cls, _ = load_harvesters()
    found = []
    for cti in find_producers(producers):
        harvester = harvester_cls()
        try:
            harvester.add_file(str(cti))
            harvester.update()
            for dev in harvester.device_info_list:
                found.append({"id": _info(dev, "id_"), "model": _info(dev, "model"),
                              "serial": _info(dev, "serial_number"), "vendor": _info(dev, "vendor"),
                              "producer": str(cti)})
        finally:
            harvester.reset()
    return found


class GenicamCamera(StreamingCamera):
    kind = "genicam"
    log = log

    def __init__(self, config: GenicamCameraConfig) -> None:
        super().__init__(config)
        self._harvester: Any = None
        self._ia: Any = None
        self._incomplete_pending = 0
        self._label = config.device_id or (f"serial {config.serial}" if config.serial else "first device")

    def describe(self) -> str:
        return f"genicam {self._label}"

    # --- device hooks -----------------------------------------------------------------------------

    def _open_device(self) -> None:
        harvester_cls, gentl = load_harvesters()
        producers = find_producers(self.config.producers)
        if not producers:
            raise CameraError("no GenTL producer: set camera.producers or GENICAM_GENTL64_PATH")
        harvester = harvester_cls()
        self._harvester = harvester
        try:
            for cti in producers:
                harvester.add_file(str(cti), check_existence=True)
            harvester.update()
            index = self._select(harvester.device_info_list)
            self._ia = harvester.create(index)
            self._ia.num_buffers = self.config.buffer_count
            self._configure()
            fmt_name = str(self._ia.remote_device.node_map.PixelFormat.value)
            self._pixel_format = station_format(fmt_name)
            self._ia.add_callback(self._ia.Events.INCOMPLETE_BUFFER, _IncompleteCounter(self))
            self._ia.start()
        except (gentl.GenericException, ValueError, OSError) as exc:
            self._release()
            raise CameraError(f"cannot open GenTL camera {self._label}: {exc}") from exc
        except CameraError:
            self._release()
            raise
        dev = harvester.device_info_list[index]
        self._label = f"{_info(dev, 'model')} {_info(dev, 'serial_number') or _info(dev, 'id_')}"
        log.info("opened %s: %s, trigger %s", self.describe(), fmt_name, self.trigger_mode)

    def _select(self, devices: list[Any]) -> int:
        cfg = self.config
        for i, dev in enumerate(devices):
            if cfg.device_id is not None and _info(dev, "id_") != cfg.device_id:
                continue
            if cfg.serial is not None and _info(dev, "serial_number") != cfg.serial:
                continue
            return i
        seen = ", ".join(f"{_info(d, 'id_')} (serial {_info(d, 'serial_number')})" for d in devices) or "none"
        raise CameraError(f"no GenTL device matches device_id={cfg.device_id!r} serial={cfg.serial!r}; "
                          f"devices seen: {seen}")

    def _node(self, name: str, key: str) -> Any:
        node_map = self._ia.remote_device.node_map
        if not node_map.has_node(name):
            raise CameraError(f"{key}: the device has no {name} node")
        return getattr(node_map, name)

    def _set(self, name: str, value: Any, key: str) -> None:
        _, gentl = load_harvesters()
        try:
            self._node(name, key).value = value
        except (gentl.GenericException, AttributeError, TypeError) as exc:
            raise CameraError(f"{key}: cannot set {name} to {value!r}: {exc}") from exc

    def _configure(self) -> None:
        cfg = self.config
        node_map = self._ia.remote_device.node_map
        if cfg.pixel_format is not None:
            station_format(cfg.pixel_format)
            self._set("PixelFormat", cfg.pixel_format, "pixel_format")
        if cfg.region is not None:
            r = cfg.region
            # Shrink the offsets first so the new size always fits.
            for name in ("OffsetX", "OffsetY"):
                if node_map.has_node(name):
                    self._set(name, 0, "region")
            self._set("Width", r.width, "region.width")
            self._set("Height", r.height, "region.height")
            if r.x or node_map.has_node("OffsetX"):
                self._set("OffsetX", r.x, "region.x")
            if r.y or node_map.has_node("OffsetY"):
                self._set("OffsetY", r.y, "region.y")
        if cfg.exposure_us is not None:
            if node_map.has_node("ExposureAuto"):
                self._set("ExposureAuto", "Off", "exposure_us")
            self._set("ExposureTime", cfg.exposure_us, "exposure_us")
        if cfg.gain_db is not None:
            if node_map.has_node("GainAuto"):
                self._set("GainAuto", "Off", "gain_db")
            self._set("Gain", cfg.gain_db, "gain_db")
        trig = cfg.trigger
        if trig.mode == "free_run":
            if node_map.has_node("TriggerMode"):
                if node_map.has_node("TriggerSelector"):
                    self._set("TriggerSelector", trig.selector, "trigger.selector")
                self._set("TriggerMode", "Off", "trigger.mode")
            if cfg.frame_rate_hz is not None:
                if node_map.has_node("AcquisitionFrameRateEnable"):
                    self._set("AcquisitionFrameRateEnable", True, "frame_rate_hz")
                self._set("AcquisitionFrameRate", cfg.frame_rate_hz, "frame_rate_hz")
            return
        self._set("TriggerSelector", trig.selector, "trigger.selector")
        self._set("TriggerMode", "On", "trigger.mode")
        self._set("TriggerSource", "Software" if trig.mode == "software" else trig.line, "trigger.line")
        if trig.mode == "hardware":
            if node_map.has_node("TriggerActivation"):
                self._set("TriggerActivation", trig.activation, "trigger.activation")
            if trig.delay_us is not None:
                self._set("TriggerDelay", trig.delay_us, "trigger.delay_us")
        else:
            self._node("TriggerSoftware", "trigger.mode")

    def _pop(self, timeout_s: float) -> RawFrame | None:
        _, gentl = load_harvesters()
        if self._ia is None:
            raise CameraLost("acquirer is not open")
        if self._incomplete_pending:
            self._incomplete_pending -= 1
            return RawFrame(image=None, error="incomplete buffer (dropped by the GenTL producer)",
                            arrival_ns=time.monotonic_ns())
        try:
            # harvesters waits forever on a zero timeout: poll for the shortest time instead.
            buffer = self._ia.try_fetch(timeout=max(timeout_s, 0.001))
        except gentl.GenericException as exc:
            raise CameraLost(f"GenTL fetch failed: {exc}") from exc
        if buffer is None:
            return None
        arrival = time.monotonic_ns()
        with buffer:
            raw = RawFrame(image=None, arrival_ns=arrival)
            try:
                raw.device_timestamp_ns = int(buffer.timestamp_ns) or None
            except gentl.GenericException:
                raw.device_timestamp_ns = None
            try:
                raw.frame_id = int(buffer.module.frame_id)
            except gentl.GenericException:
                raw.frame_id = None
            if not buffer.payload.components:
                raw.error = "buffer has no image component"
                return raw
            comp = buffer.payload.components[0]
            try:
                fmt = station_format(str(comp.data_format))
                # The declared size first: an oversized buffer is never copied or converted.
                check_declared_size(int(comp.width), int(comp.height), what=f"{comp.data_format} buffer")
                raw.image = from_buffer(np.array(comp.data, copy=True), width=int(comp.width),
                                        height=int(comp.height), pixel_format=fmt)
            except ValueError as exc:
                self.counters["corrupt"] += 1
                raw.error = f"corrupt buffer: {exc}"
        return raw

    def _fire_software_trigger(self) -> None:
        _, gentl = load_harvesters()
        try:
            self._ia.remote_device.node_map.TriggerSoftware.execute()
        except gentl.GenericException as exc:
            raise CameraLost(f"software trigger command failed: {exc}") from exc

    def _probe(self) -> None:
        _, gentl = load_harvesters()
        try:
            self._ia.remote_device.node_map.Width.value  # noqa: B018 - a control read, result unused
        except gentl.GenericException as exc:
            raise CameraLost(f"control read failed: {exc}") from exc

    def _close_device(self) -> None:
        _, gentl = load_harvesters()
        if self._ia is not None:
            try:
                self._ia.stop()
            except gentl.GenericException as exc:
                log.info("%s: stop failed while closing: %s", self.describe(), exc)
        self._release()

    def _release(self) -> None:
        _, gentl = load_harvesters()
        try:
            if self._ia is not None:
                self._ia.destroy()
            if self._harvester is not None:
                self._harvester.reset()
        except gentl.GenericException as exc:
            log.info("%s: release failed: %s", self.describe(), exc)
        self._ia = None
        self._harvester = None


class _IncompleteCounter:
    """harvesters callback: count a dropped incomplete buffer and hand it on as a broken part."""

    def __init__(self, camera: GenicamCamera) -> None:
        self.camera = camera

    def emit(self, context: Any = None) -> None:
        self.camera.counters["incomplete"] += 1
        self.camera._incomplete_pending += 1
