"""Per-epoch metrics beside the run: metrics.jsonl and TensorBoard events (DESIGN.md §6)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile

from cnnctl.shards import location as loc

NUMERIC = ("train_loss", "train_top1", "val_loss", "val_top1", "val_top5", "lr", "images_per_sec", "epoch_time_s",
           "train_cpu_s_per_image")


_TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU-seconds of the process and its reaped children), or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()  # the command name may hold spaces and parentheses
    except (FileNotFoundError, ProcessLookupError):
        return None
    # after the name: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14)
    return int(fields[1]), sum(int(v) for v in fields[11:15]) / _TICK


def tree_cpu_seconds(root: int | None = None) -> float:
    """CPU-seconds so far of ``root`` (default: this process) and all its live descendants."""
    root = os.getpid() if root is None else root
    stats = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (s := _stat(int(name))) is not None:
            stats[int(name)] = s
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            total += stats[pid][1]
            todo += children.get(pid, [])
    return total


def read(run_dir: str) -> list[dict]:
    path = loc.join(run_dir.rstrip("/"), "metrics.jsonl")
    if not loc.exists(path):  # written by rank 0 in another process, maybe on another node
        return []
    return [json.loads(line) for line in loc.read_text(path).splitlines() if line.strip()]


class MetricsLog:
    """Rank 0's metrics. The whole file is rewritten each epoch, so it works on object stores too,
    and a resumed run drops the lines of epochs it is about to redo.

    TensorBoard events go to ``<run>/tensorboard/``. TensorBoard's writer appends to a local file, and
    an object store has no append: for a URL run it writes in a local folder and each epoch's flush
    uploads its events file whole (one PUT, atomic like metrics.jsonl), so `tensorboard --logdir
    s3://...` or a copied folder shows the run as a local one's does."""

    def __init__(self, run_dir: str, enabled: bool = True, start_epoch: int = 0):
        self.run_dir, self.enabled = run_dir.rstrip("/"), enabled
        self.rows = [r for r in read(run_dir) if r.get("epoch", -1) < start_epoch] if enabled else []
        self.tb = None  # opened at the first write: importing TensorBoard would delay the first step
        self.tb_local = None  # the local folder a URL run's events are written in before each upload

    def write(self, metrics: dict) -> None:
        if not self.enabled:
            return
        self.rows.append(metrics)
        loc.write_bytes(f"{self.run_dir}/metrics.jsonl", "".join(json.dumps(r) + "\n" for r in self.rows).encode())
        if self.tb is None:
            self.tb = self._open_tensorboard()
        for key in NUMERIC:
            if key in metrics:
                self.tb.add_scalar(key, metrics[key], metrics["epoch"])
        self.tb.flush()
        if self.tb_local is not None:
            for name in os.listdir(self.tb_local):
                with open(os.path.join(self.tb_local, name), "rb") as f:
                    loc.write_bytes(f"{self.run_dir}/tensorboard/{name}", f.read())

    def _open_tensorboard(self):
        from torch.utils.tensorboard import SummaryWriter

        if not loc.is_url(self.run_dir):
            return SummaryWriter(f"{self.run_dir}/tensorboard")
        self.tb_local = tempfile.mkdtemp(prefix="cnnctl-tensorboard-")
        return SummaryWriter(self.tb_local)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.tb_local is not None:
            shutil.rmtree(self.tb_local, ignore_errors=True)
