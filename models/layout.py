"""The parallel layout of a run, and every rule about it, in one object of plain ints (no torch).

`Layout` is built from the config on the driver (`ParallelConfig.layout`) and from a joined process
group on each rank (`models.parallel.Mesh`); the config checks, `cnnctl train --parallel`, the mesh,
its split functions and the trainer ask it. Nothing else computes a size or a rank, or says what a
layout may be (torchtitan's `ParallelDims` is the model).

- world = nodes x workers_per_node; `mp` in {1, 2} is the tower split, dp = world / mp the replicas
  of the data. Ranks are mp-inner: ranks 2i and 2i+1 are one tower pair, on one node.
- `fc_split` = K: the FC layers are split over OWT groups of K ranks (parallel.fc=model, mp=1), laid out
  fc-inner (ranks gK..gK+K-1 are group g); every rank reads its own data (dp = world).
- A replica is one model: a tower pair, an OWT group, or a rank alone. Its ranks share the dropout
  stream and evaluate the same batches.

The rules speak in the config's fields (`parallel.mp: ...`): one message per rule, whoever asks.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Net:
    """What a layout needs to know of a model: from `models.catalog` on the driver (no torch), or from a
    built model in the split functions."""

    name: str
    alexnet: bool
    towers: int
    fc_width: int | None = None  # an AlexNet's fc6/fc7 width


@dataclass(frozen=True)
class Layout:
    nodes: int = 1
    workers_per_node: int = 1
    mp: int = 1
    fc_split: int | None = None  # K, the ranks of an OWT group; None: the FC layers are not split

    @classmethod
    def of_world(cls, world: int, mp: int = 1, fc: int = 1) -> Layout:
        """The layout of a process group of `world` ranks (which does not know its nodes); fc = K other
        than 1 splits the FC layers."""
        return cls(1, world, mp, None if fc == 1 else fc)

    @property
    def world(self) -> int:
        return self.nodes * self.workers_per_node

    @property
    def dp(self) -> int:
        """Data-parallel replicas: the world in tower pairs (mp=2) or single ranks (an OWT group's ranks
        read their own data)."""
        return max(self.world // self.mp, 1)

    @property
    def fc(self) -> int:
        """K, the ranks that share one model's FC layers (1 unless they are split)."""
        return self.fc_split or 1

    @property
    def replicas(self) -> int:
        return self.world // (self.mp * self.fc)

    def replica(self, rank: int) -> int:
        return rank // (self.mp * self.fc)

    def dp_rank(self, rank: int) -> int:
        return rank // self.mp

    def mp_rank(self, rank: int) -> int:
        return rank % self.mp

    def fc_rank(self, rank: int) -> int:
        return rank % self.fc

    def dp_ranks(self, mp_rank: int) -> list[int]:
        """The ranks holding tower `mp_rank` (a dp group: its gradients are averaged together)."""
        return [d * self.mp + mp_rank for d in range(self.dp)]

    def mp_ranks(self, dp_rank: int) -> list[int]:
        """The tower pair of data-parallel rank `dp_rank`."""
        return [dp_rank * self.mp + t for t in range(self.mp)]

    def fc_group_ranks(self, replica: int) -> list[int]:
        """OWT group `replica`: the K ranks holding one model's FC slices."""
        return list(range(replica * self.fc, (replica + 1) * self.fc))

    def fc_dp_ranks(self, fc_rank: int) -> list[int]:
        """The ranks holding FC slice `fc_rank`, one in each OWT group (averaged together)."""
        return [g * self.fc + fc_rank for g in range(self.replicas)]

    def problems(self, batch_size: int | None = None, net: Net | None = None) -> list[str]:
        """One line per rule this layout breaks; with `batch_size`, the rule on the global batch; with
        `net`, the rules on the model (its towers, its FC layers)."""
        mp, world, wpn, k = self.mp, self.world, self.workers_per_node, self.fc_split
        lines = []
        if mp not in (1, 2):
            lines.append(f"parallel.mp: {mp} is neither 1 nor 2 (the towers of an AlexNet split over a rank pair)")
        elif world % mp:
            lines.append(f"parallel.mp: {mp} does not divide the world size {world} (nodes x workers_per_node)")
        if mp == 2 and wpn % 2:
            lines.append("parallel.workers_per_node: must be even when mp=2, so each tower pair stays on one node")
        if batch_size is not None and mp in (1, 2) and batch_size % self.dp:
            lines.append(f"data.batch_size: {batch_size} is not divisible by dp={self.dp}")
        if net is not None and mp == 2 and net.towers != 2:
            lines.append(f"parallel.mp: 2 splits a model's two towers over a rank pair; {net.name} is built with "
                         f"{net.towers} (set model.towers=2 for an AlexNet, or parallel.mp=1)")
        if k is not None:
            lines += self._fc_problems(k, net)
        return lines

    def _fc_problems(self, k: int, net: Net | None) -> list[str]:
        """The FC split's first broken rule: mp=1, a one-tower AlexNet, a K that divides the world and the
        FC width."""
        if self.mp != 1:
            return ["parallel.fc: model slices a one-tower AlexNet's FC layers; mp=2 splits two towers "
                    "(use one: --parallel owt sets mp=1)"]
        if net is not None and (not net.alexnet or net.towers != 1):
            built = f"built with {net.towers} towers (set model.towers=1, or use alexnet-owt)" if net.alexnet else \
                "not an AlexNet"
            return [f"parallel.fc: model slices the FC layers of a one-tower AlexNet; {net.name} is {built}"]
        width = net.fc_width if net is not None else None
        if k < 2 or self.world % k or (width is not None and width % k):
            of_width = f" and {net.name}'s FC width {width}" if width is not None else ""
            return [f"parallel.fc_group: K={k} must be at least 2 and divide the world size {self.world}{of_width}"]
        return []

    def check(self, batch_size: int | None = None, net: Net | None = None) -> Layout:
        """This layout, or a ValueError with every broken rule (`problems`), one per line."""
        if lines := self.problems(batch_size, net):
            raise ValueError("\n".join(lines))
        return self

    def describe(self) -> str:
        """The layout in one line, as `cnnctl train --dry-run` prints it."""
        owt = f", FC split over {self.replicas} group(s) of K={self.fc}" if self.fc_split else ""
        return (f"{self.nodes} node(s) x {self.workers_per_node} worker(s) = world {self.world} "
                f"(dp={self.dp} x mp={self.mp}{owt})")


@dataclass(frozen=True)
class Named:
    """A layout `cnnctl train --parallel NAME` names: the parallel.mp and parallel.fc it sets, and the dp
    it needs of the world."""

    name: str
    mp: int
    fc: str  # parallel.fc: data or model
    help: str
    dp_min: int = 1
    dp_max: int | None = None

    def problem(self, layout: Layout) -> str | None:
        """One line when `layout`'s dp is not the one this name means; None when it is."""
        if layout.dp < self.dp_min or (self.dp_max is not None and layout.dp > self.dp_max):
            return (f"--parallel {self.name}: world {layout.world} gives dp={layout.dp}; "
                    "mp means dp=1 (world 2), hybrid dp>=2 (world >= 4)")
        return None


NAMED = {n.name: n for n in (
    Named("dp", 1, "data", "data parallel (mp=1)"),
    Named("mp", 2, "data", "AlexNet's two towers on a rank pair (mp=2, dp=1)", dp_max=1),
    Named("hybrid", 2, "data", "both (mp=2, dp=world/2)", dp_min=2),
    Named("owt", 1, "model", "one weird trick, data-parallel convs and the FC layers sliced over each group of "
          "parallel.fc_group ranks (mp=1, fc=model)"),
)}
NAMED_HELP = "; ".join(f"{n.name}: {n.help}" for n in NAMED.values()) + "."


def named(name: str) -> Named:
    """The layout `--parallel name` names; a ValueError listing the names otherwise."""
    if name not in NAMED:
        *first, last = NAMED
        raise ValueError(f"--parallel {name!r}: {', '.join(first)} or {last}")
    return NAMED[name]
