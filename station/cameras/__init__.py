"""Camera kinds behind one protocol (`station.cameras.base.Camera`).

`build_camera` maps a config's `kind` to its module, imported only when used, so a station with a
replay source never needs Aravis or harvesters installed.
"""

from __future__ import annotations

import importlib

from station.cameras.base import Camera

# kind -> "module:class"
REGISTRY = {
    "replay": "station.cameras.replay:ReplayCamera",
    "synthetic": "station.cameras.synthetic:SyntheticCamera",
    "aravis": "station.cameras.aravis:AravisCamera",
    "genicam": "station.cameras.genicam:GenicamCamera",
    "opencv": "station.cameras.opencv_cam:OpenCvCamera",
}


def build_camera(config: object) -> Camera:
    kind = getattr(config, "kind")
    module_name, _, class_name = REGISTRY[kind].partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(config)
