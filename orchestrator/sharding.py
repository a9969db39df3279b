"""`cnnctl shard`: pick the source layout, then pack every split with a progress bar and a summary
(`run_pack`), or say what would be packed (`pack_plan`, --dry-run), both from one ShardConfig and
one `pack_options`; `cnnctl shard verify` and `cnnctl shard info` read a packed destination back."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from cnnctl.orchestrator.shard_config import ShardConfig
from cnnctl.shards import location as loc
from cnnctl.shards import manifest as mf
from cnnctl.shards import sources
from cnnctl.shards.job_map import MapFn, bounded_map
from cnnctl.shards.verify import verify
from cnnctl.shards.writer import PackOptions, TooManyErrors, pack

SIZE_UNITS = {"": 1, "B": 1, "K": 2**10, "KB": 2**10, "KIB": 2**10, "M": 2**20, "MB": 2**20, "MIB": 2**20,
              "G": 2**30, "GB": 2**30, "GIB": 2**30}


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
        from cnnctl.orchestrator.cluster import connect

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


def pack_options(cfg: ShardConfig, layout: str) -> PackOptions:
    """The writer's options: the flags given, and each one left out at the layout's own default."""
    small = layout == "fashion-mnist"  # kept lossless and grayscale at 28x28
    return PackOptions(
        image_format=cfg.image_format or ("png" if small else "jpg"),
        resize=_resize(cfg.resize, None if small else 256),
        center_crop=cfg.center_crop, quality=cfg.quality, shard_bytes=parse_bytes(cfg.shard_bytes),
        shard_size=cfg.shard_size if cfg.shard_size or cfg.shard_bytes else 1000,
        seed=cfg.seed, workers=cfg.workers, overwrite=cfg.overwrite, max_errors=cfg.max_errors,
    )


def pack_plan(cfg: ShardConfig) -> str:
    """`cnnctl shard --dry-run`: what would be packed, resolved without listing or reading an image.

    SOURCE may be a path that exists only where the command will run (a cluster node's volume),
    so the layout and splits are detected only when it is here."""
    import yaml

    mf.check_url(cfg.dest)
    if cfg.layout not in sources.LAYOUTS:
        raise ValueError(f"--layout {cfg.layout!r}: one of {', '.join(sources.LAYOUTS)}")
    here = cfg.source == "fashion-mnist" or Path(cfg.source).exists()
    layout = sources.detect(cfg.source) if cfg.layout == "auto" and here else cfg.layout
    defaults = {"fashion-mnist": ["train", "test"], "imagenet": ["train", "val"], "auto": ["detected from the source"]}
    single = ["val" if layout.startswith("val") or Path(cfg.source).name.lower() in ("val", "validation") else "train"]
    prefix = cfg.prefix or ("fashion-mnist" if layout == "fashion-mnist" else sources.source_name(cfg.source))
    opts = pack_options(cfg, layout)
    elsewhere = "auto (detected where the command runs: the source is not on this machine)"
    plan = {
        "source": cfg.source,
        "layout": layout if here or layout != "auto" else elsewhere,
        "splits": cfg.splits or defaults.get(layout, single),
        "destination": cfg.dest,
        "shards": f"{prefix}-<split>-NNNNNN.tar, then {prefix}-<split>.manifest.json (written last)",
        "options": {
            "image_format": opts.image_format, "resize": opts.resize, "center_crop": opts.center_crop,
            "quality": opts.quality, "shard_size": opts.shard_size,
            "shard_bytes": opts.shard_bytes, "per_class_limit": cfg.per_class_limit, "seed": opts.seed,
            "existing_shards": "rebuilt (--overwrite)" if opts.overwrite else "kept (--resume)",
            "max_errors": opts.max_errors,
        },
        "runs_on": f"Ray tasks on the cluster at {cfg.address}" if cfg.address else f"{cfg.workers} local process(es)",
    }
    return (yaml.safe_dump(plan, sort_keys=False, width=200).rstrip()
            + "\n# dry run: nothing was read, started or written")


def run_pack(cfg: ShardConfig, console: Console | None = None) -> list[dict]:
    """Pack every split of ``cfg.source`` into ``cfg.dest``, a progress bar and a summary line each."""
    if line := loc.check_access(cfg.dest, "DEST"):  # a store that cannot be reached: one line, before any work
        raise ValueError(line)
    console = console or Console(stderr=True, soft_wrap=True)  # a long path stays one line in a log
    mf.check_url(cfg.dest)
    name, layout, listings = sources.open_source(cfg.source, cfg.layout, cfg.splits, cfg.labels, cfg.synsets)
    opts = pack_options(cfg, layout)
    prefix = cfg.prefix or name
    nodes: set[str] = set()
    map_fn = ray_map(cfg.address, nodes) if cfg.address else None
    manifests = []
    for listing in listings:
        if cfg.per_class_limit:
            listing.records = sources.per_class_limit(listing.records, cfg.per_class_limit)
        t0 = time.perf_counter()
        columns = (TextColumn(f"{prefix}-{listing.split}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TimeRemainingColumn())
        with Progress(*columns, console=console, transient=False) as bar:
            task = bar.add_task("pack", total=len(listing.records))
            try:
                manifest, reused = pack(listing, cfg.dest, prefix, opts, progress=lambda n: bar.advance(task, n),
                                        map_fn=map_fn)
            except TooManyErrors as exc:
                lines = [f"{r['source']}: {r['reason']}" for r in exc.rejected] + [str(exc)]
                raise PackError(lines) from None
        elapsed = time.perf_counter() - t0
        size = sum(s["bytes"] for s in manifest["shards"])
        console.print(
            f"[bold]{listing.split}[/]: {manifest['num_samples']} samples in {len(manifest['shards'])} shards "
            f"({size / 2**20:.1f} MiB, {reused} reused), {len(manifest['rejected'])} rejected, "
            f"{len(manifest['classes'])} classes, {elapsed:.1f}s -> {mf.manifest_url(cfg.dest, prefix, listing.split)}"
        )
        if nodes:
            console.print(f"  written by Ray tasks on {len(nodes)} node(s) of {cfg.address}", markup=False)
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
        image = (o["image_format"] + (f" q{o['quality']}" if o["image_format"] == "jpg" else "")
                 + (f" short {o['resize']}" if o["resize"] else " orig") + (" crop" if o["center_crop"] else ""))
        table.add_row(
            f"{m['prefix']}-{m['split']}", str(m["num_samples"]), str(len(m["shards"])),
            f"{sum(s['bytes'] for s in m['shards']) / 2**20:.1f}", str(len(m["classes"])), str(len(m["rejected"])),
            image, str(o["seed"]), " ".join(f"{v:.2f}" for v in m["stats"]["mean_rgb"]),
        )
    return table
