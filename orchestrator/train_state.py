"""What a checkpoint's state.pt holds beside the weights, collected by name from the components that own it.

Every stateful component has ``state_dict()`` / ``load_state_dict(sd)`` (torchtitan's checkpointer
collects Stateful objects the same way); this module names them and lays their states out as state.pt
has always held them (orchestrator/checkpoint.py), so checkpoints written before still load:

    trainer       the optimizer (canonical), the last epoch completed, the global step   -> top level
    plateau       the plateau schedule's best, bad epochs and drops                      -> "plateau"

and for a step checkpoint ``position`` (orchestrator/resume.py), with an entry per world rank of:

    stream        the training stream: epoch, steps done, each loader worker's reader position
                  -> position's "epoch" and "steps_done", the entry's "readers"
    rng           the process's torch, CUDA, numpy and Python streams                     -> "rng"
    device_batch  the PCA lighting stream                                                 -> "rng"["lighting"]
    totals        the epoch's running loss and top-1 sums and samples seen                -> "sums"

Resume code lists components; what each one saves is its own business.
"""

from __future__ import annotations

from typing import Protocol

import torch

from cnnctl.orchestrator import resume
from cnnctl.orchestrator.config import RunConfig


class Stateful(Protocol):
    def state_dict(self) -> dict: ...

    def load_state_dict(self, state_dict: dict) -> None: ...


def collect(components: dict[str, Stateful]) -> dict[str, dict]:
    return {name: c.state_dict() for name, c in components.items()}


def restore(components: dict[str, Stateful], states: dict[str, dict]) -> None:
    """Each component its state, by name; one a checkpoint does not hold keeps its own."""
    for name, component in components.items():
        if name in states:
            component.load_state_dict(states[name])


class ProcessRNG:
    """This process's global random streams: torch's (dropout, a DataLoader's base seed), CUDA's,
    numpy's and Python's."""

    def state_dict(self) -> dict:
        return {k: v for k, v in resume.rng_state(None).items() if k != "lighting"}  # the lighting: device_batch

    def load_state_dict(self, state_dict: dict) -> None:
        resume.set_rng_state(state_dict, None)


class EpochTotals:
    """The epoch's running loss and top-1 sums, kept on the device (no host sync per step), and the
    samples seen."""

    def __init__(self, device: torch.device):
        self.sums, self.seen = torch.zeros(2, dtype=torch.float64, device=device), 0

    def add(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        self.sums += torch.stack([loss.detach() * len(labels), (logits.detach().argmax(1) == labels).sum()]).double()
        self.seen += len(labels)

    def state_dict(self) -> dict:
        return {"sums": [*self.sums.tolist(), self.seen]}

    def load_state_dict(self, state_dict: dict) -> None:
        sums = state_dict["sums"]
        self.sums += torch.tensor(sums[:2], dtype=torch.float64, device=self.sums.device)
        self.seen = int(sums[2])


def state_file(states: dict[str, dict], position: dict | None = None) -> dict:
    """state.pt from the run-wide components' states (``trainer``, ``plateau``) and, for a step
    checkpoint, its ``position`` (`position`)."""
    state = {**states["trainer"], "plateau": states["plateau"]}
    return {**state, "position": position} if position else state


def run_states(state: dict) -> dict[str, dict]:
    """The run-wide components' states in a state.pt (one without plateau state leaves the schedule fresh)."""
    return {"trainer": {k: state[k] for k in ("optimizer", "epoch", "step")},
            **({"plateau": state["plateau"]} if state.get("plateau") else {})}


def rank_entry(states: dict[str, dict]) -> dict:
    """This rank's entry of a step checkpoint's position, from its components' states."""
    rng = {**states["rng"], "lighting": states["device_batch"]["lighting"]}
    return {"readers": states["stream"]["readers"], "rng": rng, "sums": states["totals"]["sums"]}


def position(stream: dict, ranks: list[dict], cfg: RunConfig, manifest: dict) -> dict:
    """A step checkpoint's position: where the epoch stands (``stream``, any rank's: they step
    together), every rank's entry, and what it depends on (the layout, the training split's shards)."""
    deal = {"deal": stream["deal"]} if stream.get("deal") else {}
    return {"epoch": stream["epoch"], "steps_done": stream["steps_done"], "layout": resume.layout(cfg), "ranks": ranks,
            "shards": resume.shards_fingerprint(manifest), **deal}


def rank_states(position: dict, rank: int) -> dict[str, dict]:
    """The inverse of `rank_entry`: rank ``rank``'s components' states in a step checkpoint's position."""
    entry = position["ranks"][rank]
    stream = {"epoch": position["epoch"], "steps_done": position["steps_done"], "readers": entry["readers"],
              **({"deal": position["deal"]} if position.get("deal") else {})}
    states = {"stream": stream, "totals": {"sums": entry["sums"]}}
    if entry.get("rng") is None:  # a position dealt to another dp (elastic.relayout): the streams start afresh
        return states
    rng = {k: v for k, v in entry["rng"].items() if k != "lighting"}
    return {**states, "rng": rng, "device_batch": {"lighting": entry["rng"].get("lighting")}}


def check_position(position: dict, cfg: RunConfig, manifest: dict, world: int, path: str) -> None:
    """A step checkpoint's position resumes exactly under ``cfg`` over the training split
    ``manifest`` with ``world`` ranks, or one line says why not."""
    if line := resume.refusal(position["layout"], cfg, path):
        raise ValueError(line)
    if position["shards"] != resume.shards_fingerprint(manifest):
        raise ValueError(f"{path}: the training split's shards are not those this mid-epoch checkpoint read "
                         f"(names or sample counts differ): its position in them means nothing now")
    if position["layout"].get("dp") == cfg.parallel.dp and len(position["ranks"]) != world:
        raise ValueError(f"{path}: taken by {len(position['ranks'])} ranks, this run has {world}")
