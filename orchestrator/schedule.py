"""Learning-rate schedules, as a pure function of the global step (no optimizer state)."""

from __future__ import annotations

import math

from cnnctl.orchestrator.config import RunConfig


def peak_lr(cfg: RunConfig) -> float:
    """The base lr, scaled by the linear rule (lr ∝ global batch, Goyal et al. 2017) when asked."""
    if cfg.optim.scale_lr == "linear":
        return cfg.optim.lr * (cfg.data.global_batch or cfg.data.batch_size) / cfg.optim.reference_batch
    return cfg.optim.lr


def lr_at(cfg: RunConfig, step: int, steps_per_epoch: int, drops: int = 0) -> float:
    """The lr at a global step; ``drops`` counts the plateau schedule's ÷10 steps so far."""
    s = cfg.schedule
    peak = peak_lr(cfg)
    total = s.epochs * steps_per_epoch
    warmup = int(s.warmup_epochs * steps_per_epoch)
    if step < warmup:
        return peak * (0.01 + 0.99 * step / warmup)
    if s.kind == "constant":
        return peak
    if s.kind == "plateau":
        return peak * 0.1**drops
    if s.kind == "step":
        return peak * s.gamma ** (step // (s.step_epochs * steps_per_epoch))
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    low = peak * s.final_lr_fraction
    if s.kind == "cosine":
        return low + (peak - low) * 0.5 * (1 + math.cos(math.pi * progress))
    # onecycle after warm-up: linear decay to the final fraction
    return peak + (low - peak) * progress


class Plateau:
    """Divide lr by 10 when val_top1 has not improved for ``patience`` epochs (AlexNet §5, VGG §3.1).

    Every rank sees the same all-reduced val_top1, so every rank takes the same decision.
    """

    def __init__(self, patience: int, max_drops: int, state: dict | None = None):
        self.patience, self.max_drops = patience, max_drops
        self.best, self.bad, self.drops = float("-inf"), 0, 0
        if state:
            self.load_state_dict(state)

    def update(self, val_top1: float) -> None:
        if val_top1 > self.best + 1e-4:
            self.best, self.bad = val_top1, 0
            return
        self.bad += 1
        if self.bad > self.patience and self.drops < self.max_drops:
            self.drops, self.bad = self.drops + 1, 0

    def state_dict(self) -> dict:
        """What decides the next drops (a checkpoint's ``plateau``); patience and max_drops come from the config."""
        return {"best": self.best, "bad": self.bad, "drops": self.drops}

    def load_state_dict(self, state_dict: dict) -> None:
        self.best, self.bad, self.drops = state_dict["best"], state_dict["bad"], state_dict["drops"]

    state = state_dict  # the name older callers use
