"""The communication budget of each layout, counted in the collectives themselves.

The paper-sized AlexNet (1000 classes) trains steps of `--batch` images per rank on CPU over gloo
(`orchestrator.local_ranks.run_local`), wrapped as the Trainer wraps it (models/parallel.py), for each
layout at K = 2, 4, 8 processes:

    dp          alexnet-owt, DDP over all K ranks
    dp+bf16     the same, DDP's bf16_compress_hook
    towers      alexnet (two towers), mp=2: K=2 is one tower pair, K=4 and 8 the hybrid dp=K/2 x mp=2
    owt         alexnet-owt, parallel.fc=model: one OWT group of K ranks
    owt+bf16    the same, the conv part's gradients through bf16_compress_hook
    owt+amp     owt+bf16 under parallel.precision=bf16 (autocast, as docs/training.md's H100 figures ran):
                the activations the group exchanges are bf16 too
    owt2xdp     alexnet-owt, two OWT groups of K/2, data parallel to each other (K >= 4)

Every call of torch.distributed's all_reduce, all_gather, reduce_scatter, all_to_all and broadcast
in a rank is counted by a wrapper around the function (the exchanges of models/towers.py and
models/owt.py call them, and so does DDP: the reducer's all-reduce runs through torch's comm hooks,
allreduce_hook or bf16_compress_hook, which call torch.distributed.all_reduce). Each call is recorded
with its group size n and the bytes of the tensors it was called with, and the bytes this rank sends
on the wire follow from the bandwidth-optimal (ring) algorithm for that call:

    all_reduce of S bytes          sends 2(n-1)/n * S   (reduce-scatter, then all-gather)
    all_gather, s bytes per rank   sends (n-1) * s
    reduce_scatter, s per rank     sends (n-1) * s
    all_to_all of S bytes in       sends S minus its own chunk
    broadcast of S bytes           sends at most S (a pipelined chain)

and a rank receives as many bytes as it sends in each of them. (gloo's own algorithm for a call may
send more; these are what any implementation must move at least, per rank.) The second step of each
run is counted (the first builds DDP's buckets), and the ranks' counts are checked to be equal.

Run: .venv/bin/python bench/comm.py [--ks 2 4 8] [--batch 128] [--json docs/comm.json]
"""

from __future__ import annotations

import argparse
import functools
import inspect
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cnnctl import models  # noqa: E402
from cnnctl.models.parallel import Mesh, apply_data_parallel, apply_fc_split, apply_tower_split, unwrap  # noqa: E402
from cnnctl.orchestrator.local_ranks import run_local  # noqa: E402

OPS = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all", "broadcast")
LAYOUTS = {  # name: (model, mp, OWT groups (0: none), grad_compression, bf16 autocast)
    "dp": ("alexnet-owt", 1, 0, "none", False),
    "dp+bf16": ("alexnet-owt", 1, 0, "bf16", False),
    "towers": ("alexnet", 2, 0, "none", False),
    "owt": ("alexnet-owt", 1, 1, "none", False),
    "owt+bf16": ("alexnet-owt", 1, 1, "bf16", False),
    "owt+amp": ("alexnet-owt", 1, 1, "bf16", True),
    "owt2xdp": ("alexnet-owt", 1, 2, "none", False),
}


def _bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def wire(op: str, n: int, rank: int, bound: inspect.BoundArguments) -> tuple[int, float]:
    """(bytes of the call's tensors S, bytes this rank sends) for one call in a group of n."""
    a = bound.arguments
    if op == "all_reduce":
        s = _bytes(a["tensor"])
        return s, 2 * (n - 1) / n * s
    if op == "all_gather":
        s = _bytes(a["tensor"])
        return n * s, (n - 1) * s
    if op == "reduce_scatter":
        s = _bytes(a["output"])
        return n * s, (n - 1) * s
    if op == "all_to_all":
        sizes = [_bytes(t) for t in a["input_tensor_list"]]
        return sum(sizes), sum(sizes) - sizes[rank]
    s = _bytes(a["tensor"])  # broadcast
    return s, float(s)


class Counter:
    """Wraps torch.distributed's collectives in this process; `calls` holds (op, n, S, sent)."""

    def __init__(self):
        self.calls: list[tuple[str, int, int, float]] = []
        self.on = False
        for op in OPS:
            setattr(dist, op, self._wrap(op, getattr(dist, op)))

    def _wrap(self, op: str, fn):
        sig = inspect.signature(fn)

        @functools.wraps(fn)
        def counted(*args, **kwargs):
            if self.on:
                bound = sig.bind(*args, **kwargs)
                group = bound.arguments.get("group")
                n = dist.get_world_size(group)
                if n > 1:
                    self.calls.append((op, n, *wire(op, n, dist.get_rank(group), bound)))
            return fn(*args, **kwargs)

        return counted

    def totals(self) -> dict:
        """Per op: calls, bytes called with, bytes sent by this rank."""
        out: dict = defaultdict(lambda: {"calls": 0, "payload": 0, "sent": 0.0})
        for op, _n, s, sent in self.calls:
            out[op]["calls"] += 1
            out[op]["payload"] += s
            out[op]["sent"] += sent
        return dict(out)


def _rank(rank: int, world: int, layout: str, batch: int, out: str) -> None:
    name, mp, groups, compression, amp = LAYOUTS[layout]
    counter = Counter()
    mesh = Mesh.init(mp, world // groups if groups else 1)
    torch.manual_seed(0)
    canonical = models.build(name, num_classes=1000, dropout=0.0)
    model = apply_data_parallel(apply_fc_split(apply_tower_split(canonical, mesh), mesh), mesh, compression)
    del canonical
    g = torch.Generator().manual_seed(mesh.dp_rank)
    side = unwrap(model).input_size
    x = torch.randn(batch, 3, side, side, generator=g)
    y = torch.randint(0, 1000, (batch,), generator=g)
    seconds = []
    for step in range(2):  # the first step builds DDP's buckets; the second is counted
        counter.on = step == 1
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        seconds.append(time.perf_counter() - t0)
        model.zero_grad(set_to_none=True)
    counter.on = False
    torch.save({"totals": counter.totals(), "calls": counter.calls, "seconds": seconds}, f"{out}-{rank}.pt")


def run(layout: str, k: int, batch: int, tmp: str) -> dict:
    out = f"{tmp}/{layout}-{k}"
    run_local(_rank, k, layout, batch, out, timeout_s=3600)
    ranks = [torch.load(f"{out}-{r}.pt", weights_only=True) for r in range(k)]
    sent = [sum(t["sent"] for t in r["totals"].values()) for r in ranks]
    return {"layout": layout, "k": k, "batch": batch, "totals": ranks[0]["totals"], "sent_per_rank": sent,
            "calls": ranks[0]["calls"], "step_seconds": [r["seconds"][1] for r in ranks]}


def applies(layout: str, k: int) -> bool:
    return k % 2 == 0 and (layout != "owt2xdp" or k >= 4)


def table(rows: list[dict]) -> str:
    mb = 1e6
    dp = {r["k"]: max(r["sent_per_rank"]) for r in rows if r["layout"] == "dp"}
    lines = ["| layout | K | all_reduce MB (calls) | all_gather MB (calls) | reduce_scatter MB (calls) | "
             "sent per rank per step, MB | / dp |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        cells = []
        for op in ("all_reduce", "all_gather", "reduce_scatter"):
            t = r["totals"].get(op)
            cells.append(f"{t['sent'] / mb:,.1f} ({t['calls']})" if t else "-")
        sent = max(r["sent_per_rank"])
        ratio = f"{sent / dp[r['k']]:.3f}" if r["k"] in dp else "-"
        name = "hybrid" if r["layout"] == "towers" and r["k"] > 2 else r["layout"]
        lines.append(f"| {name} | {r['k']} | {' | '.join(cells)} | **{sent / mb:,.1f}** | {ratio} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ks", type=int, nargs="+", default=[2, 4, 8])
    ap.add_argument("--batch", type=int, default=128, help="images per rank per step")
    ap.add_argument("--layouts", nargs="+", default=list(LAYOUTS), choices=list(LAYOUTS))
    ap.add_argument("--json", help="write every row (per-op totals and every counted call) here")
    args = ap.parse_args()
    import tempfile

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in args.ks:
            for layout in args.layouts:
                if not applies(layout, k):
                    continue
                t0 = time.perf_counter()
                try:
                    rows.append(run(layout, k, args.batch, tmp))
                except Exception as exc:  # noqa: BLE001 - a K that does not fit in memory: say so, go on
                    print(f"{layout} K={k}: did not run ({type(exc).__name__}: "
                          f"{str(exc).strip().splitlines()[-1][:200]})", flush=True)
                    continue
                r = rows[-1]
                print(f"{layout} K={k}: {max(r['sent_per_rank']) / 1e6:,.1f} MB sent per rank per step "
                      f"(ranks {'equal' if len(set(r['sent_per_rank'])) == 1 else 'DIFFER'}); "
                      f"wall {time.perf_counter() - t0:.0f} s, "
                      f"counted step {min(r['step_seconds']):.1f}-{max(r['step_seconds']):.1f} s", flush=True)
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
