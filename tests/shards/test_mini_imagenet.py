"""bench/mini_imagenet.py's layouts through the real `cnnctl shard`: the folder root (train/ + flat
val/ with Kaggle's CSV and names) and ILSVRC2012_img_train.tar must give the same classes, keys,
labels and pixels, and val must be labelled as the CSV says."""

from __future__ import annotations

import csv
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import simplejpeg
from typer.testing import CliRunner

from bench import mini_imagenet as mini
from cnnctl.orchestrator.cli import app
from cnnctl.shards.fashion_mnist import FASHION_MNIST_CLASSES

CLASSES, TRAIN, VAL, SIDE = 4, 6, 3, 64
WNIDS = [f"n{90000000 + i}" for i in range(CLASSES)]
runner = CliRunner()


def _shard(source: Path, dest: Path) -> None:
    res = runner.invoke(app, ["shard", str(source), str(dest), "--resize", str(SIDE), "--center-crop",
                              "--shard-size", "10"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["shard", "verify", str(dest)])
    assert res.exit_code == 0, res.output


def _split(dest: Path, prefix: str, split: str) -> tuple[dict, dict[str, tuple[int, str, bytes]]]:
    """A split's manifest and its samples: {key: (label, the json's wnid, image bytes)}."""
    manifest = json.loads((dest / f"{prefix}-{split}.manifest.json").read_text())
    members = {}
    for shard in manifest["shards"]:
        with tarfile.open(dest / shard["name"]) as tar:
            members |= {m.name: tar.extractfile(m).read() for m in tar}
    keys = {name.rsplit(".", 1)[0] for name in members}
    samples = {k: (int(members[f"{k}.cls"]), json.loads(members[f"{k}.json"])["wnid"],
                   members[f"{k}.jpg"]) for k in keys}
    assert len(members) == 3 * len(samples) == 3 * manifest["num_samples"]
    return manifest, samples


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("mini") / "mini"
    written = mini.write(root, classes=CLASSES, train_per_class=TRAIN, val_per_class=VAL, size=96, seed=3)
    out = tmp_path_factory.mktemp("out")
    _shard(root, out / "folders")
    _shard(written["train_tar"], out / "tar")
    return {"root": root, "written": written, "folders": out / "folders", "tar": out / "tar"}


def test_classes_and_counts(packed):
    classes = [{"index": i, "wnid": w, "name": FASHION_MNIST_CLASSES[i]} for i, w in enumerate(WNIDS)]
    assert sorted(p.name for p in (packed["root"] / "train").iterdir()) == WNIDS
    for dest, prefix, split, count in ((packed["folders"], "mini", "train", TRAIN),
                                       (packed["folders"], "mini", "val", VAL),
                                       (packed["tar"], "imagenet", "train", TRAIN)):
        manifest, samples = _split(dest, prefix, split)
        assert manifest["classes"] == classes and manifest["rejected"] == []
        assert manifest["num_samples"] == CLASSES * count
        assert sorted(label for label, _, _ in samples.values()) == sorted(list(range(CLASSES)) * count)
        assert all(WNIDS[label] == wnid for label, wnid, _ in samples.values())


def test_tar_and_folder_train_are_the_same_samples(packed):
    _, folders = _split(packed["folders"], "mini", "train")
    _, tar = _split(packed["tar"], "imagenet", "train")
    files = {p.stem: WNIDS.index(p.parent.name) for p in (packed["root"] / "train").glob("*/*.JPEG")}
    assert {k: v[0] for k, v in folders.items()} == {k: v[0] for k, v in tar.items()} == files
    assert folders == tar  # the same source bytes, so the same re-encoded images
    for _, _, data in folders.values():
        assert simplejpeg.decode_jpeg(data).shape == (SIDE, SIDE, 3)  # 96x108 and 108x96 sources cropped too


def test_val_labels_are_the_csv(packed):
    with open(packed["root"] / "LOC_val_solution.csv", newline="") as f:
        solution = {row["ImageId"]: row["PredictionString"].split()[0] for row in csv.DictReader(f)}
    _, val = _split(packed["folders"], "mini", "val")
    assert len(solution) == CLASSES * VAL
    assert {k: WNIDS[label] for k, (label, _, _) in val.items()} == solution == packed["written"]["val"]


def test_labels_are_the_images_classes(packed):
    """Each image carries its class's tint, so a label that is not the image's true class shows."""
    tints = np.array([mini.tint(label) for label in range(CLASSES)])
    tints /= tints.max(1, keepdims=True)
    for split in ("train", "val"):
        for label, _, data in _split(packed["folders"], "mini", split)[1].values():
            pixels = simplejpeg.decode_jpeg(data).reshape(-1, 3).astype(float)
            colour = pixels[pixels.max(1) > 60].mean(0)
            assert np.abs(tints - colour / colour.max()).sum(1).argmin() == label


@pytest.mark.slow  # ~9 s: three miniature ImageNets
def test_same_seed_same_bytes(tmp_path):
    a = mini.write(tmp_path / "a", classes=2, train_per_class=3, val_per_class=2, size=32, seed=1)
    b = mini.write(tmp_path / "b", classes=2, train_per_class=3, val_per_class=2, size=32, seed=1)
    c = mini.write(tmp_path / "c", classes=2, train_per_class=3, val_per_class=2, size=32, seed=2)
    for name in ("train_tar", "val_solution", "synset_mapping"):
        assert a[name].read_bytes() == b[name].read_bytes()
    assert a["train_tar"].read_bytes() != c["train_tar"].read_bytes()
    with pytest.raises(FileExistsError):
        mini.write(tmp_path / "a", classes=1, train_per_class=1, val_per_class=1, size=32)
