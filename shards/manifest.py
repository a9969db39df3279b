"""Shard names, URL safety and the per-split manifest (DESIGN.md §3).

The manifest is written last and is the commit marker of a split: a split without one is incomplete.
"""

from __future__ import annotations

import io
import json
import re

import fsspec
import numpy as np

from cnnctl.shards import location

FORMAT = "cnnctl-shards/1"
KEY_RE = re.compile(r"^[A-Za-z0-9_-]+$")
# fsspec protocols that run shell commands or reach arbitrary code paths are refused outright;
# webdataset would treat "pipe:" as a command line.
_REFUSED = ("pipe:", "pipe+", "shell:", "exec:")


class UnsafeURLError(ValueError):
    pass


class ManifestError(ValueError):
    """A manifest that cannot be used as it is: one line naming the manifest file and the field."""


MAX_BYTES = 64 << 20  # ImageNet's training manifest is ~0.3 MB; anything near this is not one
# A file the manifest names beside itself (a shard, the mean image): a plain name in the split's
# folder, never a path, a URL or a dot file.
_PLAIN_NAME = re.compile(r"^[^./\\:\x00-\x1f][^/\\:\x00-\x1f]*$")


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
    """Read a manifest; a missing one means the split was never completed. Every field the readers
    use is checked here (``validate``): a bad one is a ManifestError naming the file and the field."""
    check_url(url)
    fs, path = fsspec.core.url_to_fs(url)
    if not fs.exists(path):
        raise FileNotFoundError(f"{url}: no manifest (the split is missing or its packing never finished)")
    size = fs.size(path)
    if size is not None and size > MAX_BYTES:
        raise ManifestError(f"{url}: {size} bytes, more than a manifest's limit of {MAX_BYTES}")
    with fs.open(path, "rb") as f:
        text = f.read(MAX_BYTES + 1)
    try:
        manifest = json.loads(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError; nesting too deep
        raise ManifestError(f"{url}: not JSON ({type(exc).__name__}: {str(exc)[:200]})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        shown = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise ManifestError(f"{url}: not a cnnctl shard manifest (format={str(shown)[:80]!r})")
    validate(url, manifest)
    return manifest


def validate(url: str, m: dict) -> None:
    """Plain checks of every field a reader of the split uses; the first problem raises a
    ManifestError ``<url>: <field>: <problem>``. Names of files beside the manifest must be plain
    names (no folder, URL, ``..`` or absolute path): nothing outside the split's folder is reached."""

    def bad(field: str, problem: str):
        raise ManifestError(f"{url}: {field}: {problem}")

    def get(obj: dict, key: str, field: str, kind, what: str):
        if key not in obj:
            bad(field, "missing")
        value = obj[key]
        if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
            bad(field, f"{_shown(value)} is not {what}")
        return value

    def count(obj: dict, key: str, field: str) -> int:
        value = get(obj, key, field, int, "an integer")
        if value < 0:
            bad(field, f"{value} is negative")
        return value

    def plain(obj: dict, key: str, field: str, suffix: str) -> None:
        name = get(obj, key, field, str, "a file name")
        if not (_PLAIN_NAME.match(name) and name.endswith(suffix) and len(name) <= 255):
            bad(field, f"{_shown(name)} is not a plain {suffix} file name beside the manifest")

    def numbers(obj: dict, key: str, field: str, shape: tuple[int, ...]) -> None:
        arr = get(obj, key, field, list, "a list")
        try:
            a = np.asarray(arr, dtype=np.float64)
        except (TypeError, ValueError):
            a = None
        if (a is None or a.shape != shape or not np.isfinite(a).all()
                or any(isinstance(v, bool) for v in np.ravel(np.asarray(arr, dtype=object)))):
            bad(field, f"not {'x'.join(map(str, shape))} finite numbers")

    for key in ("prefix", "split"):
        get(m, key, key, str, "a string")
    total = count(m, "num_samples", "num_samples")
    shards = get(m, "shards", "shards", list, "a list")
    for i, shard in enumerate(shards):
        field = f"shards[{i}]"
        if not isinstance(shard, dict):
            bad(field, f"{_shown(shard)} is not an object")
        plain(shard, "name", f"{field}.name", ".tar")
        count(shard, "count", f"{field}.count")
        count(shard, "bytes", f"{field}.bytes")
        digest = get(shard, "sha256", f"{field}.sha256", str, "a string")
        if not re.fullmatch(r"[0-9a-f]{64}", digest):
            bad(f"{field}.sha256", f"{_shown(digest)} is not a sha256 hex digest")
    if len({s["name"] for s in shards}) != len(shards):
        bad("shards", "a shard is named twice")
    if sum(s["count"] for s in shards) != total:
        bad("num_samples", f"{total}, but the shards' counts add up to {sum(s['count'] for s in shards)}")
    classes = get(m, "classes", "classes", list, "a list")
    if not classes:
        bad("classes", "empty")
    for i, c in enumerate(classes):
        field = f"classes[{i}]"
        if not isinstance(c, dict):
            bad(field, f"{_shown(c)} is not an object")
        if get(c, "index", f"{field}.index", int, "an integer") != i:
            bad(f"{field}.index", f"{c['index']}, not its place in the list ({i})")
        get(c, "wnid", f"{field}.wnid", str, "a string")
        get(c, "name", f"{field}.name", str, "a string")
    get(m, "options", "options", dict, "an object")
    get(m, "rejected", "rejected", list, "a list")
    stats = get(m, "stats", "stats", dict, "an object")
    for key in ("mean_rgb", "std_rgb", "eigval"):
        numbers(stats, key, f"stats.{key}", (3,))
    numbers(stats, "eigvec", "stats.eigvec", (3, 3))
    info = stats.get("mean_image")
    if info is not None:
        if not isinstance(info, dict):
            bad("stats.mean_image", f"{_shown(info)} is not an object")
        plain(info, "file", "stats.mean_image.file", ".npy")
        if count(info, "side", "stats.mean_image.side") == 0:
            bad("stats.mean_image.side", "0")


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


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
    """Make ``url`` hold ``data`` all at once, never a prefix of it (`location.write_bytes`: a local
    temporary file, fsync'd and renamed, removed if the write fails; one PUT on an object store)."""
    check_url(url)
    location.write_bytes(url, data)


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
