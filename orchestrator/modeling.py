"""Config -> model, and the evaluation pass shared by `cnnctl train` and `cnnctl eval`."""

from __future__ import annotations

from typing import Callable, Iterable

import torch
import torch.nn.functional as F

import models
from orchestrator.config import RunConfig


def model_overrides(cfg: RunConfig) -> dict:
    """Only the model fields the user set reach the builder, so each family keeps its own defaults
    and a field that does not apply (towers for VGG, say) is an error from the builder."""
    m = cfg.model
    out = {k: getattr(m, k) for k in ("towers", "width", "dropout") if k in m.model_fields_set}
    if "lrn" in m.model_fields_set:
        out["lrn"] = m.lrn.model_dump(exclude={"enabled"}) if m.lrn.enabled else None
    return out


def build_model(cfg: RunConfig, num_classes: int) -> torch.nn.Module:
    return models.build(cfg.model.name, num_classes=num_classes, **model_overrides(cfg))


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> list[int]:
    k = min(max(ks), logits.shape[1])
    top = logits.topk(k, dim=1).indices
    hits = top == labels.unsqueeze(1)
    return [int(hits[:, : min(kk, k)].any(1).sum()) for kk in ks]


@torch.no_grad()
def evaluate(predict: Callable[[torch.Tensor], torch.Tensor], batches: Iterable, device: torch.device) -> dict:
    """Sums over this process's part of a split: loss, top-1 and top-5 hits, count.

    ``predict`` maps a uint8 batch (and its crops' windows, when the batches carry them) to logits
    (or log-probabilities, as an ensemble returns).
    """
    loss = torch.zeros((), dtype=torch.float64)
    top1 = top5 = count = 0
    for images, labels, *windows in batches:
        labels = labels.to(device)
        logits = predict(images.to(device, non_blocking=True), *windows)
        loss += F.cross_entropy(logits.float(), labels, reduction="sum").double().cpu()
        c1, c5 = topk_correct(logits, labels)
        top1, top5, count = top1 + c1, top5 + c5, count + len(labels)
    return {"loss_sum": float(loss), "top1": top1, "top5": top5, "count": count}


def summarize(sums: dict) -> dict:
    n = max(sums["count"], 1)
    return {"loss": sums["loss_sum"] / n, "top1": sums["top1"] / n, "top5": sums["top5"] / n, "count": sums["count"]}
