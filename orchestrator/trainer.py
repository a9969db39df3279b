"""One rank's share of a training run: the Trainer, plain PyTorch over an initialised process group.

Tests run it without Ray (one gloo rank); orchestrator/train.py starts it in each Ray Train worker.
Its stateful parts (itself, the plateau schedule, the training stream, the device batch stage, the
process's RNG streams, the epoch's running sums) save and load their own state; orchestrator/train_state.py
collects them by name into a checkpoint's state.pt.
"""

from __future__ import annotations

import os
import time
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F

from cnnctl.models.parallel import (Mesh, apply_compile, apply_data_parallel, apply_fc_split, apply_tower_split,
                                    canonical_optimizer_state, canonical_state_dict, load_canonical_optimizer, unwrap)
from cnnctl.orchestrator import checkpoint as ckpt
from cnnctl.orchestrator import elastic, resume, train_state
from cnnctl.orchestrator.collectives import Collectives
from cnnctl.orchestrator.config import RunConfig
from cnnctl.orchestrator.console_events import WorkerConsole
from cnnctl.orchestrator.data import eval_stream, make_loader, mean_image, train_stream
from cnnctl.orchestrator.device_batch import device_batch
from cnnctl.orchestrator.metrics import MetricsLog, tree_cpu_seconds
from cnnctl.orchestrator.modeling import build_model, evaluate, initialise, summarize
from cnnctl.orchestrator.schedule import Plateau, lr_at
from cnnctl.orchestrator.train_state import EpochTotals, ProcessRNG
from cnnctl.shards import location as loc
from cnnctl.shards.position import DIGEST_MOD
from cnnctl.shards.reader import Split

Report = Callable[[dict, str | None], None]  # (metrics, checkpoint folder or None)
CLOCK_EVERY = 20  # steps between looks at the clock for run.checkpoint_minutes (a broadcast from rank 0)


def run_dir(cfg: RunConfig) -> str:
    return loc.join(loc.absolute(cfg.run.storage), cfg.run.name)


class Trainer:
    """One rank's share of a run: model, optimizer, data and the epoch loop."""

    def __init__(self, cfg: RunConfig, resume_from: str | None = None, node: str = "local",
                 console: WorkerConsole | None = None):
        self.cfg = cfg
        self.console = console or WorkerConsole()  # rank 0's progress to the driver's console
        torch.set_num_threads(cfg.parallel.threads_per_worker)
        self.mesh = Mesh.init(cfg.parallel.layout.mp, cfg.parallel.layout.fc)
        self.device = torch.device(f"cuda:{torch.cuda.current_device()}") if cfg.parallel.gpus else torch.device("cpu")
        self.is_logger = self.mesh.rank == 0
        self.ranks = Collectives(self.mesh, self.device)
        torch.manual_seed(cfg.run.seed)  # identical init on every rank
        model = build_model(cfg, cfg.model.num_classes)
        state = self._load_canonical(model, resume_from)
        # Ordered steps: tower split (mp) / FC split (fc) -> device -> compile -> optimizer over the local
        # parts -> DDP.
        memory_format = torch.channels_last if cfg.parallel.channels_last else torch.contiguous_format
        # bf16 autocast covers forward and loss; weights, gradients and SGD stay fp32.
        self.autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cfg.parallel.precision == "bf16")
        model = apply_fc_split(apply_tower_split(model, self.mesh), self.mesh)
        model = model.to(self.device, memory_format=memory_format)
        if cfg.parallel.compile:
            model = apply_compile(model)
        self.optimizer = torch.optim.SGD(model.parameters(), lr=cfg.optim.lr, momentum=cfg.optim.momentum,
                                         nesterov=cfg.optim.nesterov, weight_decay=cfg.optim.weight_decay)
        self.model, self.epochs_done, self.step = model, 0, 0
        self.plateau = Plateau(cfg.schedule.patience, cfg.schedule.max_drops)
        if state is not None:  # the optimizer's state loads into the local parts, before DDP
            train_state.restore(self.run_components(), train_state.run_states(state))
        self.start_epoch = self.epochs_done  # the first to run (a step checkpoint's own: not completed)
        # Gradients are averaged within the dp group only (a tower pair holds different weights; an FC
        # slice only with its copies in the other OWT groups).
        self.model = apply_data_parallel(model, self.mesh, cfg.parallel.grad_compression, cfg.parallel.bucket_mb)
        self.mean_image = mean_image(cfg)  # data.mean_image: it goes into every checkpoint too
        side = None if self.mean_image is None else self.mean_image.shape[0]
        self.train_data = train_stream(cfg, Split(self.mesh.dp_rank, self.mesh.dp), side)
        # Split by replica: the ranks of a tower pair or an OWT group evaluate the same batches together.
        self.val_data = eval_stream(cfg, Split(self.mesh.replica, self.mesh.replicas), side=side)
        self.accumulate, self.segments = elastic.accumulation(cfg), []  # data.global_batch; the epoch's worlds
        # a step checkpoint's states for this rank's per-epoch components: its epoch starts where they stood
        self.resume = self._position(state["position"], resume_from) if state and state.get("position") else None
        # uint8 batches -> normalised, lit (training) floats on the device, in the model's memory format.
        # Lighting is seeded by dp rank: both towers of a pair light their shared batch identically.
        self.batches = device_batch(cfg, self.train_data.manifest, self.mean_image, self.device,
                                    lighting_seed=cfg.run.seed * 1000 + self.mesh.dp_rank)
        self.rng, self.totals = ProcessRNG(), EpochTotals(self.device)
        self.log = MetricsLog(run_dir(cfg), enabled=self.is_logger, start_epoch=self.start_epoch)
        self.last_checkpoint = time.monotonic()  # run.checkpoint_minutes counts from here
        # Where each rank runs (Ray node, process id), reported with the metrics.
        self.node_of_rank, self.pid_of_rank = zip(*self.ranks.gather_objects((node, os.getpid())))

    def _load_canonical(self, model: torch.nn.Module, resume_from: str | None) -> dict | None:
        """Weights go into the canonical model before any split, so any mp loads any checkpoint."""
        if resume_from:
            model.load_state_dict(ckpt.load_weights(resume_from))
            if self.is_logger:
                self.console.note(f"resuming from {resume_from}")
            return ckpt.load_state(resume_from)
        if self.cfg.model.init_from:
            message = initialise(model, self.cfg)
            if self.is_logger:
                self.console.note(message)
        return None

    def _position(self, position: dict, path: str) -> dict[str, dict]:
        """This rank's components' states in a step checkpoint's position, once the layout is checked
        (one taken at another dp: its epoch's rest dealt to this layout's readers, elastic.relayout)."""
        cfg = self.cfg
        train_state.check_position(position, cfg, self.train_data.manifest, self.mesh.world, path)
        if elastic.resized(position["layout"], cfg):
            line = elastic.resumed_line(position, cfg)
            position = elastic.relayout(position, cfg, self.train_data, resume.layout(cfg))
        else:
            line = f"resuming epoch {position['epoch'] + 1} after its step {position['steps_done']}"
        if self.is_logger:
            self.console.note(line)
        self.segments = position.get("segments") or [elastic.segment(cfg, 0)]
        return train_state.rank_states(position, self.mesh.rank)

    def run_components(self) -> dict:
        """The run-wide stateful components, by their names in a checkpoint (train_state.py)."""
        return {"trainer": self, "plateau": self.plateau}

    def rank_components(self) -> dict:
        """This rank's per-epoch stateful components, by their names in a step checkpoint's position."""
        return {"stream": self.train_data, "rng": self.rng, "device_batch": self.batches, "totals": self.totals}

    def state_dict(self) -> dict:
        """The trainer's own state, canonical: an mp=2 run resumes at mp=1 and back. A collective
        over a tower pair."""
        return {"optimizer": canonical_optimizer_state(self.model, self.optimizer), "epoch": self.epochs_done - 1,
                "step": self.step}

    def load_state_dict(self, state_dict: dict) -> None:
        load_canonical_optimizer(self.model, self.optimizer, state_dict["optimizer"])
        self.epochs_done, self.step = state_dict["epoch"] + 1, state_dict["step"]

    def train_epoch(self, epoch: int, report: Report) -> dict:
        cfg, model = self.cfg, self.model
        data = make_loader(cfg, self.train_data)  # first: positions are per loader worker
        self.train_data.set_epoch(epoch)
        self.batches.set_epoch(epoch)
        # Dropout draws from a stream per (seed, epoch, replica): a tower pair or OWT group shares it
        # (the split model draws full-width masks and keeps its part), replicas differ, and a resumed
        # epoch draws what it would have drawn (a step checkpoint holds the stream's state mid-epoch).
        torch.manual_seed(cfg.run.seed * 1_000_003 + epoch * 1009 + self.mesh.replica)
        steps = len(self.train_data)
        model.train()
        self.totals = totals = EpochTotals(self.device)
        at, self.resume = (self.resume if self.resume and self.resume["stream"]["epoch"] == epoch else None), None
        self.segments = self.segments if at else [elastic.segment(cfg, 0)]
        sizes, a = elastic.StepSizes(), self.accumulate
        if at:  # a step checkpoint's epoch: its readers where they stood, its sums so far
            train_state.restore({"stream": self.train_data, "totals": totals}, at)
        else:
            self.train_data.set_position(None)
        done = self.train_data.steps_done
        # a DataLoader's first iterator draws its base seed from torch's stream, so the RNG streams are
        # set after it, where the checkpoint found them
        batches = self.train_data.counted(iter(data))
        if at:
            train_state.restore({"rng": self.rng, "device_batch": self.batches}, at)
        t0, cpu0, seen0, stall = time.perf_counter(), tree_cpu_seconds(), totals.seen, 0.0
        # an epoch without a step (a split smaller than one global batch; the CLI refuses it) ends
        # with NaN training metrics instead of names never bound
        i, lr = done - 1, lr_at(cfg, self.step, max(steps // a, 1), self.plateau.drops)
        # an optimiser step every ``a`` batches (data.global_batch), DDP's all-reduce on the last
        for i, (images, labels, *windows) in enumerate(batches, start=done):
            first, last = i % a == 0, (i + 1) % a == 0
            if first:
                lr = lr_at(cfg, self.step, steps // a, self.plateau.drops)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
            images, labels = self.batches(images, *windows), labels.to(self.device, non_blocking=True)
            with elastic.no_sync(model, not last):
                with self.autocast:
                    logits = model(images)
                    loss = F.cross_entropy(logits, labels, label_smoothing=cfg.optim.label_smoothing)
                if first:
                    self.optimizer.zero_grad(set_to_none=True)
                (loss / a if a > 1 else loss).backward()
            sizes.add(len(labels), last)
            totals.add(loss, logits, labels)
            if not last:
                continue
            self.optimizer.step()
            self.step += 1
            if self.is_logger and self.console.due(i + 1, steps):
                elapsed = time.perf_counter() - t0
                rate = (totals.seen - seen0) * self.mesh.dp / elapsed
                self.console.step(epoch, cfg.schedule.epochs, i + 1, steps, totals.sums[0].item() / totals.seen, lr,
                                  rate, elapsed)
            if i + 1 < steps and self._checkpoint_due((i + 1) // a):
                stall += self.checkpoint_step(steps, report)
        elapsed = time.perf_counter() - t0
        # this rank's CPU-seconds (its process and loader workers) per image it trained on: unlike
        # img/s, other jobs on the machine barely move it (bench/train_step.py compares it)
        seen = totals.seen
        cpu_per_image = (tree_cpu_seconds() - cpu0) / max(seen - seen0, 1)
        steps_per_rank = self.ranks.gather(i + 1)
        # The samples trained on, counted and digested by key across the dp group (position.py): a
        # resumed epoch that re-read or dropped a sample shows another count or digest.
        readers = self.ranks.gather_objects([p.as_list() for p in self.train_data.position(steps)])
        mine = [r for rank in self.mesh.dp_ranks(0) for r in readers[rank]]  # tower 0's: a pair reads one batch
        sums = [*totals.sums.tolist(), seen, self.train_data.bad_samples, sizes.low or 0, sizes.high or 0]
        loss_sum, hits, total, bad, low, high = self.ranks.all_sum(sums)
        total = total or float("nan")
        keys, digest = self.train_data.deal["carried"] if self.train_data.deal else (0, 0)  # trained before a resize
        return {"train_loss": loss_sum / total, "train_top1": hits / total, "lr": lr,
                "images_per_sec": (seen - seen0) * self.mesh.dp / elapsed, "steps_per_rank": steps_per_rank,
                "bad_samples": int(bad), "train_cpu_s_per_image": cpu_per_image,
                "resumed_at_step": done if at else None,
                "samples_trained": keys + sum(r[2] for r in mine),
                "samples_digest": f"{(digest + sum(r[3] for r in mine)) % DIGEST_MOD:016x}",
                "checkpoint_stall_s": stall, "global_batch": [int(low), int(high)], "segments": self.segments}

    def _checkpoint_due(self, step_in_epoch: int) -> bool:
        """A step checkpoint after this step? Every rank must answer alike: run.checkpoint_minutes
        asks rank 0's clock, every CLOCK_EVERY steps."""
        r = self.cfg.run
        if r.checkpoint_every_steps and self.step % r.checkpoint_every_steps == 0:
            return True
        if not r.checkpoint_minutes or step_in_epoch % CLOCK_EVERY:
            return False
        late = time.monotonic() - self.last_checkpoint >= r.checkpoint_minutes * 60
        due = torch.tensor([late], dtype=torch.int64, device=self.device)
        if self.mesh.world > 1:
            dist.broadcast(due, src=0)
        return bool(due.item())

    def checkpoint_step(self, steps: int, report: Report) -> float:
        """A step checkpoint after the steps of the epoch trained so far (of ``steps``); returns the
        seconds training stood still for it (collectives, serialisation, and the report call: in
        async mode the upload runs on, in the background)."""
        t0 = time.perf_counter()
        mine = train_state.collect(self.rank_components())
        ranks = self.ranks.gather_objects(train_state.rank_entry(mine))
        position = {**train_state.position(mine["stream"], ranks, self.cfg, self.train_data.manifest),
                    "segments": self.segments}
        epoch, done = position["epoch"], position["steps_done"]
        metrics = {"epoch": epoch, "mid_epoch": True, "step_in_epoch": done, "steps": steps, "global_step": self.step}
        meta = {"epoch": epoch, "step": self.step, "mid_epoch": True, "layout": position["layout"], "metrics": metrics}
        self._checkpoint(metrics, self.checkpoint_state(position), meta, report)
        return time.perf_counter() - t0

    def checkpoint_state(self, position: dict | None = None) -> dict:
        """state.pt: the run-wide components' states (a collective over a tower pair), and a step
        checkpoint's ``position``."""
        return train_state.state_file(train_state.collect(self.run_components()), position)

    def _checkpoint(self, metrics: dict, state: dict, meta: dict, report: Report) -> None:
        weights = canonical_state_dict(self.model)  # a collective: every rank
        folder = None
        if self.is_logger:
            # async uploads: at most one in flight, so the previous one ends (or fails) before this
            # one is staged; a backlog would hold a staged copy per checkpoint on the local disk
            if (slot := getattr(report, "slot", None)) is not None:
                slot.wait()
            # a full disk: the staging folder is removed and one line raised (checkpoint.stage)
            folder = ckpt.stage(weights, self.cfg, state, meta, self.mean_image)  # the report owns it from here
        report(metrics, folder)
        self.last_checkpoint = time.monotonic()

    def validate(self) -> dict:
        model = unwrap(self.model)  # no DDP forward: ranks may take different eval batch counts
        model.eval()
        def forward(x, *windows):
            with self.autocast:
                return model(self.batches(x, *windows, augment=False))

        sums = evaluate(forward, make_loader(self.cfg, self.val_data), self.device)
        model.train()
        loss, top1, top5, count = self.ranks.all_sum([sums["loss_sum"], sums["top1"], sums["top5"], sums["count"]],
                                                self.mesh.replica_group)
        s = summarize({"loss_sum": loss, "top1": top1, "top5": top5, "count": int(count)})
        return {"val_loss": s["loss"], "val_top1": s["top1"], "val_top5": s["top5"], "val_count": s["count"]}

    def run(self, report: Report) -> None:
        """``report(metrics, folder)``: every rank, after each epoch and each step checkpoint; rank
        0 hands it the checkpoint folder, which the report owns (deletes, or has Ray delete)."""
        for epoch in range(self.start_epoch, self.cfg.schedule.epochs):
            t0 = time.perf_counter()
            metrics = {"epoch": epoch, **self.train_epoch(epoch, report), **self.validate()}
            self.plateau.update(metrics["val_top1"])
            self.epochs_done = epoch + 1
            metrics["epoch_time_s"] = time.perf_counter() - t0
            metrics.update(world_rank=self.mesh.rank, dp=self.mesh.dp, mp=self.mesh.mp, fc=self.mesh.fc,
                           node_of_rank=list(self.node_of_rank), pid_of_rank=list(self.pid_of_rank))
            self.log.write(metrics)
            meta = {"epoch": epoch, "step": self.step, "metrics": metrics}
            self._checkpoint(metrics, self.checkpoint_state(), meta, report)
        self.close()

    def close(self) -> None:
        """Flush the metrics and end the loaders' persistent workers."""
        self.log.close()
        self.train_data.close()
        self.val_data.close()
