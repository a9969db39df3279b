"""A miniature ImageNet made of real Fashion-MNIST images, in every layout `cnnctl shard` reads.

ImageNet itself is too large to test or benchmark the ImageNet paths with, so this writes a small
stand-in with ImageNet's shapes: JPEGs of about 256 px (bilinear upscales of real Fashion-MNIST
images, tinted per class so that they are genuinely RGB; some 256x288 or 288x256 so that resizing
and centre-cropping have work to do), classes named by made-up wnids n90000000, n90000001, ...

    root/train/<wnid>/<wnid>_<i>.JPEG          train, in class folders (i: the Fashion-MNIST index)
    root/val/ILSVRC2012_val_<n:08d>.JPEG       val, flat, numbered from 1 in a seeded shuffled order
    root/LOC_val_solution.csv                  Kaggle's val labels: ImageId,PredictionString (wnid + box)
    root/LOC_synset_mapping.txt                Kaggle's class names: "<wnid> <name>" per line
    root/ILSVRC2012_img_train.tar              the original train archive: a tar of <wnid>.tar class tars

The label files sit in root, where Kaggle ships them and where `shards.sources` looks for them from
train/, val/ and the train tar alike (inside val/ they would be rejected as non-image inputs).
Train images come from Fashion-MNIST's train split, val images from its test split, chosen per class
by ``seed``; the same arguments write the same bytes.

Usage: python bench/mini_imagenet.py OUT [--classes 10] [--train-per-class 40] [--val-per-class 10]
                                         [--size 256] [--seed 0]
"""

from __future__ import annotations

import argparse
import colorsys
import csv
import io
import tarfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from cnnctl.shards.fashion_mnist import FASHION_MNIST_CLASSES, fashion_mnist
from cnnctl.shards.listing import Record
from cnnctl.shards.sources import TRAIN_TAR

QUALITY = 90
SOLUTION, MAPPING = "LOC_val_solution.csv", "LOC_synset_mapping.txt"


def wnid(label: int) -> str:
    """A made-up wnid (n + 8 digits, as the label files require) that sorts in label order."""
    return f"n{90000000 + label}"


def tint(label: int) -> np.ndarray:
    """Per-channel gains of a class's colour: a fixed hue per Fashion-MNIST class, half saturated."""
    return np.array(colorsys.hsv_to_rgb(label / len(FASHION_MNIST_CLASSES), 0.5, 1.0))


def _image(rec: Record, shape: tuple[int, int]) -> tuple[bytes, tuple[int, int, int, int]]:
    """JPEG bytes of a tinted, bilinearly upscaled record, and the box (inclusive) of its non-black pixels."""
    rgb = (rec.pixels[..., None] * tint(rec.label)).astype(np.uint8)
    img = Image.fromarray(rgb).resize(shape, Image.BILINEAR)
    left, top, right, bottom = img.getbbox() or (0, 0, *shape)
    out = io.BytesIO()
    img.save(out, "JPEG", quality=QUALITY)
    return out.getvalue(), (left, top, right - 1, bottom - 1)


def _pick(records: list[Record], classes: int, per_class: int, rng: np.random.Generator) -> list[Record]:
    """``per_class`` records of each of the first ``classes`` labels, drawn by ``rng``, in index order."""
    labels = np.array([r.label for r in records])
    picked = []
    for label in range(classes):
        pool = np.flatnonzero(labels == label)
        if per_class > len(pool):
            raise ValueError(f"{per_class} images per class asked, Fashion-MNIST has {len(pool)} of class {label}")
        picked += [records[i] for i in np.sort(rng.choice(pool, per_class, replace=False))]
    return picked


def _tar_bytes(files: dict[str, bytes]) -> bytes:
    """An uncompressed tar of ``files`` (name -> bytes), in that order, with mtime 0 and owner 0."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def write(root: Path, *, classes: int = 10, train_per_class: int = 40, val_per_class: int = 10,
          size: int = 256, seed: int = 0) -> dict:
    """Write the mini ImageNet under ``root`` (which must be empty or absent).

    ``size`` is every image's shorter side; each image is, drawn by ``seed``, square, 9/8 as wide or
    9/8 as tall. Returns the paths written, the class list, and {key: wnid} of the train and val
    images (their lengths are the counts).
    """
    if not 1 <= classes <= len(FASHION_MNIST_CLASSES):
        raise ValueError(f"classes: 1 to {len(FASHION_MNIST_CLASSES)}, got {classes}")
    root = Path(root)
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root}: not empty (remove it first)")
    rng = np.random.default_rng(seed)
    shapes = [(size, size), (size * 9 // 8, size), (size, size * 9 // 8)]  # (width, height)
    wnids = [wnid(label) for label in range(classes)]
    names = {w: FASHION_MNIST_CLASSES[label] for label, w in enumerate(wnids)}

    train, class_tars = {}, {}
    for rec in _pick(fashion_mnist("train").records, classes, train_per_class, rng):
        w = wnid(rec.label)
        key = f"{w}_{rec.key.rsplit('_', 1)[1]}"
        data, _ = _image(rec, shapes[rng.integers(len(shapes))])
        (root / "train" / w).mkdir(parents=True, exist_ok=True)
        (root / "train" / w / f"{key}.JPEG").write_bytes(data)
        class_tars.setdefault(f"{w}.tar", {})[f"{key}.JPEG"] = data
        train[key] = w
    (root / TRAIN_TAR).write_bytes(_tar_bytes({name: _tar_bytes(files) for name, files in class_tars.items()}))

    val, rows = {}, []
    picked = _pick(fashion_mnist("test").records, classes, val_per_class, rng)
    (root / "val").mkdir()
    for n, i in enumerate(rng.permutation(len(picked)), 1):
        rec, key = picked[i], f"ILSVRC2012_val_{n:08d}"
        data, box = _image(rec, shapes[rng.integers(len(shapes))])
        (root / "val" / f"{key}.JPEG").write_bytes(data)
        val[key] = wnid(rec.label)
        rows.append([key, " ".join(map(str, (val[key], *box)))])
    with open(root / SOLUTION, "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows([["ImageId", "PredictionString"], *rows])
    (root / MAPPING).write_text("".join(f"{w} {names[w]}\n" for w in wnids))

    return {
        "root": root, "train_dir": root / "train", "val_dir": root / "val", "train_tar": root / TRAIN_TAR,
        "val_solution": root / SOLUTION, "synset_mapping": root / MAPPING,
        "classes": [{"index": i, "wnid": w, "name": names[w]} for i, w in enumerate(wnids)],
        "train": train, "val": val,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="Folder to write (must be empty or absent).")
    p.add_argument("--classes", type=int, default=10, help="Fashion-MNIST classes to use, the first N (1-10).")
    p.add_argument("--train-per-class", type=int, default=40)
    p.add_argument("--val-per-class", type=int, default=10)
    p.add_argument("--size", type=int, default=256, help="Shorter side of every image in pixels.")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    start = time.perf_counter()
    try:
        res = write(a.out, classes=a.classes, train_per_class=a.train_per_class, val_per_class=a.val_per_class,
                    size=a.size, seed=a.seed)
    except (FileExistsError, ValueError) as exc:
        p.error(str(exc))
    took = time.perf_counter() - start
    print(f"{len(res['classes'])} classes ({res['classes'][0]['wnid']}..{res['classes'][-1]['wnid']}), "
          f"{len(res['train'])} train + {len(res['val'])} val images in {took:.2f} s")
    for name in ("train_dir", "val_dir", "val_solution", "synset_mapping", "train_tar"):
        print(f"  {res[name]}")
    print(f"cnnctl shard {res['root']} DEST --resize 256 --center-crop     # train/ + val/\n"
          f"cnnctl shard {res['train_tar']} DEST --resize 256 --center-crop")


if __name__ == "__main__":
    main()
