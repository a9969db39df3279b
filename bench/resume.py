"""What exact mid-epoch resume costs: three figures, each against its baseline in the same run.

1. Restart to first batch. An ImageNet-like corpus (bench/shard.py's, shorter side 256, shards of
   250) read by one training reader (AlexNet's random 227 crop and flip, batches of 128, in this
   process so its CPU-seconds count): a reader resumed at --cut of its epoch from its saved
   position, timed to its first batch, against the reader that gets there by reading and decoding
   every sample before the cut (what a resume without positions costs). Then the part of a resume
   that grows with the epoch, the shuffle's replay over positions (shards/stages.replay), timed at
   ImageNet's size: 1,281,167 samples over 1 and 16 readers, cut at the same fraction.
2. The training stall per checkpoint: the paper's AlexNet (1000 classes, 60,965,224 weights) and
   its SGD momentum, written by rank 0 of a one-worker Ray Train run and reported to run.storage on
   a real S3 server on loopback (moto's server mode), with run.checkpoint_upload sync (training
   waits for the upload) against async (Ray Train's background upload): the seconds the training
   loop stands still, and the local serialisation alone (async's floor).
3. The steady-state step: the same one-worker run trains alexnet-small on synthetic batches with a
   step checkpoint every --every steps against none, interleaved; the difference per checkpoint,
   and what one checkpoint per 10 minutes costs the paper AlexNet's step (figure 2's async stall
   over 600 s).

Every round of every figure is printed; medians and spreads [min-max] beside them.

Usage: python bench/resume.py [--images 3000] [--cut 0.9] [--rounds 3] [--every 20]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cputime import CpuTimer  # noqa: E402
from shard import build_corpus  # noqa: E402

IMAGENET = 1_281_167


def spread(values: list[float], unit: str, scale: float = 1.0) -> str:
    v = [x * scale for x in values]
    return f"{statistics.median(v):.3f} {unit} [{min(v):.3f}-{max(v):.3f}] (rounds: {', '.join(f'{x:.3f}' for x in v)})"


# -- 1. restart to first batch ------------------------------------------------------------------

def reader(url: str):
    """The one training reader every figure-1 contender uses: AlexNet crops, batches of 128."""
    from cnnctl.shards.reader import ShardStream, Split
    from cnnctl.shards.transforms import AlexNetCrop

    return ShardStream(url, Split(), 128, AlexNetCrop(227), train=True, seed=1)


def first_batch(url: str, cut: int, positions) -> tuple[float, float, object]:
    """(wall s, CPU s, first batch) of a fresh reader to the batch after ``cut`` steps: resumed at
    ``positions``, or (None) reading and decoding its way there."""
    from cnnctl.shards.reader import loader

    stream = reader(url)
    with CpuTimer() as t:
        data = loader(stream, workers=0)
        stream.set_epoch(0)
        stream.set_position(positions, cut if positions else 0)
        batches = iter(data)
        if positions is None:
            for _ in range(cut):
                next(batches)
        batch = next(batches)
    return t.wall, t.seconds, batch


def restart(args, url: str) -> None:
    from cnnctl.shards.reader import loader

    stream = reader(url)
    cut = int(len(stream) * args.cut)
    data = loader(stream, workers=0)
    stream.set_epoch(0)
    for step, _ in enumerate(data, start=1):
        if step == cut:
            positions = stream.position(cut)
            break
    print(f"\n1. restart to the first batch after step {cut} of {len(stream)} "
          f"({cut * 128} samples skipped), one reader:")
    way = {"resumed (positions)": [], "decode the skipped": []}
    for r in range(args.rounds):
        resumed = first_batch(url, cut, positions)
        naive = first_batch(url, cut, None)
        assert bool((resumed[2][0] == naive[2][0]).all()), "the resumed reader's batch is not the one it skipped to"
        way["resumed (positions)"].append(resumed[:2])
        way["decode the skipped"].append(naive[:2])
    for name, runs in way.items():
        print(f"   {name:<22} wall {spread([w for w, _ in runs], 's')}")
        print(f"   {'':<22} CPU  {spread([c for _, c in runs], 's')}")
    ratios = [n[1] / r[1] for r, n in zip(way["resumed (positions)"], way["decode the skipped"])]
    print(f"   decode the skipped / resumed, CPU-seconds: {spread(ratios, 'x')}")
    from cnnctl.shards import stages

    for readers in (1, 16):
        length = IMAGENET // readers
        times = []
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            stages.replay(length, 2000, random.Random(0), int(length * args.cut))
            times.append(time.perf_counter() - t0)
        print(f"   ImageNet, {readers:>2} reader(s) ({length:,} samples each, buffer 2000): "
              f"the shuffle's replay to {args.cut:.0%} "
              f"{spread(times, 's')}")


# -- 2 and 3. checkpoint stall and steady-state step, on Ray Train with moto S3 -----------------

def stall_loop(config: dict) -> None:
    """One Ray Train worker: paper-AlexNet checkpoints reported in both modes, then small-model
    steps with and without step checkpoints."""
    import ray.train
    import torch

    from cnnctl import models
    from cnnctl.orchestrator import checkpoint as ckpt
    from cnnctl.orchestrator.config import RunConfig
    from cnnctl.orchestrator.train import ray_report

    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = RunConfig.model_validate({"run": {"name": "bench-resume"}})
    model = models.build("alexnet", num_classes=1000)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    opt.step()  # momentum buffers exist: the checkpoint holds weights + momentum
    weights, state = model.state_dict(), {"optimizer": opt.state_dict(), "epoch": 0, "step": 1}
    reports = {mode: ray_report(mode) for mode in ("sync", "async")}
    out = {"save": [], "sync": [], "async": []}
    for r in range(config["rounds"]):
        for mode in ("sync", "async"):
            t0 = time.perf_counter()
            folder = tempfile.mkdtemp(prefix="cnnctl-bench-")
            ckpt.save(folder, weights, cfg, state, {"epoch": 0, "step": r, "metrics": {}})
            saved = time.perf_counter()
            reports[mode]({"round": r, "mode": mode}, folder)
            out[mode].append(time.perf_counter() - t0)
            out["save"].append(saved - t0)
        time.sleep(config["settle_s"])  # the async upload finishes before the next round
    # 3. steady state: alexnet-small steps, a small checkpoint every `every` steps against none
    small = models.build("alexnet-small", num_classes=10)
    sopt = torch.optim.SGD(small.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(64, 3, 28, 28), torch.randint(0, 10, (64,))
    steps, every = config["steps"], config["every"]
    step_s = {"off": [], "on": []}
    for r in range(config["rounds"]):
        for mode in ("off", "on"):
            t0 = time.perf_counter()
            for i in range(1, steps + 1):
                loss = torch.nn.functional.cross_entropy(small(x), y)
                sopt.zero_grad()
                loss.backward()
                sopt.step()
                if mode == "on" and i % every == 0:
                    folder = tempfile.mkdtemp(prefix="cnnctl-bench-")
                    ckpt.save(folder, small.state_dict(), cfg, {"optimizer": sopt.state_dict(), "epoch": 0, "step": i},
                              {"epoch": 0, "step": i})
                    reports["async"]({"round": r, "mode": "steady"}, folder)
            step_s[mode].append((time.perf_counter() - t0) / steps)
    weights_mb = sum(t.numel() * t.element_size() for t in weights.values()) / 1e6
    Path(config["out"]).write_text(json.dumps({"stall": out, "step_s": step_s, "weights_mb": weights_mb}))
    ray.train.report({})


def stall(args) -> None:
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per request otherwise

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1",
                      AWS_EC2_METADATA_DISABLED="true", AWS_ENDPOINT_URL=f"http://{host}:{port}")
    try:
        import s3fs

        s3fs.S3FileSystem().mkdir("bench")
        import ray

        from cnnctl.orchestrator.ray_workers import torch_trainer

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        import ray.train
        from ray.train.torch import TorchConfig

        out = Path(tempfile.mkdtemp(prefix="cnnctl-bench-")) / "stall.json"  # the worker runs on this machine
        trainer = torch_trainer()(
            stall_loop, train_loop_config={"rounds": args.rounds, "settle_s": 8.0, "steps": args.steps,
                                           "every": args.every, "out": str(out)},
            torch_config=TorchConfig(backend="gloo"), scaling_config=ray.train.ScalingConfig(num_workers=1),
            run_config=ray.train.RunConfig(name="bench-resume", storage_path="s3://bench/runs",
                                           checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2)))
        trainer.fit()
        m = json.loads(out.read_text())
        ray.shutdown()
    finally:
        server.stop()
    s = m["stall"]
    print(f"\n2. training stall per checkpoint: paper AlexNet, {m['weights_mb']:.0f} MB of weights + as much momentum, "
          f"to moto S3 on 127.0.0.1 (Ray Train, one worker):")
    print(f"   local serialisation     {spread(s['save'], 's')} (every round of both modes)")
    print(f"   sync  (wait for upload) {spread(s['sync'], 's')}")
    print(f"   async (Ray Train ASYNC) {spread(s['async'], 's')}")
    print(f"   async / serialisation: {spread([a / b for a, b in zip(s['async'], s['save'][1::2])], 'x')}; "
          f"sync / async: {spread([a / b for a, b in zip(s['sync'], s['async'])], 'x')}")
    st = m["step_s"]
    print(f"\n3. steady state, alexnet-small batch 64 on one CPU thread, "
          f"a step checkpoint every {args.every} steps against none:")
    print(f"   step, checkpoints off   {spread(st['off'], 'ms', 1e3)}")
    print(f"   step, checkpoints on    {spread(st['on'], 'ms', 1e3)}")
    print(f"   on / off: {spread([a / b for a, b in zip(st['on'], st['off'])], 'x')}")
    per10 = statistics.median(s["async"]) / 600
    print(f"   paper AlexNet, one checkpoint per 10 minutes: the async stall is {per10:.3%} of training time "
          f"(goal <= 2 %); sync: {statistics.median(s['sync']) / 600:.3%}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=3000, help="corpus size for figure 1")
    ap.add_argument("--cut", type=float, default=0.9, help="the fraction of the epoch before the kill")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=200, help="figure 3: steps per round")
    ap.add_argument("--every", type=int, default=20, help="figure 3: a step checkpoint every this many steps")
    ap.add_argument("--only", choices=("restart", "stall"), default=None)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    if args.only in (None, "restart"):
        from cnnctl.shards import manifest as mf
        from cnnctl.shards.layouts import class_folders
        from cnnctl.shards.writer import PackOptions, pack

        with tempfile.TemporaryDirectory() as tmp:
            root, dest = Path(tmp, "corpus"), Path(tmp, "shards")
            build_corpus(root, args.images)
            pack(class_folders(root, "train"), str(dest), "bench",
                 PackOptions(resize=256, quality=90, shard_size=250, workers=2))
            restart(args, mf.manifest_url(str(dest), "bench", "train"))
    if args.only in (None, "stall"):
        stall(args)


if __name__ == "__main__":
    main()
