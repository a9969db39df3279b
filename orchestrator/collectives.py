"""The few collectives a Trainer runs over its world or its dp group, each a no-op at world 1."""

from __future__ import annotations

import torch
import torch.distributed as dist

from cnnctl.models.parallel import Mesh


class Collectives:
    def __init__(self, mesh: Mesh, device: torch.device):
        self.mesh, self.device = mesh, device

    def all_sum(self, values: list[float], group=None) -> list[float]:
        if self.mesh.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)  # NCCL reduces device tensors only
        # each dp group sees every sample exactly once
        dist.all_reduce(t, group=self.mesh.dp_group if group is None else group)
        return t.tolist()

    def gather_objects(self, value) -> list:
        if self.mesh.world == 1:
            return [value]
        out = [None] * self.mesh.world
        dist.all_gather_object(out, value)
        return out

    def gather(self, value: int) -> list[int]:
        """Every rank's value, in world-rank order (the metrics prove that ranks stepped equally)."""
        if self.mesh.world == 1:
            return [value]
        out = [torch.zeros(1, dtype=torch.int64, device=self.device) for _ in range(self.mesh.world)]
        dist.all_gather(out, torch.tensor([value], device=self.device))
        return [int(t) for t in out]
