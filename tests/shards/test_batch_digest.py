"""The same seed gives the same batches, byte for byte, whatever the reader's insides look like.

The digests in batch_digests.json were recorded by this file (run with CNNCTL_RECORD_DIGESTS=1) on the
reader as it stood before it was restructured into stages, which reproduced them; and recorded anew,
deliberately, once since: when each sample's crop and flip came to draw from a seed of its own
(shards/position.py, for exact mid-epoch resume), which changed the training cases, and only those.
Any other change to the reader must reproduce them. Every stream kind is covered: training crops (padded, AlexNet's with
their windows in a mean-image frame, VGG's scale jitter), evaluation (centre, ten views, whole
images of several sizes), several dp ranks and DataLoader workers, uneven shards, and two epochs.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnctl.shards import codec
from cnnctl.shards import manifest as mf
from cnnctl.shards.layouts import class_folders
from cnnctl.shards.reader import ShardStream, Split, loader
from cnnctl.shards.transforms import AlexNetCrop, CenterCrop, CropFlip, Full, ScaleJitter, TenCrop
from cnnctl.shards.writer import PackOptions, pack
from conftest import photo

DIGESTS = Path(__file__).with_name("batch_digests.json")


@pytest.fixture(scope="module")
def shard_sets(tmp_path_factory) -> Path:
    """Two real shard sets of scikit-image photos: 'square' (JPEG, 48x48, 37 images in uneven shards)
    and 'varied' (JPEG and PNG of several sizes, 29 images)."""
    root = tmp_path_factory.mktemp("digest")
    rng = np.random.default_rng(7)
    for name, count in (("square", 37), ("varied", 29)):
        tree = root / f"{name}-tree"
        for i in range(count):
            folder = tree / f"c{i % 3}"
            folder.mkdir(parents=True, exist_ok=True)
            w, h = (48, 48) if name == "square" else (int(v) for v in rng.integers(40, 90, 2))
            image = Image.fromarray(photo(rng, w, h))
            if name == "varied" and i % 4 == 0:
                image.save(folder / f"img{i:03d}.png")
            else:
                image.save(folder / f"img{i:03d}.JPEG", quality=90)
        opts = PackOptions(image_format="jpg" if name == "square" else "png", resize=48 if name == "square" else None,
                           center_crop=name == "square", shard_size=10 if name == "square" else 8)
        pack(class_folders(tree, "train"), str(root), name, opts)
    return root


CASES = {  # name -> (shard set, transform, train, dp ranks, loader workers, batch, frame)
    "crop-flip-pad": ("square", CropFlip(32, 4), True, 2, 2, 5, None),
    "alexnet-frame": ("square", AlexNetCrop(40), True, 2, 2, 4, 48),
    "alexnet-1rank": ("square", AlexNetCrop(40), True, 1, 0, 6, None),
    "vgg-jitter": ("varied", ScaleJitter(32, 40, 64), True, 1, 2, 4, None),
    "eval-center": ("square", CenterCrop(40), False, 2, 2, 4, 48),
    "eval-ten-crop": ("square", TenCrop(40), False, 1, 0, 3, None),
    "eval-whole": ("varied", Full(), False, 2, 0, 4, None),
}


def digest(root: Path, case: str, epochs: int = 2, windowed: bool = True) -> str:
    name, transform, train, ranks, workers, batch, frame = CASES[case]
    h = hashlib.sha256()
    for rank in range(ranks):
        stream = ShardStream(mf.manifest_url(str(root), name, "train"), Split(rank, ranks), batch, transform,
                             train=train, seed=11, shuffle_buffer=16, frame=frame, windowed=windowed)
        for epoch in range(epochs if train else 1):
            stream.set_epoch(epoch)
            for batch_ in loader(stream, workers=workers):
                for t in batch_:
                    h.update(str((t.dtype, tuple(t.shape))).encode())
                    h.update(t.contiguous().numpy().tobytes())
        stream.close()
    return h.hexdigest()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("windowed", [True, False], ids=["windowed-decoder", "whole-decoder"])
def test_same_seed_same_batches_as_the_reader_before_its_restructuring(shard_sets, windowed):
    """Both JPEG decoders (shards/decoders.py picks one per machine) give these same batches."""
    if windowed:
        assert codec.WINDOWED, "the windowed decoder (shards/_jpegcrop.c) is not built"
    got = {case: digest(shard_sets, case, windowed=windowed) for case in CASES}
    if os.environ.get("CNNCTL_RECORD_DIGESTS") == "1" and windowed:  # only on a deliberate change of the batches
        DIGESTS.write_text(json.dumps({**json.loads(DIGESTS.read_text()), **got}, indent=1) + "\n")
    recorded = json.loads(DIGESTS.read_text())
    changed = [case for case in CASES if got[case] != recorded.get(case)]
    assert not changed, f"batches changed for {changed}"


def device_digest(root: Path, augment: str, mean_image: bool) -> str:
    """What the trainer feeds the model: the batches after normalisation (per channel or per pixel)
    and PCA lighting, two dp ranks, two epochs."""
    from cnnctl.orchestrator.config import RunConfig
    from cnnctl.orchestrator.data import mean_image as load_mean, train_stream
    from cnnctl.orchestrator.device_batch import device_batch

    size = 40 if augment == "alexnet" else 32
    cfg = RunConfig.model_validate({"data": {"root": str(root), "prefix": "square", "augment": augment,
                                             "image_size": size, "batch_size": 8, "mean_image": mean_image,
                                             "shuffle_buffer": 16, "loader_workers": 0},
                                    "run": {"seed": 5}})
    mean = load_mean(cfg)
    h = hashlib.sha256()
    for rank in range(2):
        stream = train_stream(cfg, Split(rank, 2), None if mean is None else mean.shape[0])
        # seeded as the Trainer seeds it
        batches = device_batch(cfg, stream.manifest, mean, lighting_seed=cfg.run.seed * 1000 + rank)
        for epoch in range(2):
            stream.set_epoch(epoch)
            batches.set_epoch(epoch)
            for images, labels, *windows in loader(stream):
                x = batches(images, *windows)
                h.update(x.contiguous().numpy().tobytes() + labels.numpy().tobytes())
    return h.hexdigest()


DEVICE_CASES = {"alexnet-mean-image": ("alexnet", True), "alexnet-per-channel": ("alexnet", False),
                "vgg": ("vgg", False)}


@pytest.mark.timeout(300)
def test_same_seed_same_device_batches_as_before_the_restructuring(shard_sets):
    got = {f"device/{case}": device_digest(shard_sets, *args) for case, args in DEVICE_CASES.items()}
    recorded = json.loads(DIGESTS.read_text())
    if os.environ.get("CNNCTL_RECORD_DIGESTS") == "1":
        DIGESTS.write_text(json.dumps({**recorded, **got}, indent=1) + "\n")
        recorded = {**recorded, **got}
    changed = [case for case in got if got[case] != recorded.get(case)]
    assert not changed, f"device batches changed for {changed}"
