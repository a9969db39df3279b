"""Config -> shard readers, and the batched normalisation and lighting that run on the training device."""

from __future__ import annotations

import torch

from orchestrator.config import DataConfig, RunConfig
from shards import manifest as mf
from shards.augment import Lighting
from shards.reader import ShardStream, Split, loader
from shards.transforms import AlexNetCrop, CenterCrop, CropFlip, Full, ScaleJitter, TenCrop, Transform

TTA = ("center", "ten-crop", "dense")


def manifest_url(cfg: RunConfig, split: str) -> str:
    return mf.manifest_url(cfg.data.root, cfg.data.prefix, split)


def num_classes(cfg: RunConfig) -> int:
    return cfg.model.num_classes or len(mf.load(manifest_url(cfg, cfg.data.train_split))["classes"])


def train_transform(d: DataConfig) -> Transform:
    if d.augment == "crop-flip":
        return CropFlip(d.image_size, d.pad)
    if d.augment == "alexnet":
        return AlexNetCrop(d.image_size)
    if d.augment == "vgg":
        return ScaleJitter(d.image_size, d.scale_min, d.scale_max)
    return CenterCrop(d.image_size)


def eval_transform(d: DataConfig, tta: str = "center") -> Transform:
    if tta not in TTA:
        raise ValueError(f"tta {tta!r}: one of {', '.join(TTA)}")
    return {"center": CenterCrop, "ten-crop": TenCrop}[tta](d.image_size) if tta != "dense" else Full()


def train_stream(cfg: RunConfig, split: Split) -> ShardStream:
    d = cfg.data
    stream = ShardStream(manifest_url(cfg, d.train_split), split, d.batch_size // split.dp_size, train_transform(d),
                         train=True, seed=cfg.run.seed, limit=d.limit, shuffle_buffer=d.shuffle_buffer,
                         on_bad_sample=d.on_bad_sample)
    if d.augment in ("alexnet", "vgg") and d.lighting_std > 0:
        # Seeded by dp rank: both towers of a pair light their shared batch identically.
        stream.device_augment = lighting(cfg, stream.manifest, seed=cfg.run.seed * 1000 + split.dp_rank)
    return stream


def eval_stream(cfg: RunConfig, split: Split, split_name: str | None = None, manifest: str | None = None,
                tta: str = "center") -> ShardStream:
    d = cfg.data
    url = manifest or manifest_url(cfg, split_name or d.val_split)
    batch = 1 if tta == "dense" else max(1, d.batch_size // split.dp_size)  # dense: whole images of any size
    return ShardStream(url, split, batch, eval_transform(d, tta), train=False, on_bad_sample=d.on_bad_sample)


def make_loader(cfg: RunConfig, stream: ShardStream):
    # recycle: the train and eval loops let go of each batch within a step, so workers may reuse buffers
    return loader(stream, workers=cfg.data.loader_workers, pin_memory=cfg.parallel.gpus, recycle=True)


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


def lighting(cfg: RunConfig, manifest: dict, seed: int = 0) -> Lighting:
    stats = manifest["stats"]
    return Lighting(stats["eigval"], stats["eigvec"], cfg.data.std or stats["std_rgb"], cfg.data.lighting_std, seed)
