"""`python -m training speed`: CPU training-step speed and numerics, fp32 against channels_last and bf16.

On the model's training split (recovered exactly as `train` makes it: `--seed`, `--val-fraction`), the
first `--batches` batches of training images (fixed order, no augmentation, so every mode sees the
same tensors) are run through a fresh ResNet-18 from the same initial weights in each mode: fp32
(contiguous, what `train` does on the CPU today), fp32 channels_last, and channels_last with bf16
autocast (only where the CPU has native bf16: `avx512_bf16` or AMX). For each mode it prints images/s
of full train steps (forward, backward, Adam step) after one warm-up step, and for the other modes the
largest logit difference and the loss difference against fp32 on the same batches, before the first
step (same weights) and after the last (same data, same number of steps): the evidence whether bf16 is
safe to train with. It changes nothing; `train` keeps fp32 unless this says otherwise on your CPU.
"""

from __future__ import annotations

import argparse
import copy
import logging
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)


def cpu_has_bf16() -> bool:
    """True when the CPU computes bf16 natively (avx512_bf16 or AMX tiles), per /proc/cpuinfo."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def batches(data: Path, *, seed: int, val_fraction: float, image_size: int, batch_size: int,
            count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    from types import SimpleNamespace

    from station.preprocess import Preprocess
    from training import data as tdata
    from training.engine import prepare_data

    prepared = prepare_data(SimpleNamespace(data=str(data), seed=seed, val_fraction=val_fraction))
    idx = list(prepared["train_idx"])[: batch_size * count]
    images = tdata.decode_gray([prepared["samples"][i].path for i in idx])
    pre = Preprocess(input_size=image_size, grayscale=True)
    x = torch.stack([pre.to_tensor(img) for img in images])
    y = torch.tensor([prepared["labels"][i] for i in idx])
    return [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(idx), batch_size)]


def run_mode(model: nn.Module, data: list[tuple[torch.Tensor, torch.Tensor]], *, channels_last: bool,
             bf16: bool) -> dict[str, Any]:
    """Train steps over `data` in one mode: images/s (after a warm-up step), logits and losses."""
    model = copy.deepcopy(model).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    criterion = nn.CrossEntropyLoss()

    def prep(x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if channels_last else x

    def forward(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type="cpu", dtype=torch.bfloat16, enabled=bf16):
            return model(prep(x))

    with torch.no_grad():
        model.eval()
        first = forward(data[0][0]).float()
        model.train()
    steps, images, t_start = 0, 0, None
    losses = []
    for i, (x, y) in enumerate(data):
        if i == 1:
            t_start = time.perf_counter()  # step 0 is the warm-up
        logits = forward(x)
        loss = criterion(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        if i >= 1:
            steps, images = steps + 1, images + len(y)
    elapsed = time.perf_counter() - t_start if t_start is not None else 0.0
    with torch.no_grad():
        model.eval()
        last = forward(data[0][0]).float()
    return {"images_per_s": images / elapsed if elapsed > 0 else None, "steps": steps, "first_logits": first,
            "last_logits": last, "losses": losses}


def compare(args: argparse.Namespace) -> list[str]:
    from training.model import create_model

    torch.set_num_threads(args.threads or torch.get_num_threads())
    data = batches(args.data, seed=args.seed, val_fraction=args.val_fraction, image_size=args.image_size,
                   batch_size=args.batch_size, count=args.batches)
    torch.manual_seed(args.seed)
    model = create_model("none", num_classes=2)
    modes = [("fp32 (train's CPU default)", False, False), ("fp32 channels_last", True, False)]
    if cpu_has_bf16():
        modes.append(("bf16 autocast, channels_last", True, True))
    lines = [f"{len(data)} batches of {args.batch_size} training-split images at {args.image_size} px, "
             f"{torch.get_num_threads()} threads; bf16 native on this CPU: {cpu_has_bf16()}",
             f"{'mode':<32}{'images/s':>10}{'max|dlogit| start':>19}{'max|dlogit| end':>17}{'loss diff (mean)':>18}"]
    base = None
    for name, cl, bf in modes:
        r = run_mode(model, data, channels_last=cl, bf16=bf)
        base = base or r
        d0 = float((r["first_logits"] - base["first_logits"]).abs().max())
        d1 = float((r["last_logits"] - base["last_logits"]).abs().max())
        dl = sum(abs(a - b) for a, b in zip(r["losses"], base["losses"])) / len(r["losses"])
        ips = f"{r['images_per_s']:10.1f}" if r["images_per_s"] else f"{'n/a':>10}"
        lines.append(f"{name:<32}{ips}{d0:19.4g}{d1:17.4g}{dl:18.4g}")
    return lines


def add_speed_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, required=True, help="data root holding train/")
    p.add_argument("--image-size", type=int, default=160, help="model input size in pixels")
    p.add_argument("--batch-size", type=int, default=32, help="images per step")
    p.add_argument("--batches", type=int, default=6, help="steps per mode (the first is a warm-up)")
    p.add_argument("--seed", type=int, default=0, help="split and initial weights seed (as train's --seed)")
    p.add_argument("--val-fraction", type=float, default=0.15, help="as train's --val-fraction")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
