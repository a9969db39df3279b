"""`cnnctl shard`: pick the source layout, then pack every split with a progress bar and a summary;
`cnnctl shard verify` and `cnnctl shard info` read a packed destination back."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from shards import manifest as mf
from shards import sources
from shards.job_map import MapFn, bounded_map
from shards.verify import verify
from shards.writer import PackOptions, TooManyErrors, pack

SIZE_UNITS = {"": 1, "B": 1, "K": 2**10, "KB": 2**10, "KIB": 2**10, "M": 2**20, "MB": 2**20, "MIB": 2**20, "G": 2**30, "GB": 2**30, "GIB": 2**30}


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
    shard_size: int | None
    seed: int
    workers: int
    overwrite: bool
    max_errors: int
    per_class_limit: int | None = None
    layout: str = "auto"
    labels: str | None = None
    synsets: str | None = None
    shard_bytes: str | None = None
    address: str | None = None


class PackError(RuntimeError):
    def __init__(self, lines: list[str]):
        self.lines = lines
        super().__init__("\n".join(lines))


def _resize(value: str | None, default: int | None) -> int | None:
    if value is None:
        return default
    if value.lower() == "none":
        return None
    if not value.isdigit() or int(value) <= 0:
        raise ValueError(f"--resize {value!r}: a positive pixel count or 'none'")
    return int(value)


def parse_bytes(value: str | None) -> int | None:
    """'256MB', '1GiB', '500000' -> bytes (binary units)."""
    if value is None:
        return None
    text = value.strip().upper()
    digits = text.rstrip("KMGIB ")
    unit = text[len(digits):].strip()
    try:
        number = float(digits)
    except ValueError:
        number = -1
    if number <= 0 or unit not in SIZE_UNITS:
        raise ValueError(f"--shard-bytes {value!r}: a size such as 256MB, 1GB or 500000")
    return int(number * SIZE_UNITS[unit])


def _on_node(fn: Callable, job):
    import ray

    return ray.get_runtime_context().get_node_id(), fn(job)


def ray_map(address: str, nodes: set[str]) -> MapFn:
    """Write shards as Ray tasks on an existing cluster (every node must reach the destination);
    the nodes that wrote any go into ``nodes``."""

    def run(fn: Callable, jobs: list) -> Iterator[tuple[int, object]]:
        from orchestrator.cluster import connect

        connect(address)  # as train and tune connect: a `cnnctl cluster up` cluster's token included
        import ray

        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        task = ray.remote(num_cpus=1, max_retries=2)(_on_node)  # a shard is idempotent: a retry rewrites it
        window = 2 * max(1, int(ray.cluster_resources().get("CPU", 1)))
        # Shards go round the nodes that have CPUs, so every node's cores and links write (Ray's own
        # placement keeps short tasks on the nodes whose workers are already up); soft: a node that
        # goes away hands its shards to the others.
        alive = sorted(n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) >= 1)
        turn = iter(range(len(jobs)))

        def submit(job):
            where = NodeAffinitySchedulingStrategy(alive[next(turn) % len(alive)], soft=True) if alive else "DEFAULT"
            return task.options(scheduling_strategy=where).remote(fn, job).future()

        for i, (node, result) in bounded_map(submit, jobs, window):
            nodes.add(node)
            yield i, result

    return run


def run_pack(req: PackRequest, console: Console | None = None) -> list[dict]:
    console = console or Console(stderr=True, soft_wrap=True)  # a long path stays one line in a log
    mf.check_url(req.dest)
    name, layout, listings = sources.open_source(req.source, req.layout, req.splits, req.labels, req.synsets)
    small = layout == "fashion-mnist"  # kept lossless and grayscale at 28x28
    opts = PackOptions(
        image_format=req.image_format or ("png" if small else "jpg"), resize=_resize(req.resize, None if small else 256),
        center_crop=req.center_crop, quality=req.quality, shard_bytes=parse_bytes(req.shard_bytes),
        shard_size=req.shard_size if req.shard_size or req.shard_bytes else 1000,
        seed=req.seed, workers=req.workers, overwrite=req.overwrite, max_errors=req.max_errors,
    )
    prefix = req.prefix or name
    nodes: set[str] = set()
    map_fn = ray_map(req.address, nodes) if req.address else None
    manifests = []
    for listing in listings:
        if req.per_class_limit:
            listing.records = sources.per_class_limit(listing.records, req.per_class_limit)
        t0 = time.perf_counter()
        columns = (TextColumn(f"{prefix}-{listing.split}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
        with Progress(*columns, console=console, transient=False) as bar:
            task = bar.add_task("pack", total=len(listing.records))
            try:
                manifest, reused = pack(listing, req.dest, prefix, opts, progress=lambda n: bar.advance(task, n), map_fn=map_fn)
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
        if nodes:
            console.print(f"  written by Ray tasks on {len(nodes)} node(s) of {req.address}", markup=False)
            nodes.clear()
        for r in manifest["rejected"]:
            console.print(f"  rejected {r['source']}: {r['reason']}", markup=False)
        manifests.append(manifest)
    return manifests


def run_verify(url: str, decode: bool, console: Console) -> list[str]:
    """Verify every split under ``url``; the problems, one line each, naming the shard."""
    problems = []
    for murl in mf.find(url):
        manifest, found = verify(murl, decode=decode)
        problems.extend(found)
        verdict = "[green]ok[/]" if not found else f"[red]{len(found)} problem(s)[/]"
        console.print(f"{murl}: {manifest['num_samples']} samples in {len(manifest['shards'])} shards: {verdict}")
    return problems


def info_table(url: str) -> Table:
    """One row per split under ``url``: what is there and how it was made."""
    table = Table(title=url)
    for col in ("split", "samples", "shards", "MiB", "classes", "rejected", "image", "seed", "mean RGB"):
        table.add_column(col, justify="left" if col in ("split", "image") else "right", no_wrap=col == "split")
    for murl in mf.find(url):
        m = mf.load(murl)
        o = m["options"]
        image = o["image_format"] + (f" q{o['quality']}" if o["image_format"] == "jpg" else "") + (f" short {o['resize']}" if o["resize"] else " orig") + (" crop" if o["center_crop"] else "")
        table.add_row(
            f"{m['prefix']}-{m['split']}", str(m["num_samples"]), str(len(m["shards"])),
            f"{sum(s['bytes'] for s in m['shards']) / 2**20:.1f}", str(len(m["classes"])), str(len(m["rejected"])),
            image, str(o["seed"]), " ".join(f"{v:.2f}" for v in m["stats"]["mean_rgb"]),
        )
    return table
