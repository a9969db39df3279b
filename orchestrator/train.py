"""`cnnctl train`: the Ray Train driver and each worker's entry around the Trainer (orchestrator/trainer.py).

``Trainer`` is plain PyTorch over an initialised process group, so tests can run it without Ray;
``train_loop`` adds the few Ray lines (resume checkpoint, report) and ``fit`` starts the workers.
"""

from __future__ import annotations

import random
import shutil
from contextlib import nullcontext

from cnnctl.orchestrator import checkpoint as ckpt
from cnnctl.orchestrator import resume
from cnnctl.orchestrator.config import RunConfig, to_yaml
from cnnctl.orchestrator.console_events import WorkerConsole, quiet_worker
from cnnctl.orchestrator.data import manifest_url
from cnnctl.orchestrator.trainer import Report, Trainer, run_dir
from cnnctl.shards import location as loc
from cnnctl.shards import manifest as mf


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
        if cfg.parallel.elastic:  # Ray Train started this group at the world the cluster holds now
            context = ray.train.get_context()
            here, group = context.get_local_world_size(), cfg.parallel.mp * cfg.parallel.layout.fc
            if here % group:  # Ray placed workers around whole nodes: a pair or a group would straddle two
                raise ValueError(f"{here} worker(s) on node {node}: a tower pair or OWT group of {group} ranks "
                                 "would straddle nodes; give every node room for whole groups")
            line = resume.at_world(cfg, context.get_world_size(), start)
            if line and console:
                console.note(line)
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
    from cnnctl.orchestrator.ray_workers import warm_up_train

    warm_up_train()
    from cnnctl.orchestrator import tracking

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
    from cnnctl.orchestrator.ray_workers import place_workers, torch_trainer

    p = prepare_run(cfg).parallel
    import ray.train

    from cnnctl.orchestrator.rendezvous import LoopbackTorchConfig

    resources = {"CPU": p.cpus_per_worker, **({"GPU": 1} if p.gpus else {})}
    if p.elastic:  # Ray Train's elastic group, resized by whole nodes (ray_workers.whole_nodes_policy)
        place_workers(p.min_nodes, p.workers_per_node, p.cpus_per_worker, p.gpus)  # the fewest must fit now
        workers, selectors = (p.min_nodes * p.workers_per_node, p.world), None
    else:
        pin = pin_nodes or p.nodes > 1
        workers = p.world
        selectors = place_workers(p.nodes, p.workers_per_node, p.cpus_per_worker, p.gpus) if pin else None
    return torch_trainer(p.workers_per_node, p.node_loss_settle_s)(
        train_loop,
        train_loop_config=cfg.model_dump(mode="json"),
        torch_config=LoopbackTorchConfig(backend="nccl" if p.gpus else "gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=workers, use_gpu=p.gpus, resources_per_worker=resources,
                                               label_selector=selectors,
                                               elastic_resize_monitor_interval_s=p.resize_check_s),
        run_config=ray.train.RunConfig(
            name=cfg.run.name,
            storage_path=loc.absolute(cfg.run.storage),
            failure_config=ray.train.FailureConfig(max_failures=cfg.run.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.run.keep_checkpoints),
            callbacks=callbacks or None,
            logging_config=ray.train.LoggingConfig(log_level="INFO" if verbose else "WARNING"),
        ),
    )
