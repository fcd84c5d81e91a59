"""`python -m training quantize`: add an INT8 copy of an artifact's network, or refuse to.

ONNX Runtime static quantization of the fp32 graph the station itself builds (`station.ort_backend.
onnx_bytes`): QDQ format, per-channel symmetric int8 weights, uint8 activations calibrated (MinMax) on
images of the model's own training split only (recovered and checked against the recorded validation
fingerprint, as `calibrate` does); the pooled-feature head (global pooling, flatten, the final linear
layer) stays fp32, so the validity gate's novelty is computed from a full-resolution feature.

Before anything is written the INT8 graph is compared with fp32 on the agreement set: the validation
images, strong perturbations of some of them (so frames beyond the novelty limit are in it) and the
artifact's reference inputs. The novelty scale is chosen so every frame fp32 finds novel is novel
under INT8 too (`station.int8_model`); the tolerances recorded are the largest differences seen inside
the domain with headroom. The quantization is refused (ExportError, nothing written) when, on the
validation images at the recommended threshold, INT8 has more escapes or more false rejects than fp32,
or when the scale needed exceeds the bound the station accepts. The test split, when present, is
scored for the model card only (escapes, false rejects, largest p_defect change); it decides nothing.
"""

from __future__ import annotations


import hashlib
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from station.artifact import LoadedArtifact, load_artifact, save_artifact
from station.artifact_integrity import score_references
from station.int8_model import INT8_FORMAT, Int8Error, Int8Graph, agreement, check_int8
from station.ort_backend import OnnxRuntimeRunner, onnx_bytes
from station.validity import failed_checks
from training.export import ExportError, stored_in_half

log = logging.getLogger(__name__)

HEAD_OPS = ("GlobalAveragePool", "ReduceMean", "Flatten", "Gemm", "MatMul")  # kept fp32: the feature head
MAX_NOVELTY_SCALE = 2.0
P_TOL_FLOOR, NOVELTY_TOL_FLOOR = 0.02, 0.05   # recorded tolerances are never tighter than these
HEADROOM = 2.0                                 # ... and twice the worst difference seen in the domain
SCORE_CHUNK = 64


def head_nodes(graph: bytes) -> list[str]:
    """Names of the nodes from the global pooling on (the feature head), kept out of quantization."""
    import onnx

    model = onnx.load_from_string(graph)
    names, seen_pool = [], False
    for node in model.graph.node:
        seen_pool = seen_pool or node.op_type in ("GlobalAveragePool", "ReduceMean")
        if seen_pool and node.op_type in HEAD_OPS:
            names.append(node.name)
    return names


def quantize_graph(fp32: bytes, calibration: np.ndarray) -> bytes:
    """The QDQ int8 graph of `fp32`, calibrated on `calibration` (N x 3 x S x S float32, model inputs)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter([{"image": calibration[i:i + 1]} for i in range(len(calibration))])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._batches, None)

    with tempfile.TemporaryDirectory(prefix="quantize-") as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(fp32)
        quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        nodes_to_exclude=head_nodes(fp32))
        return dst.read_bytes()


def score(forward, art: LoadedArtifact, images: Sequence[np.ndarray]) -> list[dict[str, Any]]:
    """Reference-style results (logits, p_defect, novelty unscaled, measures) of station images."""
    pre = art.metadata.preprocess
    out: list[dict[str, Any]] = []
    for start in range(0, len(images), SCORE_CHUNK):
        pixels = np.stack([pre.model_pixels(img) for img in images[start:start + SCORE_CHUNK]])
        out += score_references(pixels, forward=forward, preprocess=pre, novelty=art.validity.novelty,
                                defective_index=art.metadata.defective_index)
    return out


def torch_forward(art: LoadedArtifact):
    import torch

    from station.network import WithFeatures

    net = WithFeatures(art.model.float().eval()).eval()

    def forward(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode():
            logits, features = net(torch.from_numpy(batch))
        return logits.numpy(), features.numpy()
    return forward


def errors(scores: list[dict[str, Any]], labels: Sequence[int], *, defective_index: int,
           threshold: float, novelty_scale: float = 1.0, domain=None) -> dict[str, int]:
    """Escapes and false rejects of the model alone, and with the gate applied (a gate failure rejects)."""
    esc = fr = esc_gate = fr_gate = 0
    for s, label in zip(scores, labels):
        reject = s["p_defect"] >= threshold
        if domain is not None:
            measures = {**s["measures"], "novelty": s["novelty"] * novelty_scale}
            gated = reject or bool(failed_checks(domain.limits, measures))
        else:
            gated = reject
        defective = label == defective_index
        esc += defective and not reject
        fr += (not defective) and reject
        esc_gate += defective and not gated
        fr_gate += (not defective) and gated
    return {"escapes": esc, "false_rejects": fr, "escapes_gated": esc_gate, "false_rejects_gated": fr_gate}


def perturbed(images: Sequence[np.ndarray], *, seed: int) -> list[np.ndarray]:
    """Strong perturbations (a covered lens, fog, defocus, a moved camera, noise) of the given images."""
    from training import perturb

    rng = np.random.default_rng(seed)
    kinds = (lambda a: perturb.occlusion(a, 0.35, rng), lambda a: perturb.haze(a, 0.3),
             lambda a: perturb.blur(a, 4.0), lambda a: perturb.zoom(a, 1.4), lambda a: perturb.noise(a, 25.0, rng))
    return [kinds[i % len(kinds)](img) for i, img in enumerate(images)]


def build_int8(art: LoadedArtifact, *, calibration_images: Sequence[np.ndarray], val_images: Sequence[np.ndarray],
               val_labels: Sequence[int], threads: int | None = None, seed: int = 0,
               method: dict[str, Any] | None = None) -> tuple[Int8Graph, dict[str, Any]]:
    """Quantize `art`'s network, compare it with fp32 and return the graph (or raise ExportError)."""
    if art.validity is None:
        raise ExportError("the model has no validity domain (format 1): run `python -m training calibrate` first")
    meta, domain = art.metadata, art.validity
    size = meta.preprocess.input_size
    fp32 = onnx_bytes(art.model, input_size=size)
    calib = np.stack([meta.preprocess.normalize(meta.preprocess.model_pixels(img)) for img in calibration_images])
    log.info("quantizing with %d calibration images (training split only)", len(calib))
    int8 = quantize_graph(fp32, calib)
    runner = OnnxRuntimeRunner(int8, threads=threads, what="INT8")
    f32 = torch_forward(art)
    agree_images = list(val_images) + perturbed(val_images[: max(1, len(val_images) // 4)], seed=seed)
    log.info("scoring %d agreement images with fp32 and INT8", len(agree_images))
    s32, s8 = score(f32, art, agree_images), score(runner, art, agree_images)
    refs32 = art.reference_scores
    refs8 = score_references(art.reference_images, forward=runner, preprocess=meta.preprocess,
                             novelty=domain.novelty, defective_index=meta.defective_index)
    limit = domain.limit("novelty", "max")
    # The smallest scale that lifts every fp32-novel frame above the limit under INT8 too.
    need = [limit / max(q["novelty"], 1e-9) for q, f in zip(s8 + refs8, s32 + refs32) if f["novelty"] > limit]
    scale = max([1.0] + [n * (1 + 1e-6) for n in need])
    if scale > MAX_NOVELTY_SCALE:
        raise ExportError(f"INT8 novelty would need a scale of {scale:.3g} (more than {MAX_NOVELTY_SCALE:g}) to keep "
                          f"the gate as strict as fp32: the INT8 graph's features are too coarse; not written")
    loose = {"p_defect_abs": 0.999, "novelty_rel": 0.999}
    worst = agreement(s8 + refs8, s32 + refs32, domain=domain, scale=scale, tolerance=loose)
    tolerance = {"p_defect_abs": min(0.5, max(P_TOL_FLOOR, HEADROOM * worst["p_defect_abs"])),
                 "novelty_rel": min(0.5, max(NOVELTY_TOL_FLOOR, HEADROOM * worst["novelty_rel"]))}
    n_val = len(val_images)
    in_domain = [i for i in range(n_val)
                 if not failed_checks(domain.limits, {**s32[i]["measures"], "novelty": s32[i]["novelty"]})]
    ratio = float(np.median([s8[i]["novelty"] * scale / max(s32[i]["novelty"], 1e-9) for i in in_domain])) \
        if in_domain else 1.0
    thr = meta.recommended_threshold
    val32 = errors(s32[:n_val], val_labels, defective_index=meta.defective_index, threshold=thr, domain=domain)
    val8 = errors(s8[:n_val], val_labels, defective_index=meta.defective_index, threshold=thr,
                  novelty_scale=scale, domain=domain)
    for key in ("escapes", "false_rejects"):
        if val8[key] > val32[key]:
            raise ExportError(f"INT8 has more validation {key.replace('_', ' ')} than fp32 ({val8[key]} vs "
                              f"{val32[key]} of {n_val} at threshold {thr:.4g}): not written")
    info = {"format": INT8_FORMAT, "onnx_sha256": hashlib.sha256(int8).hexdigest(), "tolerance": tolerance,
            "novelty_scale": scale, "novelty_ratio": min(2.0, max(0.5, ratio)), "reference_scores": refs8,
            "method": {"quantizer": "onnxruntime quantize_static", "format": "QDQ", "per_channel": True,
                       "weights": "int8 symmetric", "activations": "uint8 MinMax", "fp32_nodes": head_nodes(fp32),
                       "calibration_images": len(calib), **(method or {})},
            "validation": {"images": n_val, "agreement_images": len(agree_images), "fp32": val32, "int8": val8,
                           "worst_in_domain": worst, "threshold": thr}}
    try:
        graph = Int8Graph(onnx=int8, info=info)
        check_int8(graph, int8_scores=refs8, fp32_scores=refs32, domain=domain)
    except Int8Error as exc:
        raise ExportError(f"the INT8 graph fails the station's own start-up check: {exc}; not written") from exc
    return graph, info


def figures_on_test(art: LoadedArtifact, graph: Int8Graph, images: Sequence[np.ndarray], labels: Sequence[int], *,
                 threads: int | None = None) -> dict[str, Any]:
    """The INT8 and fp32 figures on the test split (for the model card; they decide nothing)."""
    runner = OnnxRuntimeRunner(graph.onnx, threads=threads, what="INT8")
    s32, s8 = score(torch_forward(art), art, images), score(runner, art, images)
    kw = {"defective_index": art.metadata.defective_index, "threshold": art.metadata.recommended_threshold,
          "domain": art.validity}
    return {"images": len(images), "fp32": errors(s32, labels, **kw),
            "int8": errors(s8, labels, novelty_scale=graph.novelty_scale, **kw),
            "max_p_defect_change": float(max((abs(a["p_defect"] - b["p_defect"]) for a, b in zip(s8, s32)),
                                             default=0.0))}


def quantize_artifact(*, model_path: Path, data: Path, out: Path, calibration: int = 300, seed: int = 0,
                      threads: int | None = None) -> dict[str, Any]:
    """Quantize the artifact at `model_path` with its own training split under `data` and write `out` (the
    same weights, validity domain and metadata, plus the INT8 graph and its figures)."""
    from types import SimpleNamespace

    from training import data as tdata
    from training.engine import prepare_data

    art = load_artifact(model_path)
    split = art.metadata.training.get("split") or {}
    if "seed" not in split or "val_fraction" not in split:
        raise ExportError("the model's metadata records no training split: cannot tell training images from "
                          "held-out ones, and INT8 is calibrated on training images only")
    prepared = prepare_data(SimpleNamespace(data=str(data), seed=int(split["seed"]),
                                            val_fraction=float(split["val_fraction"])))
    if split.get("val_fingerprint") and prepared["split"]["val_fingerprint"] != split["val_fingerprint"]:
        raise ExportError(f"the split recovered from {data} is not the one the model was trained with "
                          f"(validation fingerprint differs)")
    samples, labels = prepared["samples"], prepared["labels"]
    rng = np.random.default_rng(seed)
    train_idx = list(prepared["train_idx"])
    pick = sorted(rng.choice(len(train_idx), size=min(calibration, len(train_idx)), replace=False).tolist())
    calib_images = tdata.decode_gray([samples[train_idx[i]].path for i in pick])
    val_idx = list(prepared["val_idx"])
    val_images = tdata.decode_gray([samples[i].path for i in val_idx])
    graph, info = build_int8(art, calibration_images=calib_images, val_images=val_images,
                             val_labels=[labels[i] for i in val_idx], threads=threads, seed=seed,
                             method={"calibration_seed": seed, "calibration_from": "training split (train part)"})
    test_root = Path(data) / "test"
    if test_root.is_dir():
        scan = tdata.scan_folder(test_root, class_names=art.metadata.class_names)
        info["test"] = figures_on_test(art, graph, tdata.decode_gray([s.path for s in scan.samples]), scan.labels(),
                                    threads=threads)
        graph = Int8Graph(onnx=graph.onnx, info=info)
    sha = save_artifact(out, art.model, art.metadata, validity=art.validity, half=stored_in_half(art.model),
                        int8=graph)
    again = load_artifact(out)
    if again.int8 is None or again.int8.onnx != graph.onnx:
        raise ExportError(f"{out}: the INT8 graph did not survive writing")
    return {"artifact": str(out), "sha256": sha, "from": str(model_path), "from_sha256": art.sha256, **info,
            "reference_scores": None}


def card_section(result: dict[str, Any]) -> str:
    """The model card's INT8 section (markdown) for a `quantize_artifact` result."""
    v, t = result["validation"], result.get("test")
    lines = ["## INT8 (`model.precision: int8`)", "",
             f"Made by `python -m training quantize` from `{Path(result['from']).name}` "
             f"(sha256 `{result['from_sha256'][:12]}`); artifact sha256 `{result['sha256'][:12]}`. "
             f"{result['method']['quantizer']}, {result['method']['format']}, per-channel int8 weights, uint8 "
             f"activations (MinMax) calibrated on {result['method']['calibration_images']} training-split images; "
             f"the feature head stays fp32.", "",
             "| set | images | fp32 escapes / false rejects | INT8 escapes / false rejects | INT8 with gate |",
             "|---|---:|---|---|---|",
             f"| validation | {v['images']} | {v['fp32']['escapes']} / {v['fp32']['false_rejects']} | "
             f"{v['int8']['escapes']} / {v['int8']['false_rejects']} | {v['int8']['escapes_gated']} / "
             f"{v['int8']['false_rejects_gated']} |"]
    if t:
        lines.append(f"| test | {t['images']} | {t['fp32']['escapes']} / {t['fp32']['false_rejects']} | "
                     f"{t['int8']['escapes']} / {t['int8']['false_rejects']} | {t['int8']['escapes_gated']} / "
                     f"{t['int8']['false_rejects_gated']} |")
    worst = v["worst_in_domain"]
    lines += ["", f"Largest p_defect change in the domain (agreement set of {v['agreement_images']} images): "
                  f"{worst['p_defect_abs']:.4f}; novelty {100 * worst['novelty_rel']:.1f} %"
                  + (f"; on the test split {t['max_p_defect_change']:.4f}" if t else "") + ". "
              f"Recorded tolerances (the station refuses INT8 beyond them on its probes): p_defect "
              f"{result['tolerance']['p_defect_abs']:.3g}, novelty {100 * result['tolerance']['novelty_rel']:.1f} %; "
              f"novelty scale {result['novelty_scale']:.4f}."]
    return "\n".join(lines)


def with_section(card: str, section: str) -> str:
    """`card` with its INT8 section replaced by `section` (appended when it has none)."""
    head = "## INT8"
    if head not in card:
        return card.rstrip("\n") + "\n\n" + section + "\n"
    before, rest = card.split(head, 1)
    after = rest.split("\n## ", 1)
    tail = "\n## " + after[1] if len(after) > 1 else ""
    return before + section + "\n" + tail


__all__ = ["build_int8", "card_section", "quantize_artifact", "figures_on_test", "with_section"]

