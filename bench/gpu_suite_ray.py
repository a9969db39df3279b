"""bench/gpu_suite.py's Ray sections: `cnnctl train --gpus` on the suite's real shards (each decoder at
its best loader worker count) and `cnnctl eval --gpus` (AlexNet's ten views, VGG's dense multi-scale),
each against its baseline in the same run. Training runs go through the code `cnnctl train` runs
(config.resolve -> preflight -> train.fit); evaluation through `cnnctl eval`'s (plan_eval ->
eval_ray.run), with the evaluation alone (evaluate.eval_part, what each worker runs) beside it."""

from __future__ import annotations

import gc
import statistics
from pathlib import Path

import torch

from cnnctl import models
from cnnctl.orchestrator import checkpoint as ckpt
from cnnctl.orchestrator import eval_ray
from cnnctl.orchestrator.config import resolve
from cnnctl.orchestrator.evaluate import eval_part, plan_eval
from cnnctl.orchestrator.metrics import read
from cnnctl.orchestrator.preflight import preflight
from cnnctl.orchestrator.train import fit, run_dir
from cnnctl.shards import manifest as mf
from cnnctl.shards.reader import Split
from gpu_suite_rows import Sizes, device_decoder_built, figure, skipped  # this folder

PREFIX = "suite"
PRECISION = "bf16"  # the training rows' (the README's real-shard figures were bf16 and fp32)


def common(sizes: Sizes, shards: Path, cores: int) -> list[str]:
    """The --set lines every run and checkpoint of the suite shares: its shards, one worker, one GPU."""
    gpus = sizes.device == "cuda"
    return [f"data.root={shards}", f"data.prefix={PREFIX}", "data.val_split=val", "parallel.mp=1",
            "parallel.workers_per_node=1", f"parallel.gpus={str(gpus).lower()}",
            f"parallel.cpus_per_worker={cores if gpus else 1}", f"parallel.threads_per_worker={min(cores, 4)}",
            f"data.loader_workers={max(1, cores - 2) if gpus else 1}",  # evaluation's; training sweeps its own
            *([f"model.width={sizes.width}"] if sizes.width else [])]


def train_once(sizes: Sizes, shards: Path, runs: Path, cores: int, decoder: str, workers: int) -> tuple[list, float]:
    """One `cnnctl train` run; the img/s of every epoch after the first, and the last one's CPU-s per image."""
    cfg = resolve("imagenet-alexnet", None, [
        *common(sizes, shards, cores), f"data.decoder={decoder}", f"data.loader_workers={workers}",
        f"data.batch_size={sizes.train_batch}", f"parallel.precision={PRECISION}", f"schedule.epochs={sizes.epochs}",
        f"run.storage={runs}", f"run.name=train-{decoder}-w{workers}", "run.max_failures=0"])
    preflight(cfg)  # the data and stores checked, Ray connected (once), as `cnnctl train` does
    fit(cfg)
    epochs = read(run_dir(cfg))
    return [m["images_per_sec"] for m in epochs[1:]], epochs[-1]["train_cpu_s_per_image"]


def train_rows(sizes: Sizes, shards: Path, runs: Path, cores: int, ceiling: list[float]) -> list[dict]:
    """Each decoder at the loader worker count that maximises its img/s; the worker-side decoder against
    the synthetic step's ceiling (same model, precision and batch), the device decoder against it."""
    rows, worker_side = [], None
    flag = " --gpus" if sizes.device == "cuda" else ""
    for decoder in ("windowed", "device"):
        name = f"cnnctl train{flag}, real shards, data.decoder={decoder}"
        if decoder == "device" and not device_decoder_built():
            rows.append(skipped("train", name, "data.decoder=device is not in this build"))
            continue
        runs_by = {w: train_once(sizes, shards, runs, cores, decoder, w) for w in sizes.loader_workers}
        best = max(runs_by, key=lambda w: statistics.median(runs_by[w][0]))
        swept = ", ".join(f"{w}: {statistics.median(r):,.0f}" for w, (r, _) in runs_by.items())
        note = (f"{best} loader worker(s) (swept img/s {swept}); {runs_by[best][1] * 1e3:.3f} ms CPU per image; "
                f"alexnet {PRECISION} channels_last, batch {sizes.train_batch}")
        if worker_side is None:
            row = figure("train", name, runs_by[best][0], "img/s", "synthetic step (the GPU's ceiling)", ceiling, note)
            worker_side = runs_by[best][0]
        else:
            row = figure("train", name, runs_by[best][0], "img/s", "data.decoder=windowed", worker_side, note)
        rows.append(row)
    return rows


def random_checkpoint(sizes: Sizes, shards: Path, out: Path, preset: str, cores: int) -> str:
    """A checkpoint of ``preset``'s model with its initial weights, as a run on the suite's shards saves it."""
    cfg = resolve(preset, None, common(sizes, shards, cores))
    url = mf.manifest_url(str(shards), PREFIX, "train")
    manifest = mf.load(url)
    cfg.model.num_classes = len(manifest["classes"])
    cfg.data.mean, cfg.data.std = manifest["stats"]["mean_rgb"], manifest["stats"]["std_rgb"]
    torch.manual_seed(0)
    model = models.build(cfg.model.name, num_classes=cfg.model.num_classes, **cfg.model.overrides())
    state = {"optimizer": torch.optim.SGD(model.parameters(), lr=0.1).state_dict(), "epoch": 0, "step": 0}
    mean = mf.load_mean_image(url, manifest) if cfg.data.mean_image else None
    folder = out / preset / "checkpoint_000000"
    ckpt.save(folder, model.state_dict(), cfg, state, {"epoch": 0}, mean_image=mean)
    return str(folder)


EVALS = [  # (what, preset, split the device evaluates, plan_eval's options)
    ("alexnet ten views", "imagenet-alexnet", "eval", {"tta": "ten-crop"}),
    ("vgg-a dense multi-scale + flips", "imagenet-vgg-a", "val", {"tta": "dense", "flip": True}),
]


def here(plan, threads: int, device: str) -> float:
    """img/s of eval_part in this process. Its loader's iterator is collected before the next loader
    forks workers (a fork that inherits it would try to shut its workers down: an AssertionError)."""
    sums = eval_part(plan, Split(), threads, device)
    gc.collect()
    return sums["count"] / sums["seconds"]


def eval_rows(sizes: Sizes, shards: Path, out: Path, cores: int) -> list[dict]:
    """`cnnctl eval --gpus` on one Ray worker, end to end (dispatch to merged sums: the worker's start and
    model load included), and the evaluation alone on the device (eval_part, the worker's own loop after
    its model is loaded), each against the one CPU process `cnnctl eval` runs without Ray (all cores)."""
    rows, gpus = [], sizes.device == "cuda"
    flag = " --gpus" if gpus else ""
    for what, preset, split, options in EVALS:
        path = random_checkpoint(sizes, shards, out, preset, cores)
        scales = {"scales": sizes.scales} if options["tta"] == "dense" else {}
        plan = plan_eval([path], split=split, **options, **scales)
        on_cpu = plan_eval([path], split="cpu", **options, **scales)
        alone, cpu, ray_run = [], [], []
        here(plan, min(cores, 4), sizes.device)  # warm-up: cuDNN, the page cache
        for _ in range(sizes.rounds):
            alone.append(here(plan, min(cores, 4), sizes.device))
            cpu.append(here(on_cpu, cores, "cpu"))
            sums, run = eval_ray.run(plan, eval_ray.Layout(1, None, None), threads=min(cores, 4), gpus=gpus)
            ray_run.append(sums["count"] / run["seconds"])
        base = f"one CPU process, {cores} threads ({on_cpu.total} images)"
        note = f"{plan.total} images" + (f", Q {sizes.scales}" if scales else "")
        rows.append(figure("eval", f"cnnctl eval{flag}, {what}, 1 Ray worker end to end", ray_run, "img/s",
                           base, cpu, note + "; the worker's start and model load included"))
        rows.append(figure("eval", f"cnnctl eval{flag}, {what}, the evaluation alone", alone, "img/s",
                           base, cpu, note + f" on {sizes.device}, after the model is loaded"))
    return rows
