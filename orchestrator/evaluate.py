"""`cnnctl eval`: top-1/top-5 of one checkpoint, or of several fused by averaging their softmax."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from orchestrator import checkpoint as ckpt
from orchestrator.data import eval_stream, make_loader, normalizer
from orchestrator.modeling import build_model, evaluate, summarize
from shards import manifest as mf
from shards.reader import Split


def load_model(path: Path) -> tuple[torch.nn.Module, object]:
    cfg = ckpt.load_config(path)
    model = build_model(cfg, cfg.model.num_classes)
    model.load_state_dict(ckpt.load_weights(path))
    if cfg.parallel.channels_last:  # evaluate in the memory format the run trained in
        model = model.to(memory_format=torch.channels_last)
    return model.eval(), cfg


class _Prepare(torch.nn.Module):
    def __init__(self, normalize: torch.nn.Module, channels_last: bool):
        super().__init__()
        self.normalize, self.channels_last = normalize, channels_last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.normalize(x)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


def run_eval(checkpoints: list[str], data: str | None = None, split: str = "test", out: Path | None = None, threads: int = 2) -> dict:
    torch.set_num_threads(threads)
    paths = [ckpt.find(c) for c in checkpoints]
    loaded = [load_model(p) for p in paths]
    cfg = loaded[0][1]
    if data:
        cfg.data.root = data
    url = mf.manifest_url(cfg.data.root, cfg.data.prefix, split)
    stream = eval_stream(cfg, Split(), manifest=url)
    norms = [_Prepare(normalizer(c, stream.manifest), c.parallel.channels_last) for _, c in loaded]

    def predict(x: torch.Tensor) -> torch.Tensor:
        if len(loaded) == 1:
            return loaded[0][0](norms[0](x))
        probs = torch.stack([m(n(x)).softmax(1) for (m, _), n in zip(loaded, norms)]).mean(0)
        return probs.clamp_min(1e-12).log()  # log of the fused softmax (VGG §4.4, AlexNet §6)

    t0 = time.perf_counter()
    s = summarize(evaluate(predict, make_loader(cfg, stream), torch.device("cpu")))
    result = {"checkpoints": [str(p) for p in paths], "data": url, "split": split, "top1": s["top1"], "top5": s["top5"],
              "loss": s["loss"], "count": s["count"], "seconds": round(time.perf_counter() - t0, 2)}
    out = out or paths[0] / f"eval-{split}.json"
    Path(out).write_text(json.dumps(result, indent=1) + "\n")
    result["written_to"] = str(out)
    return result
