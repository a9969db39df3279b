"""A split's listing: the records (one per input image) that a source yields, sorted so that the
listing, and therefore every shard, is the same on every run; and the rule that admits a file found
in a source as a record or rejects it with a reason (``admit``).

Loading a record's bytes is deferred to ``Record.read`` so that shard writers can run in other
processes. The sources that produce listings are shards/fashion_mnist.py and shards/layouts.py;
shards/sources.py picks one for a path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import PurePosixPath

import numpy as np

from cnnctl.shards import codec
from cnnctl.shards.manifest import KEY_RE

MAX_KEY = 94  # "<key>.json" must fit USTAR's 100-byte name field


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


def admit(candidates: list[Candidate], wnids: list[str],
          why_unlabelled: str = "no label") -> tuple[list[Record], list[dict]]:
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
        records.append(Record(key=stem, label=index[c.wnid], source=c.source, path=c.path, offset=c.offset,
                              size=c.size))
    records.sort(key=lambda r: (r.label, r.key))
    return records, rejected


def class_list(wnids: list[str], names: dict[str, str]) -> list[dict]:
    return [{"index": i, "wnid": w, "name": names.get(w, w)} for i, w in enumerate(wnids)]
