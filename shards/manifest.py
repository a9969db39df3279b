"""Shard names, URL safety and the per-split manifest (DESIGN.md §3).

The manifest is written last and is the commit marker of a split: a split without one is incomplete.
"""

from __future__ import annotations

import io
import json
import re
import uuid

import fsspec
import numpy as np

FORMAT = "cnnctl-shards/1"
KEY_RE = re.compile(r"^[A-Za-z0-9_-]+$")
# fsspec protocols that run shell commands or reach arbitrary code paths are refused outright;
# webdataset would treat "pipe:" as a command line.
_REFUSED = ("pipe:", "pipe+", "shell:", "exec:")


class UnsafeURLError(ValueError):
    pass


def check_url(url: str) -> str:
    low = url.strip().lower()
    if low.startswith(_REFUSED) or "|" in low.split("://", 1)[0]:
        raise UnsafeURLError(f"{url}: shell-executing URLs (pipe: and the like) are refused")
    return url


def join(root: str, name: str) -> str:
    return root.rstrip("/") + "/" + name


def shard_name(prefix: str, split: str, index: int) -> str:
    return f"{prefix}-{split}-{index:06d}.tar"


def manifest_name(prefix: str, split: str) -> str:
    return f"{prefix}-{split}.manifest.json"


def mean_image_name(prefix: str, split: str) -> str:
    return f"{prefix}-{split}.mean.npy"


def mean_image_bytes(mean: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, mean.astype(np.float32), allow_pickle=False)
    return out.getvalue()


def load_mean_image(url: str, manifest: dict) -> np.ndarray:
    """The split's per-pixel mean image (side x side x 3 float32, 0-255), published beside the manifest."""
    info = manifest.get("stats", {}).get("mean_image")
    if not info:
        raise ValueError(f"{url}: the manifest has no per-pixel mean image (the shards were packed without --resize, "
                         "so their images differ in size, or by a cnnctl that did not write one: pack them again)")
    file = join(url.rsplit("/", 1)[0], info["file"])
    fs, path = fsspec.core.url_to_fs(file)
    if not fs.exists(path):
        raise FileNotFoundError(f"{file}: the mean image the manifest {url} names is missing")
    try:
        mean = np.load(io.BytesIO(fs.cat_file(path)), allow_pickle=False)
    except (ValueError, EOFError) as exc:
        raise ValueError(f"{file}: not a readable .npy ({exc})") from None
    if mean.shape != (info["side"], info["side"], 3):
        raise ValueError(f"{file}: shape {mean.shape}, not the manifest's {info['side']}x{info['side']}x3")
    return mean


def manifest_url(root: str, prefix: str, split: str) -> str:
    return join(root, manifest_name(prefix, split))


def load(url: str) -> dict:
    """Read a manifest; a missing one means the split was never completed."""
    check_url(url)
    fs, path = fsspec.core.url_to_fs(url)
    if not fs.exists(path):
        raise FileNotFoundError(f"{url}: no manifest (the split is missing or its packing never finished)")
    with fs.open(path, "rb") as f:
        manifest = json.load(f)
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{url}: not a cnnctl shard manifest (format={manifest.get('format')!r})")
    return manifest


def check_splits(root: str, prefix: str, splits: list[str]) -> list[str]:
    """One line per split whose manifest is missing or unreadable (cheap: no shard is opened)."""
    problems = []
    for split in dict.fromkeys(splits):
        try:
            load(manifest_url(root, prefix, split))
        except (FileNotFoundError, ValueError) as exc:
            problems.append(f"data ({split}): {exc}")
    return problems


def shard_urls(url: str, manifest: dict) -> list[str]:
    """Shard URLs of a manifest, resolved next to it."""
    root = url.rsplit("/", 1)[0] if "/" in url else "."
    return [join(root, s["name"]) for s in manifest["shards"]]


def save(url: str, manifest: dict) -> None:
    """Publish the manifest; local folders get it atomically through a rename."""
    data = json.dumps(manifest, indent=1, sort_keys=False).encode()
    publish_bytes(url, data)


def publish_bytes(url: str, data: bytes) -> None:
    """Make ``url`` hold ``data`` all at once, never a prefix of it.

    Local files are written to a temporary name and renamed; object stores make a single PUT
    visible only when it completes.
    """
    check_url(url)
    fs, path = fsspec.core.url_to_fs(url)
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    if parent:
        fs.makedirs(parent, exist_ok=True)
    if "file" in fs.protocol or "local" in fs.protocol:
        # A unique name: a worker orphaned by a killed run may still be writing the same shard.
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:12]}"
        with fs.open(tmp, "wb") as f:
            f.write(data)
        fs.mv(tmp, path)
    else:
        fs.pipe_file(path, data)


def find(url: str) -> list[str]:
    """Manifest URLs: ``url`` itself when it names one, else every manifest directly under it."""
    check_url(url)
    if url.endswith(".manifest.json"):
        return [url]
    fs, path = fsspec.core.url_to_fs(url)
    if not fs.isdir(path):
        raise FileNotFoundError(f"{url}: neither a manifest nor a folder of shards")
    found = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(path, detail=False) if p.endswith(".manifest.json"))
    if not found:
        raise FileNotFoundError(f"{url}: no *.manifest.json here (the packing never finished?)")
    return [join(url, name) for name in found]
