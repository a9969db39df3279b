"""Learning-rate schedules, as a pure function of the global step (no optimizer state)."""

from __future__ import annotations

import math

from orchestrator.config import RunConfig


def peak_lr(cfg: RunConfig) -> float:
    """The base lr, scaled by the linear rule (lr ∝ global batch, Goyal et al. 2017) when asked."""
    if cfg.optim.scale_lr == "linear":
        return cfg.optim.lr * cfg.data.batch_size / cfg.optim.reference_batch
    return cfg.optim.lr


def lr_at(cfg: RunConfig, step: int, steps_per_epoch: int) -> float:
    s = cfg.schedule
    peak = peak_lr(cfg)
    total = s.epochs * steps_per_epoch
    warmup = int(s.warmup_epochs * steps_per_epoch)
    if step < warmup:
        return peak * (0.01 + 0.99 * step / warmup)
    if s.kind == "constant":
        return peak
    if s.kind == "step":
        return peak * s.gamma ** (step // (s.step_epochs * steps_per_epoch))
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    low = peak * s.final_lr_fraction
    if s.kind == "cosine":
        return low + (peak - low) * 0.5 * (1 + math.cos(math.pi * progress))
    # onecycle after warm-up: linear decay to the final fraction
    return peak + (low - peak) * progress
