"""`cnnctl train`: the per-worker training loop and the Ray Train driver around it.

``Trainer`` is plain PyTorch over an initialised process group, so tests can run it without Ray;
``train_loop`` adds the few Ray lines (resume checkpoint, report) and ``fit`` starts the workers.
"""

from __future__ import annotations

import os
import random
import shutil
import time
from contextlib import nullcontext
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F

from models.parallel import (Mesh, apply_compile, apply_data_parallel, apply_fc_split, apply_tower_split,
                             canonical_optimizer_state, canonical_state_dict, load_canonical_optimizer, unwrap)
from orchestrator import checkpoint as ckpt
from orchestrator import resume
from orchestrator.config import RunConfig, to_yaml
from orchestrator.console_events import WorkerConsole, quiet_worker
from orchestrator.data import eval_stream, make_loader, manifest_url, mean_image, train_stream
from orchestrator.device_batch import device_batch
from orchestrator.metrics import MetricsLog, tree_cpu_seconds
from orchestrator.modeling import build_model, evaluate, initialise, summarize
from orchestrator.schedule import Plateau, lr_at
from shards import location as loc
from shards import manifest as mf
from shards.position import DIGEST_MOD, ReaderPosition
from shards.reader import Split

Report = Callable[[dict, str | None], None]  # (metrics, checkpoint folder or None)
CLOCK_EVERY = 20  # steps between looks at the clock for run.checkpoint_minutes (a broadcast from rank 0)


def run_dir(cfg: RunConfig) -> str:
    return loc.join(loc.absolute(cfg.run.storage), cfg.run.name)


class Trainer:
    """One rank's share of a run: model, optimizer, data and the epoch loop."""

    def __init__(self, cfg: RunConfig, resume_from: str | None = None, node: str = "local", console: WorkerConsole | None = None):
        self.cfg = cfg
        self.console = console or WorkerConsole()  # rank 0's progress to the driver's console
        torch.set_num_threads(cfg.parallel.threads_per_worker)
        self.mesh = Mesh.init(cfg.parallel.mp, cfg.parallel.fc_ranks)
        self.device = torch.device(f"cuda:{torch.cuda.current_device()}") if cfg.parallel.gpus else torch.device("cpu")
        self.is_logger = self.mesh.rank == 0
        torch.manual_seed(cfg.run.seed)  # identical init on every rank
        model = build_model(cfg, cfg.model.num_classes)
        state = self._load_canonical(model, resume_from)
        # Ordered steps: tower split (mp) / FC split (fc) -> device -> compile -> optimizer over the local
        # parts -> DDP.
        memory_format = torch.channels_last if cfg.parallel.channels_last else torch.contiguous_format
        # bf16 autocast covers forward and loss; weights, gradients and SGD stay fp32.
        self.autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cfg.parallel.precision == "bf16")
        model = apply_fc_split(apply_tower_split(model, self.mesh), self.mesh).to(self.device, memory_format=memory_format)
        if cfg.parallel.compile:
            model = apply_compile(model)
        self.optimizer = torch.optim.SGD(model.parameters(), lr=cfg.optim.lr, momentum=cfg.optim.momentum,
                                         nesterov=cfg.optim.nesterov, weight_decay=cfg.optim.weight_decay)
        self.start_epoch, self.step = 0, 0
        self.resume: dict | None = None  # a step checkpoint's position: the epoch starts where it stood
        if state is not None:
            load_canonical_optimizer(model, self.optimizer, state["optimizer"])
            self.start_epoch, self.step = state["epoch"] + 1, state["step"]
            if state.get("position"):
                self.resume = state["position"]
                self.start_epoch = self.resume["epoch"]
        self.plateau = Plateau(cfg.schedule.patience, cfg.schedule.max_drops, state and state.get("plateau"))
        # Gradients are averaged within the dp group only (a tower pair holds different weights; an FC
        # slice only with its copies in the other OWT groups).
        self.model = apply_data_parallel(model, self.mesh, cfg.parallel.grad_compression, cfg.parallel.bucket_mb)
        self.mean_image = mean_image(cfg)  # data.mean_image: it goes into every checkpoint too
        side = None if self.mean_image is None else self.mean_image.shape[0]
        self.train_data = train_stream(cfg, Split(self.mesh.dp_rank, self.mesh.dp), side)
        # Split by replica: the ranks of a tower pair or an OWT group evaluate the same batches together.
        self.val_data = eval_stream(cfg, Split(self.mesh.replica, self.mesh.replicas), side=side)
        if self.resume:
            self.resume = self._position(self.resume, resume_from)
        # uint8 batches -> normalised, lit (training) floats on the device, in the model's memory format.
        # Lighting is seeded by dp rank: both towers of a pair light their shared batch identically.
        self.batches = device_batch(cfg, self.train_data.manifest, self.mean_image, self.device,
                                    lighting_seed=cfg.run.seed * 1000 + self.mesh.dp_rank)
        self.log = MetricsLog(run_dir(cfg), enabled=self.is_logger, start_epoch=self.start_epoch)
        self.last_checkpoint = time.monotonic()  # run.checkpoint_minutes counts from here
        # Where each rank runs (Ray node, process id), reported with the metrics.
        self.node_of_rank, self.pid_of_rank = zip(*self._gather_objects((node, os.getpid())))

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

    def _position(self, position: dict, path: str) -> dict:
        """This rank's part of a step checkpoint's position, once the layout is checked."""
        if line := resume.refusal(position["layout"], self.cfg, path):
            raise ValueError(line)
        if position["shards"] != resume.shards_fingerprint(self.train_data.manifest):
            raise ValueError(f"{path}: the training split's shards are not those this mid-epoch checkpoint read "
                             f"(names or sample counts differ): its position in them means nothing now")
        if len(position["ranks"]) != self.mesh.world:
            raise ValueError(f"{path}: taken by {len(position['ranks'])} ranks, this run has {self.mesh.world}")
        if self.is_logger:
            self.console.note(f"resuming epoch {position['epoch'] + 1} after its step {position['steps_done']}")
        return {**position, **position["ranks"][self.mesh.rank]}

    def _all_sum(self, values: list[float], group=None) -> list[float]:
        if self.mesh.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)  # NCCL reduces device tensors only
        dist.all_reduce(t, group=self.mesh.dp_group if group is None else group)  # each dp group sees every sample exactly once
        return t.tolist()

    def _gather_objects(self, value) -> list:
        if self.mesh.world == 1:
            return [value]
        out = [None] * self.mesh.world
        dist.all_gather_object(out, value)
        return out

    def _gather(self, value: int) -> list[int]:
        """Every rank's value, in world-rank order (the metrics prove that ranks stepped equally)."""
        if self.mesh.world == 1:
            return [value]
        out = [torch.zeros(1, dtype=torch.int64, device=self.device) for _ in range(self.mesh.world)]
        dist.all_gather(out, torch.tensor([value], device=self.device))
        return [int(t) for t in out]

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
        # Loss and top-1 sums stay on the device: no host sync per step, only at log lines.
        sums, seen, done = torch.zeros(2, dtype=torch.float64, device=self.device), 0, 0
        at, self.resume = (self.resume if self.resume and self.resume["epoch"] == epoch else None), None
        if at:  # a step checkpoint's epoch: its readers where they stood
            done, seen = at["steps_done"], int(at["sums"][2])
            sums += torch.tensor(at["sums"][:2], dtype=torch.float64, device=self.device)
        self.train_data.set_position([ReaderPosition(*p) for p in at["readers"]] if at else None, done)
        batches = iter(data)  # a DataLoader's first iterator draws its base seed from torch's stream
        if at:  # so the RNG streams are set after it, where the checkpoint found them
            resume.set_rng_state(at["rng"], self.batches.lighting_generator)
        t0, cpu0, seen0, stall = time.perf_counter(), tree_cpu_seconds(), seen, 0.0
        # an epoch without a step (a split smaller than one global batch; the CLI refuses it) ends
        # with NaN training metrics instead of names never bound
        i, lr = done - 1, lr_at(cfg, self.step, max(steps, 1), self.plateau.drops)
        for i, (images, labels, *windows) in enumerate(batches, start=done):
            lr = lr_at(cfg, self.step, steps, self.plateau.drops)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            images, labels = self.batches(images, *windows), labels.to(self.device, non_blocking=True)
            with self.autocast:
                logits = model(images)
                loss = F.cross_entropy(logits, labels, label_smoothing=cfg.optim.label_smoothing)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.step += 1
            sums += torch.stack([loss.detach() * len(labels), (logits.detach().argmax(1) == labels).sum()]).double()
            seen += len(labels)
            if self.is_logger and self.console.due(i + 1, steps):
                elapsed = time.perf_counter() - t0
                self.console.step(epoch, cfg.schedule.epochs, i + 1, steps, sums[0].item() / seen, lr, (seen - seen0) * self.mesh.dp / elapsed, elapsed)
            if i + 1 < steps and self._checkpoint_due(i + 1):
                stall += self.checkpoint_step(epoch, i + 1, steps, sums, seen, report)
        elapsed = time.perf_counter() - t0
        # this rank's CPU-seconds (its process and loader workers) per image it trained on: unlike
        # img/s, other jobs on the machine barely move it (bench/train_step.py compares it)
        cpu_per_image = (tree_cpu_seconds() - cpu0) / max(seen - seen0, 1)
        steps_per_rank = self._gather(i + 1)
        # The samples trained on, counted and digested by key across the dp group (position.py): a
        # resumed epoch that re-read or dropped a sample shows another count or digest.
        readers = self._gather_objects([p.as_list() for p in self.train_data.position(steps)])
        mine = [r for rank, rs in enumerate(readers) if rank % self.mesh.mp == 0 for r in rs]
        loss_sum, hits, total, bad = self._all_sum([*sums.tolist(), seen, self.train_data.bad_samples])
        total = total or float("nan")
        return {"train_loss": loss_sum / total, "train_top1": hits / total, "lr": lr,
                "images_per_sec": (seen - seen0) * self.mesh.dp / elapsed, "steps_per_rank": steps_per_rank, "bad_samples": int(bad),
                "train_cpu_s_per_image": cpu_per_image, "resumed_at_step": done if at else None,
                "samples_trained": sum(r[2] for r in mine), "samples_digest": f"{sum(r[3] for r in mine) % DIGEST_MOD:016x}",
                "checkpoint_stall_s": stall}

    def _checkpoint_due(self, step_in_epoch: int) -> bool:
        """A step checkpoint after this step? Every rank must answer alike: run.checkpoint_minutes
        asks rank 0's clock, every CLOCK_EVERY steps."""
        r = self.cfg.run
        if r.checkpoint_every_steps and self.step % r.checkpoint_every_steps == 0:
            return True
        if not r.checkpoint_minutes or step_in_epoch % CLOCK_EVERY:
            return False
        due = torch.tensor([time.monotonic() - self.last_checkpoint >= r.checkpoint_minutes * 60], dtype=torch.int64, device=self.device)
        if self.mesh.world > 1:
            dist.broadcast(due, src=0)
        return bool(due.item())

    def checkpoint_step(self, epoch: int, done: int, steps: int, sums: torch.Tensor, seen: int, report: Report) -> float:
        """A step checkpoint after ``done`` steps of ``epoch``; returns the seconds training stood
        still for it (collectives, serialisation, and the report call: in async mode the upload
        runs on, in the background)."""
        t0 = time.perf_counter()
        ranks = self._gather_objects({"readers": [p.as_list() for p in self.train_data.position(done)],
                                      "rng": resume.rng_state(self.batches.lighting_generator),
                                      "sums": [*sums.tolist(), seen]})
        position = {"epoch": epoch, "steps_done": done, "layout": resume.layout(self.cfg), "ranks": ranks,
                    "shards": resume.shards_fingerprint(self.train_data.manifest)}
        metrics = {"epoch": epoch, "mid_epoch": True, "step_in_epoch": done, "steps": steps, "global_step": self.step}
        meta = {"epoch": epoch, "step": self.step, "mid_epoch": True, "layout": position["layout"], "metrics": metrics}
        self._checkpoint(metrics, {**self.state(epoch - 1), "position": position}, meta, report)
        return time.perf_counter() - t0

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
        loss, top1, top5, count = self._all_sum([sums["loss_sum"], sums["top1"], sums["top5"], sums["count"]], self.mesh.replica_group)
        s = summarize({"loss_sum": loss, "top1": top1, "top5": top5, "count": int(count)})
        return {"val_loss": s["loss"], "val_top1": s["top1"], "val_top5": s["top5"], "val_count": s["count"]}

    def state(self, epoch: int) -> dict:
        """Everything but the weights, canonical too: an mp=2 run resumes at mp=1 and back. A
        collective over a tower pair. ``epoch``: the last one completed."""
        return {"optimizer": canonical_optimizer_state(self.model, self.optimizer), "epoch": epoch, "step": self.step,
                "plateau": self.plateau.state()}

    def run(self, report: Report) -> None:
        """``report(metrics, folder)``: every rank, after each epoch and each step checkpoint; rank
        0 hands it the checkpoint folder, which the report owns (deletes, or has Ray delete)."""
        for epoch in range(self.start_epoch, self.cfg.schedule.epochs):
            t0 = time.perf_counter()
            metrics = {"epoch": epoch, **self.train_epoch(epoch, report), **self.validate()}
            self.plateau.update(metrics["val_top1"])
            metrics["epoch_time_s"] = time.perf_counter() - t0
            metrics.update(world_rank=self.mesh.rank, dp=self.mesh.dp, mp=self.mesh.mp, fc=self.mesh.fc, node_of_rank=list(self.node_of_rank), pid_of_rank=list(self.pid_of_rank))
            self.log.write(metrics)
            self._checkpoint(metrics, self.state(epoch), {"epoch": epoch, "step": self.step, "metrics": metrics}, report)
        self.close()

    def close(self) -> None:
        """Flush the metrics and end the loaders' persistent workers."""
        self.log.close()
        self.train_data.close()
        self.val_data.close()


def train_loop(config: dict) -> None:
    """Ray Train worker entry point."""
    import ray
    import ray.train

    cfg = RunConfig.model_validate(config)
    random.seed(cfg.run.seed)
    latest = ray.train.get_checkpoint()  # the newest checkpoint of this run: after a worker failure or a rerun
    world_rank = ray.train.get_context().get_world_rank()
    node = ray.get_runtime_context().get_node_id()
    quiet_worker()  # Train's per-report dumps follow the run's log level (--verbose)
    console = WorkerConsole.find(cfg.run.name, cfg.run.log_every) if world_rank == 0 else None

    with latest.as_directory() if latest else nullcontext(None) as resume_dir:
        start = ckpt.resume_point(resume_dir, run_dir(cfg))
        trainer = Trainer(cfg, resume_from=start, node=node, console=console)
    trainer.run(ray_report(cfg.run.checkpoint_upload))


def ray_report(upload: str = "async") -> Report:
    """A Ray Train worker's report: every rank reports each epoch and step checkpoint (Ray Train
    synchronises on it); rank 0 attaches the checkpoint folder, which Ray Train uploads to the run's
    storage (marker last, `checkpoint.upload_marker_last`, which removes the local folder whether the
    upload succeeds or fails). ``upload`` async: Ray Train's own background upload
    (CheckpointUploadMode.ASYNC), so the report returns once the folder is handed over, and at most
    one upload is in flight (``report.slot``: the loop waits for it before staging the next
    checkpoint; Ray's upload queue itself is unbounded); sync: once it is uploaded."""
    import ray.train

    world_rank = ray.train.get_context().get_world_rank()
    storage = ray.train.get_context().get_storage()
    mode = ray.train.CheckpointUploadMode.ASYNC if upload == "async" else ray.train.CheckpointUploadMode.SYNC
    slot = ckpt.UploadSlot() if upload == "async" else None

    def upload_marker_last(checkpoint, dir_name: str):
        try:
            dest = storage.build_checkpoint_path_from_name(dir_name)
            ckpt.upload_marker_last(checkpoint.path, storage.storage_filesystem, dest)
            return ray.train.Checkpoint(dest, filesystem=storage.storage_filesystem)
        finally:
            if slot is not None:
                slot.free(checkpoint.path)

    def report(metrics: dict, folder: str | None) -> None:
        checkpoint = ray.train.Checkpoint.from_directory(folder) if folder else None
        if slot is not None and checkpoint is not None:
            slot.take(checkpoint.path)
        try:
            ray.train.report({**metrics, "world_rank": world_rank}, checkpoint=checkpoint, checkpoint_upload_mode=mode,
                             delete_local_checkpoint_after_upload=False, checkpoint_upload_fn=upload_marker_last)
        except BaseException:
            if checkpoint is not None:
                if slot is not None:
                    slot.free(checkpoint.path)
                shutil.rmtree(folder, ignore_errors=True)
            raise

    report.slot = slot
    return report


def fit(cfg: RunConfig, console=None, verbose: bool = False):
    """Start cfg.parallel.world Ray Train workers and run the training loop; returns Ray's Result.
    ``console``: a `console.TrainConsole` that shows the run. Ray is connected: `preflight.preflight`."""
    from orchestrator.ray_workers import warm_up_train

    warm_up_train()
    from orchestrator import tracking

    tracker = tracking.start(cfg, run_dir(cfg), say=console.print if console else tracking.warn)  # run.tracker
    callbacks = [*(console.callbacks() if console else []), *(tracker.callbacks() if tracker else [])]
    status, where = "KILLED", None
    try:
        trainer = build_trainer(cfg, callbacks=callbacks or None, verbose=verbose)
        if tracker:
            tracker.log_config(cfg.model_dump(mode="json"))  # as prepare_run settled it
        result = trainer.fit()
        status = "FAILED" if result.error else "FINISHED"
        # Ray's Checkpoint.path is the path inside its filesystem (no scheme): named in the run's own store
        where = loc.join(run_dir(cfg), loc.name(result.checkpoint.path)) if result.checkpoint else None
        return result
    except Exception:
        status = "FAILED"
        raise
    finally:
        if tracker:
            tracker.finish(status, where)


def prepare_run(cfg: RunConfig) -> RunConfig:
    """Settle what every worker must agree on, once, and save the config beside the run."""
    ckpt.absolute_paths(cfg)
    # From the training manifest, read once: the classes, and the normalisation (so the checkpoint's
    # config says how it normalised).
    if not cfg.model.num_classes or cfg.data.mean is None or cfg.data.std is None:
        train = mf.load(manifest_url(cfg, cfg.data.train_split))
        cfg.model.num_classes = cfg.model.num_classes or len(train["classes"])
        stats = train["stats"]
        cfg.data.mean, cfg.data.std = cfg.data.mean or stats["mean_rgb"], cfg.data.std or stats["std_rgb"]
    loc.write_bytes(loc.join(run_dir(cfg), "config.yaml"), to_yaml(cfg).encode())  # in the run's store
    return cfg


def build_trainer(cfg: RunConfig, callbacks: list | None = None, pin_nodes: bool = True, verbose: bool = False):
    """The TorchTrainer of one run (Ray already connected); `fit` and each `cnnctl tune` trial use it.

    ``pin_nodes=False`` leaves a one-node run to Ray's placement, so concurrent Tune trials spread
    over the cluster instead of all waiting for the same node. ``verbose``: Ray Train's INFO lines
    (worker group start-up, every report and checkpoint) on the console too.
    """
    from orchestrator.ray_workers import place_workers, torch_trainer

    p = prepare_run(cfg).parallel
    import ray.train

    from orchestrator.rendezvous import LoopbackTorchConfig

    resources = {"CPU": p.cpus_per_worker, **({"GPU": 1} if p.gpus else {})}
    selectors = place_workers(p.nodes, p.workers_per_node, p.cpus_per_worker, p.gpus) if pin_nodes or p.nodes > 1 else None
    return torch_trainer()(
        train_loop,
        train_loop_config=cfg.model_dump(mode="json"),
        torch_config=LoopbackTorchConfig(backend="nccl" if p.gpus else "gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=p.world, use_gpu=p.gpus, resources_per_worker=resources,
                                               label_selector=selectors),
        run_config=ray.train.RunConfig(
            name=cfg.run.name,
            storage_path=loc.absolute(cfg.run.storage),
            failure_config=ray.train.FailureConfig(max_failures=cfg.run.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.run.keep_checkpoints),
            callbacks=callbacks or None,
            logging_config=ray.train.LoggingConfig(log_level="INFO" if verbose else "WARNING"),
        ),
    )
