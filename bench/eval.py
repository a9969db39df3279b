"""`cnnctl eval` on Ray workers against one worker and against one process, in one run.

Packs Fashion-MNIST's test split (--images of it, shards of 500) into a temporary folder, saves a
demo-fashion model (alexnet-small, two towers) with random weights as a checkpoint, starts a local
Ray with one CPU per worker (cluster.connect, as `cnnctl eval --workers` does), and measures,
interleaved over --rounds rounds after one untimed warm-up round each (Ray starts its worker
processes; later rounds reuse them):

- process:  the in-process evaluation (`cnnctl eval` without Ray options), 1 torch thread;
- ray-1:    one Ray worker (orchestrator/eval_ray.py), 1 CPU, 1 torch thread;
- ray-N:    N Ray workers (--workers, default 2), each on its exact part of the split.

Each contender's img/s is end to end (a Ray run's from dispatch to the merged sums: worker set-up and
model loading included; the process's from plan to sums) and its CPU-seconds per image the whole
process tree's (bench/cputime.py: with a local Ray that is every Ray process too, idle daemons
included), as the median and spread [min-max] over rounds. Also printed: the ratios per round, each
Ray run's merge overhead (from the last worker's finish to the merged summary, `merge_s`). The goal:
ray-2 >= 1.8x ray-1 in img/s where the machine has 2 free cores (a shared machine gives less), merge overhead << 1 s.

Usage: python bench/eval.py [--images 4000] [--workers 2] [--rounds 3] [--tta center|ten-crop|dense]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from cnnctl import models  # noqa: E402
from cputime import Rounds  # noqa: E402  (bench/cputime.py)
from cnnctl.orchestrator import checkpoint as ckpt  # noqa: E402
from cnnctl.orchestrator import eval_ray  # noqa: E402
from cnnctl.orchestrator.cluster import connect  # noqa: E402
from cnnctl.orchestrator.config import resolve  # noqa: E402
from cnnctl.orchestrator.evaluate import eval_part, plan_eval  # noqa: E402
from cnnctl.orchestrator.shard_config import ShardConfig  # noqa: E402
from cnnctl.orchestrator.sharding import run_pack  # noqa: E402
from cnnctl.shards.reader import Split  # noqa: E402


def setup(tmp: Path, images: int) -> str:
    run_pack(ShardConfig(source="fashion-mnist", dest=str(tmp / "data"), splits=["test"], shard_size=500,
                         per_class_limit=images // 10))
    cfg = resolve("demo-fashion", None, [f"data.root={tmp / 'data'}"])
    cfg.model.num_classes = 10
    torch.manual_seed(0)
    model = models.build(cfg.model.name, num_classes=10, **cfg.model.overrides())
    folder = tmp / "run" / "checkpoint_000000"
    state = {"optimizer": torch.optim.SGD(model.parameters(), lr=0.1).state_dict(), "epoch": 0, "step": 0}
    ckpt.save(folder, model.state_dict(), cfg, state, {"epoch": 0})
    return str(folder)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=4000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tta", default="center")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-eval-") as tmp:
        plan = plan_eval([setup(Path(tmp), args.images)], split="test", tta=args.tta)
        connect(None, cpus_needed=args.workers)
        merge: dict[str, list[float]] = {}
        results: dict[str, dict] = {}

        def process() -> int:
            sums = eval_part(plan, Split(), threads=1)
            results["process"] = sums
            return sums["count"]

        def ray(n: int):
            def go() -> int:
                sums, run = eval_ray.run(plan, eval_ray.Layout(n, None, None), threads=1, gpus=False)
                results[f"ray-{n}"] = sums
                merge.setdefault(f"ray-{n}", []).append(run["merge_s"])
                return sums["count"]
            return go

        contenders = {"process": process, "ray-1": ray(1), f"ray-{args.workers}": ray(args.workers)}
        for fn in contenders.values():  # warm-up: Ray's worker processes start, imports, decoder choice
            fn()
        merge.clear()
        rounds = Rounds()
        for i in range(args.rounds):
            for name, fn in contenders.items():
                rounds.run(name, fn)
            print(f"round {i + 1}/{args.rounds} done", file=sys.stderr, flush=True)
        n = plan.total
        print(f"cnnctl eval, {n} Fashion-MNIST test images, --tta {plan.tta}, demo-fashion model (random weights), "
              f"{args.rounds} rounds, torch {torch.__version__}, {len(__import__('os').sched_getaffinity(0))} cores")
        what = {"process": "in-process evaluation (1 thread)", "ray-1": "1 Ray worker (1 CPU, 1 thread)",
                f"ray-{args.workers}": f"{args.workers} Ray workers (1 CPU, 1 thread each)"}
        for name in contenders:
            print(rounds.line(name, what[name]))
        print(rounds.ratio(f"ray-{args.workers}", "ray-1", f"ray-1 / ray-{args.workers}"))
        print(rounds.ratio("process", "ray-1", "ray-1 / process (Ray's cost for one worker)"))
        speed = [b / a for a, b in zip(rounds.rate["ray-1"], rounds.rate[f"ray-{args.workers}"])]
        print(f"img/s ray-{args.workers} over ray-1: {statistics.median(speed):.2f}x "
              f"[{min(speed):.2f}-{max(speed):.2f}]; rounds: "
              + " ".join(f"{v:.2f}" for v in speed))
        for name, values in merge.items():
            ms = [v * 1e3 for v in values]
            print(f"merge overhead {name}: {statistics.median(ms):.1f} ms [{min(ms):.1f}-{max(ms):.1f}] "
                  "from the last worker's finish to the merged summary")
        one = results["process"]
        for name, sums in results.items():  # the check the tests make, on this run's numbers
            assert (sums["top1"], sums["top5"], sums["count"]) == (one["top1"], one["top5"], one["count"]), name
            assert abs(sums["loss_sum"] - one["loss_sum"]) <= 1e-9 * abs(one["loss_sum"]), name
        print("top-1, top-5 and count equal in every contender, loss sums within rel 1e-9")


if __name__ == "__main__":
    main()
