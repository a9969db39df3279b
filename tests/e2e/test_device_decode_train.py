"""`cnnctl train --set data.decoder=device` on Ray workers, on tiny JPEG shards of scikit-image photos:
the loader workers batch bytes, the training processes decode them (the CPU backend here)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data as photos

from cnnctl_cli import cli, sets
from orchestrator.metrics import read
from shards.layouts import class_folders
from shards.writer import PackOptions, pack

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def jpeg_shards(tmp_path_factory) -> Path:
    """3 classes of 32 px JPEG squares: 96 to train on, 24 to validate."""
    root = tmp_path_factory.mktemp("device-decode-e2e")
    rng = np.random.default_rng(4)
    for split, count in (("train", 96), ("val", 24)):
        tree = root / f"{split}-tree"
        for i in range(count):
            folder = tree / f"c{i % 3}"
            folder.mkdir(parents=True, exist_ok=True)
            src = (photos.astronaut, photos.coffee, photos.chelsea)[i % 3]()  # the class: which photo
            top, left = (int(v) for v in rng.integers(0, 200, 2))
            Image.fromarray(src[top : top + 160, left : left + 180]).resize((40, 36)).save(
                folder / f"{split}{i:03d}.JPEG", quality=90)
        pack(class_folders(tree, split), str(root), "photos",
             PackOptions(image_format="jpg", resize=32, center_crop=True, shard_size=40))
    return root


def test_device_decode_trains_on_ray_workers(ray_cluster, jpeg_shards, tmp_path):
    """One epoch (~35 s, most of it Ray's workers starting); that the batches are the worker-side
    decoders' own, as the Trainer chains the stages, is tests/shards/test_device_decode.py's."""
    out = cli("train", "--preset", "demo-fashion", "--data", str(jpeg_shards), "--name", "device", "--epochs", "1",
              "--address", ray_cluster.address, "--cpu",
              *sets(f"run.storage={tmp_path}", "data.prefix=photos", "data.train_split=train", "data.val_split=val",
                    "data.augment=alexnet", "data.batch_size=16", "data.loader_workers=1", "data.decoder=device",
                    "model.width=0.25", "run.log_every=1000"))
    assert "done: epoch" in out, out
    row = read(str(tmp_path / "device"))[-1]
    assert row["steps_per_rank"] == [6, 6]  # 96 images, dp=2, a global batch of 16: 8 per rank
    assert row["bad_samples"] == 0 and row["val_count"] == 24 and np.isfinite(row["train_loss"])
