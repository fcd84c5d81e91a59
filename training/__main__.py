"""`python -m training {train,evaluate,export,calibrate,quantize,speed}`: the training package's command line.

Bad input (an empty or single-class data folder, unreadable images, a weights file of the wrong
architecture, a missing model) is reported as one clear line on stderr with exit code 2, before
any training starts; so is a missing `train` extra (scikit-learn, matplotlib, tqdm), with the pip
command that installs it.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from station.artifact import ModelArtifactError
from training.calibration import CalibrationError, CalibrationSettings
from training.data import DataError
from training.export import ExportError
from training.model import WeightsError

USAGE_ERRORS = (DataError, WeightsError, ModelArtifactError, ExportError, CalibrationError, FileNotFoundError)
# Import name -> pip name of the packages that only the `train` extra installs.
TRAIN_EXTRA = {"sklearn": "scikit-learn", "matplotlib": "matplotlib", "tqdm": "tqdm"}
TRAIN_EXTRA_FIX = "pip install -e '.[train]' (in the project checkout)"


def add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, required=True,
                   help="data root holding train/<class>/ (and test/), or a class-per-folder training folder")
    p.add_argument("--out", type=Path, required=True, help="run folder for checkpoints, logs and model.pt")
    p.add_argument("--weights", default="imagenet",
                   help="'imagenet' (torchvision download), a resnet18 state-dict FILE, or 'none' (from scratch)")
    p.add_argument("--image-size", type=int, default=224, help="square model input size in pixels")
    p.add_argument("--epochs", type=int, default=30, help="epoch budget (the LR schedule spans it)")
    p.add_argument("--batch-size", type=int, default=32, help="images per step per process")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (peak of the schedule)")
    p.add_argument("--weight-decay", type=float, default=1e-4, help="Adam weight decay")
    p.add_argument("--lr-schedule", choices=("cosine", "onecycle", "constant"), default="cosine",
                   help="per-step LR schedule over the epoch budget")
    p.add_argument("--warmup-epochs", type=float, default=1.0, help="linear warm-up (cosine schedule)")
    p.add_argument("--patience", type=int, default=10, help="early stop after this many epochs without a "
                   "better validation loss")
    p.add_argument("--min-delta", type=float, default=0.0, help="improvement in val loss that counts")
    p.add_argument("--val-fraction", type=float, default=0.15,
                   help="fraction of the training folder held out for validation (stratified)")
    p.add_argument("--seed", type=int, default=0, help="seed for split, init, shuffling, augmentation")
    p.add_argument("--rotate-deg", type=float, default=180.0,
                   help="augmentation: quarter turns/flips, plus a free rotation of up to a quarter of this")
    p.add_argument("--brightness", type=float, default=0.2, help="augmentation: brightness jitter (+/-)")
    p.add_argument("--contrast", type=float, default=0.2, help="augmentation: contrast jitter (+/-)")
    p.add_argument("--zoom", type=float, default=0.15,
                   help="augmentation: scale factor drawn from 1-ZOOM..1+ZOOM (camera closer or farther); "
                        "the uncovered border takes the background grey")
    p.add_argument("--shift", type=float, default=0.08,
                   help="augmentation: move the part up to this share of the frame width, any direction "
                        "(uniform over the disc); the uncovered border takes the background grey")
    p.add_argument("--target-escape-rate", type=float, default=0.0,
                   help="validation escape rate the recommended threshold must meet")
    p.add_argument("--max-threshold", type=float, default=0.5, help="upper cap on the recommended threshold")
    p.add_argument("--workers", type=int, default=-1, help="DataLoader workers per process (-1: from the cores)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads per process (0: cores / processes)")
    p.add_argument("--device", default="auto", help="'auto', 'cpu' or 'cuda'")
    p.add_argument("--no-amp", action="store_true", help="disable mixed precision on GPU")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument("--no-progress", action="store_true", help="no per-epoch progress bar")


def cmd_train(args: argparse.Namespace) -> int:
    from training.data import build_augment
    from training.engine import train

    # Bad augmentation options are a usage error before the images are decoded, not after.
    build_augment(rotate_deg=args.rotate_deg, brightness=args.brightness, contrast=args.contrast,
                  zoom=args.zoom, shift=args.shift)
    train(args)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from training.evaluate import evaluate

    from station.artifact import load_artifact
    from training.evaluate import validity_report

    metrics = evaluate(model_path=args.model, data=args.data, report_dir=args.report, threshold=args.threshold,
                       batch_size=args.batch_size, split=args.split)
    for name in ("test_full", "test_dedup", "test_novel"):
        m = metrics[name]
        print(f"{name:<11} {m['n']:>4} images ({m['n_defective']} def / {m['n_ok']} ok): escapes {m['escapes']}, "
              f"false rejects {m['false_rejects']}, accuracy {100 * m['accuracy']:.2f}%")
    print(validity_report(load_artifact(args.model), metrics))
    return 0


def add_calibration_args(p: argparse.ArgumentParser) -> None:
    d = CalibrationSettings()
    p.add_argument("--margin", type=float, default=d.margin,
                   help="limits sit this share of the way back from where the model starts to fail")
    p.add_argument("--max-error-rate", type=float, default=d.max_error_rate,
                   help="failure boundary: the mildest severity misjudging more than this share of images")
    p.add_argument("--sweep-images", type=int, default=d.sweep_images,
                   help="calibration images per perturbation sweep (stratified sample)")
    p.add_argument("--near-copy-ncc", type=float, default=d.near_copy_ncc,
                   help="NCC (64 px grey, any rotation/flip) at which two images count as the same part")


def calibration_settings(args: argparse.Namespace) -> CalibrationSettings:
    for name, value, lo, hi in (("--margin", args.margin, 0.0, 0.95),
                                ("--max-error-rate", args.max_error_rate, 0.0, 0.5),
                                ("--near-copy-ncc", args.near_copy_ncc, 0.5, 1.0)):
        if not lo <= value <= hi:
            raise CalibrationError(f"{name} {value} is outside {lo}..{hi}")
    if args.sweep_images < 10:
        raise CalibrationError(f"--sweep-images {args.sweep_images}: need at least 10")
    return CalibrationSettings(margin=args.margin, max_error_rate=args.max_error_rate,
                               sweep_images=args.sweep_images, near_copy_ncc=args.near_copy_ncc)


def cmd_export(args: argparse.Namespace) -> int:
    import json

    from training.export import export_run

    result = export_run(run_dir=args.run, out=args.out, metrics_path=args.metrics, onnx_path=args.onnx,
                        half=not args.fp32, checkpoint=args.checkpoint, data=args.data,
                        settings=calibration_settings(args))
    print(json.dumps(result, indent=1))
    if "onnx_max_abs_diff" in result:
        print(f"ONNX vs torch max abs difference: {result['onnx_max_abs_diff']:.3g}")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    import json

    from station.artifact import load_artifact
    from station.validity import calibration_table, limits_table, mild_table
    from training.export import calibrate_artifact

    result = calibrate_artifact(model_path=args.model, data=args.data, out=args.out, metrics_path=args.metrics,
                                settings=calibration_settings(args))
    domain = load_artifact(args.out).validity
    assert domain is not None
    print(json.dumps(result, indent=1))
    print("validity domain:\n" + limits_table(domain.limits, reference=domain.reference))
    if domain.calibration:
        print("calibration:\n" + calibration_table(domain.calibration))
        print("mild variation on the calibration images:\n" + mild_table(domain.method.get("mild", [])))
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    import json

    from training.quantize import card_section, quantize_artifact, with_section

    if args.calibration < 10:
        raise ExportError(f"--calibration {args.calibration}: need at least 10 training images")
    result = quantize_artifact(model_path=args.model, data=args.data, out=args.out, calibration=args.calibration,
                               seed=args.seed, threads=args.threads)
    section = card_section(result)
    if args.card is not None:
        card = args.card.read_text() if args.card.exists() else ""
        args.card.write_text(with_section(card, section))
    summary = {k: v for k, v in result.items() if k not in ("reference_scores", "method")}
    print(json.dumps(summary, indent=1))
    print(section)
    return 0


def cmd_speed(args: argparse.Namespace) -> int:
    from training.speed import compare

    if args.batches < 2 or args.batch_size < 1:
        raise DataError("--batches must be at least 2 (the first is a warm-up) and --batch-size at least 1")
    print("\n".join(compare(args)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.ArgumentDefaultsHelpFormatter
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__, formatter_class=fmt)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train ResNet-18 on a class-per-folder image tree", formatter_class=fmt)
    add_train_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="metrics, plots, Grad-CAM and report.md on the test split",
                       formatter_class=fmt)
    p.add_argument("--model", type=Path, required=True, help="model artifact (.pt) to evaluate")
    p.add_argument("--data", type=Path, required=True, help="data root holding train/ and test/")
    p.add_argument("--split", default="test", help="sub-folder of --data to evaluate")
    p.add_argument("--report", type=Path, required=True, help="report folder (keep it outside the repo)")
    p.add_argument("--threshold", type=float, default=None,
                   help="decision threshold on p(defective) (default: the artifact's recommended one)")
    p.add_argument("--batch-size", type=int, default=64, help="images per inference batch")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("export", help="write the station artifact (+ ONNX) from a training run",
                       formatter_class=fmt)
    p.add_argument("--run", type=Path, required=True, help="training run folder (holds best.pt, summary.json)")
    p.add_argument("--out", type=Path, required=True, help="artifact path to write (.pt)")
    p.add_argument("--metrics", type=Path, default=None, help="metrics.json written by evaluate, to record")
    p.add_argument("--onnx", type=Path, default=None, help="also write an ONNX file here")
    p.add_argument("--checkpoint", default="best.pt", help="checkpoint file in the run folder")
    p.add_argument("--fp32", action="store_true", help="store float32 weights (default: fp16, half the size)")
    p.add_argument("--data", type=Path, default=None,
                   help="data root the run trained on (default: the run's --data); the validity domain is "
                        "fitted on its training split")
    add_calibration_args(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("calibrate", help="fit the validity gate of an existing artifact (same weights) and "
                                         "write it as a sealed format-2 artifact", formatter_class=fmt)
    p.add_argument("--model", type=Path, required=True, help="artifact to calibrate (format 1 or 2)")
    p.add_argument("--data", type=Path, required=True,
                   help="data root holding train/ (the model's training split is recovered from its metadata)")
    p.add_argument("--out", type=Path, required=True, help="artifact to write (may be --model itself)")
    p.add_argument("--metrics", type=Path, default=None, help="metrics.json written by evaluate, to record")
    add_calibration_args(p)
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("quantize", help="add an INT8 graph (ONNX Runtime QDQ, calibrated on the training split) "
                                        "to an artifact, refused when it escapes or false-rejects more than fp32",
                       formatter_class=fmt)
    p.add_argument("--model", type=Path, required=True, help="format-2 artifact to quantize")
    p.add_argument("--data", type=Path, required=True,
                   help="data root holding train/ (the model's split is recovered) and, for the card, test/")
    p.add_argument("--out", type=Path, required=True, help="artifact to write (may be --model itself)")
    p.add_argument("--calibration", type=int, default=300, help="training-split images to calibrate on")
    p.add_argument("--seed", type=int, default=0, help="seed for the calibration sample and perturbations")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime threads (default: one per core)")
    p.add_argument("--card", type=Path, default=None, help="model card to write the INT8 section into")
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser("speed", help="CPU train-step images/s and numerics: fp32 vs channels_last vs bf16 "
                                     "autocast on the same batches", formatter_class=fmt)
    from training.speed import add_speed_args

    add_speed_args(p)
    p.set_defaults(func=cmd_speed)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        stream=sys.stdout)
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except USAGE_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        top = (exc.name or "").split(".")[0]
        if top not in TRAIN_EXTRA:
            raise
        print(f"error: python -m training {args.command} needs the train extra ({TRAIN_EXTRA[top]} is not "
              f"installed): {TRAIN_EXTRA_FIX}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
