"""`station cameras`: the cameras each camera kind can see, with ids, models and serials.

Each kind is asked on its own; a kind whose library is missing (or whose discovery fails) yields a
note saying why instead of hiding the other kinds' cameras.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from station.cameras.base import CameraError

log = logging.getLogger(__name__)

KINDS = ("aravis", "genicam", "opencv")


@dataclass(frozen=True)
class CameraListing:
    kind: str
    device_id: str
    model: str
    serial: str
    vendor: str
    detail: str   # address / producer / device node, whatever locates the camera


def _aravis() -> list[CameraListing]:
    from station.cameras.aravis import list_aravis_devices

    return [CameraListing("aravis", d["id"], d["model"], d["serial"], d["vendor"],
                          f"{d['protocol']} {d['address']}".strip()) for d in list_aravis_devices()]


def _genicam(producers: list[Path] | None) -> list[CameraListing]:
    from station.cameras.genicam import find_producers, list_genicam_devices

    if not find_producers(producers):
        raise CameraError("no GenTL producer given (--producer) and none in GENICAM_GENTL64_PATH")
    return [CameraListing("genicam", d["id"], d["model"], d["serial"], d["vendor"], d["producer"])
            for d in list_genicam_devices(producers)]


def _opencv(dev_root: Path = Path("/dev"), sys_root: Path = Path("/sys/class/video4linux")) -> list[CameraListing]:
    found = []
    for node in sorted(dev_root.glob("video*")):
        name_file = sys_root / node.name / "name"
        try:
            name = name_file.read_text().strip()
        except OSError:
            name = ""
        index = node.name.removeprefix("video")
        found.append(CameraListing("opencv", str(node), name, "", "", f"source: {index}"))
    return found


def list_cameras(kinds: tuple[str, ...] = KINDS, *, producers: list[Path] | None = None
                 ) -> tuple[list[CameraListing], dict[str, str]]:
    """(cameras found, {kind: why it could not be asked}) for the given kinds."""
    cameras: list[CameraListing] = []
    notes: dict[str, str] = {}
    for kind in kinds:
        try:
            if kind == "aravis":
                cameras.extend(_aravis())
            elif kind == "genicam":
                cameras.extend(_genicam(producers))
            elif kind == "opencv":
                cameras.extend(_opencv())
            else:
                notes[kind] = "unknown camera kind"
        except CameraError as exc:
            notes[kind] = str(exc)
    return cameras, notes
