"""The dp x mp mesh (DESIGN.md §4). Nothing else in cnnctl computes ranks.

Ranks are laid out mp-inner: ranks 2i and 2i+1 hold the two towers of one model replica and sit on
the same node. The dp group of a rank is every rank with the same tower index; gradients are
averaged within it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.distributed as dist


@dataclass
class Mesh:
    world: int
    rank: int
    mp: int = 1
    dp_group: object = field(default=None, repr=False)
    mp_group: object = field(default=None, repr=False)

    def __post_init__(self):
        if self.mp not in (1, 2) or self.world % self.mp:
            raise ValueError(f"mp={self.mp} must be 1 or 2 and divide world={self.world}")

    @property
    def dp(self) -> int:
        return self.world // self.mp

    @property
    def dp_rank(self) -> int:
        return self.rank // self.mp

    @property
    def mp_rank(self) -> int:
        return self.rank % self.mp

    def dp_ranks(self, mp_rank: int) -> list[int]:
        return [d * self.mp + mp_rank for d in range(self.dp)]

    def mp_ranks(self, dp_rank: int) -> list[int]:
        return [dp_rank * self.mp + t for t in range(self.mp)]

    @classmethod
    def init(cls, mp: int = 1) -> "Mesh":
        """Build the process groups of an initialised default group.

        Every rank must create every group, in the same order, even those it is not in.
        """
        mesh = cls(dist.get_world_size(), dist.get_rank(), mp)
        if mp == 1:
            mesh.dp_group = dist.group.WORLD
            return mesh
        for t in range(mp):
            group = dist.new_group(mesh.dp_ranks(t))
            if t == mesh.mp_rank:
                mesh.dp_group = group
        for d in range(mesh.dp):
            group = dist.new_group(mesh.mp_ranks(d))
            if d == mesh.dp_rank:
                mesh.mp_group = group
        return mesh
