"""The listings of a split laid out on disk: a tree of class folders, a flat validation folder, and
ImageNet's train and validation tars read in place (shards/imagenet_tars.py).

Labels come from the layout (a folder or per-class tar's name) or, for validation images, from
``LOC_val_solution.csv`` or the devkit's ground truth (shards/labels.py); class names from a synset
list found beside the source. shards/sources.py picks the layout of a path.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from cnnctl.shards import imagenet_tars
from cnnctl.shards import labels as lb
from cnnctl.shards.listing import Candidate, Listing, SourceError, admit, class_list
from cnnctl.shards.manifest import KEY_RE


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
    return Listing("class-folders", split, records, class_list(class_dirs, names), rejected,
                   {"layout": "class-folders", "root": str(root)})


def _val_labelling(path: Path, labels: Path | None, synsets: Path | None,
                   classes: list[dict] | None) -> tuple[dict[str, str], str, list[str], dict[str, str]]:
    """A validation split's labels (image key -> wnid, and the file they came from) and class list:
    the train split's when packing both, else the mapping's."""
    dirs = _search_dirs(path)
    by_key, words, used = lb.val_labels(dirs, labels, synsets)
    names = {**words, **_names(dirs)}
    if classes is not None:
        return by_key, used, [c["wnid"] for c in classes], {c["wnid"]: c["name"] for c in classes}
    return by_key, used, sorted(set(names) | set(by_key.values())), names


def val_flat(root: str | Path, split: str, labels: Path | None = None, synsets: Path | None = None,
             classes: list[dict] | None = None) -> Listing:
    """A flat folder of validation images labelled by ``LOC_val_solution.csv`` or the devkit's ground truth."""
    root = Path(root)
    by_key, used, wnids, names = _val_labelling(root, labels, synsets, classes)
    candidates = [
        Candidate(f, by_key.get(os.path.splitext(f)[0]), str(root / f))
        for f in os.listdir(root) if not f.startswith(".") and (root / f).is_file()
    ]
    records, rejected = admit(candidates, wnids, f"no label in {used}")
    return Listing("val-flat", split, records, class_list(wnids, names), rejected,
                   {"layout": "val-flat", "root": str(root), "labels": used})


def _tar_class(source: str) -> str | None:
    """The class of a train-archive member: its per-class tar's stem, else its folder's name."""
    parts = PurePosixPath(source).parts
    if len(parts) > 1 and parts[0].endswith(".tar"):
        return parts[0][:-4]
    return parts[-2] if len(parts) > 1 else None


def train_tar(path: str | Path, split: str, names: dict[str, str] | None = None) -> Listing:
    """``ILSVRC2012_img_train.tar`` (a tar of per-class tars) or any tar of ``<class>/<image>``, read in place."""
    path = Path(path)
    members, rejected = imagenet_tars.scan(path, nested=True)
    sources = [m.name for m in members] + [r["source"] for r in rejected]
    wnids = sorted({c for c in map(_tar_class, sources) if c and _safe_class(c)})
    if not wnids:
        raise SourceError(f"{path}: no per-class tars or class folders inside")
    candidates = [Candidate(m.name, _tar_class(m.name), str(path), m.offset, m.size) for m in members]
    records, more = admit(candidates, wnids, "not inside a per-class tar or class folder")
    names = _names(_search_dirs(path)) if names is None else names
    return Listing("train-tar", split, records, class_list(wnids, names), rejected + more,
                   {"layout": "train-tar", "archive": str(path)})


def val_tar(path: str | Path, split: str, labels: Path | None = None, synsets: Path | None = None,
            classes: list[dict] | None = None) -> Listing:
    """``ILSVRC2012_img_val.tar``: a flat tar of images, labelled like a flat validation folder."""
    path = Path(path)
    by_key, used, wnids, names = _val_labelling(path, labels, synsets, classes)
    members, rejected = imagenet_tars.scan(path, nested=False)
    candidates = [Candidate(m.name, by_key.get(PurePosixPath(m.name).stem), str(path), m.offset, m.size)
                  for m in members]
    records, more = admit(candidates, wnids, f"no label in {used}")
    return Listing("val-tar", split, records, class_list(wnids, names), rejected + more,
                   {"layout": "val-tar", "archive": str(path), "labels": used})
