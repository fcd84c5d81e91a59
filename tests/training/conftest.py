"""Fixtures for the training tests: the casting data location and a tiny copy of it in tmp.

The dataset's licence forbids shipping its images (or altered copies) in the repository, so the
tests read them from `CASTING_DATA_DIR` (default `<repo>/../shared/data/casting`) and copy a few
into pytest's tmp folder at run time.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from support import casting_data_dir, require_component

CLASSES = ("def_front", "ok_front")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    root = casting_data_dir()
    require_component((root / "train").is_dir() and (root / "test").is_dir(),
                      f"casting data at {root} (set CASTING_DATA_DIR)")
    return root


@pytest.fixture(scope="session")
def tiny_data(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 training images per class, 6 test images per class plus 3 ok-images copied from train."""
    root = tmp_path_factory.mktemp("tiny_casting")
    for split, count in (("train", 24), ("test", 6)):
        for cls in CLASSES:
            dst = root / split / cls
            dst.mkdir(parents=True)
            for src in sorted((data_dir / split / cls).iterdir())[:count]:
                shutil.copyfile(src, dst / src.name)
    for src in sorted((root / "train" / "ok_front").iterdir())[:3]:
        shutil.copyfile(src, root / "test" / "ok_front" / f"leaked_{src.name}")
    return root


TINY_TRAIN_ARGS = ["--weights", "none", "--image-size", "48", "--epochs", "3", "--batch-size", "8",
                   "--val-fraction", "0.25", "--lr-schedule", "constant", "--rotate-deg", "0",
                   "--brightness", "0", "--contrast", "0", "--threads", "1", "--workers", "0",
                   "--no-progress", "--seed", "1"]


@pytest.fixture
def tiny_train_args() -> list[str]:
    return list(TINY_TRAIN_ARGS)


@pytest.fixture(scope="session")
def tiny_run(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from training.__main__ import main

    out = tmp_path_factory.mktemp("tiny_run")
    assert main(["train", "--data", str(tiny_data), "--out", str(out), *TINY_TRAIN_ARGS]) == 0
    return out
