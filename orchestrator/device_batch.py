"""The device side of a batch, one stage owned by the Trainer and reused by `cnnctl eval`:

    uint8 N×3×H×W (channels_last view) -> device -> normalise (per channel, or the per-pixel mean
    image's patch under each crop's window) -> PCA lighting / RGB colour shift (training only)
    -> the model's memory format

Batches cross the DataLoader as uint8 (a quarter of float32's bytes); everything that needs floats
runs here, batched, on the training device. The stage knows its epoch itself (``set_epoch``): the
reader has no hook into it; its lighting stream saves and loads itself (``state_dict``). Under
data.decoder=device the batch reaches it already decoded, by ShardStream.counted on this process (on
CUDA, already on the device: ``to`` is then free).
"""

from __future__ import annotations

import numpy as np
import torch

from cnnctl.orchestrator.config import RunConfig


class DeviceBatch(torch.nn.Module):
    """uint8 batch -> the model's input on ``device``. ``windows`` (N×3 of (top, left, flip)) say
    where each crop lay, for a per-pixel mean image; ``augment=False`` (validation) skips lighting."""

    def __init__(self, normalize: Normalize, lighting: Lighting | None = None, channels_last: bool = True,
                 device: torch.device | str = "cpu"):
        super().__init__()
        self.device = torch.device(device)
        self.normalize, self.lighting = normalize.to(self.device), lighting
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def state_dict(self) -> dict:
        """Where the PCA lighting's random stream stands (None: it does not light), for a step
        checkpoint. This replaces nn.Module's: the normalisation buffers follow from the config and
        the manifest, and the lighting stream is all that decides the next batch."""
        return {"lighting": self.lighting.generator.get_state() if self.lighting is not None else None}

    def load_state_dict(self, state_dict: dict) -> None:
        if self.lighting is not None:
            self.lighting.generator.set_state(state_dict["lighting"])

    def set_epoch(self, epoch: int) -> None:
        """Before the epoch's first batch: lighting draws from a stream per (seed, epoch)."""
        if self.lighting is not None:
            self.lighting.set_epoch(epoch)

    def forward(self, images: torch.Tensor, windows: torch.Tensor | None = None, augment: bool = True) -> torch.Tensor:
        x = self.normalize(images.to(self.device, non_blocking=True), windows)
        if augment and self.lighting is not None:
            x = self.lighting(x)
        return x.contiguous(memory_format=self.memory_format)


def device_batch(cfg: RunConfig, manifest: dict, mean_image: np.ndarray | None = None,
                 device: torch.device | str = "cpu", lighting_seed: int | None = None) -> DeviceBatch:
    """The run's device stage: data.mean/std (a run settles them from the training split's manifest,
    train.prepare_run), else ``manifest``'s; per pixel with ``mean_image``; PCA lighting when the
    augmentation has it and ``lighting_seed`` is given (training: seeded by dp rank, so both towers of
    a pair light their shared batch identically)."""
    d, stats = cfg.data, manifest["stats"]
    std = d.std or stats["std_rgb"]
    normalize = Normalize(d.mean or stats["mean_rgb"], std, mean_image)
    lighting = None
    if lighting_seed is not None and d.augment in ("alexnet", "vgg") and d.lighting_std > 0:
        lighting = Lighting(stats["eigval"], stats["eigvec"], std, d.lighting_std, lighting_seed)
    return DeviceBatch(normalize, lighting, cfg.parallel.channels_last, device)


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
        image = (None if mean_image is None
                 else torch.from_numpy(mean_image).float().permute(2, 0, 1) / (255.0 * std_[0]))
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


class Lighting(torch.nn.Module):
    """AlexNet §4.1 PCA lighting, which VGG §3.1 uses as its RGB colour shift.

    Every image gets ``[p1 p2 p3][a1*l1 a2*l2 a3*l3]^T`` added to all its pixels, a_i ~ N(0, sigma),
    with (l_i, p_i) the eigenvalues and eigenvectors (columns) of the training set's RGB covariance on
    the 0-1 scale. It runs after ``Normalize``, so the offset is divided by the same per-channel std.
    The coefficients come from a CPU generator reseeded every epoch: the same seed gives the same batches.
    """

    def __init__(self, eigval: list[float], eigvec: list[list[float]], std: list[float],
                 sigma: float = 0.1, seed: int = 0):
        super().__init__()
        self.eigval, self.eigvec = torch.tensor(eigval, dtype=torch.float64), torch.tensor(eigvec, dtype=torch.float64)
        self.std, self.sigma, self.seed = torch.tensor(std, dtype=torch.float64), sigma, seed
        self.generator = torch.Generator()
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.generator.manual_seed(self.seed * 100_003 + epoch)

    def offsets(self, alpha: torch.Tensor) -> torch.Tensor:
        """(N, 3) RGB offsets on the 0-1 scale for (N, 3) coefficients: P (alpha * lambda) per image."""
        return (alpha.double() * self.eigval) @ self.eigvec.T

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.sigma == 0:
            return x
        alpha = torch.randn(x.shape[0], 3, generator=self.generator, dtype=torch.float64) * self.sigma
        delta = (self.offsets(alpha) / self.std).to(x.device, x.dtype)
        return x.add_(delta.view(-1, 3, 1, 1))  # x is the fresh output of Normalize: in place keeps its layout
