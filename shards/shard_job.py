"""One shard's job, the unit the writer hands to a process or a Ray task: encode its records into
tar bytes (deterministic: fixed mtimes, owners and member order) and publish them whole, or keep the
shard an earlier run of the same fingerprint already published (DESIGN.md §3)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import fsspec

from cnnctl.shards import codec, shard_tar
from cnnctl.shards import location as loc
from cnnctl.shards import manifest as mf
from cnnctl.shards.listing import Record
from cnnctl.shards.pixel_stats import NO_STATS, Stats, add_stats, pixel_stats


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
        parts.append(shard_tar.member(f"{rec.key}.{job.target.fmt}", enc.data))
        parts.append(shard_tar.member(f"{rec.key}.cls", str(rec.label).encode()))
        parts.append(shard_tar.member(f"{rec.key}.json", json.dumps(info, sort_keys=True).encode()))
        if rec.key in job.stats_keys:
            stats = add_stats(stats, pixel_stats(enc.pixels, job.target.short))
    parts.append(shard_tar.end_of_archive(sum(map(len, parts))))
    return b"".join(parts), rejected, stats


def shard_keys(data: bytes) -> set[str] | None:
    """Sample keys of a complete shard, or None when the tar is damaged."""
    try:
        return {s["__key__"] for s in shard_tar.samples(data) if "cls" in s}
    except shard_tar.BadSample:
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
        stats = add_stats(stats, pixel_stats(enc.pixels, job.target.short))
    name = job.url.rsplit("/", 1)[-1]
    return ShardResult(name, len(keys), len(data), hashlib.sha256(data).hexdigest(), rejected, True, stats)


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
    count = len(job.records) - len(rejected)
    return ShardResult(name, count, len(data), hashlib.sha256(data).hexdigest(), rejected, False, stats)
