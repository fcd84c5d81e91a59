"""The `aravis` camera: GigE Vision and USB3 Vision cameras through Aravis (PyGObject, `gi.repository.Aravis`).

Opens the camera by device id, IP address or serial, applies pixel format, region, exposure, gain,
frame rate and trigger settings from the YAML, and streams into a ring of driver buffers. Buffers
that are not complete are counted and become broken parts; the camera's own buffer timestamps are
mapped to the monotonic clock (see `streaming.ClockMapper`). The GigE heartbeat's `control-lost`
signal, a failed control read, a failed software trigger or a silent stream raise `CameraLost`.
Needs Debian's `gir1.2-aravis-0.8` and pip's `PyGObject<3.51`.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from station.cameras.base import CameraError, CameraLost
from station.cameras.pixels import from_buffer, station_format
from station.cameras.streaming import RawFrame, StreamingCamera
from station.config_cameras import AravisCameraConfig

log = logging.getLogger(__name__)

# Releasing a GigE camera that no longer answers costs ~10 s of register-write timeouts inside
# Aravis (stream and control teardown; not configurable in 0.8). Those objects are released on a
# short-lived daemon thread so close() returns at once; open() refuses to start a new connection
# to the same device while the old one is still being torn down.
_release_threads: list[threading.Thread] = []


def _release_later(*objects: Any) -> threading.Thread:
    holder = list(objects)
    del objects

    def release() -> None:
        started = time.monotonic()
        holder.clear()
        log.info("released a lost Aravis connection in %.1f s", time.monotonic() - started)

    thread = threading.Thread(target=release, name="aravis-release", daemon=True)
    thread.start()
    _release_threads.append(thread)
    return thread


def join_release_threads(timeout_s: float = 15.0) -> bool:
    """Wait for lost connections to be torn down (tests, shutdown); True when none is left."""
    deadline = time.monotonic() + timeout_s
    for thread in list(_release_threads):
        thread.join(max(0.0, deadline - time.monotonic()))
    _release_threads[:] = [t for t in _release_threads if t.is_alive()]
    return not _release_threads


def load_aravis() -> tuple[Any, Any]:
    """Return (Aravis, GLib) from PyGObject; CameraError with the install hint when missing."""
    try:
        import gi

        gi.require_version("Aravis", "0.8")
        from gi.repository import Aravis, GLib
    except (ImportError, ValueError) as exc:
        raise CameraError("the aravis camera needs PyGObject and Aravis 0.8: apt install gir1.2-aravis-0.8 "
                          f"libgirepository1.0-dev libcairo2-dev pkg-config; pip install 'PyGObject<3.51' ({exc})"
                          ) from exc
    return Aravis, GLib


def list_aravis_devices() -> list[dict[str, str]]:
    """Every device Aravis discovers: id, model, serial, vendor, address, protocol."""
    aravis, _ = load_aravis()
    aravis.update_device_list()
    return [{"id": aravis.get_device_id(i) or "", "model": aravis.get_device_model(i) or "",
             "serial": aravis.get_device_serial_nbr(i) or "", "vendor": aravis.get_device_vendor(i) or "",
             "address": aravis.get_device_address(i) or "", "protocol": aravis.get_device_protocol(i) or ""}
            for i in range(aravis.get_n_devices())]


class AravisCamera(StreamingCamera):
    kind = "aravis"
    log = log

    def __init__(self, config: AravisCameraConfig) -> None:
        super().__init__(config)
        self._camera: Any = None
        self._stream: Any = None
        self._lost_signal: str | None = None
        self._releasing: threading.Thread | None = None
        self._losses_at_open = 0
        self._pixel_format = ""
        self._pixel_format_code = 0
        self._label = config.device_id or (f"serial {config.serial}" if config.serial else "first camera")

    def describe(self) -> str:
        return f"aravis {self._label}"

    # --- device hooks -----------------------------------------------------------------------------

    def _resolve_device_id(self) -> str | None:
        cfg = self.config
        if cfg.serial is None:
            return cfg.device_id
        devices = list_aravis_devices()
        for dev in devices:
            if dev["serial"] == cfg.serial and (cfg.device_id is None or cfg.device_id in (dev["id"], dev["address"])):
                return dev["id"]
        seen = ", ".join(f"{d['id']} (serial {d['serial']})" for d in devices) or "none"
        raise CameraError(f"no Aravis camera with serial {cfg.serial!r}; cameras seen: {seen}")

    def _open_device(self) -> None:
        aravis, glib = load_aravis()
        if self._releasing is not None and self._releasing.is_alive():
            raise CameraError("the lost connection to this camera is still being torn down; retry after backoff")
        self._releasing = None
        device_id = self._resolve_device_id()
        try:
            camera = aravis.Camera.new(device_id)
        except glib.Error as exc:
            raise CameraError(f"cannot open Aravis camera {device_id or '(first found)'}: {exc.message}") from exc
        self._camera = camera
        self._lost_signal = None
        self._losses_at_open = self.counters["lost"]
        try:
            self._configure(aravis, glib)
            fmt_name = camera.get_pixel_format_as_string()
            self._pixel_format = station_format(fmt_name)
            self._pixel_format_code = camera.get_pixel_format()
            self._stream = camera.create_stream(None, None)
            if camera.is_gv_device():
                # The kernel's default socket receive buffer (net.core.rmem_default, 208 KiB) is smaller
                # than one frame of most GigE cameras: an unprivileged process such as the service user
                # then loses packets on every frame (root gets Aravis' packet socket instead). AUTO sizes
                # the buffer to the payload, up to net.core.rmem_max.
                self._stream.set_property("socket-buffer", aravis.GvStreamSocketBuffer.AUTO)
            payload = camera.get_payload()
            for _ in range(self.config.buffer_count):
                self._stream.push_buffer(aravis.Buffer.new_allocate(payload))
            camera.get_device().connect("control-lost", self._on_control_lost)
            camera.start_acquisition()
        except (glib.Error, ValueError) as exc:
            self._release()
            raise CameraError(f"cannot configure Aravis camera {device_id or '(first found)'}: "
                              f"{getattr(exc, 'message', exc)}") from exc
        _, _, width, height = camera.get_region()
        self._label = f"{camera.get_model_name()} {camera.get_device_serial_number()}"
        log.info("opened %s: %s %dx%d, trigger %s", self.describe(), fmt_name, width, height, self.trigger_mode)

    def _set(self, what: str, value: Any, fn: Any, *args: Any) -> None:
        _, glib = load_aravis()
        try:
            fn(*args)
        except glib.Error as exc:
            raise CameraError(f"cannot set {what} to {value!r}: {exc.message}") from exc

    def _configure(self, aravis: Any, glib: Any) -> None:
        cam, cfg = self._camera, self.config
        if cfg.packet_size is not None and cam.is_gv_device():
            self._set("packet_size", cfg.packet_size, cam.gv_set_packet_size, cfg.packet_size)
        if cfg.pixel_format is not None:
            station_format(cfg.pixel_format)  # refuse a format the station cannot convert before setting it
            self._set("pixel_format", cfg.pixel_format, cam.set_pixel_format_from_string, cfg.pixel_format)
        if cfg.region is not None:
            r = cfg.region
            self._set("region", r, cam.set_region, r.x, r.y, r.width, r.height)
            got = tuple(cam.get_region())
            if got != (r.x, r.y, r.width, r.height):
                raise CameraError(f"region: camera applied {got}, asked for {(r.x, r.y, r.width, r.height)} "
                                  "(check the sensor size and the width/offset increments)")
        if cfg.exposure_us is not None:
            if cam.is_exposure_auto_available():
                self._set("exposure auto", aravis.Auto.OFF, cam.set_exposure_time_auto, aravis.Auto.OFF)
            self._set("exposure_us", cfg.exposure_us, cam.set_exposure_time, cfg.exposure_us)
        if cfg.gain_db is not None:
            if cam.is_gain_auto_available():
                self._set("gain auto", aravis.Auto.OFF, cam.set_gain_auto, aravis.Auto.OFF)
            self._set("gain_db", cfg.gain_db, cam.set_gain, cfg.gain_db)
        self._set("acquisition mode", "Continuous", cam.set_acquisition_mode, aravis.AcquisitionMode.CONTINUOUS)
        trig = cfg.trigger
        if trig.mode == "free_run":
            self._set("trigger.mode", "free_run", cam.clear_triggers)
            if cfg.frame_rate_hz is not None:
                self._set("frame_rate_hz", cfg.frame_rate_hz, cam.set_frame_rate, cfg.frame_rate_hz)
            return
        source = "Software" if trig.mode == "software" else trig.line
        self._set("trigger.mode", trig.mode, cam.clear_triggers)
        self._set("trigger.selector", trig.selector, cam.set_string, "TriggerSelector", trig.selector)
        self._set("trigger.mode", "On", cam.set_string, "TriggerMode", "On")
        self._set("trigger source", source, cam.set_string, "TriggerSource", source)
        if trig.mode == "hardware":
            if cam.is_feature_available("TriggerActivation"):
                self._set("trigger.activation", trig.activation, cam.set_string, "TriggerActivation", trig.activation)
            elif trig.activation != "RisingEdge":
                raise CameraError(f"trigger.activation: the camera has no TriggerActivation, cannot use {trig.activation}")
            if trig.delay_us is not None:
                self._set("trigger.delay_us", trig.delay_us, cam.set_float, "TriggerDelay", trig.delay_us)

    def _on_control_lost(self, *_args: Any) -> None:
        # Called from Aravis' heartbeat thread: only leave a note for the capture thread.
        self._lost_signal = "Aravis reported control-lost (no heartbeat answer)"

    def _control_lost(self) -> str | None:
        return self._lost_signal

    def _pop(self, timeout_s: float) -> RawFrame | None:
        aravis, _ = load_aravis()
        stream = self._stream
        if stream is None:
            raise CameraLost("stream is not open")
        buf = (stream.try_pop_buffer() if timeout_s <= 0
               else stream.timeout_pop_buffer(max(1, int(timeout_s * 1e6))))
        if buf is None:
            return None
        arrival = time.monotonic_ns()
        try:
            status = buf.get_status()
            raw = RawFrame(image=None, arrival_ns=self._arrival_from_system_time(buf.get_system_timestamp(), arrival),
                           device_timestamp_ns=buf.get_timestamp() or None, frame_id=buf.get_frame_id())
            if status != aravis.BufferStatus.SUCCESS:
                self.counters["incomplete"] += 1
                raw.error = f"incomplete buffer: {status.value_nick}"
                return raw
            width, height = buf.get_image_width(), buf.get_image_height()
            if buf.get_image_pixel_format() != self._pixel_format_code:
                raw.error = f"buffer pixel format 0x{buf.get_image_pixel_format():08x} is not the configured one"
                return raw
            try:
                raw.image = from_buffer(buf.get_image_data(), width=width, height=height,
                                        pixel_format=self._pixel_format)
            except ValueError as exc:
                self.counters["corrupt"] += 1
                raw.error = f"corrupt buffer: {exc}"
            return raw
        finally:
            stream.push_buffer(buf)

    @staticmethod
    def _arrival_from_system_time(system_ns: int, popped_ns: int) -> int:
        """Aravis stamps each buffer with the host's wall clock on arrival: map it to monotonic."""
        if not system_ns:
            return popped_ns
        mapped = system_ns - (time.time_ns() - time.monotonic_ns())
        return mapped if popped_ns - 5_000_000_000 < mapped <= popped_ns else popped_ns

    def _fire_software_trigger(self) -> None:
        _, glib = load_aravis()
        try:
            self._camera.software_trigger()
        except glib.Error as exc:
            raise CameraLost(f"software trigger command failed: {exc.message}") from exc

    def _probe(self) -> None:
        _, glib = load_aravis()
        try:
            self._camera.get_device().read_register(0x0000 if self._camera.is_gv_device() else 0x0)
        except glib.Error as exc:
            raise CameraLost(f"control read failed: {exc.message}") from exc

    def _close_device(self) -> None:
        _, glib = load_aravis()
        if self._camera is None:
            return
        if self.counters["lost"] > self._losses_at_open or self._lost_signal is not None:
            # The device does not answer: every teardown write would time out on this thread.
            camera, stream = self._camera, self._stream
            self._release()
            self._releasing = _release_later(stream, camera)
            del camera, stream
            return
        try:
            self._camera.stop_acquisition()
        except glib.Error as exc:
            log.warning("%s: stop acquisition failed while closing: %s", self.describe(), exc.message)
        self._release()

    def _release(self) -> None:
        self._stream = None
        self._camera = None
