"""Config -> shard readers, and the batched normalisation that runs on the training device."""

from __future__ import annotations

import torch

from orchestrator.config import RunConfig
from shards import manifest as mf
from shards.reader import ShardStream, Split, loader
from shards.transforms import CenterCrop, CropFlip


def manifest_url(cfg: RunConfig, split: str) -> str:
    return mf.manifest_url(cfg.data.root, cfg.data.prefix, split)


def check_data(cfg: RunConfig) -> list[str]:
    """Problems with the configured splits, found before any worker starts."""
    problems = []
    for split in {cfg.data.train_split, cfg.data.val_split}:
        url = manifest_url(cfg, split)
        try:
            mf.load(url)
        except (FileNotFoundError, ValueError) as exc:
            problems.append(f"data ({split}): {exc}")
    return problems


def num_classes(cfg: RunConfig) -> int:
    return cfg.model.num_classes or len(mf.load(manifest_url(cfg, cfg.data.train_split))["classes"])


def train_stream(cfg: RunConfig, split: Split) -> ShardStream:
    d = cfg.data
    transform = CropFlip(d.image_size, d.pad) if d.augment == "crop-flip" else CenterCrop(d.image_size)
    return ShardStream(manifest_url(cfg, d.train_split), split, d.batch_size // split.dp_size, transform,
                       train=True, seed=cfg.run.seed, limit=d.limit, shuffle_buffer=d.shuffle_buffer,
                       on_bad_sample=d.on_bad_sample)


def eval_stream(cfg: RunConfig, split: Split, split_name: str | None = None, manifest: str | None = None) -> ShardStream:
    d = cfg.data
    url = manifest or manifest_url(cfg, split_name or d.val_split)
    return ShardStream(url, split, max(1, d.batch_size // split.dp_size), CenterCrop(d.image_size),
                       train=False, on_bad_sample=d.on_bad_sample)


def make_loader(cfg: RunConfig, stream: ShardStream):
    return loader(stream, workers=cfg.data.loader_workers, pin_memory=cfg.parallel.gpus)


class Normalize(torch.nn.Module):
    """uint8 N×3×H×W -> float, mean/std on the 0-1 scale (from the manifest unless the config sets them)."""

    def __init__(self, mean: list[float], std: list[float]):
        super().__init__()
        self.register_buffer("scale", 1.0 / (255.0 * torch.tensor(std).view(1, 3, 1, 1)))
        self.register_buffer("shift", torch.tensor(mean).view(1, 3, 1, 1) / torch.tensor(std).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.float() * self.scale - self.shift


def normalizer(cfg: RunConfig, manifest: dict) -> Normalize:
    stats = manifest["stats"]
    return Normalize(cfg.data.mean or stats["mean_rgb"], cfg.data.std or stats["std_rgb"])
