"""Bad input is a clear one-line error (exit code 2) before training starts."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from support import REPO, make_tiny_model
from tinynet import TinyNet

from training.__main__ import main


def _train(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--data", str(data), "--out", str(out), "--weights", "none", "--epochs", "1",
            "--image-size", "32", "--no-progress", *extra]


def _expect_error(argv: list[str], capsys: pytest.CaptureFixture[str], *needles: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    for needle in needles:
        assert needle in err, err


def test_empty_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "data").mkdir()
    _expect_error(_train(tmp_path / "data", tmp_path / "run"), capsys, "holds no images")
    assert not (tmp_path / "run").exists()


def test_single_class(tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shutil.copytree(tiny_data / "train" / "ok_front", tmp_path / "data" / "ok_front")
    _expect_error(_train(tmp_path / "data", tmp_path / "run"), capsys, "only one class", "ok_front")


def test_unreadable_image(tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiny_data / "train", data)
    (data / "def_front" / "broken.jpeg").write_bytes(b"not a jpeg at all")
    _expect_error(_train(data, tmp_path / "run"), capsys, "unreadable image", "broken.jpeg")


def test_wrong_architecture_weights(tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    weights = tmp_path / "tinynet.pth"
    torch.save(TinyNet(2).state_dict(), weights)
    argv = _train(tiny_data, tmp_path / "run")
    argv[argv.index("--weights") + 1] = str(weights)
    _expect_error(argv, capsys, "is not a resnet18 checkpoint")
    assert not (tmp_path / "run" / "last.pt").exists()


def test_augmentation_out_of_bounds(tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _expect_error(_train(tiny_data, tmp_path / "run", "--zoom", "0.7"), capsys, "--zoom 0.7 is outside 0..0.5")
    _expect_error(_train(tiny_data, tmp_path / "run", "--shift", "-0.1"), capsys, "--shift -0.1 is outside")
    assert not (tmp_path / "run").exists(), "refused before anything was written"


def test_missing_model_for_evaluate(tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _expect_error(["evaluate", "--model", str(tmp_path / "nope.pt"), "--data", str(tiny_data),
                   "--report", str(tmp_path / "r")], capsys, "does not exist")


def test_evaluate_without_the_train_extra_names_the_fix(tmp_path: Path) -> None:
    """scikit-learn is installed here (the test extra pulls it in), so the child process hides it the way
    an install without the extra lacks it: `sys.modules['sklearn'] = None` makes every import of it fail
    with ModuleNotFoundError, exactly as on such a machine. No other module is touched."""
    model = make_tiny_model(tmp_path / "m.pt")
    (tmp_path / "data" / "test").mkdir(parents=True)
    code = ("import sys; sys.modules['sklearn'] = None; from training.__main__ import main; "
            f"sys.exit(main(['evaluate', '--model', {str(model)!r}, '--data', {str(tmp_path / 'data')!r}, "
            f"'--report', {str(tmp_path / 'report')!r}]))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == ("error: python -m training evaluate needs the train extra (scikit-learn is "
                                     "not installed): pip install -e '.[train]' (in the project checkout)")
