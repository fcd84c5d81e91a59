"""INT8 (`training.quantize`, `station.int8_model`): a real ONNX Runtime static quantization of a tiny
sealed artifact's network, calibrated on rendered frames; the station runs it (precision int8), its gate
still rejects a covered lens, the seal covers the INT8 bytes, and the station refuses an INT8 graph that
disagrees with fp32 beyond the recorded tolerance or belongs to another network."""

from __future__ import annotations

import numpy as np
import pytest

from station.artifact import ModelArtifactError, load_artifact, save_artifact
from station.cameras.synthetic import render_impeller
from station.classifier import Classifier
from station.int8_model import Int8Graph
from support import make_tiny_model
from training.quantize import build_int8, card_section, with_section

pytest.importorskip("onnxruntime.quantization")


def rendered(n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [render_impeller(rng, int(rng.choice((96, 128))), defective=i % 2 == 0) for i in range(n)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny artifact (threshold 0.99: every rendered part is `ok` for fp32) and its INT8 graph."""
    folder = tmp_path_factory.mktemp("int8")
    art = load_artifact(make_tiny_model(folder / "tiny.pt", threshold=0.99))
    val = rendered(24, seed=2)
    graph, info = build_int8(art, calibration_images=rendered(24, seed=1), val_images=val,
                             val_labels=[1] * len(val), threads=1)
    out = folder / "tiny-int8.pt"
    save_artifact(out, art.model, art.metadata, validity=art.validity, int8=graph)
    return folder, art, graph, info, out


def test_the_station_runs_the_int8_graph_and_its_gate_still_rejects_a_covered_lens(tiny):
    _, art, graph, info, out = tiny
    assert load_artifact(out).int8.onnx == graph.onnx
    int8 = Classifier.from_file(out, backend="auto", device="cpu", precision="int8", threads=1, warmup_runs=1)
    fp32 = Classifier.from_file(out, backend="onnxruntime", device="cpu", threads=1, warmup_runs=1)
    assert int8.describe().endswith("(onnxruntime on cpu, int8)")
    tol = graph.tolerance
    for image in rendered(6, seed=3):
        a, b = int8.assess(image), fp32.assess(image)
        assert abs(a.p_defect - b.p_defect) <= tol["p_defect_abs"]
        assert a.measures["novelty"] == pytest.approx(b.measures["novelty"], rel=tol["novelty_rel"])
    covered = np.zeros((128, 128), np.uint8)
    from station.config_gate import GateLimits
    from station.gate import Gate

    assert Gate.build(int8.domain, GateLimits()).check(int8.assess(covered).measures).failed, "gate off under INT8"
    assert info["novelty_scale"] >= 1.0 and info["validation"]["int8"]["escapes"] == 0


def test_the_seal_covers_the_int8_graph(tiny):
    folder, _, graph, _, out = tiny
    raw = bytearray(out.read_bytes())
    at = raw.find(graph.onnx[1000:1032])
    assert at > 0
    raw[at + 5] ^= 0x01
    bad = folder / "tampered.pt"
    bad.write_bytes(bytes(raw))
    with pytest.raises(ModelArtifactError, match="seal|corrupt"):
        load_artifact(bad)


def test_the_station_refuses_int8_beyond_the_recorded_tolerance(tiny):
    folder, art, graph, _, _ = tiny
    strict = Int8Graph(onnx=graph.onnx, info={**graph.info, "tolerance": {"p_defect_abs": 1e-9, "novelty_rel": 1e-9}})
    path = folder / "strict.pt"
    save_artifact(path, art.model, art.metadata, validity=art.validity, int8=strict)
    with pytest.raises(ModelArtifactError, match="INT8 and fp32 disagree"):
        Classifier.from_file(path, backend="onnxruntime", device="cpu", precision="int8", threads=1, warmup_runs=0)
    # The same file still runs in fp32: the refusal is INT8's alone.
    Classifier.from_file(path, backend="onnxruntime", device="cpu", precision="fp32", threads=1, warmup_runs=0)


def test_the_station_refuses_another_networks_int8_graph(tiny, tmp_path):
    _, art, _, _, _ = tiny
    other = load_artifact(make_tiny_model(tmp_path / "other.pt", threshold=0.99, seed=7))
    val = rendered(12, seed=4)
    foreign, _ = build_int8(other, calibration_images=rendered(12, seed=5), val_images=val,
                            val_labels=[1] * len(val), threads=1)
    path = tmp_path / "mixed.pt"
    save_artifact(path, art.model, art.metadata, validity=art.validity, int8=foreign)
    with pytest.raises(ModelArtifactError, match="INT8"):
        Classifier.from_file(path, backend="auto", device="cpu", precision="int8", threads=1, warmup_runs=0)


def test_a_model_without_an_int8_graph_names_the_command_that_adds_one(tiny):
    folder = tiny[0]
    with pytest.raises(ModelArtifactError, match="training quantize"):
        Classifier.from_file(folder / "tiny.pt", backend="auto", device="cpu", precision="int8", warmup_runs=0)


def test_the_card_section_is_replaced_not_duplicated(tiny):
    _, art, graph, info, out = tiny
    result = {**info, "from": "tiny.pt", "from_sha256": art.sha256, "sha256": "ab" * 32}
    section = card_section(result)
    card = with_section("# Card\n\n## Data\n\nx\n", section)
    again = with_section(card.replace("QDQ", "QDQ "), section)
    assert again.count("## INT8") == 1 and again.startswith("# Card") and "## Data" in again


@pytest.mark.slow
def test_shipped_model_int8_has_no_escapes_or_false_rejects_on_the_test_split(data_dir, tmp_path):
    """The command the model card's INT8 figures come from, on the shipped model and the real data: it
    writes the graph only when validation escapes and false rejects do not rise, and on the 715 test
    images INT8 (with and without the gate) has 0 escapes and 0 false rejects; the station runs it."""
    from pathlib import Path

    from support import require_component

    from training.quantize import quantize_artifact

    shipped = Path(__file__).resolve().parents[2] / "models" / "impeller-resnet18.pt"
    require_component(shipped.is_file(), f"the shipped model {shipped}")
    out = tmp_path / "int8.pt"
    result = quantize_artifact(model_path=shipped, data=data_dir, out=out, calibration=100)
    test = result["test"]
    assert test["images"] == 715
    for key in ("escapes", "false_rejects", "escapes_gated", "false_rejects_gated"):
        assert test["int8"][key] == 0, (key, test)
    assert result["validation"]["int8"]["escapes"] == result["validation"]["int8"]["false_rejects"] == 0
    clf = Classifier.from_file(out, backend="auto", device="cpu", precision="int8", warmup_runs=1)
    assert clf.precision == "int8" and clf.runner is not None
