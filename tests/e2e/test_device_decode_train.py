"""`cnnctl train --set data.decoder=device` on Ray workers, on tiny JPEG shards of a miniature ImageNet:
the loader workers batch bytes, the training processes decode them (the CPU backend here)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench import mini_imagenet as mini
from cnnctl_cli import cli, sets
from cnnctl.orchestrator.metrics import read

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def jpeg_shards(tmp_path_factory) -> Path:
    """A 3-class miniature ImageNet (bench/mini_imagenet.py) through `cnnctl shard`: 32 px JPEG
    squares, 96 to train on, 24 to validate."""
    raw, out = tmp_path_factory.mktemp("raw"), tmp_path_factory.mktemp("shards")
    mini.write(raw, classes=3, train_per_class=32, val_per_class=8, size=40)
    squares = ["--prefix", "photos", "--resize", "32", "--center-crop", "--shard-size", "40"]
    cli("shard", str(raw / "ILSVRC2012_img_train.tar"), str(out), *squares)
    cli("shard", str(raw / "val"), str(out), *squares)
    return out


def test_device_decode_trains_on_ray_workers(ray_cluster, jpeg_shards, tmp_path):
    """One epoch (~35 s, most of it Ray's workers starting); that the batches are the worker-side
    decoders' own, as the Trainer chains the stages, is tests/shards/test_device_decode.py's."""
    out = cli("train", "--preset", "demo-fashion", "--data", str(jpeg_shards), "--name", "device", "--epochs", "1",
              "--address", ray_cluster.address, "--cpu", "--workers-per-node", "1",
              *sets(f"run.storage={tmp_path}", "data.prefix=photos", "data.train_split=train", "data.val_split=val",
                    "data.augment=alexnet", "data.batch_size=16", "data.loader_workers=1", "data.decoder=device",
                    "model.width=0.25", "run.log_every=1000"))
    assert "done: epoch" in out, out
    row = read(str(tmp_path / "device"))[-1]
    assert row["steps_per_rank"] == [6]  # 96 images, one worker, batches of 16
    assert row["bad_samples"] == 0 and row["val_count"] == 24 and np.isfinite(row["train_loss"])
