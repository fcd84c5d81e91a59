"""The training loop: one code path for a single process and for `torchrun` (DistributedDataParallel).

`train(args)` checks the data, carves a stratified, seeded validation set out of the training folder
(the test folder is never read here), trains with Adam and a per-step LR schedule, validates every
epoch, checkpoints every epoch (`last.pt`, and `best.pt` on a new best validation loss), resumes
from `last.pt` with `--resume`, and stops early when validation loss has not improved for
`--patience` epochs. At the end, rank 0 reloads the best weights, scores the validation set,
recommends a decision threshold, fits the validity domain (`training.calibration`) and writes the run's
model artifact (`model.pt`).
Under torchrun the backend is gloo on CPU and nccl on GPU; on GPU the loop uses AMP,
channels_last and pinned memory.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from station.preprocess import Preprocess
from training import data as tdata
from training import threshold as tthreshold
from training.model import create_model

log = logging.getLogger(__name__)

CHECKPOINT_LAST = "last.pt"
CHECKPOINT_BEST = "best.pt"
RUN_ARTIFACT = "model.pt"


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device_arg: str = "auto") -> DistInfo:
    """Join the torchrun process group when launched by torchrun; otherwise a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device_arg == "auto" else device_arg.startswith("cuda")
    device = torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def default_workers(world_size: int) -> int:
    """DataLoader workers: the cores this process has, minus one for the compute threads."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(8, cores // world_size - 1))


def lr_lambda(schedule: str, *, total_steps: int, warmup_steps: int):
    """Multiplier on the base LR per optimizer step.

    From scratch, a constant LR leaves BatchNorm statistics chasing the weights and the validation
    accuracy swings from epoch to epoch; annealing the LR to ~0 settles them.
    """
    total_steps = max(1, total_steps)
    warmup_steps = min(max(0, warmup_steps), total_steps - 1)

    def constant(step: int) -> float:
        return 1.0

    def cosine(step: int) -> float:
        if step < warmup_steps:
            return 0.1 + 0.9 * step / max(1, warmup_steps)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    def onecycle(step: int) -> float:
        # torch's OneCycleLR shape (cosine up for 30% of the run from lr/25, cosine down to lr/1e4).
        peak = max(1, int(0.3 * total_steps))
        if step < peak:
            t = step / peak
            return 0.04 + (1.0 - 0.04) * 0.5 * (1 - math.cos(math.pi * t))
        t = min(1.0, (step - peak) / max(1, total_steps - peak))
        return 1e-4 + (1.0 - 1e-4) * 0.5 * (1 + math.cos(math.pi * t))

    return {"constant": constant, "cosine": cosine, "onecycle": onecycle}[schedule]


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def train_one_epoch(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer, *,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, device: torch.device,
                    scaler: torch.amp.GradScaler | None, show_progress: bool, desc: str) -> dict[str, float]:
    model.train()
    criterion = nn.CrossEntropyLoss()
    loss_sum = torch.zeros((), dtype=torch.float64)
    correct = 0
    seen = 0
    bar = tqdm(loader, desc=desc, leave=False, disable=not show_progress, dynamic_ncols=True,
               mininterval=1.0 if os.isatty(2) else 30.0)
    for images, labels in bar:
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        if device.type == "cuda":
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=scaler is not None):
            logits = model(images)
            loss = criterion(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        scheduler.step()
        n = labels.numel()
        loss_sum += loss.detach().double().cpu() * n
        correct += int((logits.argmax(1) == labels).sum())
        seen += n
        bar.set_postfix(loss=f"{float(loss_sum) / seen:.4f}", acc=f"{correct / seen:.4f}",
                        lr=f"{optimizer.param_groups[0]['lr']:.2e}", refresh=False)
    bar.close()
    return _reduce({"loss_sum": float(loss_sum), "correct": correct, "n": seen}, device)


@torch.no_grad()
def validate(model: nn.Module, loader: DataLoader, *, device: torch.device, amp: bool) -> dict[str, float]:
    model.eval()
    criterion = nn.CrossEntropyLoss(reduction="sum")
    loss_sum = 0.0
    correct = 0
    seen = 0
    for images, labels in loader:
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        if device.type == "cuda":
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=amp):
            logits = model(images)
        loss_sum += float(criterion(logits.float(), labels))
        correct += int((logits.argmax(1) == labels).sum())
        seen += labels.numel()
    return _reduce({"loss_sum": loss_sum, "correct": correct, "n": seen}, device)


def _reduce(stats: dict[str, float], device: torch.device) -> dict[str, float]:
    """Sum per-rank totals across processes and turn them into mean loss and accuracy."""
    values = torch.tensor([stats["loss_sum"], stats["correct"], stats["n"]], dtype=torch.float64,
                          device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(values)
    loss_sum, correct, n = values.tolist()
    return {"loss": loss_sum / max(1.0, n), "acc": correct / max(1.0, n), "n": int(n)}


@torch.no_grad()
def predict_probs(model: nn.Module, dataset: torch.utils.data.Dataset, *, device: torch.device,
                  batch_size: int, workers: int = 0) -> np.ndarray:
    """Softmax probabilities (N x classes) in dataset order."""
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)
    out = []
    for images, _ in loader:
        out.append(torch.softmax(model(images.to(device)).float(), dim=1).cpu())
    return torch.cat(out).numpy()


def _save(obj: dict[str, Any], path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def _json_args(args: argparse.Namespace) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in sorted(vars(args).items())
            if k != "func"}


def prepare_data(args: argparse.Namespace) -> dict[str, Any]:
    """Scan and split the training folder; raises DataError for anything unusable."""
    train_root = Path(args.data) / "train" if (Path(args.data) / "train").is_dir() else Path(args.data)
    scan = tdata.scan_folder(train_root)
    if tdata.DEFECTIVE_CLASS not in scan.class_names:
        raise tdata.DataError(f"data folder {train_root} has no {tdata.DEFECTIVE_CLASS!r} class folder; "
                              f"found {list(scan.class_names)}")
    samples, n_dup = tdata.drop_duplicates(scan.samples)
    labels = [s.label for s in samples]
    train_idx, val_idx = tdata.stratified_split(labels, val_fraction=args.val_fraction, seed=args.seed)
    split = {
        "train_folder": str(train_root), "seed": args.seed, "val_fraction": args.val_fraction,
        "duplicates_dropped": n_dup,
        "train": {n: sum(1 for i in train_idx if labels[i] == c) for c, n in enumerate(scan.class_names)},
        "val": {n: sum(1 for i in val_idx if labels[i] == c) for c, n in enumerate(scan.class_names)},
        "val_fingerprint": tdata.fingerprint([samples[i].sha256 for i in val_idx]),
    }
    return {"scan": scan, "samples": samples, "labels": labels, "train_idx": train_idx,
            "val_idx": val_idx, "split": split, "fingerprint": scan.fingerprint()}


def train(args: argparse.Namespace) -> dict[str, Any]:
    """Run (or resume) a training run into `args.out`; return the run summary (rank 0) or {}."""
    info = init_distributed(args.device)
    threads = args.threads or max(1, (os.cpu_count() or 1) // info.world_size)
    torch.set_num_threads(threads)
    seed_everything(args.seed + info.rank)
    out = Path(args.out)
    prepared = prepare_data(args)
    model = create_model(args.weights, num_classes=len(prepared["scan"].class_names))
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
    try:
        return _fit(args, info, prepared, model=model, out=out, threads=threads)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _fit(args: argparse.Namespace, info: DistInfo, prepared: dict[str, Any], *, model: nn.Module,
         out: Path, threads: int) -> dict[str, Any]:
    scan: tdata.ImageFolderScan = prepared["scan"]
    preprocess = Preprocess(input_size=args.image_size, grayscale=True)
    t0 = time.perf_counter()
    images = tdata.decode_gray([s.path for s in prepared["samples"]])
    if info.is_main:
        log.info("decoded %d images in %.1f s; split %s", len(images), time.perf_counter() - t0,
                 json.dumps({k: prepared["split"][k] for k in ("train", "val", "duplicates_dropped")}))
    labels = prepared["labels"]
    train_idx, val_idx = prepared["train_idx"], prepared["val_idx"]
    augment = tdata.build_augment(rotate_deg=args.rotate_deg, brightness=args.brightness,
                                  contrast=args.contrast, zoom=args.zoom, shift=args.shift)
    train_ds = tdata.CachedImageDataset([images[i] for i in train_idx], [labels[i] for i in train_idx],
                                        preprocess, augment=augment, seed=args.seed)
    val_ds = tdata.CachedImageDataset([images[i] for i in val_idx], [labels[i] for i in val_idx], preprocess)
    workers = default_workers(info.world_size) if args.workers < 0 else args.workers
    pin = info.device.type == "cuda"
    sampler = torch.utils.data.DistributedSampler(
        train_ds, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=args.seed, drop_last=True)
    train_loader = DataLoader(train_ds, batch_size=args.batch_size, sampler=sampler, num_workers=workers,
                              pin_memory=pin, drop_last=True)
    # Each rank validates its own slice; totals are summed with all_reduce, so nothing is counted twice.
    val_loader = DataLoader(Subset(val_ds, list(range(info.rank, len(val_ds), info.world_size))),
                            batch_size=args.batch_size, shuffle=False, num_workers=workers, pin_memory=pin)

    model.to(info.device)
    if info.device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    if info.distributed:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[info.local_rank] if info.device.type == "cuda" else None)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps_per_epoch = len(train_loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(
        args.lr_schedule, total_steps=steps_per_epoch * args.epochs,
        warmup_steps=int(args.warmup_epochs * steps_per_epoch)))
    use_amp = info.device.type == "cuda" and not args.no_amp
    scaler = torch.amp.GradScaler("cuda") if use_amp else None

    start_epoch, best_loss, best_epoch, bad_epochs, history = 0, math.inf, -1, 0, []
    last_path = out / CHECKPOINT_LAST
    if args.resume:
        if not last_path.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint {last_path}")
        ckpt = torch.load(last_path, map_location="cpu", weights_only=True)
        unwrap(model).load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        start_epoch, best_loss, best_epoch = ckpt["epoch"], ckpt["best_val_loss"], ckpt["best_epoch"]
        bad_epochs, history = ckpt["bad_epochs"], list(ckpt["history"])
        if info.is_main:
            log.info("resumed from %s after epoch %d (best val loss %.4f at epoch %d)",
                     last_path, start_epoch, best_loss, best_epoch)
    if info.is_main:
        log.info("training %s on %s: world size %d, %d threads, %d workers, %d steps/epoch, batch %d, "
                 "image %d px, schedule %s", args.weights, info.device, info.world_size, threads, workers,
                 steps_per_epoch, args.batch_size, args.image_size, args.lr_schedule)

    stopped_early = False
    for epoch in range(start_epoch, args.epochs):
        if bad_epochs >= args.patience:
            stopped_early = True
            break
        sampler.set_epoch(epoch)
        train_ds.set_epoch(epoch)
        t_epoch = time.perf_counter()
        tr = train_one_epoch(model, train_loader, optimizer, scheduler=scheduler, device=info.device, scaler=scaler,
                             show_progress=info.is_main and not args.no_progress,
                             desc=f"epoch {epoch + 1}/{args.epochs}")
        train_s = time.perf_counter() - t_epoch
        va = validate(model, val_loader, device=info.device, amp=use_amp)
        epoch_s = time.perf_counter() - t_epoch
        improved = va["loss"] < best_loss - args.min_delta
        if improved:
            best_loss, best_epoch, bad_epochs = va["loss"], epoch + 1, 0
        else:
            bad_epochs += 1
        row = {"epoch": epoch + 1, "train_loss": tr["loss"], "train_acc": tr["acc"], "val_loss": va["loss"],
               "val_acc": va["acc"], "lr": optimizer.param_groups[0]["lr"], "epoch_s": epoch_s,
               "train_images_per_s": tr["n"] / train_s}
        history.append(row)
        if info.is_main:
            log.info("epoch %d/%d  train loss %.4f acc %.4f | val loss %.4f acc %.4f | %.1f s, %.1f img/s%s",
                     epoch + 1, args.epochs, tr["loss"], tr["acc"], va["loss"], va["acc"], epoch_s,
                     row["train_images_per_s"], "  *best*" if improved else "")
            state = unwrap(model).state_dict()
            if improved:
                _save({"model": state, "epoch": epoch + 1, "val_loss": va["loss"]}, out / CHECKPOINT_BEST)
            _save({"model": state, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                   "scaler": scaler.state_dict() if scaler is not None else {}, "epoch": epoch + 1,
                   "best_val_loss": best_loss, "best_epoch": best_epoch, "bad_epochs": bad_epochs,
                   "history": history}, last_path)
            (out / "history.json").write_text(json.dumps(history, indent=1))
    else:
        stopped_early = bad_epochs >= args.patience and len(history) < args.epochs
    if stopped_early and info.is_main:
        log.info("early stop: validation loss has not improved for %d epochs (best %.4f at epoch %d)",
                 args.patience, best_loss, best_epoch)
    if not info.is_main:
        return {}
    return finish_run(args, prepared, val_ds, preprocess=preprocess, out=out, history=history, best_epoch=best_epoch,
                      stopped_early=stopped_early, workers=workers, images=images)


def finish_run(args: argparse.Namespace, prepared: dict[str, Any], val_ds: tdata.CachedImageDataset, *,
               preprocess: Preprocess, out: Path, history: list[dict[str, Any]], best_epoch: int,
               stopped_early: bool, workers: int, images: list[np.ndarray]) -> dict[str, Any]:
    """Reload the best weights, recommend a threshold on validation, fit the validity domain (novelty on the
    training part, calibration on the validation part) and write the run artifact."""
    from station.artifact import save_artifact
    from training.calibration import fit_or_spread
    from training.export import build_metadata

    scan: tdata.ImageFolderScan = prepared["scan"]
    model = create_model("none", num_classes=len(scan.class_names))
    model.load_state_dict(torch.load(out / CHECKPOINT_BEST, map_location="cpu", weights_only=True)["model"])
    defective_index = scan.class_names.index(tdata.DEFECTIVE_CLASS)
    probs = predict_probs(model, val_ds, device=torch.device("cpu"), batch_size=args.batch_size,
                          workers=workers)
    p_defect = probs[:, defective_index]
    is_defect = np.asarray(val_ds.labels) == defective_index
    rec = tthreshold.recommend_threshold(p_defect, is_defect, target_escape_rate=args.target_escape_rate,
                                         max_threshold=args.max_threshold)
    np.savez(out / "val_scores.npz", p_defect=p_defect, is_defect=is_defect)
    summary = {
        "class_names": list(scan.class_names), "preprocess": preprocess.to_dict(),
        "best_epoch": best_epoch, "epochs_run": len(history), "stopped_early": stopped_early,
        "best_val": next((h for h in history if h["epoch"] == best_epoch), {}),
        "threshold": rec, "split": prepared["split"], "data_fingerprint": prepared["fingerprint"],
        "hyper_parameters": _json_args(args),
        "speed": {"mean_epoch_s": float(np.mean([h["epoch_s"] for h in history])) if history else None,
                  "mean_train_images_per_s": float(np.mean([h["train_images_per_s"] for h in history]))
                  if history else None},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    metadata = build_metadata(class_names=scan.class_names, preprocess=preprocess, summary=summary)
    labels = prepared["labels"]
    domain = fit_or_spread(model.eval(), metadata, fit_images=[images[i] for i in prepared["train_idx"]],
                           fit_labels=[labels[i] for i in prepared["train_idx"]],
                           candidate_images=[images[i] for i in prepared["val_idx"]],
                           candidate_labels=[labels[i] for i in prepared["val_idx"]])
    save_artifact(out / RUN_ARTIFACT, model, metadata, validity=domain, half=False)
    log.info("best epoch %d; recommended threshold %.4f (val escapes %d/%d, false rejects %d/%d); "
             "artifact %s", best_epoch, rec["threshold"], rec["val_escapes"], rec["val_defective"],
             rec["val_false_rejects"], rec["val_ok"], out / RUN_ARTIFACT)
    return summary
