"""Fashion-MNIST as a source: its idx.gz files (Debian's dataset-fashion-mnist), held in memory."""

from __future__ import annotations

import gzip
import re
import struct
from pathlib import Path

import numpy as np

from cnnctl.shards.listing import Listing, Record, SourceError

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]


def _read_idx(path: Path, magic: int) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    got, count = struct.unpack(">II", data[:8])
    if got != magic:
        raise SourceError(f"{path}: not an idx file with magic {magic} (got {got})")
    if magic == 2051:
        rows, cols = struct.unpack(">II", data[8:16])
        return np.frombuffer(data, np.uint8, count * rows * cols, 16).reshape(count, rows, cols)
    return np.frombuffer(data, np.uint8, count, 8)


def fashion_mnist(split: str, root: Path = FASHION_MNIST_DIR) -> Listing:
    """Fashion-MNIST from its idx.gz files (Debian's dataset-fashion-mnist). Splits: train, test."""
    stem = {"train": "train", "test": "t10k"}.get(split)
    if stem is None:
        raise SourceError(f"fashion-mnist: unknown split {split!r} (train or test)")
    images_path = root / f"{stem}-images-idx3-ubyte.gz"
    labels_path = root / f"{stem}-labels-idx1-ubyte.gz"
    for p in (images_path, labels_path):
        if not p.exists():
            raise SourceError(f"{p}: missing (install Debian's dataset-fashion-mnist)")
    images, labels = _read_idx(images_path, 2051), _read_idx(labels_path, 2049)
    if len(images) != len(labels):
        raise SourceError(f"{root}: {len(images)} images but {len(labels)} labels")
    records = [
        Record(key=f"fmnist_{split}_{i:05d}", label=int(labels[i]), source=f"{images_path.name}#{i}", pixels=images[i])
        for i in range(len(images))
    ]
    classes = [{"index": i, "wnid": re.sub(r"[^a-z0-9]+", "_", n.lower()), "name": n}
               for i, n in enumerate(FASHION_MNIST_CLASSES)]
    return Listing("fashion-mnist", split, records, classes, [], {"layout": "fashion-mnist", "root": str(root)})
