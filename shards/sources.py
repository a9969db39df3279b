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
from pathlib import Path, PurePosixPath

import numpy as np

from shards import codec
from shards import labels as lb
from shards import tars
from shards.manifest import KEY_RE

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
MAX_KEY = 94  # "<key>.json" must fit USTAR's 100-byte name field
LAYOUTS = ("auto", "fashion-mnist", "class-folders", "val-flat", "train-tar", "val-tar", "imagenet")
TRAIN_TAR, VAL_TAR = "ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar"
KAGGLE_DIR = Path("ILSVRC", "Data", "CLS-LOC")


@dataclass(frozen=True)
class Record:
    """One input image: where it comes from and its label."""

    key: str
    label: int
    source: str  # path inside the source tree, for the manifest and error messages
    path: str | None = None  # a file to read (a whole file, or size bytes at offset inside a tar), or
    pixels: np.ndarray | None = field(default=None, compare=False, repr=False)  # in-memory pixels
    offset: int = 0
    size: int = -1

    def read(self) -> bytes:
        with open(self.path, "rb") as f:
            if self.size < 0:
                return f.read()
            f.seek(self.offset)
            return f.read(self.size)


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


@dataclass(frozen=True)
class Candidate:
    """A file found in a source, before it is admitted as a record or rejected."""

    source: str  # path inside the source tree or archive
    wnid: str | None  # None: no label was found for it
    path: str
    offset: int = 0
    size: int = -1


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


def admit(candidates: list[Candidate], wnids: list[str], why_unlabelled: str = "no label") -> tuple[list[Record], list[dict]]:
    """Records for the candidates that can be samples; a reason for each one that cannot.

    Keys are the file stems: they must match ``[A-Za-z0-9_-]+`` and be unique. Records are sorted
    by (label, key), so a folder and a tar of the same images list them identically.
    """
    index = {w: i for i, w in enumerate(wnids)}
    records, rejected, seen = [], [], {}
    for c in sorted(candidates, key=lambda c: c.source):
        name = PurePosixPath(c.source).name
        stem, ext = os.path.splitext(name)
        reason = None
        if ext.lower().lstrip(".") not in codec.IMAGE_EXTS:
            reason = f"not an image file extension ({ext or 'none'})"
        elif not KEY_RE.match(stem):
            reason = "file name cannot be a sample key ([A-Za-z0-9_-]+)"
        elif len(stem) > MAX_KEY:
            reason = f"file name longer than {MAX_KEY} characters cannot be a tar member name"
        elif c.wnid is None:
            reason = why_unlabelled
        elif c.wnid not in index:
            reason = f"class {c.wnid} is not in the class list"
        elif stem in seen:
            reason = f"duplicate key {stem!r} (also {seen[stem]})"
        if reason:
            rejected.append({"source": c.source, "reason": reason})
            continue
        seen[stem] = c.source
        records.append(Record(key=stem, label=index[c.wnid], source=c.source, path=c.path, offset=c.offset, size=c.size))
    records.sort(key=lambda r: (r.label, r.key))
    return records, rejected


def class_list(wnids: list[str], names: dict[str, str]) -> list[dict]:
    return [{"index": i, "wnid": w, "name": names.get(w, w)} for i, w in enumerate(wnids)]


def _search_dirs(path: Path) -> list[Path]:
    """Where label files for ``path`` may lie: itself and a few parents (Kaggle's root is 4 up)."""
    path = path.resolve()
    return ([path] if path.is_dir() else []) + list(path.parents)[:4]


def _names(dirs: list[Path]) -> dict[str, str]:
    found = lb.find(dirs, lb.SYNSET_NAMES)
    return lb.synset_names(found) if found else {}


def _safe_class(name: str) -> bool:
    return bool(KEY_RE.match(name))


def class_folders(root: str | Path, split: str, names: dict[str, str] | None = None) -> Listing:
    """A tree ``root/<class>/*.{jpg,jpeg,png}`` (ImageNet's train layout, or val sorted into folders).

    Classes are the sorted folder names (n01440764 = 0 for ImageNet). Keys are the file stems,
    which must match ``[A-Za-z0-9_-]+`` and be unique; any other file is rejected with a reason.
    """
    root = Path(root)
    if not root.is_dir():
        raise SourceError(f"{root}: not a folder")
    class_dirs = sorted(d for d in os.listdir(root) if (root / d).is_dir() and not d.startswith("."))
    if not class_dirs:
        raise SourceError(f"{root}: no class folders found (expected root/<class>/*.jpg)")
    names = _names(_search_dirs(root)) if names is None else names
    candidates = []
    for wnid in class_dirs:
        for fname in os.listdir(root / wnid):
            rel = f"{wnid}/{fname}"
            if not fname.startswith(".") and not (root / rel).is_dir():
                candidates.append(Candidate(rel, wnid, str(root / rel)))
    records, rejected = admit(candidates, class_dirs)
    return Listing("class-folders", split, records, class_list(class_dirs, names), rejected, {"layout": "class-folders", "root": str(root)})


def _val_classes(dirs: list[Path], by_key: dict[str, str], words: dict[str, str], classes: list[dict] | None) -> tuple[list[str], dict[str, str]]:
    """The class list of a validation split: the train split's when packing both, else the mapping's."""
    names = {**words, **_names(dirs)}
    if classes is not None:
        return [c["wnid"] for c in classes], {c["wnid"]: c["name"] for c in classes}
    return sorted(set(names) | set(by_key.values())), names


def val_flat(root: str | Path, split: str, labels: Path | None = None, synsets: Path | None = None, classes: list[dict] | None = None) -> Listing:
    """A flat folder of validation images labelled by ``LOC_val_solution.csv`` or the devkit's ground truth."""
    root = Path(root)
    dirs = _search_dirs(root)
    by_key, words, used = lb.val_labels(dirs, labels, synsets)
    wnids, names = _val_classes(dirs, by_key, words, classes)
    candidates = [
        Candidate(f, by_key.get(os.path.splitext(f)[0]), str(root / f))
        for f in os.listdir(root) if not f.startswith(".") and (root / f).is_file()
    ]
    records, rejected = admit(candidates, wnids, f"no label in {used}")
    return Listing("val-flat", split, records, class_list(wnids, names), rejected, {"layout": "val-flat", "root": str(root), "labels": used})


def _tar_class(source: str) -> str | None:
    """The class of a train-archive member: its per-class tar's stem, else its folder's name."""
    parts = PurePosixPath(source).parts
    if len(parts) > 1 and parts[0].endswith(".tar"):
        return parts[0][:-4]
    return parts[-2] if len(parts) > 1 else None


def train_tar(path: str | Path, split: str, names: dict[str, str] | None = None) -> Listing:
    """``ILSVRC2012_img_train.tar`` (a tar of per-class tars) or any tar of ``<class>/<image>``, read in place."""
    path = Path(path)
    members, rejected = tars.scan(path, nested=True)
    wnids = sorted({c for c in map(_tar_class, [m.name for m in members] + [r["source"] for r in rejected]) if c and _safe_class(c)})
    if not wnids:
        raise SourceError(f"{path}: no per-class tars or class folders inside")
    candidates = [Candidate(m.name, _tar_class(m.name), str(path), m.offset, m.size) for m in members]
    records, more = admit(candidates, wnids, "not inside a per-class tar or class folder")
    names = _names(_search_dirs(path)) if names is None else names
    return Listing("train-tar", split, records, class_list(wnids, names), rejected + more, {"layout": "train-tar", "archive": str(path)})


def val_tar(path: str | Path, split: str, labels: Path | None = None, synsets: Path | None = None, classes: list[dict] | None = None) -> Listing:
    """``ILSVRC2012_img_val.tar``: a flat tar of images, labelled like a flat validation folder."""
    path = Path(path)
    dirs = _search_dirs(path)
    by_key, words, used = lb.val_labels(dirs, labels, synsets)
    wnids, names = _val_classes(dirs, by_key, words, classes)
    members, rejected = tars.scan(path, nested=False)
    candidates = [Candidate(m.name, by_key.get(PurePosixPath(m.name).stem), str(path), m.offset, m.size) for m in members]
    records, more = admit(candidates, wnids, f"no label in {used}")
    return Listing("val-tar", split, records, class_list(wnids, names), rejected + more, {"layout": "val-tar", "archive": str(path), "labels": used})


def _is_flat(root: Path) -> bool:
    """Images directly in the folder (validation as distributed), not in class folders."""
    return any(os.path.splitext(f)[1].lower().lstrip(".") in codec.IMAGE_EXTS for f in os.listdir(root))


def _tar_layout(path: Path) -> str:
    names = tars.peek(path)
    return "train-tar" if any(n.endswith(".tar") or "/" in n.rstrip("/") or n.endswith("/") for n in names) else "val-tar"


def _imagenet_parts(root: Path) -> dict[str, Path]:
    """The train and val sources inside an ImageNet root, in whichever form they are there."""
    found = {}
    for split, names in (("train", ("train", KAGGLE_DIR / "train", TRAIN_TAR)), ("val", ("val", KAGGLE_DIR / "val", VAL_TAR))):
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


def _one(layout: str, path: Path, split: str, labels: Path | None, synsets: Path | None, classes: list[dict] | None = None) -> Listing:
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
                raise SourceError(f"{source}: no {', '.join(sorted(unknown)) or 'train or val'} split found (have: {', '.join(parts) or 'none'})")
            train = _one(_layout_of(parts["train"]), parts["train"], "train", None, None) if "train" in parts else None
            out = [train] if train and (not splits or "train" in splits) else []
            if "val" in parts and (not splits or "val" in splits):
                out.append(_one(_layout_of(parts["val"]), parts["val"], "val", labels_path, synsets_path, train.classes if train else None))
            return name, layout, out
        if splits and len(splits) != 1:
            raise SourceError(f"{source}: a {layout} source is one split; pass a single --split")
        default = "val" if layout.startswith("val") or path.name.lower() in ("val", "validation") else "train"
        return name, layout, [_one(layout, path, (splits or [default])[0], labels_path, synsets_path)]
    except (lb.LabelError, tars.TarError, OSError) as exc:
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
