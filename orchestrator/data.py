"""Config -> shard readers, and the batched normalisation and lighting that run on the training device."""

from __future__ import annotations

import numpy as np
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


def eval_transform(d: DataConfig, tta: str = "center", side: int | None = None) -> Transform:
    """``side``: a mean image's side, which ten-crop checks every image's central square against."""
    if tta not in TTA:
        raise ValueError(f"tta {tta!r}: one of {', '.join(TTA)}")
    if tta == "dense":
        return Full()
    return TenCrop(d.image_size, side) if tta == "ten-crop" else CenterCrop(d.image_size)


def mean_image(cfg: RunConfig) -> np.ndarray | None:
    """The training split's per-pixel mean image (side x side x 3, 0-255) when data.mean_image is set;
    a run's checkpoints carry it (checkpoint.save), so evaluation needs no training split."""
    if not cfg.data.mean_image:
        return None
    url = manifest_url(cfg, cfg.data.train_split)
    return mf.load_mean_image(url, mf.load(url))


def train_stream(cfg: RunConfig, split: Split, side: int | None = None) -> ShardStream:
    """``side``: the mean image's side, when one is subtracted: batches then carry their windows."""
    d = cfg.data
    transform = train_transform(d)
    stream = ShardStream(manifest_url(cfg, d.train_split), split, d.batch_size // split.dp_size, transform,
                         train=True, seed=cfg.run.seed, limit=d.limit, shuffle_buffer=d.shuffle_buffer,
                         on_bad_sample=d.on_bad_sample, frame=side if transform.windowed else None)
    if d.augment in ("alexnet", "vgg") and d.lighting_std > 0:
        # Seeded by dp rank: both towers of a pair light their shared batch identically.
        stream.device_augment = lighting(cfg, stream.manifest, seed=cfg.run.seed * 1000 + split.dp_rank)
    return stream


DENSE_BATCH = 8  # whole images at up to the largest Q: far more memory per image than a crop


def eval_stream(cfg: RunConfig, split: Split, split_name: str | None = None, manifest: str | None = None,
                tta: str = "center", side: int | None = None, batch_size: int | None = None) -> ShardStream:
    """``side``: the mean image's side, when one is subtracted: centre crops then carry their windows
    and ten-crop checks its images. ``batch_size``: images per batch (default: the run's per-rank
    batch; dense: DENSE_BATCH of one size)."""
    d = cfg.data
    url = manifest or manifest_url(cfg, split_name or d.val_split)
    batch = batch_size or (DENSE_BATCH if tta == "dense" else max(1, d.batch_size // split.dp_size))
    transform = eval_transform(d, tta, side)
    return ShardStream(url, split, batch, transform, train=False, on_bad_sample=d.on_bad_sample,
                       frame=side if transform.windowed else None)


def make_loader(cfg: RunConfig, stream: ShardStream):
    # recycle: the train and eval loops let go of each batch within a step, so workers may reuse buffers
    return loader(stream, workers=cfg.data.loader_workers, pin_memory=cfg.parallel.gpus, recycle=True)


class Normalize(torch.nn.Module):
    """uint8 N×3×H×W -> float: (x/255 - mean) / std, on the 0-1 scale.

    ``mean`` is per channel, or with ``mean_image`` (side x side x 3, 0-255: AlexNet §2) per pixel:
    each sample subtracts the patch of the mean image under its window, given as ``windows``, an
    N×3 of (top, left, flip) in the frame of the image's central square. A mirrored crop subtracts
    the mirrored patch: the mean is taken off before the flip, as the pixels were.
    """

    def __init__(self, mean: list[float], std: list[float], mean_image: np.ndarray | None = None):
        super().__init__()
        std_ = torch.tensor(std).view(1, 3, 1, 1)
        self.register_buffer("scale", 1.0 / (255.0 * std_))
        self.register_buffer("shift", torch.tensor(mean).view(1, 3, 1, 1) / std_)
        image = None if mean_image is None else torch.from_numpy(mean_image).float().permute(2, 0, 1) / (255.0 * std_[0])
        self.register_buffer("mean_image", image)  # 3×S×S, already divided by std

    def forward(self, x: torch.Tensor, windows: torch.Tensor | None = None) -> torch.Tensor:
        if self.mean_image is None:
            return x.float() * self.scale - self.shift
        if windows is None:
            raise ValueError("a per-pixel mean image needs each sample's window (a stream with a frame)")
        return x.float() * self.scale - self.patches(windows, *x.shape[-2:])

    def patches(self, windows: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """N×3×h×w: the mean image under each (top, left, flip) window, mirrored where it flips."""
        top, left, flip = windows.to(self.mean_image.device, non_blocking=True).unbind(1)
        rows = top[:, None] + torch.arange(h, device=top.device)
        cols = left[:, None] + torch.arange(w, device=top.device)
        cols = torch.where(flip[:, None].bool(), cols.flip(1), cols)
        return self.mean_image[:, rows[:, :, None], cols[:, None, :]].transpose(0, 1)


def normalizer(cfg: RunConfig, manifest: dict, mean_image: np.ndarray | None = None) -> Normalize:
    """The run's normalisation: data.mean/std (a run settles them from the training split's manifest,
    train.prepare_run), else ``manifest``'s; per pixel with ``mean_image``."""
    stats = manifest["stats"]
    return Normalize(cfg.data.mean or stats["mean_rgb"], cfg.data.std or stats["std_rgb"], mean_image)


def lighting(cfg: RunConfig, manifest: dict, seed: int = 0) -> Lighting:
    stats = manifest["stats"]
    return Lighting(stats["eigval"], stats["eigvec"], cfg.data.std or stats["std_rgb"], cfg.data.lighting_std, seed)
