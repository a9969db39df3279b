"""ImageNet label files: which wnid each validation image is, and human names for wnids.

Validation labels come in two real forms:
- Kaggle's ``LOC_val_solution.csv``: ``ImageId,PredictionString``; the first token of the
  prediction string is the wnid.
- The devkit's ``ILSVRC2012_validation_ground_truth.txt``: line i is the ILSVRC2012_ID of
  ``ILSVRC2012_val_<i:08d>``. IDs are not the sorted-wnid index (ID 1 is n02119789), so a map
  from ID to wnid is needed: the devkit's ``meta.mat`` or a text file of ``<ID> <wnid>`` lines.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

KAGGLE_SOLUTION = "LOC_val_solution.csv"
GROUND_TRUTH = "ILSVRC2012_validation_ground_truth.txt"
META_MAT = "meta.mat"
SYNSET_NAMES = "LOC_synset_mapping.txt"
WNID_RE = re.compile(r"\An[0-9]{8}\Z")  # ASCII digits; \Z: no trailing newline


class LabelError(ValueError):
    pass


MAX_BYTES = 64 << 20  # Kaggle's LOC_val_solution.csv is ~2.6 MB; the devkit's files are smaller


def _text(path: Path) -> str:
    """A label file's text, UTF-8 (a BOM allowed); LabelError naming the file otherwise."""
    try:
        if path.stat().st_size > MAX_BYTES:
            raise LabelError(f"{path}: {path.stat().st_size} bytes, more than a label file's limit of {MAX_BYTES}")
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise LabelError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise LabelError(f"{path}: cannot read it ({type(exc).__name__}: {exc.strerror or exc})") from None


def _number(text: str) -> bool:
    """ASCII digits only: str.isdigit() also takes '²' and '٣', which int() refuses or reads."""
    return text.isascii() and text.isdigit() and len(text) <= 18


def find(dirs: list[Path], name: str) -> Path | None:
    """The first ``name`` in ``dirs`` or in their devkit ``data`` folders."""
    for d in dirs:
        for candidate in (d / name, d / "ILSVRC2012_devkit_t12" / "data" / name):
            if candidate.is_file():
                return candidate
    return None


def synset_names(path: Path) -> dict[str, str]:
    """``LOC_synset_mapping.txt``: ``n01440764 tench, Tinca tinca`` per line, in sorted-wnid order."""
    names = {}
    for n, line in enumerate(_text(path).splitlines(), 1):
        if line.strip():
            wnid, _, name = line.strip().partition(" ")
            if not WNID_RE.match(wnid):
                raise LabelError(f"{path} line {n}: {wnid!r} is not a wnid (n########)")
            names[wnid] = name.strip() or wnid
    return names


def kaggle_solution(path: Path) -> dict[str, str]:
    """``LOC_val_solution.csv`` -> {image id: wnid}."""
    out = {}
    rows = csv.reader(io.StringIO(_text(path), newline=""))
    try:
        header = next(rows, None)
        if not header or [h.strip() for h in header[:2]] != ["ImageId", "PredictionString"]:
            raise LabelError(f"{path}: expected the header 'ImageId,PredictionString', got {str(header)[:80]!r}")
        for row in rows:
            tokens = row[1].split() if len(row) > 1 else []
            if not tokens or not WNID_RE.match(tokens[0]):
                raise LabelError(f"{path} line {rows.line_num}: the PredictionString does not start with a wnid")
            out[row[0].strip()] = tokens[0]
    except csv.Error as exc:
        raise LabelError(f"{path} line {rows.line_num}: not CSV ({exc})") from None
    return out


def id_map(path: Path) -> tuple[dict[int, str], dict[str, str]]:
    """ILSVRC2012_ID -> wnid, and wnid -> words, from ``meta.mat`` or ``<ID> <wnid> [words]`` lines."""
    if path.suffix == ".mat":
        try:
            import scipy.io  # only the devkit's meta.mat needs it: the optional extra `imagenet`
        except ImportError:
            raise LabelError(f"{path}: reading the devkit's meta.mat needs scipy: "
                             f"pip install 'cnnctl[imagenet]'") from None

        try:
            synsets = scipy.io.loadmat(path, squeeze_me=True)["synsets"]
            ids, wnids = synsets["ILSVRC2012_ID"], synsets["WNID"]
        except Exception as exc:  # noqa: BLE001 - loadmat and the field look-ups fail in many ways on other files
            raise LabelError(f"{path}: not the devkit's meta.mat ({type(exc).__name__}: {exc})") from None
        words = synsets["words"] if "words" in (synsets.dtype.names or ()) else wnids
        pairs = [(int(i), str(w), str(t)) for i, w, t in zip(ids.ravel(), wnids.ravel(), words.ravel())]
        pairs = [p for p in pairs if 1 <= p[0] <= 1000]  # higher IDs are WordNet ancestors, not classes
    else:
        pairs = []
        for n, line in enumerate(_text(path).splitlines(), 1):
            parts = line.split(maxsplit=2)
            if not parts:
                continue
            if len(parts) < 2 or not _number(parts[0]) or not WNID_RE.match(parts[1]):
                raise LabelError(f"{path} line {n}: expected '<ILSVRC2012_ID> <wnid>', got {line.strip()[:80]!r}")
            pairs.append((int(parts[0]), parts[1], parts[2] if len(parts) > 2 else parts[1]))
    by_id = {i: w for i, w, _ in pairs}
    if len(by_id) != len(pairs):
        raise LabelError(f"{path}: an ILSVRC2012_ID appears twice")
    return by_id, {w: t for _, w, t in pairs}


def ground_truth(path: Path, ids: dict[int, str], map_path: Path) -> dict[str, str]:
    """``ILSVRC2012_validation_ground_truth.txt`` -> {ILSVRC2012_val_<i:08d>: wnid}."""
    out = {}
    for n, line in enumerate(_text(path).splitlines(), 1):
        value = line.strip()
        if not _number(value):
            raise LabelError(f"{path} line {n}: expected an ILSVRC2012_ID, got {value[:40]!r}")
        if int(value) not in ids:
            raise LabelError(f"{path} line {n}: ILSVRC2012_ID {value} is not in {map_path}")
        out[f"ILSVRC2012_val_{n:08d}"] = ids[int(value)]
    return out


def val_labels(dirs: list[Path], labels: Path | None = None,
               synsets: Path | None = None) -> tuple[dict[str, str], dict[str, str], str]:
    """{image key: wnid}, {wnid: name} from the map (may be empty), and a description of the files used."""
    labels = labels or find(dirs, KAGGLE_SOLUTION) or find(dirs, GROUND_TRUTH)
    if labels is None:
        where = ", ".join(str(d) for d in dirs)
        raise LabelError(f"no validation labels: pass --labels, or put {KAGGLE_SOLUTION} or {GROUND_TRUTH} in {where}")
    if not labels.is_file():
        raise LabelError(f"{labels}: labels file not found")
    if labels.suffix == ".csv":
        return kaggle_solution(labels), {}, str(labels)
    synsets = synsets or find(dirs, META_MAT)
    if synsets is None or not synsets.is_file():
        raise LabelError(f"{labels} gives ILSVRC2012_IDs: pass --synsets meta.mat (or a text map of '<ID> <wnid>' "
                         "lines)")
    ids, words = id_map(synsets)
    return ground_truth(labels, ids, synsets), words, f"{labels} + {synsets}"
