"""Sources: the listing of one split of an image-classification dataset.

A source is a list of ``Record``s, sorted so that the listing (and therefore every shard) is the
same on every run. Loading a record's pixels is deferred to ``Record.load`` so that shard writers
can run in other processes.
"""

from __future__ import annotations

import gzip
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from shards.manifest import KEY_RE

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
IMAGE_EXTS = {".jpg", ".jpeg", ".png"}


@dataclass(frozen=True)
class Record:
    """One input image: where it comes from and its label."""

    key: str
    label: int
    source: str  # path inside the source tree, for the manifest and error messages
    path: str | None = None  # a file to read, or
    pixels: np.ndarray | None = field(default=None, compare=False, repr=False)  # in-memory pixels

    def read(self) -> bytes:
        with open(self.path, "rb") as f:
            return f.read()


@dataclass
class Listing:
    name: str
    split: str
    records: list[Record]
    classes: list[dict]  # [{"index", "wnid", "name"}]
    rejected: list[dict]  # [{"source", "reason"}]
    description: dict


class SourceError(ValueError):
    pass


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
    classes = [{"index": i, "wnid": re.sub(r"[^a-z0-9]+", "_", n.lower()), "name": n} for i, n in enumerate(FASHION_MNIST_CLASSES)]
    return Listing("fashion-mnist", split, records, classes, [], {"layout": "fashion-mnist", "root": str(root)})


def class_folders(root: str | Path, split: str, names: dict[str, str] | None = None) -> Listing:
    """A tree ``root/<class>/*.{jpg,jpeg,png}`` (ImageNet's train layout).

    Classes are the sorted folder names (n01440764 = 0 for ImageNet). Keys are the file stems,
    which must match ``[A-Za-z0-9_-]+`` and be unique; any other file is rejected with a reason.
    """
    root = Path(root)
    if not root.is_dir():
        raise SourceError(f"{root}: not a folder")
    class_dirs = sorted(d for d in os.listdir(root) if (root / d).is_dir() and not d.startswith("."))
    if not class_dirs:
        raise SourceError(f"{root}: no class folders found (expected root/<class>/*.jpg)")
    names = names or {}
    classes = [{"index": i, "wnid": d, "name": names.get(d, d)} for i, d in enumerate(class_dirs)]
    records, rejected, seen = [], [], {}
    for label, wnid in enumerate(class_dirs):
        for fname in sorted(os.listdir(root / wnid)):
            rel = f"{wnid}/{fname}"
            stem, ext = os.path.splitext(fname)
            if fname.startswith(".") or (root / rel).is_dir():
                continue
            if ext.lower() not in IMAGE_EXTS:
                rejected.append({"source": rel, "reason": f"not an image file extension ({ext or 'none'})"})
            elif not KEY_RE.match(stem):
                rejected.append({"source": rel, "reason": "file name cannot be a sample key ([A-Za-z0-9_-]+)"})
            elif stem in seen:
                rejected.append({"source": rel, "reason": f"duplicate key {stem!r} (also {seen[stem]})"})
            else:
                seen[stem] = rel
                records.append(Record(key=stem, label=label, source=rel, path=str(root / rel)))
    return Listing("class-folders", split, records, classes, rejected, {"layout": "class-folders", "root": str(root)})


def per_class_limit(records: list[Record], limit: int) -> list[Record]:
    """The first ``limit`` records of each class, in listing order (ImageNet-100-style subsets)."""
    taken: dict[int, int] = {}
    out = []
    for rec in records:
        if taken.get(rec.label, 0) < limit:
            taken[rec.label] = taken.get(rec.label, 0) + 1
            out.append(rec)
    return out
