"""Batched augmentation on the training device. Batches cross the DataLoader as uint8; the steps
that need floats (PCA lighting) run here, after ``Normalize``, on the whole batch at once."""

from __future__ import annotations

import torch


class Lighting(torch.nn.Module):
    """AlexNet §4.1 PCA lighting, which VGG §3.1 uses as its RGB colour shift.

    Every image gets ``[p1 p2 p3][a1*l1 a2*l2 a3*l3]^T`` added to all its pixels, a_i ~ N(0, sigma),
    with (l_i, p_i) the eigenvalues and eigenvectors (columns) of the training set's RGB covariance on
    the 0-1 scale. It runs after ``Normalize``, so the offset is divided by the same per-channel std.
    The coefficients come from a CPU generator reseeded every epoch: the same seed gives the same batches.
    """

    def __init__(self, eigval: list[float], eigvec: list[list[float]], std: list[float], sigma: float = 0.1, seed: int = 0):
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
