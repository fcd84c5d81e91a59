"""Model integrity: every single-bit flip of the shipped model file is refused, and so is every way of editing
an artifact short of re-running the export.

Real components: the shipped artifact and tiny artifacts written by the real export path, torch's own
loader, the `station check-config --model` command as a subprocess, a running Station's reload.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import struct
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from support import REPO, STATION_CLI, make_tiny_model, require_component, write_config
from tinynet import TinyNet

from station.app import Station
from station.artifact import LEGACY_FORMAT, ArtifactMetadata, ModelArtifactError, load_artifact
from station.artifact_integrity import SEAL_LENGTH, seal, tensor_digest, text_digest
from station.configfile import load_config
from station.preprocess import Preprocess

SHIPPED_MODEL = REPO / "models" / "impeller-resnet18.pt"
STATION = STATION_CLI  # the test network registered (tests/station_cli.py)


def flipped(raw: bytes, offset: int, bit: int) -> bytes:
    out = bytearray(raw)
    out[offset] ^= 1 << bit
    return bytes(out)


def record_data_offset(raw: bytes, info: zipfile.ZipInfo) -> int:
    """Where a stored (uncompressed) zip record's bytes start: after its local header, name and extra field."""
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26:info.header_offset + 30])
    return info.header_offset + 30 + name_len + extra_len


def chosen_offsets(raw: bytes) -> dict[str, int]:
    """Offsets in every kind of region of the file: tensor bytes, metadata text, zip structures, the seal."""
    zf = zipfile.ZipFile(io.BytesIO(raw))
    infos = zf.infolist()
    biggest = max(infos, key=lambda i: i.file_size)               # a conv layer's fp16 weights
    smallest_data = min((i for i in infos if "/data/" in i.filename), key=lambda i: i.file_size)
    pickle_info = next(i for i in infos if i.filename.endswith("data.pkl"))
    pkl = record_data_offset(raw, pickle_info)
    eocd = len(raw) - SEAL_LENGTH - 22
    cd_offset = struct.unpack("<I", raw[eocd + 16:eocd + 20])[0]
    zip64 = raw.rfind(b"PK\x06\x06")
    second = infos[1]
    return {
        "tensor data: middle of the largest weight": record_data_offset(raw, biggest) + biggest.file_size // 2,
        "tensor data: first byte of the largest weight": record_data_offset(raw, biggest),
        "tensor data: a small tensor": record_data_offset(raw, smallest_data),
        "metadata: the recommended threshold's digits": raw.index(b"recommended_threshold", pkl) + 26,
        "metadata: a validity limit": raw.index(b'"limits"', pkl) + 12,
        "metadata: the recorded digests": raw.index(b"tensors_sha256", pkl) + 40,
        "zip: first local header signature": 0,
        "zip: a local header's timestamp": second.header_offset + 10,
        "zip: a local header's CRC": second.header_offset + 14,
        "zip: alignment padding (extra field)": record_data_offset(raw, second) - 4,
        "zip: central directory entry": cd_offset + 20,
        "zip: zip64 end record": zip64 + 24 if zip64 >= 0 else cd_offset,
        "zip: end-of-central-directory record": eocd + 10,
        "zip: comment length": eocd + 20,
        "seal: its prefix": len(raw) - SEAL_LENGTH + 5,
        "seal: the recorded sha256": len(raw) - 7,
    }


def test_thirty_random_and_sixteen_chosen_single_bit_flips_of_the_shipped_model_are_all_refused(tmp_path):
    require_component(SHIPPED_MODEL.is_file(), f"the shipped model {SHIPPED_MODEL}")
    raw = SHIPPED_MODEL.read_bytes()
    assert load_artifact(SHIPPED_MODEL).format == "impeller-artifact/2"
    rng = np.random.default_rng(13)
    cases = {f"random offset {int(o)} bit {int(b)}": (int(o), int(b))
             for o, b in zip(rng.integers(0, len(raw), 30), rng.integers(0, 8, 30))}
    cases.update({name: (offset, 3) for name, offset in chosen_offsets(raw).items()})
    target = tmp_path / "model.pt"
    accepted, messages = [], {}
    for name, (offset, bit) in cases.items():
        target.write_bytes(flipped(raw, offset, bit))
        try:
            load_artifact(target)
        except ModelArtifactError as exc:
            messages[name] = str(exc)
        else:
            accepted.append(name)
    assert not accepted, f"bit flips accepted: {accepted}"
    assert len(messages) == len(cases) >= 46
    assert all("\n" not in m and "weights_only" not in m for m in messages.values())
    # The same refusal from the command an operator (and the unit's ExecStartPre) runs: exit 2, one line.
    target.write_bytes(flipped(raw, cases["tensor data: middle of the largest weight"][0], 3))
    cfg = write_config(tmp_path / "s.yaml", "camera: {kind: synthetic}\nmodel: {path: model.pt}\n"
                       "decision: {deadline_ms: 300}\nreject: {delay_ms: 800, actuator: {kind: log}}\n"
                       "tracelog: {dir: log}\n")
    result = subprocess.run([*STATION, "check-config", str(cfg), "--model"], capture_output=True, text=True,
                            timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "model.path" in result.stderr and "integrity seal" in result.stderr


def _payload(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _write_sealed(path: Path, payload: dict) -> None:
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    path.write_bytes(seal(buffer.getvalue()))


def test_torch_reads_a_sealed_file_and_a_stripped_seal_is_refused(tmp_path):
    model = make_tiny_model(tmp_path / "tiny.pt")
    raw = model.read_bytes()
    assert _payload(model)["format"] == "impeller-artifact/2", "the seal leaves the file a plain torch zip"
    # Strip the seal the way a zip tool would: drop the comment, zero its length.
    stripped = raw[:-SEAL_LENGTH - 2] + b"\x00\x00"
    assert zipfile.ZipFile(io.BytesIO(stripped)).testzip() is None
    (tmp_path / "stripped.pt").write_bytes(stripped)
    with pytest.raises(ModelArtifactError, match="integrity seal is missing"):
        load_artifact(tmp_path / "stripped.pt")


def test_an_edited_and_resealed_artifact_is_refused_by_its_digests_and_reference_scores(tmp_path):
    """Someone who edits the payload and seals it again with the same tool still hits the export-time digests;
    one who recomputes those too still hits the reference inputs' recorded scores."""
    model = make_tiny_model(tmp_path / "tiny.pt")
    payload = _payload(model)
    meta = json.loads(payload["metadata_json"])
    meta["recommended_threshold"] = 0.99
    edited = {**payload, "metadata_json": json.dumps(meta, sort_keys=True)}
    _write_sealed(tmp_path / "meta.pt", edited)
    with pytest.raises(ModelArtifactError, match="metadata does not match the digest"):
        load_artifact(tmp_path / "meta.pt")

    state = {k: v.clone() for k, v in payload["state_dict"].items()}
    state["fc.bias"] += 3.0  # every part now scores differently
    _write_sealed(tmp_path / "weights.pt", {**payload, "state_dict": state})
    with pytest.raises(ModelArtifactError, match="tensors do not match the digest"):
        load_artifact(tmp_path / "weights.pt")

    groups = {"state_dict": state, "validity_tensors": payload["validity_tensors"],
              "reference": {"images": payload["reference_images"]}}
    digests = {"tensors_sha256": tensor_digest(groups), "metadata_sha256": text_digest(payload["metadata_json"])}
    forged = {**payload, "state_dict": state, "digests": digests}
    _write_sealed(tmp_path / "forged.pt", forged)
    with pytest.raises(ModelArtifactError, match="reference check.*logit"):
        load_artifact(tmp_path / "forged.pt")


def test_files_that_are_not_station_artifacts_get_a_clear_line_never_torch_advice(tmp_path):
    torch.save(TinyNet(2), tmp_path / "module.pt")  # a whole pickled network: would run code to load
    (tmp_path / "notes.txt").write_text("not a model\n")
    (tmp_path / "noise.pt").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    expected = {"module.pt": "holds pickled Python objects", "notes.txt": "not a model artifact",
                "noise.pt": "not a model artifact"}
    for name, phrase in expected.items():
        with pytest.raises(ModelArtifactError) as err:
            load_artifact(tmp_path / name)
        message = str(err.value)
        assert phrase in message and "weights_only" not in message and "\n" not in message, message


def legacy_artifact(path: Path) -> Path:
    """A format-1 artifact as the previous release wrote it: no seal, no validity domain."""
    meta = ArtifactMetadata(architecture="tinynet", class_names=("def_front", "ok_front"),
                            defective_class="def_front", preprocess=Preprocess(input_size=64),
                            recommended_threshold=0.5, model_name="legacy-test")
    torch.manual_seed(0)
    torch.save({"format": LEGACY_FORMAT, "metadata_json": json.dumps(meta.to_dict()),
                "state_dict": TinyNet(2).state_dict()}, path)
    return path


def test_a_format_1_model_still_runs_with_the_gate_off_and_a_loud_warning(tmp_path, caplog):
    legacy_artifact(tmp_path / "old.pt")
    cfg = load_config(write_config(tmp_path / "s.yaml", """
camera: {kind: synthetic, rate_parts_per_s: null, size_px: 64, limit: 6}
model: {path: old.pt, device: cpu, warmup_runs: 0}
decision: {deadline_ms: 300}
reject: {delay_ms: 800, actuator: {kind: log}}
tracelog: {dir: log, images: none}
"""))
    from support import query, run_to_end

    with caplog.at_level(logging.WARNING):
        station, summary = run_to_end(cfg)
    assert station.gate is None and summary["gate"]["enabled"] is False
    assert summary["parts"] == 6 and summary["fail_safe"] == {}
    warnings = [r.getMessage() for r in caplog.records if "VALIDITY GATE OFF" in r.getMessage()]
    assert warnings and "format-1" in warnings[0] and "training calibrate" in warnings[0]
    events = query(tmp_path / "log" / "trace.sqlite", "SELECT level, message FROM events WHERE kind = 'gate'")
    assert [e["level"] for e in events] == ["WARNING"] and "VALIDITY GATE OFF" in events[0]["message"]
    assert "gate OFF (format-1 model)" in station.summary_line()
    rows = query(tmp_path / "log" / "trace.sqlite", "SELECT gate_failed, gate_brightness FROM parts")
    assert all(r["gate_failed"] is None and r["gate_brightness"] is None for r in rows)
    result = subprocess.run([*STATION, "check-config", str(cfg.path), "--model"], capture_output=True, text=True,
                            timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0 and "WARNING: VALIDITY GATE OFF" in result.stdout, result.stdout + result.stderr


def test_a_bit_flipped_model_is_refused_at_start_and_on_reload(tmp_path):
    model = make_tiny_model(tmp_path / "tiny.pt")
    raw = model.read_bytes()
    zf = zipfile.ZipFile(io.BytesIO(raw))
    weights = max(zf.infolist(), key=lambda i: i.file_size)
    (tmp_path / "flipped.pt").write_bytes(flipped(raw, record_data_offset(raw, weights) + 5, 0))
    text = """
camera: {kind: synthetic, rate_parts_per_s: 20, size_px: 64}
line: {max_parts_per_s: 20}
model: {path: MODEL, device: cpu, warmup_runs: 0}
decision: {deadline_ms: 100}
reject: {delay_ms: 150, pulse_ms: 5, actuator: {kind: log}}
tracelog: {dir: log, images: none}
"""
    with pytest.raises(ModelArtifactError, match="integrity seal"):
        Station(load_config(write_config(tmp_path / "bad.yaml", text.replace("MODEL", "flipped.pt")))).start()
    station = Station(load_config(write_config(tmp_path / "s.yaml", text.replace("MODEL", "tiny.pt"))))
    station.start()
    try:
        from station.reload import ReloadError

        shutil.copy(tmp_path / "flipped.pt", tmp_path / "next.pt")
        with pytest.raises(ReloadError, match="integrity seal.*running model"):
            station.reload(load_config(write_config(tmp_path / "s.yaml", text.replace("MODEL", "next.pt"))))
        assert station.classifier.artifact.path == tmp_path / "tiny.pt"
    finally:
        station.stop()
