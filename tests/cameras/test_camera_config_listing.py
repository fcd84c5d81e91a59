"""Camera config validation (through the station YAML loader) and `station cameras` listing."""

from __future__ import annotations

import argparse

import pytest

from station.cameras.listing import list_cameras
from station.cli_cameras import add_cameras_parser, run_cameras
from station.config_cameras import AravisCameraConfig, GenicamCameraConfig, OpenCvCameraConfig
from station.configfile import ConfigError, parse_config_text


def _issues(camera_yaml: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config_text("camera:\n" + camera_yaml)
    return [f"{i.key}: {i.message}" for i in info.value.issues]


def test_industrial_camera_yaml_is_parsed_into_its_kind():
    cfg = parse_config_text(
        "camera:\n  kind: aravis\n  serial: GV01\n  pixel_format: BayerRG8\n"
        "  region: {x: 16, y: 8, width: 640, height: 480}\n  exposure_us: 2000\n  gain_db: 3\n"
        "  trigger: {mode: hardware, line: Line1, activation: FallingEdge}\n"
        "  reconnect: {min_backoff_ms: 200, max_backoff_ms: 5000}\n").camera
    assert isinstance(cfg, AravisCameraConfig)
    assert (cfg.region.width, cfg.trigger.line, cfg.trigger.activation) == (640, "Line1", "FallingEdge")
    assert cfg.reconnect.max_backoff_ms == 5000
    assert isinstance(parse_config_text("camera: {kind: genicam, producers: [/opt/x.cti]}").camera,
                      GenicamCameraConfig)
    assert isinstance(parse_config_text("camera: {kind: opencv, source: '0'}").camera, OpenCvCameraConfig)


@pytest.mark.parametrize(("camera_yaml", "expected"), [
    ("  kind: aravis\n  trigger: {mode: software}\n", "rate_parts_per_s is required"),
    ("  kind: aravis\n  reconnect: {min_backoff_ms: 5000, max_backoff_ms: 1000}\n", "max_backoff_ms"),
    ("  kind: aravis\n  lost_after_ms: 500\n  trigger: {mode: software, rate_parts_per_s: 5}\n",
     "frame_timeout_ms"),
    ("  kind: aravis\n  trigger: {mode: hardware, activation: Sideways}\n", "camera.trigger.activation"),
    ("  kind: genicam\n  exposure: 100\n", "camera.exposure: unknown key"),
    ("  kind: aravis\n  region: {width: 0, height: 10}\n", "camera.region.width"),
    ("  kind: opencv\n", "camera.source: Field required"),
    ("  kind: genicam\n  frame_rate_hz: 0.5\n  lost_after_ms: 3000\n", "two frame periods"),
])
def test_bad_camera_settings_are_named(camera_yaml, expected):
    issues = _issues(camera_yaml)
    assert any(expected in issue for issue in issues), issues


def test_every_camera_field_is_described():
    for model in (AravisCameraConfig, GenicamCameraConfig, OpenCvCameraConfig):
        for name, field in model.model_fields.items():
            assert name == "kind" or field.description, f"{model.__name__}.{name} has no description"


def test_listing_names_the_genicam_devices_and_the_fake_gige_camera(fake_gv, viky_cti):
    cameras, notes = list_cameras(("aravis", "genicam"), producers=[viky_cti])
    assert not notes
    gige = [c for c in cameras if c.kind == "aravis"]
    assert any(c.serial == fake_gv.serial and c.device_id.endswith(fake_gv.serial) and "127.0.0.1" in c.detail
               for c in gige), gige
    assert sorted(c.serial for c in cameras if c.kind == "genicam") == ["0", "1", "2"]


def test_station_cameras_prints_a_table(viky_cti, capsys):
    parser = argparse.ArgumentParser()
    add_cameras_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["cameras", "--kind", "genicam", "--producer", str(viky_cti)])
    assert run_cameras(args) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["KIND", "DEVICE_ID", "MODEL", "SERIAL", "VENDOR", "WHERE"]
    assert any(line.startswith("genicam") and "VikyTL_DEV_green" in line for line in out)


def test_a_kind_that_cannot_be_searched_says_why(monkeypatch, capsys):
    monkeypatch.setenv("GENICAM_GENTL64_PATH", "")
    parser = argparse.ArgumentParser()
    add_cameras_parser(parser.add_subparsers(dest="command"))
    assert run_cameras(parser.parse_args(["cameras", "--kind", "genicam"])) == 0
    assert "genicam: not searched: no GenTL producer" in capsys.readouterr().err
