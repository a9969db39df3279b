"""Config -> shard readers (shards/reader.py); the device side of their batches is orchestrator/device_batch.py."""

from __future__ import annotations

import numpy as np

from cnnctl.orchestrator.config import DataConfig, RunConfig
from cnnctl.shards import decoders
from cnnctl.shards import manifest as mf
from cnnctl.shards.reader import ShardStream, Split, loader
from cnnctl.shards.stages import bad_sample_policy
from cnnctl.shards.transforms import AlexNetCrop, CenterCrop, CropFlip, Full, ScaleJitter, TenCrop, Transform

TTA = ("center", "ten-crop", "dense")


def manifest_url(cfg: RunConfig, split: str) -> str:
    return mf.manifest_url(cfg.data.root, cfg.data.prefix, split)


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
    url = manifest_url(cfg, d.train_split)
    stream = ShardStream(url, split, d.batch_size // split.dp_size, transform,
                         train=True, seed=cfg.run.seed, limit=d.limit, shuffle_buffer=d.shuffle_buffer,
                         on_bad=bad_sample_policy(d.on_bad_sample), frame=side if transform.windowed else None,
                         num_classes=cfg.model.num_classes,
                         accumulate=(d.global_batch or d.batch_size) // d.batch_size)  # orchestrator/elastic.py
    stream.windowed = decoders.windowed(d.decoder, transform, url, stream.manifest)
    if d.decoder == "device":  # decoded by the consumer of the batches (ShardStream.counted), on its device
        if problem := decoders.device_problem(transform, stream.manifest):
            raise ValueError(problem)
        stream.decode_on_device("cuda" if cfg.parallel.gpus else "cpu")
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
    stream = ShardStream(url, split, batch, transform, train=False, on_bad=bad_sample_policy(d.on_bad_sample),
                         frame=side if transform.windowed else None, num_classes=cfg.model.num_classes)
    stream.windowed = decoders.windowed(d.decoder, transform, url, stream.manifest)
    return stream


def make_loader(cfg: RunConfig, stream: ShardStream):
    # recycle: the train and eval loops let go of each batch within a step, so workers may reuse buffers
    return loader(stream, workers=cfg.data.loader_workers, pin_memory=cfg.parallel.gpus, recycle=True)
