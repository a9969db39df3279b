"""Per-epoch metrics beside the run: metrics.jsonl and TensorBoard events (DESIGN.md §6)."""

from __future__ import annotations

import json

import fsspec

from shards.manifest import publish_bytes

NUMERIC = ("train_loss", "train_top1", "val_loss", "val_top1", "val_top5", "lr", "images_per_sec", "epoch_time_s")


def read(run_dir: str) -> list[dict]:
    fs, path = fsspec.core.url_to_fs(run_dir.rstrip("/") + "/metrics.jsonl")
    if not fs.exists(path):
        return []
    with fs.open(path, "r") as f:
        return [json.loads(line) for line in f if line.strip()]


class MetricsLog:
    """Rank 0's metrics. The whole file is rewritten each epoch, so it works on object stores too,
    and a resumed run drops the lines of epochs it is about to redo."""

    def __init__(self, run_dir: str, enabled: bool = True, start_epoch: int = 0):
        self.run_dir, self.enabled = run_dir.rstrip("/"), enabled
        self.rows = [r for r in read(run_dir) if r.get("epoch", -1) < start_epoch] if enabled else []
        self.tb = None  # opened at the first write: importing TensorBoard would delay the first step

    def write(self, metrics: dict) -> None:
        if not self.enabled:
            return
        self.rows.append(metrics)
        publish_bytes(f"{self.run_dir}/metrics.jsonl", "".join(json.dumps(r) + "\n" for r in self.rows).encode())
        if self.tb is None and "://" not in self.run_dir:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(f"{self.run_dir}/tensorboard")
        if self.tb is not None:
            for key in NUMERIC:
                if key in metrics:
                    self.tb.add_scalar(key, metrics[key], metrics["epoch"])
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
