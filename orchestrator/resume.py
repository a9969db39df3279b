"""Exact mid-epoch resume: what a step checkpoint adds to a checkpoint, and the check that it can apply.

A step checkpoint's state.pt carries ``position``: the epoch in progress, the steps of it done, and
for every world rank its loader workers' reader positions (shards/position.py), its RNG states
(torch and CUDA for dropout, numpy, Python, the PCA lighting stream) and its running loss sums. The
layout it was taken at (``layout``) is in meta.json too, so the driver can refuse a resume that
cannot be exact before any worker starts, without reading the weights.

Resuming mid-epoch at the same dp needs the same mp, OWT group, loader workers, batch and seed: each
reader's part of the shards and each rank's RNG streams depend on them, and it is bitwise exact. At
another dp (mp, OWT group, seed and global batch kept; the loader workers may change too), the rest
of the epoch is dealt to the new readers (orchestrator/elastic.py): each sample once, not in the same
order. Anything else is refused; an end-of-epoch checkpoint resumes at any layout.
"""

from __future__ import annotations

import random

import numpy as np
import torch

from cnnctl.orchestrator import checkpoint as ckpt
from cnnctl.orchestrator import elastic
from cnnctl.orchestrator.config import RunConfig

LAYOUT_FIELDS = {"dp": "parallel (dp)", "mp": "parallel.mp", "fc": "parallel.fc_group (OWT)",
                 "loader_workers": "data.loader_workers", "batch_size": "data.batch_size", "seed": "run.seed",
                 "limit": "data.limit", "global_batch": "data.global_batch"}


def layout(cfg: RunConfig) -> dict:
    """What a mid-epoch position depends on."""
    return {"dp": cfg.parallel.dp, "mp": cfg.parallel.mp, "fc": cfg.parallel.layout.fc,
            "loader_workers": cfg.data.loader_workers, "batch_size": cfg.data.batch_size, "seed": cfg.run.seed,
            "limit": cfg.data.limit, "global_batch": elastic.global_batch(cfg)}


def refusal(saved: dict, cfg: RunConfig, where: str) -> str | None:
    """One line saying why a step checkpoint taken at layout ``saved`` cannot resume exactly under
    ``cfg``; None when it can."""
    now, saved = layout(cfg), {**saved, "global_batch": elastic.saved_global(saved)}
    free = elastic.RESIZABLE if elastic.resized(saved, cfg) else ()
    diffs = [f"{LAYOUT_FIELDS[k]} {saved.get(k)} -> {now[k]}" for k in LAYOUT_FIELDS
             if saved.get(k) != now[k] and k not in free]
    if not diffs:
        return None
    return (f"{where}: a mid-epoch checkpoint resumes only at the layout it was taken at, or at another dp alone "
            f"({'; '.join(diffs)}); "
            f"rerun with those settings, "
            f"or set model.init_from to an end-of-epoch checkpoint to start afresh from its weights")


def check(cfg: RunConfig, run_dir: str) -> None:
    """On the driver, before Ray starts: the checkpoint a rerun would resume from must resume exactly
    (at another dp: with each sample once, ``cfg``'s batch settled for it by elastic.adjust)."""
    path = ckpt.resume_point(None, run_dir)
    meta = ckpt.load_meta(path) if path else {}
    if not meta.get("mid_epoch"):
        return
    saved = meta["layout"]
    if elastic.resized(saved, cfg) or elastic.saved_global(saved) != saved["batch_size"]:
        if line := elastic.adjust(cfg, saved, path):
            raise ValueError(line)
    if line := refusal(saved, cfg, path):
        raise ValueError(line)


def at_world(cfg: RunConfig, world: int, start: str | None) -> str | None:
    """An elastic run's worker, started by Ray Train at ``world`` ranks: ``cfg`` settled for it (its
    nodes; the global batch and per-rank batch of the newest checkpoint ``start``, else of the run as
    configured, split over the new dp by elastic.adjust). Returns the console's line when the world is
    not the one an end-of-epoch checkpoint trained at, None otherwise; a ValueError when it cannot
    train there."""
    p = cfg.parallel
    before, meta = (ckpt.load_config(start), ckpt.load_meta(start)) if start else (cfg, {})
    old_world, saved = before.parallel.world, meta.get("layout") or layout(before)
    p.nodes = world // p.workers_per_node
    if line := elastic.adjust(cfg, saved, start or f"parallel.nodes {p.nodes}"):
        raise ValueError(line)
    # a step checkpoint's line is the Trainer's, which says from which step (elastic.resumed_line)
    return None if world == old_world or not start or meta.get("mid_epoch") else elastic.world_line(old_world, cfg)


def shards_fingerprint(manifest: dict) -> str:
    """The training split's shards as a reader's positions see them: names and sample counts."""
    import hashlib

    listing = "\n".join(f"{sh['name']}:{sh['count']}" for sh in manifest["shards"])
    return hashlib.sha256(listing.encode()).hexdigest()[:16]


def rng_state(lighting_generator: torch.Generator | None) -> dict:
    """This process's RNG states, as torch.load(weights_only=True) reads them back."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
            "python": random.getstate(),
            "lighting": lighting_generator.get_state() if lighting_generator is not None else None}


def set_rng_state(state: dict, lighting_generator: torch.Generator | None) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if lighting_generator is not None:
        lighting_generator.set_state(state["lighting"])
