"""The Tune trainable: one trial = one run of the ordinary training loop (`train.Trainer`).

A one-worker trial trains inside the trial's own process, which holds that worker's CPU (and GPU):
no Train controller, placement group or worker process is started per trial, and Tune reuses the
process for the next trial. A trial of several workers is a Ray Train run (`train.build_trainer`)
driven from a TrialRun actor (trial_run.py); the trial's process holds nothing, its Train workers ask
for their CPUs. Either way the trials running at once never hold more than the cluster's CPUs.

Every epoch's rank-0 metrics and checkpoint reach Tune *with* the checkpoint, so schedulers can use
it: PBT's exploit hands a donor's checkpoint to the weak trial, which copies it into a fresh run
folder where the training loop resumes from it (`checkpoint.resume_point` falls back to the run folder).
"""

from __future__ import annotations

import json
import tempfile

from cnnctl.orchestrator import checkpoint as ckpt
from cnnctl.orchestrator.config import RunConfig
from cnnctl.orchestrator.metrics import read
from cnnctl.orchestrator.train import run_dir
from cnnctl.orchestrator.tune import plan as tune_plan
from cnnctl.orchestrator.tune.space import apply
from cnnctl.orchestrator.tune.trial_run import TrialRun, scalars
from cnnctl.shards import location as loc

# A trial's own process needs no CPU (its Train workers hold theirs); Tune refuses an empty
# request, so it asks for one byte of memory.
TRIAL_DRIVER = {"CPU": 0, "memory": 1}


def seed_from(checkpoint, dest: str) -> dict:
    """Copy the checkpoint Tune handed this trial (its own after a restart, a donor's after a PBT
    exploit) into the fresh run folder (any store), with the metrics rows up to it; says where it
    came from. The COMPLETE marker is copied last, so a torn copy is never taken for a checkpoint."""
    if checkpoint is None:
        return {}
    with tempfile.TemporaryDirectory() as staging:
        checkpoint.to_directory(staging)
        meta = ckpt.load_meta(staging)  # checked: a bad meta.json is one line naming it
        source = ckpt.load_config(staging)
        loc.put_dir(staging, loc.join(dest, f"checkpoint_seed_{meta['epoch']:06d}"), last=ckpt.MARKER)
    rows = [r for r in read(run_dir(source)) if r.get("epoch", -1) <= meta["epoch"]]
    loc.write_bytes(loc.join(dest, "metrics.jsonl"), "".join(json.dumps(r) + "\n" for r in rows).encode())
    return {"resumed_from_run": source.run.name, "resumed_from_trial": source.run.name.rsplit("-", 1)[0],
            "resumed_from_epoch": meta["epoch"]}


def trial_resources(cfg: RunConfig) -> dict:
    """A one-worker trial trains in its own process, which holds the worker's CPU (and GPU); a
    bigger trial's process holds nothing, its Train workers ask for theirs."""
    if cfg.parallel.world == 1:
        return {"CPU": cfg.parallel.cpus_per_worker, **({"GPU": 1} if cfg.parallel.gpus else {})}
    return TRIAL_DRIVER


def run_trial(params: dict, base: dict, sweep: str) -> None:
    """The Tune function trainable: one trial = one run of the training loop (`train.Trainer`),
    in the trial's own process for one worker, as a Ray Train run for more."""
    from ray import tune

    from cnnctl.orchestrator.tune.console import quiet_trial

    trial_id = tune.get_context().get_trial_id()
    quiet_trial()
    params = tune_plan.flat(params)
    cfg = apply(base, params)
    cfg.run.seed = params[tune_plan.SEED]  # the plan's or the searcher's: tune.seeds and tune.trial_seeds
    runs = loc.join(sweep, "train")
    # A fresh run folder per start: after a PBT exploit the trial must not resume its own run.
    starts = [r for r in loc.listdir(runs) if loc.name(r).startswith(f"{trial_id}-")]
    cfg.run.storage, cfg.run.name = runs, f"{trial_id}-{len(starts)}"
    loc.makedirs(loc.join(runs, cfg.run.name))
    origin = seed_from(tune.get_checkpoint(), loc.join(runs, cfg.run.name))
    if origin and origin["resumed_from_epoch"] >= cfg.schedule.epochs - 1:
        # Nothing left to train (PBT cloned a finished trial, or a trial is restarted from its last
        # epoch): that checkpoint's result stands as this trial's final one; no Train run starts.
        seed = loc.join(runs, cfg.run.name, f"checkpoint_seed_{origin['resumed_from_epoch']:06d}")
        metrics = ckpt.load_meta(seed).get("metrics", {})
        tune.report({**scalars(metrics), **origin, "run": cfg.run.name, "carried_over": True})
        return
    tracker, status = _track(cfg, sweep, trial_id, params.get(tune_plan.CELL)), "KILLED"
    tell, last = _teller(tracker)
    try:
        if cfg.parallel.world == 1:
            _train_here(cfg, origin, tell)
        else:
            _train_run(cfg, origin, trial_id, tell)
        status = "FINISHED"
    except Exception:
        status = "FAILED"
        raise
    finally:  # stopped by Tune (SystemExit in tune.report): KILLED
        if tracker:  # the checkpoint: Tune's copy, in the trial's folder of the sweep
            where = last[0] and loc.join(sweep, loc.name(loc.parent(last[0])), loc.name(last[0]))
            tracker.finish(status, where)


def _track(cfg: RunConfig, sweep: str, trial_id: str, cell):
    """The trial's run.tracker (one MLflow run per trial, tagged with its configuration and seed), or None."""
    from cnnctl.orchestrator import tracking
    from cnnctl.orchestrator.train import prepare_run

    trial = {"sweep": sweep, "trial": trial_id, "cell": "?" if cell is None else f"c{cell}", "seed": cfg.run.seed}
    tracker = tracking.start(cfg, run_dir(cfg), trial=trial)
    if tracker:
        tracker.log_config(prepare_run(cfg).model_dump(mode="json"))  # settled here: classes, normalisation
    return tracker


def _teller(tracker) -> tuple:
    """tune.report, each epoch's rank-0 metrics to the tracker first; and a list holding the path of
    the last checkpoint Tune kept (in its store's filesystem), once there is one."""
    from ray import tune

    last = [None]

    def tell(metrics: dict, checkpoint=None) -> None:
        if tracker:
            tracker.on_report(metrics)
        tune.report(metrics, checkpoint=checkpoint)
        if tracker and checkpoint is not None:  # the copy Tune made, which get_checkpoint now returns
            last[0] = tune.get_checkpoint().path

    return tell, last


def _train_here(cfg: RunConfig, origin: dict, tell) -> None:
    """The training loop in the trial's process, over a one-rank gloo group: no Train controller,
    placement group or worker process to start, and nothing outlives the trial when Tune stops it."""
    import random

    import ray
    import torch.distributed as dist
    from ray import tune

    from cnnctl.orchestrator.train import Trainer, prepare_run

    cfg = prepare_run(cfg)
    random.seed(cfg.run.seed)
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    trainer = None
    try:
        trainer = Trainer(cfg, resume_from=ckpt.resume_point(None, run_dir(cfg)),
                          node=ray.get_runtime_context().get_node_id())

        def report(metrics: dict, folder: str | None) -> None:
            tell({**scalars(metrics), **origin, "run": cfg.run.name},
                 checkpoint=tune.Checkpoint.from_directory(folder) if folder else None)

        trainer.run(report)
    finally:  # a reused trial process starts its next trial afresh: new group, no old loader workers
        if trainer is not None:
            trainer.close()
        dist.destroy_process_group()


def _train_run(cfg: RunConfig, origin: dict, trial_id: str, tell) -> None:
    """The trial as a Ray Train run, driven from a TrialRun actor; its reports come through a queue."""
    import ray
    from ray import tune
    from ray.util.queue import Empty, Queue

    queue = Queue(maxsize=1, actor_options={"num_cpus": 0})
    # Detached and out of the trial's placement group (Tune's groups capture child tasks): the run
    # must outlive the trial long enough to give its workers' CPUs back (see TrialRun).
    runner = ray.remote(TrialRun).options(num_cpus=0, max_concurrency=4, lifetime="detached", max_restarts=0,
                                          scheduling_strategy="DEFAULT").remote(queue)
    runner.fit.remote(cfg.model_dump(mode="json"))
    try:
        while True:
            try:
                kind, metrics, where = queue.get(timeout=60)
            except Empty:
                ray.get(runner.alive.remote())  # raises if the run's actor died (its node went)
                continue
            if kind == "done":
                return
            if kind != "report":
                raise RuntimeError(f"trial {trial_id}: training failed: {metrics}")
            tell({**metrics, **origin, "run": cfg.run.name}, checkpoint=tune.Checkpoint(*where) if where else None)
    finally:  # stopped by Tune (SystemExit in tune.report), failed or done: the run ends before the trial
        ray.kill(queue.actor)  # a report the controller may be blocked on fails, so it can take the abort
        try:
            ray.get(runner.stop.remote(), timeout=300)
        except Exception:  # noqa: BLE001 - it exited already
            pass

