"""Pack a source listing into WebDataset tar shards plus a manifest (DESIGN.md §3).

Shard i holds the samples at positions [i*S, (i+1)*S) of a seeded permutation of the whole split,
so its bytes depend only on (listing, seed, shard size, i): any shard can be rebuilt alone and a
rerun is byte-identical. Shards are published only when complete; the manifest is written last.

A run first publishes ``<prefix>-<split>.pending.json`` holding a fingerprint of the listing and
the options. A rerun resumes only a run with the same fingerprint: shards of another listing or
other options are never mixed in.

Each shard is one job (shards/shard_job.py), run by a map (shards/job_map.py); the manifest's
statistics are summed from the jobs' shares (shards/pixel_stats.py).
"""

from __future__ import annotations

import hashlib
import json
import re
from contextlib import closing
from dataclasses import asdict, dataclass
from typing import Callable

import fsspec
import numpy as np

from cnnctl.shards import codec, shard_tar
from cnnctl.shards import manifest as mf
from cnnctl.shards.job_map import MapFn, local_map
from cnnctl.shards.listing import Listing, Record
from cnnctl.shards.pixel_stats import NO_STATS, add_stats, rgb_stats
from cnnctl.shards.shard_job import ShardJob, encode, write_shard

STATS_SAMPLE = 10_000  # images sampled for the statistics (bench/shard.py scales it to its subset)
BYTES_SAMPLE = 64  # images encoded to turn --shard-bytes into a sample count
BYTES_MARGIN = 0.9  # aim under --shard-bytes: shard sizes vary around the estimate


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


def shard_size(records: list[Record], opts: PackOptions) -> int:
    """Samples per shard: --shard-size, or what fits --shard-bytes by a seeded sample's mean size."""
    if not opts.shard_bytes:
        return opts.shard_size or 1000
    picks = np.random.default_rng(opts.seed + 2).permutation(len(records))[:BYTES_SAMPLE]
    sizes = []
    for j in sorted(picks):
        try:
            sizes.append(shard_tar.member_bytes(len(encode(records[j], opts.target).data)) + 2 * 1024)  # + .cls, .json
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
            raise ValueError(f"{murl}: a finished split with other options or another source listing is there; "
                             "pass --overwrite to replace it")
        folder = mpath.rsplit('/', 1)[0]
        if all(fs.exists(mf.join(folder, s["name"])) for s in old["shards"]) and len(old["shards"]) == n_shards:
            return old
    _, ppath = fsspec.core.url_to_fs(purl)
    if fs.exists(ppath) and not overwrite and json.loads(fs.cat_file(ppath)).get("fingerprint") != print_:
        raise ValueError(f"{purl}: an unfinished run with other options or another source listing is there; "
                         "rerun it as it was, or pass --overwrite")
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


def pack(listing: Listing, dest: str, prefix: str, opts: PackOptions,
         progress: Callable[[int], None] = lambda n: None, map_fn: MapFn | None = None) -> tuple[dict, int]:
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
    kept = {k: v for k, v in asdict(opts).items() if k not in ("workers", "overwrite", "max_errors")}
    options = kept | {"shard_size": size}
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
        stats = add_stats(stats, res.stats)
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
        manifest["stats"]["mean_image"] = {"file": name, "side": opts.resize, "images": squares_count,
                                           "scale": "0-255"}
    mf.save(mf.manifest_url(dest, prefix, listing.split), manifest)
    _tidy(dest, prefix, listing.split, {r.name for r in results} | {mf.manifest_name(prefix, listing.split)})
    return manifest, sum(r.reused for r in results)
