"""Sources: which listing a path is, and opening it (``open_source``).

A source is Fashion-MNIST (shards/fashion_mnist.py), or a folder or tar in one of the layouts of
shards/layouts.py, or an ImageNet root holding a train and a val split in any of those forms. The
layout is given (``--layout``) or detected from what is there; each split becomes a ``Listing``
(shards/listing.py).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from cnnctl.shards import codec, imagenet_tars
from cnnctl.shards import labels as lb
from cnnctl.shards.fashion_mnist import fashion_mnist
from cnnctl.shards.layouts import class_folders, train_tar, val_flat, val_tar
from cnnctl.shards.listing import Listing, Record, SourceError

LAYOUTS = ("auto", "fashion-mnist", "class-folders", "val-flat", "train-tar", "val-tar", "imagenet")
TRAIN_TAR, VAL_TAR = "ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar"
KAGGLE_DIR = Path("ILSVRC", "Data", "CLS-LOC")


def _is_flat(root: Path) -> bool:
    """Images directly in the folder (validation as distributed), not in class folders."""
    return any(os.path.splitext(f)[1].lower().lstrip(".") in codec.IMAGE_EXTS for f in os.listdir(root))


def _tar_layout(path: Path) -> str:
    names = imagenet_tars.peek(path)
    nested = any(n.endswith(".tar") or "/" in n.rstrip("/") or n.endswith("/") for n in names)
    return "train-tar" if nested else "val-tar"


def _imagenet_parts(root: Path) -> dict[str, Path]:
    """The train and val sources inside an ImageNet root, in whichever form they are there."""
    found = {}
    forms = (("train", ("train", KAGGLE_DIR / "train", TRAIN_TAR)), ("val", ("val", KAGGLE_DIR / "val", VAL_TAR)))
    for split, names in forms:
        for name in names:
            if (root / name).exists():
                found[split] = root / name
                break
    return found


def detect(source: str) -> str:
    """The layout of a source path, from what is there."""
    if source == "fashion-mnist":
        return "fashion-mnist"
    path = Path(source)
    if path.is_file():
        return _tar_layout(path)
    if not path.is_dir():
        raise SourceError(f"{source}: neither 'fashion-mnist' nor an existing folder or tar")
    if _is_flat(path):
        return "val-flat"
    if _imagenet_parts(path):
        return "imagenet"
    return "class-folders"


def _one(layout: str, path: Path, split: str, labels: Path | None, synsets: Path | None,
         classes: list[dict] | None = None) -> Listing:
    if layout == "class-folders":
        return class_folders(path, split)
    if layout == "train-tar":
        return train_tar(path, split)
    if layout == "val-flat":
        return val_flat(path, split, labels, synsets, classes)
    if layout == "val-tar":
        return val_tar(path, split, labels, synsets, classes)
    raise SourceError(f"unknown layout {layout!r} (one of {', '.join(LAYOUTS)})")


def _layout_of(path: Path) -> str:
    if path.is_file():
        return _tar_layout(path)
    return "val-flat" if _is_flat(path) else "class-folders"


SPLIT_WORDS = ("train", "val", "validation", "test")


def source_name(source: str) -> str:
    """The default shard prefix of a source: the dataset's name, not its split's. A split folder
    (/data/imagenet/train) is named by its parent, ILSVRC2012's tars are imagenet, and a split
    suffix goes (mini-train -> mini): shards are <prefix>-<split>-NNNNNN.tar, so the split is in the
    name already."""
    path = Path(source)
    name = path.name.removesuffix(".tar")
    if re.fullmatch(r"ILSVRC\d{4}_img_(train|val)", name):
        return "imagenet"
    if name.lower() in SPLIT_WORDS:
        name = Path(os.path.abspath(source)).parent.name  # as the user named it (a link is not resolved)
    stem = re.sub(rf"[-_.]({'|'.join(SPLIT_WORDS)})$", "", name, flags=re.I)
    return stem or name or "data"


def open_source(source: str, layout: str = "auto", splits: list[str] | None = None,
                labels: str | None = None, synsets: str | None = None) -> tuple[str, str, list[Listing]]:
    """The listings of a source: (its name, its layout, one listing per split)."""
    labels_path, synsets_path = (Path(p) if p else None for p in (labels, synsets))
    try:
        layout = detect(source) if layout == "auto" else layout
        if layout == "fashion-mnist":
            return "fashion-mnist", layout, [fashion_mnist(s) for s in splits or ["train", "test"]]
        path = Path(source)
        if not path.exists():
            raise SourceError(f"{source}: no such folder or file")
        name = source_name(source)
        if layout == "imagenet":
            parts = _imagenet_parts(path)
            unknown = set(splits or []) - set(parts)
            if unknown or not parts:
                missing = ', '.join(sorted(unknown)) or 'train or val'
                raise SourceError(f"{source}: no {missing} split found (have: {', '.join(parts) or 'none'})")
            train = _one(_layout_of(parts["train"]), parts["train"], "train", None, None) if "train" in parts else None
            out = [train] if train and (not splits or "train" in splits) else []
            if "val" in parts and (not splits or "val" in splits):
                classes = train.classes if train else None  # the val split is labelled in the train split's classes
                out.append(_one(_layout_of(parts["val"]), parts["val"], "val", labels_path, synsets_path, classes))
            return name, layout, out
        if splits and len(splits) != 1:
            raise SourceError(f"{source}: a {layout} source is one split; pass a single --split")
        default = "val" if layout.startswith("val") or path.name.lower() in ("val", "validation") else "train"
        return name, layout, [_one(layout, path, (splits or [default])[0], labels_path, synsets_path)]
    except (lb.LabelError, imagenet_tars.TarError, OSError) as exc:
        raise SourceError(str(exc)) from None


def per_class_limit(records: list[Record], limit: int) -> list[Record]:
    """The first ``limit`` records of each class, in listing order (ImageNet-100-style subsets)."""
    taken: dict[int, int] = {}
    out = []
    for rec in records:
        if taken.get(rec.label, 0) < limit:
            taken[rec.label] = taken.get(rec.label, 0) + 1
            out.append(rec)
    return out
