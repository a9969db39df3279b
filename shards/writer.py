"""Pack a source listing into WebDataset tar shards plus a manifest (DESIGN.md §3).

Shard i holds the samples at positions [i*S, (i+1)*S) of a seeded permutation of the whole split,
so its bytes depend only on (listing, seed, shard size, i): any shard can be rebuilt alone and a
rerun is byte-identical. Shards are published only when complete; the manifest is written last.

A run first publishes ``<prefix>-<split>.pending.json`` holding a fingerprint of the listing and
the options. A rerun resumes only a run with the same fingerprint: shards of another listing or
other options are never mixed in.
"""

from __future__ import annotations

import hashlib
import json
import re
import tarfile
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import closing
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator

import fsspec
import numpy as np

from shards import codec
from shards import location as loc
from shards import manifest as mf
from shards import tarwalk
from shards.sources import Listing, Record

STATS_SAMPLE = 10_000
STATS_PIXELS = 1024  # pixels taken per image, on a fixed grid: 10M pixels estimate a 3x3 covariance well
BYTES_SAMPLE = 64  # images encoded to turn --shard-bytes into a sample count
BYTES_MARGIN = 0.9  # aim under --shard-bytes: shard sizes vary around the estimate
# sum, sum of outer products and count of the sampled pixels (0-1 scale); the sum (int64, exact in
# any order) and count of the sampled images' central squares, for the per-pixel mean image
Stats = tuple[np.ndarray, np.ndarray, int, np.ndarray | None, int]
MapFn = Callable[[Callable, list], Iterator[tuple[int, object]]]  # -> (job index, result), any order


@dataclass(frozen=True)
class PackOptions:
    image_format: str = "jpg"  # jpg | png
    resize: int | None = 256  # shorter side; None keeps the original size (and bytes, when possible)
    center_crop: bool = False  # AlexNet's 256x256
    quality: int = 90
    shard_size: int | None = 1000  # samples per shard ...
    shard_bytes: int | None = None  # ... and/or a byte target, turned into a sample count
    seed: int = 0
    workers: int = 1
    overwrite: bool = False
    max_errors: int = 0

    @property
    def target(self) -> codec.Target:
        return codec.Target(self.resize, self.center_crop, self.image_format, self.quality)


class TooManyErrors(RuntimeError):
    def __init__(self, rejected: list[dict], limit: int):
        self.rejected = sorted(rejected, key=lambda r: r["source"])
        super().__init__(f"{len(rejected)} inputs rejected, more than --max-errors {limit}; no manifest was written")


@dataclass(frozen=True)
class ShardJob:
    url: str
    records: list[Record]
    wnids: list[str]
    target: codec.Target
    overwrite: bool
    stats_keys: frozenset[str] = field(default_factory=frozenset)


@dataclass
class ShardResult:
    name: str
    count: int
    bytes: int
    sha256: str
    rejected: list[dict]
    reused: bool
    stats: Stats


def encode(record: Record, target: codec.Target) -> codec.Encoded:
    if record.pixels is not None:
        return codec.transcode_pixels(record.pixels, target)
    return codec.transcode(record.read(), target)


def _pixel_stats(pixels: np.ndarray, side: int | None) -> Stats:
    """A sampled image's share of the statistics; ``side``: the shorter side every image is resized
    to (None: sizes vary, no mean image)."""
    flat = pixels.reshape(-1, 1 if pixels.ndim == 2 else 3)
    px = flat[:: max(1, len(flat) // STATS_PIXELS)].astype(np.float64) / 255.0
    px = px.repeat(3, 1) if px.shape[1] == 1 else px
    square = _central_square(pixels, side)
    return px.sum(0), px.T @ px, len(px), square, int(square is not None)


def _central_square(pixels: np.ndarray, side: int | None) -> np.ndarray | None:
    """The image's central side x side square as RGB (uint8): what AlexNet's crops are cut from (§2)."""
    top, left, found = codec.central_square(*pixels.shape[:2])
    if side is None or found != side:
        return None
    square = pixels[top : top + side, left : left + side]  # a view: _add_stats adds it into int64 in place
    return np.repeat(square[..., None], 3, 2) if square.ndim == 2 else square


def _add_stats(a: Stats, b: Stats) -> Stats:
    """a + b; a's square sum (int64, made here from b's first square) is added into in place: a new
    1.5 MB array per image (page faults and zeroing included) cost more than its JPEG's encode."""
    squares = a[3]
    if b[3] is not None:
        squares = b[3].astype(np.int64) if squares is None else np.add(squares, b[3], out=squares)
    return a[0] + b[0], a[1] + b[1], a[2] + b[2], squares, a[4] + b[4]


NO_STATS: Stats = (np.zeros(3), np.zeros((3, 3)), 0, None, 0)


def _member(name: str, data: bytes) -> bytes:
    """One USTAR member (header, data, padding) with mtime 0, mode 0644 and owner 0, byte for byte
    what tarfile writes; built directly because tarfile's header code costs ~4% of a shard's time.
    Names fit: keys are at most MAX_KEY characters (sources.admit rejects longer ones)."""
    h = bytearray(_HEADER)
    raw = name.encode()
    h[: len(raw)] = raw
    h[124:136] = b"%011o\0" % len(data)
    h[148:155] = b"%06o\0" % sum(h)
    return bytes(h) + data + bytes(-len(data) % tarfile.BLOCKSIZE)


def _header_template() -> bytes:
    h = bytearray(tarfile.BLOCKSIZE)
    h[100:124] = b"0000644\0" + b"0000000\0" * 2  # mode, uid, gid
    h[136:157] = b"00000000000\0" + b" " * 8 + tarfile.REGTYPE  # mtime, checksum placeholder, type
    h[257:265] = tarfile.POSIX_MAGIC  # devmajor/devminor stay NUL for regular files
    return bytes(h)


_HEADER = _header_template()


def _end_of_archive(size: int) -> bytes:
    """Two zero blocks, then zeros up to a whole record, as tarfile.close writes."""
    size += 2 * tarfile.BLOCKSIZE
    return bytes(2 * tarfile.BLOCKSIZE + -size % tarfile.RECORDSIZE)


def build_shard(job: ShardJob) -> tuple[bytes, list[dict], Stats]:
    """Tar bytes for one shard (deterministic: fixed mtimes, owners and member order)."""
    parts, rejected, stats = [], [], NO_STATS
    for rec in job.records:
        try:
            enc = encode(rec, job.target)
        except (codec.BadImage, OSError) as exc:
            rejected.append({"source": rec.source, "reason": str(exc)})
            continue
        info = {"wnid": job.wnids[rec.label], "source": rec.source, "orig_size": list(enc.orig_size)}
        parts.append(_member(f"{rec.key}.{job.target.fmt}", enc.data))
        parts.append(_member(f"{rec.key}.cls", str(rec.label).encode()))
        parts.append(_member(f"{rec.key}.json", json.dumps(info, sort_keys=True).encode()))
        if rec.key in job.stats_keys:
            stats = _add_stats(stats, _pixel_stats(enc.pixels, job.target.short))
    parts.append(_end_of_archive(sum(map(len, parts))))
    return b"".join(parts), rejected, stats


def shard_keys(data: bytes) -> set[str] | None:
    """Sample keys of a complete shard, or None when the tar is damaged."""
    try:
        return {s["__key__"] for s in tarwalk.samples(data) if "cls" in s}
    except tarwalk.BadSample:
        return None


def _existing(job: ShardJob) -> ShardResult | None:
    """The shard an earlier run of the same fingerprint published, if it is sound."""
    fs, path = fsspec.core.url_to_fs(job.url)
    if job.overwrite or not fs.exists(path):
        return None
    data = fs.cat_file(path)
    keys = shard_keys(data)
    if keys is None or not keys <= {r.key for r in job.records}:
        return None
    # Inputs missing from it are the rejected ones: re-encoding just those recovers the reason,
    # and re-encoding the few sampled for statistics gives exactly the numbers of a clean run.
    rejected, stats = [], NO_STATS
    for rec in job.records:
        if rec.key in keys and rec.key not in job.stats_keys:
            continue
        try:
            enc = encode(rec, job.target)
        except (codec.BadImage, OSError) as exc:
            rejected.append({"source": rec.source, "reason": str(exc)})
            continue
        if rec.key not in keys:
            return None  # it encodes now: the shard is not what this run would write
        stats = _add_stats(stats, _pixel_stats(enc.pixels, job.target.short))
    return ShardResult(job.url.rsplit("/", 1)[-1], len(keys), len(data), hashlib.sha256(data).hexdigest(), rejected, True, stats)


def write_shard(job: ShardJob) -> ShardResult:
    done = _existing(job)
    if done is not None:
        return done
    data, rejected, stats = build_shard(job)
    try:  # whole or not at all: a temp file beside it, removed when the write fails (a full disk)
        loc.write_bytes(mf.check_url(job.url), data)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror or str(exc), job.url) from None  # one line naming the shard
    name = job.url.rsplit("/", 1)[-1]
    return ShardResult(name, len(job.records) - len(rejected), len(data), hashlib.sha256(data).hexdigest(), rejected, False, stats)


def _tar_bytes(size: int) -> int:
    return 512 + -(-size // 512) * 512


def shard_size(records: list[Record], opts: PackOptions) -> int:
    """Samples per shard: --shard-size, or what fits --shard-bytes by a seeded sample's mean size."""
    if not opts.shard_bytes:
        return opts.shard_size or 1000
    picks = np.random.default_rng(opts.seed + 2).permutation(len(records))[:BYTES_SAMPLE]
    sizes = []
    for j in sorted(picks):
        try:
            sizes.append(_tar_bytes(len(encode(records[j], opts.target).data)) + 2 * 1024)  # + .cls and .json
        except (codec.BadImage, OSError):
            continue
    fits = int(BYTES_MARGIN * opts.shard_bytes / np.mean(sizes)) if sizes else 1
    return max(1, min(fits, opts.shard_size or fits))


def plan(n: int, size: int, seed: int) -> list[np.ndarray]:
    """Positions of each shard: a seeded permutation of the split, cut into pieces of ``size``.

    ImageNet folders are class-sorted, and a shuffle buffer at read time cannot fix class-sorted shards.
    """
    order = np.random.default_rng(seed).permutation(n)
    return [order[i : i + size] for i in range(0, n, size)]


def rgb_stats(partial: Stats, images: int) -> dict:
    """Mean RGB, per-channel std and the RGB covariance eigen-decomposition (AlexNet §4.1 PCA lighting)."""
    s, ss, count = partial[:3]
    mean = s / max(count, 1)
    cov = ss / max(count, 1) - np.outer(mean, mean)
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


def bounded_map(submit: Callable[[object], Future], jobs: list, window: int) -> Iterator[tuple[int, object]]:
    """(index, result) of each job as it finishes, with at most ``window`` submitted and unfinished."""
    todo, pending = iter(enumerate(jobs)), {}
    try:
        while True:
            for i, job in todo:
                pending[submit(job)] = i
                if len(pending) >= window:
                    break
            if not pending:
                return
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                yield pending.pop(fut), fut.result()
    finally:  # an abort (too many errors) must not run the queued jobs
        for fut in pending:
            fut.cancel()


def local_map(workers: int) -> MapFn:
    """Run jobs in this process, or in ``workers`` local processes."""

    def run(fn: Callable, jobs: list) -> Iterator[tuple[int, object]]:
        if workers <= 1:
            yield from ((i, fn(job)) for i, job in enumerate(jobs))
            return
        with ProcessPoolExecutor(workers) as pool:
            yield from bounded_map(lambda job: pool.submit(fn, job), jobs, 2 * workers)

    return run


def fingerprint(records: list[Record], classes: list[dict], options: dict) -> str:
    h = hashlib.sha256(json.dumps({"options": options, "classes": classes}, sort_keys=True).encode())
    for r in records:
        h.update(f"{r.key}\t{r.label}\t{r.source}\n".encode())
    return h.hexdigest()


def _start(dest: str, prefix: str, split: str, print_: str, overwrite: bool, n_shards: int) -> dict | None:
    """The finished manifest of this very run, if there is one; else claim the destination for it."""
    murl, purl = mf.manifest_url(dest, prefix, split), mf.join(dest, f"{prefix}-{split}.pending.json")
    fs, mpath = fsspec.core.url_to_fs(murl)
    old = json.loads(fs.cat_file(mpath)) if fs.exists(mpath) else None
    if old is not None and not overwrite:
        if old.get("fingerprint") != print_:
            raise ValueError(f"{murl}: a finished split with other options or another source listing is there; pass --overwrite to replace it")
        if all(fs.exists(mf.join(mpath.rsplit('/', 1)[0], s["name"])) for s in old["shards"]) and len(old["shards"]) == n_shards:
            return old
    _, ppath = fsspec.core.url_to_fs(purl)
    if fs.exists(ppath) and not overwrite and json.loads(fs.cat_file(ppath)).get("fingerprint") != print_:
        raise ValueError(f"{purl}: an unfinished run with other options or another source listing is there; rerun it as it was, or pass --overwrite")
    if old is not None:
        fs.rm(mpath)  # the split stops being complete before any of its shards changes
    mf.publish_bytes(purl, json.dumps({"fingerprint": print_}).encode())
    return None


def _tidy(dest: str, prefix: str, split: str, keep: set[str]) -> None:
    """Remove the pending marker, shards of an earlier larger plan and temp files of killed runs."""
    fs, root = fsspec.core.url_to_fs(dest)
    fs.invalidate_cache(root)
    pattern = re.compile(rf"^{re.escape(prefix)}-{re.escape(split)}(-\d{{6}}\.tar(\.tmp.*)?|\.pending\.json)$")
    for path in fs.ls(root, detail=False):
        name = path.rstrip("/").rsplit("/", 1)[-1]
        if pattern.match(name) and name not in keep:
            fs.rm(path)


def pack(listing: Listing, dest: str, prefix: str, opts: PackOptions, progress: Callable[[int], None] = lambda n: None,
         map_fn: MapFn | None = None) -> tuple[dict, int]:
    """Write every shard of ``listing`` under ``dest``, then its manifest.

    Returns the manifest and how many complete shards an earlier run had already published.
    """
    mf.check_url(dest)
    if not mf.KEY_RE.match(prefix) or not mf.KEY_RE.match(listing.split):
        raise ValueError(f"prefix {prefix!r} and split {listing.split!r} must match [A-Za-z0-9_-]+")
    if opts.image_format not in ("jpg", "png"):
        raise ValueError(f"image format {opts.image_format!r}: jpg or png")
    if len(listing.rejected) > opts.max_errors:
        raise TooManyErrors(list(listing.rejected), opts.max_errors)
    records = listing.records
    size = shard_size(records, opts)
    options = {k: v for k, v in asdict(opts).items() if k not in ("workers", "overwrite", "max_errors")} | {"shard_size": size}
    print_ = fingerprint(records, listing.classes, options)
    pieces = plan(len(records), size, opts.seed)
    done = _start(dest, prefix, listing.split, print_, opts.overwrite, len(pieces))
    if done is not None:
        progress(len(records))
        return done, len(done["shards"])
    sample = np.sort(np.random.default_rng(opts.seed + 1).permutation(len(records))[:STATS_SAMPLE])
    sampled = frozenset(records[j].key for j in sample)
    wnids = [c["wnid"] for c in listing.classes]
    jobs = []
    for i, idx in enumerate(pieces):
        recs = [records[j] for j in idx]
        url = mf.join(dest, mf.shard_name(prefix, listing.split, i))
        jobs.append(ShardJob(url, recs, wnids, opts.target, opts.overwrite, sampled & {r.key for r in recs}))
    rejected, results = list(listing.rejected), [None] * len(jobs)
    squares, squares_count = None, 0  # summed as results arrive: one int64 square per shard otherwise
    with closing((map_fn or local_map(opts.workers))(write_shard, jobs)) as running:
        for i, res in running:
            if res.stats[3] is not None:
                squares = res.stats[3] if squares is None else squares + res.stats[3]
                squares_count += res.stats[4]
            res.stats = res.stats[:3] + (None, 0)
            results[i] = res
            rejected.extend(res.rejected)
            progress(len(jobs[i].records))
            if len(rejected) > opts.max_errors:
                raise TooManyErrors(rejected, opts.max_errors)
    stats, sampled_sources = NO_STATS, {records[j].source for j in sample}
    for res in results:  # in shard order, so a resumed run sums exactly as a clean one
        stats = _add_stats(stats, res.stats)
    manifest = {
        "format": mf.FORMAT,
        "prefix": prefix,
        "split": listing.split,
        "num_samples": sum(r.count for r in results),
        "shards": [{"name": r.name, "count": r.count, "bytes": r.bytes, "sha256": r.sha256} for r in results],
        "classes": listing.classes,
        "source": listing.description | {"listed": len(records) + len(listing.rejected)},
        "options": options | {"max_errors": opts.max_errors},
        "fingerprint": print_,
        "rejected": sorted(rejected, key=lambda r: r["source"]),
        "stats": rgb_stats(stats, len(sample) - sum(r["source"] in sampled_sources for r in rejected)),
    }
    manifest["stats"]["mean_image"] = None
    if squares_count:  # published before the manifest, which commits the split
        name = mf.mean_image_name(prefix, listing.split)
        mf.publish_bytes(mf.join(dest, name), mf.mean_image_bytes(squares / squares_count))
        manifest["stats"]["mean_image"] = {"file": name, "side": opts.resize, "images": squares_count, "scale": "0-255"}
    mf.save(mf.manifest_url(dest, prefix, listing.split), manifest)
    _tidy(dest, prefix, listing.split, {r.name for r in results} | {mf.manifest_name(prefix, listing.split)})
    return manifest, sum(r.reused for r in results)
