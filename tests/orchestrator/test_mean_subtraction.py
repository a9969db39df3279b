"""data.mean_image: each crop subtracts its own patch of the training split's per-pixel mean image,
in training and in `cnnctl eval` (centre and ten-crop), on real Fashion-MNIST shards packed at 32 px."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cnnctl.orchestrator.cli import app
from cnnctl.orchestrator.config import ConfigError, resolve
from cnnctl.orchestrator.device_batch import Normalize
from cnnctl.shards.fashion_mnist import fashion_mnist
from cnnctl.shards.writer import PackOptions, pack
from test_precision import run_trainer


def test_a_crop_of_the_mean_image_normalises_to_zero_flipped_or_not():
    rng = np.random.default_rng(0)
    mean = rng.integers(0, 256, (32, 32, 3)).astype(np.float32)  # whole numbers: a uint8 crop equals it exactly
    norm = Normalize([0.5] * 3, [0.2, 0.3, 0.4], mean)
    windows = torch.tensor([[0, 0, 0], [8, 3, 1], [5, 8, 0], [8, 8, 1]])
    crops = []
    for top, left, flip in windows.tolist():
        crop = torch.from_numpy(mean[top : top + 24, left : left + 24]).permute(2, 0, 1).to(torch.uint8)
        crops.append(crop.flip(-1) if flip else crop)
    out = norm(torch.stack(crops), windows)
    assert out.shape == (4, 3, 24, 24) and out.abs().max() < 1e-5  # float rounding of x/(255 std) - m/(255 std)
    # another window's patch does not cancel: the windows are really used
    assert norm(torch.stack(crops), windows.roll(1, 0)).abs().max() > 1
    with pytest.raises(ValueError, match="needs each sample's window"):
        norm(torch.stack(crops))


def test_only_central_square_crops_take_a_mean_image():
    with pytest.raises(ConfigError, match="data.mean_image: .*needs crops of the central square .* not augment vgg"):
        resolve("demo-fashion", None, ["data.augment=vgg", "data.mean_image=true"])
    assert resolve("demo-fashion", None, ["data.augment=alexnet", "data.mean_image=true"]).data.mean_image


def _pack(root, splits, resize: int) -> str:
    for split, count in splits:
        listing = fashion_mnist(split)
        listing.records = listing.records[:count]
        pack(listing, str(root), "fashion-mnist", PackOptions(image_format="png", resize=resize, shard_size=100))
    return str(root)


@pytest.fixture(scope="module")
def fmnist32(tmp_path_factory) -> str:
    """Fashion-MNIST resized to 32 px (so the crops move and a mean image exists)."""
    return _pack(tmp_path_factory.mktemp("fmnist32"), [("train", 300), ("test", 100)], 32)


@pytest.mark.slow  # a Trainer on a gloo process group
@pytest.mark.timeout(300)
def test_training_and_evaluation_subtract_the_mean_image(fmnist32, tmp_path):
    sets = ["parallel.precision=fp32", "schedule.epochs=1", "data.augment=alexnet", "data.image_size=28",
            "data.mean_image=true", "data.lighting_std=0.1"]
    _, metrics = run_trainer(fmnist32, tmp_path, backend="gloo", sets=sets)
    assert len(metrics) == 1 and np.isfinite(metrics[0]["train_loss"]) and metrics[0]["val_count"] == 100
    ckpt = tmp_path / "checkpoint_000000"
    # the checkpoint carries the mean image, so a folder holding only the test split evaluates it
    np.testing.assert_array_equal(np.load(ckpt / "mean_image.npy"),
                                  np.load(Path(fmnist32) / "fashion-mnist-train.mean.npy"))
    test_only = tmp_path / "test-only"
    test_only.mkdir()
    for f in Path(fmnist32).glob("fashion-mnist-test*"):
        shutil.copy(f, test_only / f.name)
    runner = CliRunner()
    results = {}
    for tta in ("center", "ten-crop"):
        out = tmp_path / f"{tta}.json"
        res = runner.invoke(app, ["eval", str(ckpt), "--data", str(test_only), "--tta", tta, "--out", str(out),
                                  "--threads", "1"])
        assert res.exit_code == 0, res.output
        results[tta] = json.loads(out.read_text())
        assert results[tta]["count"] == 100
    # the trainer's validation is the centre crop with the same normalisation
    assert results["center"]["top1"] == pytest.approx(metrics[0]["val_top1"])
    res = runner.invoke(app, ["eval", str(ckpt), "--tta", "dense", "--threads", "1"])
    assert res.exit_code != 0 and "per-pixel mean image" in res.output
    # fused with a run that subtracts the mean RGB: each normalises as it trained
    plain = tmp_path / "plain"
    _, plain_metrics = run_trainer(fmnist32, plain, backend="gloo", sets=[s for s in sets if "mean_image" not in s])
    out = tmp_path / "fused.json"
    res = runner.invoke(app, ["eval", str(ckpt), str(plain / "checkpoint_000000"), "--out", str(out), "--threads", "1"])
    assert res.exit_code == 0, res.output
    fused = json.loads(out.read_text())
    assert fused["count"] == 100 and len(fused["checkpoints"]) == 2 and 0 <= fused["top1"] <= 1
    # images whose central square is not the mean image's are refused, naming a shard and a key
    other = _pack(tmp_path / "36", [("test", 100)], 36)
    for tta in ("center", "ten-crop"):
        res = runner.invoke(app, ["eval", str(ckpt), "--data", other, "--tta", tta, "--threads", "1"])
        assert res.exit_code != 0
        assert "fashion-mnist-test-000000.tar: sample" in res.output
        assert "central square is 36px, not the mean image's 32px" in res.output
