"""The rows of bench/gpu_suite.py: each section measures its contenders and its baselines in this run
and returns rows (dicts: group, name, value, unit, spread, baseline, baseline_value, ratio, note, or
`skipped` with its reason). Ratios are speed-ups over the baseline: rate / baseline rate, or baseline
time / time."""

from __future__ import annotations

import statistics
import time
import typing
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cnnctl import models
from cnnctl.models.lrn import PAPER, lrn, to_torch
from cnnctl.models.parallel import apply_compile
from cnnctl.orchestrator.config_sections import DataConfig
from lrn import fwd_bwd_ms  # bench/lrn.py (this folder)


@dataclass
class Sizes:
    """How big each section runs: the GPU's figures, or the CPU's dry form of the same code path."""

    device: str
    rounds: int  # every figure is the median and [min-max] of this many rounds
    steps: int  # timed synthetic steps per variant per round
    step_batch: dict[str, int]  # synthetic step batch per model
    width: float | None  # model.width (None: the papers' widths)
    compile_backend: str  # inductor (parallel.compile's own) or a cheaper dynamo backend for the dry form
    train_images: int
    val_images: int  # training's validation split; VGG dense evaluation's split
    eval_images: int  # AlexNet ten-view evaluation's split
    cpu_images: int  # the CPU baselines' evaluation split
    loader_workers: list[int]  # swept for each decoder; the best is the row
    epochs: int  # each training run's; the first is warm-up, the rest are the rounds
    train_batch: int
    scales: list[int]  # VGG dense Q
    lrn_shape: tuple[int, int, int, int]


def figure(group: str, name: str, values: list[float], unit: str, baseline: str | None = None,
           base_values: list[float] | None = None, note: str = "") -> dict:
    """A measured row: median and [min-max] of ``values``; the ratio to the baseline's median."""
    value = statistics.median(values)
    row = {"group": group, "name": name, "value": value, "unit": unit, "spread": [min(values), max(values)],
           "rounds": len(values), "baseline": baseline, "baseline_value": None, "ratio": None, "note": note}
    if base_values:
        base = statistics.median(base_values)
        row["baseline_value"] = base
        row["ratio"] = value / base if unit.endswith("/s") else base / value
    return row


def skipped(group: str, name: str, reason: str) -> dict:
    return {"group": group, "name": name, "skipped": reason}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compile_model(model: torch.nn.Module, backend: str) -> torch.nn.Module:
    """parallel.compile's own step (models.parallel.apply_compile, inductor); another dynamo backend
    (the dry form's `eager`: the same graph capture without inductor's minute of code generation)."""
    if backend == "inductor":
        return apply_compile(model)
    model.compile(backend=backend)
    return model


class Variant:
    """One synthetic training step as the Trainer takes it: uint8 batch on the device -> normalise ->
    forward under the precision's autocast -> cross-entropy -> backward -> SGD, fp32 weights."""

    def __init__(self, model: str, sizes: Sizes, precision: str, channels_last: bool, compiled: bool):
        self.name = f"{model} {precision} {'channels_last' if channels_last else 'contiguous'}" + (
            " compiled" if compiled else "")
        self.device = torch.device(sizes.device)
        torch.manual_seed(0)
        net = models.build(model, num_classes=1000, **({"width": sizes.width} if sizes.width else {}))
        size, self.fmt = net.input_size, torch.channels_last if channels_last else torch.contiguous_format
        net = net.to(self.device, memory_format=self.fmt)
        self.model = compile_model(net, sizes.compile_backend) if compiled else net
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        g = torch.Generator(device=self.device).manual_seed(0)
        n = sizes.step_batch[model]
        self.images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, device=self.device, generator=g)
        self.labels = torch.randint(0, 1000, (n,), device=self.device, generator=g)
        self.bf16 = precision == "bf16"

    def step(self) -> None:
        x = ((self.images.float() - 114.0) / 58.0).contiguous(memory_format=self.fmt)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            loss = F.cross_entropy(self.model(x), self.labels)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def rate(self, steps: int) -> float:
        sync(self.device)
        t0 = time.perf_counter()
        for _ in range(steps):
            self.step()
        sync(self.device)
        return steps * len(self.labels) / (time.perf_counter() - t0)


STEP_MODELS = ("alexnet", "vgg-a")
# (precision, channels_last, compiled): the eager grid, and compile where the Trainer's default layout is
STEP_GRID = [(p, cl, False) for p in ("fp32", "bf16") for cl in (False, True)] + [
    ("fp32", True, True), ("bf16", True, True)]


def step_rows(sizes: Sizes) -> tuple[list[dict], dict[str, list[float]]]:
    """Synthetic step img/s per model and variant against fp32 contiguous eager (the papers' setting);
    also returns every variant's rounds, by name (the training rows' ceiling)."""
    rows, rates = [], {}
    for model in STEP_MODELS:
        variants = [Variant(model, sizes, *spec) for spec in STEP_GRID]
        for v in variants:  # warm-up: cuDNN's autotuning, compilation
            v.rate(2)
        got = {v.name: [] for v in variants}
        for _ in range(sizes.rounds):  # interleaved: a burst elsewhere hits every variant alike
            for v in variants:
                got[v.name].append(v.rate(sizes.steps))
        base = variants[0].name
        batch = sizes.step_batch[model]
        for name, values in got.items():
            rows.append(figure("synthetic step", f"{name}, batch {batch}", values, "img/s",
                               None if name == base else base, None if name == base else got[base]))
        rates.update(got)
        del variants
        if sizes.device == "cuda":
            torch.cuda.empty_cache()
    return rows, rates


def lrn_rows(sizes: Sizes) -> list[dict]:
    """cnnctl's fused LRN forward+backward against torch's local_response_norm (and ReLU's, for scale)."""
    rows = []
    for fmt in (torch.contiguous_format, torch.channels_last):  # fp32: the LRN computes in fp32 under bf16 too
        torch.manual_seed(0)
        x = torch.randn(*sizes.lrn_shape, device=sizes.device).contiguous(memory_format=fmt)
        grad = torch.randn_like(x)
        candidates = {"relu": F.relu, "torch": lambda a: F.local_response_norm(a, **to_torch(PAPER)),
                      "cnnctl": lambda a: lrn(a, *PAPER)}
        got = {k: [] for k in candidates}
        for _ in range(sizes.rounds):
            for k, ms in fwd_bwd_ms(candidates, x, grad, repeat=5).items():
                got[k].append(ms)
        what = "channels_last" if fmt == torch.channels_last else "contiguous"
        note = f"shape {tuple(x.shape)}; ReLU fwd+bwd {statistics.median(got['relu']):.3f} ms"
        rows.append(figure("LRN", f"fused LRN fwd+bwd, fp32 {what}", got["cnnctl"], "ms",
                           "torch local_response_norm", got["torch"], note))
    return rows


def device_decoder_built() -> bool:
    """Whether this build's config takes data.decoder=device (its model, not a run that might crash)."""
    return "device" in typing.get_args(DataConfig.model_fields["decoder"].annotation)
