"""Config -> model, and the evaluation pass shared by `cnnctl train` and `cnnctl eval`."""

from __future__ import annotations

from typing import Callable, Iterable

import torch
import torch.nn.functional as F

from cnnctl import models
from cnnctl.models import catalog
from cnnctl.orchestrator import checkpoint as ckpt
from cnnctl.orchestrator.config import RunConfig


def build_model(cfg: RunConfig, num_classes: int) -> torch.nn.Module:
    """The configured model: fields left at None take the model's own defaults (ModelConfig)."""
    return models.build(cfg.model.name, num_classes=num_classes, **cfg.model.overrides())


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
        # each sample's loss summed in float64: the sum of a split's parts then equals the whole's to
        # float64 rounding, however the parts were batched (`cnnctl eval --workers`)
        loss += F.cross_entropy(logits.float(), labels, reduction="none").double().sum().cpu()
        c1, c5 = topk_correct(logits, labels)
        top1, top5, count = top1 + c1, top5 + c5, count + len(labels)
    return {"loss_sum": float(loss), "top1": top1, "top5": top5, "count": count}


def summarize(sums: dict) -> dict:
    n = max(sums["count"], 1)
    return {"loss": sums["loss_sum"] / n, "top1": sums["top1"] / n, "top5": sums["top5"] / n, "count": sums["count"]}


def init_source(cfg: RunConfig) -> tuple[str, RunConfig, str]:
    """model.init_from resolved: the checkpoint, its config, and the mode ('vgg-a' or 'matching').

    In auto mode a VGG B-E starts from a trained VGG-A by §3.1, or from its own column by matching
    (fine-tuning, §3.1's S = 384 -> [256, 512]); any other source needs init_mode matching, said
    explicitly. The copy is rehearsed on the meta device, so a source that cannot serve (no complete
    checkpoint, not a VGG-A, shapes that differ, nothing matching) is a ValueError of one line here,
    on the driver before Ray starts, and not on the workers.
    """
    m = cfg.model
    try:
        path = ckpt.find(m.init_from)
    except (OSError, ckpt.CheckpointError) as exc:
        raise ValueError(f"model.init_from: {exc}") from None
    source = ckpt.load_config(path)
    target, shallow = catalog.resolve(m.name), catalog.resolve(source.model.name)
    deeper = catalog.family(target) == "vgg" and target not in ("vgg-a", "vgg-a-lrn")
    mode = m.init_mode
    if mode == "auto" and deeper and shallow not in ("vgg-a", target):
        raise ValueError(f"model.init_from {m.init_from}: VGG §3.1 starts {target} from a trained vgg-a, "
                         f"this checkpoint is {shallow} "
                         f"(model.init_mode=matching copies tensors by name and shape from any model)")
    if mode == "auto":
        mode = "vgg-a" if deeper and shallow == "vgg-a" else "matching"
    if mode == "vgg-a" and not deeper:
        raise ValueError(f"model.init_mode vgg-a: VGG §3.1 initialises VGG B-E from A, not {target}")
    if mode == "vgg-a" and shallow != "vgg-a":
        raise ValueError(f"model.init_from {m.init_from}: VGG §3.1 needs a trained vgg-a, this checkpoint is {shallow}")
    if mode == "vgg-a" and (source.model.width or 1.0) != (m.width or 1.0):
        raise ValueError(f"model.init_from {m.init_from}: its vgg-a has width {source.model.width or 1.0}, "
                         f"{target} here has width {m.width or 1.0}; §3.1 copies layers of the same shape")
    with torch.device("meta"):
        model = build_model(cfg, m.num_classes or source.model.num_classes)
        try:
            _copy(mode, model, build_model(source, source.model.num_classes).state_dict(), source, target)
        except ValueError as exc:
            raise ValueError(f"model.init_from {m.init_from}: {exc}") from None
    return path, source, mode


@torch.no_grad()
def _copy(mode: str, model: torch.nn.Module, weights: dict, source: RunConfig, target: str) -> list[str]:
    """Copy ``weights`` (of a ``source`` model) into ``model`` (a ``target``); the names copied."""
    if mode == "vgg-a":
        with torch.device("meta"):
            shallow = build_model(source, source.model.num_classes)
        shallow.load_state_dict(weights, assign=True)
        return models.init_from(model, shallow)
    copied = models.load_matching(model, weights)
    if not copied:
        raise ValueError(f"no tensor of its {source.model.name} matches {target} by name and shape")
    return copied


def initialise(model: torch.nn.Module, cfg: RunConfig) -> str:
    """Copy model.init_from's weights into ``model`` (canonical, before any split); returns what was
    copied, for the log. 'vgg-a' is VGG §3.1 (models.init_from); 'matching' copies every tensor whose
    name and shape match."""
    path, source, mode = init_source(cfg)
    copied = _copy(mode, model, ckpt.load_weights(path), source, catalog.resolve(cfg.model.name))
    how = ("VGG §3.1: A's first four convs and three FC layers" if mode == "vgg-a"
           else "tensors matching by name and shape")
    fresh = [name for name in model.state_dict() if name not in copied]
    return (f"init_from {path} ({how}): copied {len(copied)} tensors [{', '.join(copied)}]; "
            f"{len(fresh)} as model.init draws them [{', '.join(fresh)}]")
