"""`cnnctl shard`: pick the source layout, then pack every split with a progress bar and a summary."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from shards import manifest as mf
from shards import sources
from shards.writer import PackOptions, TooManyErrors, pack


@dataclass
class PackRequest:
    source: str
    dest: str
    splits: list[str]
    prefix: str | None
    image_format: str | None
    resize: str | None
    center_crop: bool
    quality: int
    shard_size: int
    seed: int
    workers: int
    overwrite: bool
    max_errors: int
    per_class_limit: int | None = None


class PackError(RuntimeError):
    def __init__(self, lines: list[str]):
        self.lines = lines
        super().__init__("\n".join(lines))


def _listings(req: PackRequest) -> tuple[str, list[sources.Listing], dict]:
    """The source's splits, its name (the default prefix) and its per-layout defaults."""
    if req.source == "fashion-mnist":
        splits = req.splits or ["train", "test"]
        return "fashion-mnist", [sources.fashion_mnist(s) for s in splits], {"image_format": "png", "resize": None}
    root = Path(req.source)
    if not root.is_dir():
        raise FileNotFoundError(f"{req.source}: neither 'fashion-mnist' nor an existing folder")
    splits = req.splits or ["train"]
    if len(splits) != 1:
        raise ValueError("a class-folder source is one split; pass a single --split")
    return root.name or "data", [sources.class_folders(root, splits[0])], {"image_format": "jpg", "resize": 256}


def _resize(value: str | None, default: int | None) -> int | None:
    if value is None:
        return default
    if value.lower() == "none":
        return None
    if not value.isdigit() or int(value) <= 0:
        raise ValueError(f"--resize {value!r}: a positive pixel count or 'none'")
    return int(value)


def run_pack(req: PackRequest, console: Console | None = None) -> list[dict]:
    console = console or Console(stderr=True)
    mf.check_url(req.dest)
    name, listings, defaults = _listings(req)
    opts = PackOptions(
        image_format=req.image_format or defaults["image_format"], resize=_resize(req.resize, defaults["resize"]),
        center_crop=req.center_crop, quality=req.quality, shard_size=req.shard_size, seed=req.seed,
        workers=req.workers, overwrite=req.overwrite, max_errors=req.max_errors,
    )
    prefix = req.prefix or name
    manifests = []
    for listing in listings:
        if req.per_class_limit:
            listing.records = sources.per_class_limit(listing.records, req.per_class_limit)
        t0 = time.perf_counter()
        columns = (TextColumn(f"{prefix}-{listing.split}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
        with Progress(*columns, console=console, transient=False) as bar:
            task = bar.add_task("pack", total=len(listing.records))
            try:
                manifest, reused = pack(listing, req.dest, prefix, opts, progress=lambda n: bar.advance(task, n))
            except TooManyErrors as exc:
                lines = [f"{r['source']}: {r['reason']}" for r in exc.rejected] + [str(exc)]
                raise PackError(lines) from None
        elapsed = time.perf_counter() - t0
        size = sum(s["bytes"] for s in manifest["shards"])
        console.print(
            f"[bold]{listing.split}[/]: {manifest['num_samples']} samples in {len(manifest['shards'])} shards "
            f"({size / 2**20:.1f} MiB, {reused} reused), {len(manifest['rejected'])} rejected, "
            f"{len(manifest['classes'])} classes, {elapsed:.1f}s -> {mf.manifest_url(req.dest, prefix, listing.split)}"
        )
        for r in manifest["rejected"]:
            console.print(f"  rejected {r['source']}: {r['reason']}")
        manifests.append(manifest)
    return manifests
