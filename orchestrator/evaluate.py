"""`cnnctl eval`: top-1/top-5 of one checkpoint, or of several fused by averaging their softmax,
with test-time augmentation:

- ``center``: the centre crop (the training crop size);
- ``ten-crop``: AlexNet §4.1, the 4 corner and the centre crops of the central square and their
  flips, softmax averaged over the 10 views;
- ``dense``: VGG §3.2, the fully-convolutional net (`models.dense.to_dense`) on the whole image with
  its shorter side rescaled to each Q in ``scales``; the class score map is averaged spatially, and
  the softmax averaged over scales (and with the flipped image's under ``flip``).

Every (model, view, scale) contributes one softmax and all of them are averaged with equal weight, so
fusion and TTA combine (VGG §4.4, AlexNet §6); the result is returned as log-probabilities.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from cnnctl.models.dense import dense_scores, to_dense
from cnnctl.orchestrator import checkpoint as ckpt
from cnnctl.orchestrator.data import DENSE_BATCH, TTA, eval_stream, make_loader
from cnnctl.orchestrator.device_batch import DeviceBatch, device_batch
from cnnctl.orchestrator.modeling import build_model, evaluate, summarize
from cnnctl.shards import location as loc
from cnnctl.shards import manifest as mf
from cnnctl.shards.reader import Split
from cnnctl.shards.transforms import TenCrop


def load_model(path: str) -> tuple[torch.nn.Module, object]:
    cfg = ckpt.load_config(path)
    model = build_model(cfg, cfg.model.num_classes)
    model.load_state_dict(ckpt.load_weights(path))
    if cfg.parallel.channels_last:  # evaluate in the memory format the run trained in
        model = model.to(memory_format=torch.channels_last)
    return model.eval(), cfg


def ten_crop_windows(prepare: DeviceBatch, n: int, size: int) -> torch.Tensor | None:
    """The ten views' windows for n images, for a per-pixel mean image (None without one)."""
    image = prepare.normalize.mean_image
    return None if image is None else torch.tensor(TenCrop(size).windows(image.shape[-1])).repeat(n, 1)


def rescale_shorter(x: torch.Tensor, q: int | None) -> torch.Tensor:
    """Isotropic rescale of an N×3×H×W float batch so its shorter side is q (antialiased bilinear);
    None keeps the image as stored."""
    h, w = x.shape[-2:]
    if q is None:
        return x
    f = q / min(h, w)
    size = (q, max(q, round(w * f))) if h <= w else (max(q, round(h * f)), q)
    return x if size == (h, w) else F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)


def view_probs(model: torch.nn.Module, prepare: DeviceBatch, x: torch.Tensor, tta: str, scales: list[int | None],
               flip: bool, windows: torch.Tensor | None = None) -> list[torch.Tensor]:
    """The softmax of every test view of a uint8 batch: a list of (N, classes). ``windows``: where
    the centre crops lay, for a per-pixel mean image."""
    if tta == "ten-crop":  # (N, 10, 3, H, W): one forward over all N*10 views
        n, v = x.shape[:2]
        views = prepare(x.flatten(0, 1), ten_crop_windows(prepare, n, x.shape[-1]))
        return list(model(views).softmax(1).view(n, v, -1).unbind(1))
    if tta == "center":
        xs = [prepare(x, windows)]
    else:  # dense: the whole image at every scale Q
        xs = [rescale_shorter(prepare(x), q) for q in scales]
    if flip:
        xs += [t.flip(-1) for t in xs]
    return [(dense_scores(model, t) if tta == "dense" else model(t)).softmax(1) for t in xs]


def make_predict(models_: list[torch.nn.Module], prepares: list[Callable], tta: str, scales: list[int | None],
                 flip: bool, sizes: list[int] | None = None) -> Callable:
    """``sizes``: the crop side each model trained on (default: its native input size); dense
    evaluation needs every Q at least that."""
    if tta == "dense":
        sizes = sizes or [m.input_size for m in models_]
        for size in sizes:
            if any(q is not None and q < size for q in scales):
                raise ValueError(f"--scales {scales}: dense evaluation needs every Q >= the crop size {size} the model "
                                 "trained on")
        models_ = [to_dense(m, size).eval() for m, size in zip(models_, sizes)]
    single = len(models_) == 1 and tta == "center" and not flip

    def predict(x: torch.Tensor, windows: torch.Tensor | None = None) -> torch.Tensor:
        if single:
            return models_[0](prepares[0](x, windows))  # plain logits: the loss is the one training reports
        probs = [p for m, prep in zip(models_, prepares) for p in view_probs(m, prep, x, tta, scales, flip, windows)]
        return torch.stack(probs).mean(0).clamp_min(1e-12).log()  # log of the averaged softmax

    return predict


@dataclass
class EvalPlan:
    """What `cnnctl eval` evaluates, settled on the driver from the checkpoints' configs (no weights
    read): every worker, and the one in-process evaluation, build their models and stream from it."""

    paths: list[str]
    means: list  # each checkpoint's mean image (data.mean_image runs), else None
    tta: str
    scales: list[int | None]
    flip: bool
    url: str  # the split's manifest
    split: str
    batch_size: int | None
    total: int  # images in the split (the manifest's count)

    @property
    def side(self) -> int | None:
        sides = {m.shape[0] for m in self.means if m is not None}
        return sides.pop() if sides else None


def plan_eval(checkpoints: list[str], data: str | None = None, split: str = "test", tta: str | None = None,
              scales: list[int] | None = None, flip: bool | None = None, batch_size: int | None = None) -> EvalPlan:
    """``tta``, ``scales`` and ``flip`` left at None take the first checkpoint's `eval` section: the
    evaluation its preset names (AlexNet's ten views, VGG's dense multi-scale with flips). Every
    refusal is a ValueError (FileNotFoundError: no checkpoint, no manifest) of one line, here."""
    if tta is not None and tta not in TTA:
        raise ValueError(f"--tta {tta!r}: one of {', '.join(TTA)}")
    paths = [loc.absolute(ckpt.find(c)) for c in checkpoints]  # workers may run in another folder
    configs = [ckpt.load_config(p) for p in paths]
    cfg = configs[0]
    tta = tta or cfg.eval.tta
    if scales is None and tta == "dense":
        scales = cfg.eval.scales
    flip = cfg.eval.flip if flip is None else flip
    if scales and tta != "dense":
        raise ValueError("--scales applies to --tta dense only")
    if tta != "dense" and len({c.data.image_size for c in configs}) > 1:
        raise ValueError(f"--tta {tta}: the checkpoints were trained on different crop sizes; use --tta dense")
    scales = scales or [None]  # dense without --scales: the images as stored
    if tta == "dense":  # what make_predict checks again where the models are
        for size in sorted({c.data.image_size for c in configs}):
            if any(q is not None and q < size for q in scales):
                raise ValueError(f"--scales {scales}: dense evaluation needs every Q >= the crop size {size} the model "
                                 "trained on")
    root = loc.absolute(data) if data else cfg.data.root
    url = mf.manifest_url(root, cfg.data.prefix, split)
    # a checkpoint of a data.mean_image run carries its mean image; the crops' windows then travel
    # with the batches, in the frame of the image's central square, which must be the mean image's
    means = [ckpt.load_mean_image(p) if c.data.mean_image else None for p, c in zip(paths, configs)]
    sides = sorted({m.shape[0] for m in means if m is not None})
    if sides and tta == "dense":
        raise ValueError("--tta dense takes whole images of any size; a per-pixel mean image (data.mean_image) is for "
                         "crops of the central square: use --tta center or ten-crop")
    if len(sides) > 1:
        raise ValueError(f"the checkpoints subtract mean images of different sizes ({', '.join(map(str, sides))} px): "
                         "their crops cannot share one frame")
    total = mf.load(url)["num_samples"]
    return EvalPlan(paths, means, tta, scales, flip, url, split, batch_size, total)


def _counted(batches, report: Callable[[int], None] | None):
    """The batches, calling ``report(n)`` once each batch of n images has been evaluated."""
    for batch in batches:
        yield batch
        if report is not None:
            report(len(batch[1]))


def eval_part(plan: EvalPlan, split: Split = Split(), threads: int = 2, device: str = "cpu",
              report: Callable[[int], None] | None = None) -> dict:
    """Evaluate ``split``'s part of the plan's split here (one process, or one Ray worker): the
    sums of modeling.evaluate (float64 loss sum, top-1 and top-5 hits, count), and ``seconds`` and
    ``cpu_s``, the evaluation's wall time and this process's CPU time after the models are loaded
    (loader workers' not counted). ``report(n)`` hears of each batch."""
    torch.set_num_threads(threads)
    dev = torch.device(device)
    loaded = [load_model(p) for p in plan.paths]
    cfg = loaded[0][1]
    cfg.parallel.gpus = dev.type == "cuda"  # the loader pins its batches for a GPU
    # the one-process batch whatever the number of workers (each has a device of its own)
    batch = plan.batch_size or (DENSE_BATCH if plan.tta == "dense" else cfg.data.batch_size)
    stream = eval_stream(cfg, split, manifest=plan.url, tta=plan.tta, side=plan.side, batch_size=batch)
    # the Trainer's stage, without lighting
    prepares = [device_batch(c, stream.manifest, m, dev) for (_, c), m in zip(loaded, plan.means)]
    predict = make_predict([m.to(dev) for m, _ in loaded], prepares, plan.tta, plan.scales, plan.flip,
                           [c.data.image_size for _, c in loaded])
    t0, cpu0 = time.perf_counter(), time.process_time()
    sums = evaluate(predict, _counted(make_loader(cfg, stream), report), dev)
    return {**sums, "seconds": time.perf_counter() - t0, "cpu_s": time.process_time() - cpu0}


def result_of(plan: EvalPlan, sums: dict, seconds: float, out: str | Path | None, **extra) -> dict:
    """The result `cnnctl eval` prints, written beside the first checkpoint (in its store) or to ``out``."""
    s = summarize(sums)
    tta = plan.tta
    result = {"checkpoints": plan.paths, "data": plan.url, "split": plan.split, "tta": tta,
              "scales": (plan.scales if plan.scales != [None] else "stored") if tta == "dense" else None,
              "flip": plan.flip or tta == "ten-crop",
              "top1": s["top1"], "top5": s["top5"], "loss": s["loss"], "count": s["count"],
              "seconds": round(seconds, 2), **extra}
    out = str(out or loc.join(plan.paths[0], f"eval-{plan.split}.json"))  # beside the checkpoint, in its store
    loc.write_bytes(out, (json.dumps(result, indent=1) + "\n").encode())
    result["written_to"] = str(out)
    return result


def run_eval(checkpoints: list[str], data: str | None = None, split: str = "test", out: str | Path | None = None,
             threads: int = 2, tta: str | None = None, scales: list[int] | None = None, flip: bool | None = None,
             batch_size: int | None = None) -> dict:
    """One in-process evaluation (orchestrator/eval_ray.py spreads one over Ray workers)."""
    torch.set_num_threads(threads)
    plan = plan_eval(checkpoints, data, split, tta, scales, flip, batch_size)
    sums = eval_part(plan, Split(), threads)
    return result_of(plan, sums, sums["seconds"], out, workers=1)
