"""The same training loop under torchrun with two CPU processes (gloo)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path



def test_torchrun_two_cpu_processes(tiny_data: Path, tmp_path: Path, tiny_train_args: list[str]) -> None:
    out = tmp_path / "ddp_run"
    args = tiny_train_args
    args[args.index("--epochs") + 1] = "2"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "training", "train", "--data", str(tiny_data), "--out", str(out), "--device", "cpu", *args]
    proc = subprocess.run(cmd, cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "world size 2" in proc.stdout
    history = json.loads((out / "history.json").read_text())
    assert len(history) == 2
    # 36 training images, batch 8 per process, drop_last: 2 steps x 2 processes x 8 images.
    summary = json.loads((out / "summary.json").read_text())
    assert summary["best_val"]["val_loss"] > 0
    assert (out / "model.pt").is_file()
