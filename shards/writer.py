"""Pack a source listing into WebDataset tar shards plus a manifest (DESIGN.md §3).

Shard i holds the samples at positions [i*S, (i+1)*S) of a seeded permutation of the whole split,
so its bytes depend only on (listing, seed, shard size, i): any shard can be rebuilt alone and a
rerun is byte-identical. Shards are published only when complete; the manifest is written last.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from typing import Callable, Iterator

import fsspec
import numpy as np
from PIL import Image

from shards import codec
from shards import manifest as mf
from shards.sources import Listing, Record

STATS_SAMPLE = 10_000
STATS_PIXELS = 4096  # pixels taken per image, on a fixed grid


@dataclass(frozen=True)
class PackOptions:
    image_format: str = "jpg"  # jpg | png
    resize: int | None = 256  # shorter side; None keeps the original size (and bytes, when possible)
    center_crop: bool = False  # AlexNet's 256x256
    quality: int = 90
    shard_size: int = 1000
    seed: int = 0
    workers: int = 1
    overwrite: bool = False
    max_errors: int = 0


class TooManyErrors(RuntimeError):
    def __init__(self, rejected: list[dict], limit: int):
        self.rejected = rejected
        super().__init__(f"{len(rejected)} inputs rejected, more than --max-errors {limit}; no manifest was written")


@dataclass
class ShardResult:
    name: str
    count: int
    bytes: int
    sha256: str
    rejected: list[dict]
    reused: bool


def load_rgb(record: Record, opts: PackOptions) -> tuple[Image.Image, bytes | None, tuple[int, int]]:
    """Pixels as the shard will hold them, the original bytes if they can be kept, and the original size."""
    if record.pixels is not None:
        img = Image.fromarray(record.pixels)
        raw = None
    else:
        raw = record.read()
        img = codec.open_image(raw, record.source)
    orig_size = img.size
    keep = raw is not None and opts.image_format == "jpg" and opts.resize is None and not opts.center_crop and codec.is_plain_rgb_jpeg(img)
    if opts.image_format == "jpg" or img.mode not in ("L", "RGB"):
        img = codec.to_rgb(img)
    img = codec.resize_shorter(img, opts.resize)
    if opts.center_crop:
        img = codec.center_crop(img, min(img.size))
    return img, (raw if keep else None), orig_size


def encode(record: Record, opts: PackOptions) -> tuple[bytes, dict]:
    img, raw, orig_size = load_rgb(record, opts)
    if raw is not None:
        data = raw
    elif opts.image_format == "jpg":
        data = codec.encode_jpeg(np.asarray(img), opts.quality)
    else:
        data = codec.encode_png(img)
    return data, {"orig_size": list(orig_size)}


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def build_shard(records: list[Record], classes: list[dict], opts: PackOptions) -> tuple[bytes, list[dict]]:
    """Tar bytes for one shard (deterministic: fixed mtimes, owners and member order)."""
    buf, rejected = io.BytesIO(), []
    ext = "jpg" if opts.image_format == "jpg" else "png"
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for rec in records:
            try:
                data, meta = encode(rec, opts)
            except (codec.BadImage, OSError, ValueError) as exc:
                rejected.append({"source": rec.source, "reason": str(exc)})
                continue
            info = {"wnid": classes[rec.label]["wnid"], "source": rec.source, **meta}
            _add(tar, f"{rec.key}.{ext}", data)
            _add(tar, f"{rec.key}.cls", str(rec.label).encode())
            _add(tar, f"{rec.key}.json", json.dumps(info, sort_keys=True).encode())
    return buf.getvalue(), rejected


def _existing(url: str, records: list[Record], opts: PackOptions) -> ShardResult | None:
    fs, path = fsspec.core.url_to_fs(url)
    if opts.overwrite or not fs.exists(path):
        return None
    data = fs.cat_file(path)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        keys = {m.name.rsplit(".", 1)[0] for m in tar.getmembers() if m.name.endswith(".cls")}
    # A rejected input left no member; re-encoding just those few recovers the reason.
    rejected = []
    for rec in records:
        if rec.key not in keys:
            try:
                encode(rec, opts)
                reason = "missing from an existing shard (rerun with --overwrite)"
            except (codec.BadImage, OSError, ValueError) as exc:
                reason = str(exc)
            rejected.append({"source": rec.source, "reason": reason})
    return ShardResult(url.rsplit("/", 1)[-1], len(keys), len(data), hashlib.sha256(data).hexdigest(), rejected, True)


def write_shard(url: str, records: list[Record], classes: list[dict], opts: PackOptions) -> ShardResult:
    done = _existing(url, records, opts)
    if done is not None:
        return done
    data, rejected = build_shard(records, classes, opts)
    mf.publish_bytes(url, data)
    return ShardResult(url.rsplit("/", 1)[-1], len(records) - len(rejected), len(data), hashlib.sha256(data).hexdigest(), rejected, False)


def plan(n: int, opts: PackOptions) -> list[np.ndarray]:
    """Positions of each shard: a seeded permutation of the split, cut into shard_size pieces.

    ImageNet folders are class-sorted, and a shuffle buffer at read time cannot fix class-sorted shards.
    """
    order = np.random.default_rng(opts.seed).permutation(n)
    return [order[i : i + opts.shard_size] for i in range(0, n, opts.shard_size)]


def _stats_partial(records: list[Record], opts: PackOptions) -> tuple[np.ndarray, np.ndarray, int]:
    s, ss, count = np.zeros(3), np.zeros((3, 3)), 0
    for rec in records:
        try:
            img, _, _ = load_rgb(rec, opts)
        except (codec.BadImage, OSError, ValueError):
            continue
        px = np.asarray(codec.to_rgb(img), dtype=np.float64).reshape(-1, 3) / 255.0
        px = px[:: max(1, len(px) // STATS_PIXELS)]
        s += px.sum(0)
        ss += px.T @ px
        count += len(px)
    return s, ss, count


def rgb_stats(partials: list[tuple[np.ndarray, np.ndarray, int]], images: int) -> dict:
    """Mean RGB, per-channel std and the RGB covariance eigen-decomposition (AlexNet §4.1 PCA lighting)."""
    s = sum(p[0] for p in partials)
    ss = sum(p[1] for p in partials)
    count = sum(p[2] for p in partials)
    mean = s / count
    cov = ss / count - np.outer(mean, mean)
    eigval, eigvec = np.linalg.eigh(cov)
    order = np.argsort(eigval)[::-1]
    return {
        "images": images,
        "pixels": int(count),
        "scale": "0-1",
        "mean_rgb": mean.round(6).tolist(),
        "std_rgb": np.sqrt(np.clip(np.diag(cov), 0, None)).round(6).tolist(),
        "eigval": np.clip(eigval[order], 0, None).round(8).tolist(),
        "eigvec": eigvec[:, order].round(6).tolist(),  # columns are eigenvectors
    }


def _map(fn: Callable, jobs: list[tuple], workers: int) -> Iterator:
    if workers <= 1:
        yield from (fn(*job) for job in jobs)
        return
    with ProcessPoolExecutor(workers) as pool:
        yield from pool.map(fn, *zip(*jobs))


def pack(listing: Listing, dest: str, prefix: str, opts: PackOptions, progress: Callable[[int], None] = lambda n: None) -> tuple[dict, int]:
    """Write every shard of ``listing`` under ``dest``, then its manifest.

    Returns the manifest and how many complete shards an earlier run had already published.
    """
    mf.check_url(dest)
    if not mf.KEY_RE.match(prefix) or not mf.KEY_RE.match(listing.split):
        raise ValueError(f"prefix {prefix!r} and split {listing.split!r} must match [A-Za-z0-9_-]+")
    if opts.image_format not in ("jpg", "png"):
        raise ValueError(f"image format {opts.image_format!r}: jpg or png")
    records = listing.records
    pieces = plan(len(records), opts)
    jobs = [(mf.join(dest, mf.shard_name(prefix, listing.split, i)), [records[j] for j in idx], listing.classes, opts) for i, idx in enumerate(pieces)]
    rejected = list(listing.rejected)
    results = []
    for job, res in zip(jobs, _map(write_shard, jobs, opts.workers)):
        results.append(res)
        rejected.extend(res.rejected)
        progress(len(job[1]))
        if len(rejected) > opts.max_errors:
            raise TooManyErrors(rejected, opts.max_errors)
    sample = np.sort(np.random.default_rng(opts.seed + 1).permutation(len(records))[:STATS_SAMPLE])
    chunks = np.array_split(sample, max(1, opts.workers * 4))
    partials = list(_map(_stats_partial, [([records[j] for j in c], opts) for c in chunks if len(c)], opts.workers))
    manifest = {
        "format": mf.FORMAT,
        "prefix": prefix,
        "split": listing.split,
        "num_samples": sum(r.count for r in results),
        "shards": [{"name": r.name, "count": r.count, "bytes": r.bytes, "sha256": r.sha256} for r in results],
        "classes": listing.classes,
        "source": listing.description | {"listed": len(records) + len(listing.rejected)},
        "options": {k: v for k, v in asdict(opts).items() if k not in ("workers", "overwrite")},
        "rejected": sorted(rejected, key=lambda r: r["source"]),
        "stats": rgb_stats(partials, len(sample)),
    }
    mf.save(mf.manifest_url(dest, prefix, listing.split), manifest)
    return manifest, sum(r.reused for r in results)
