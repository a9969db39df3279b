"""`cnnctl tune`: Ray Tune sweeps whose trials are Ray Train runs of the ordinary training loop.

Each trial is a Tune function trainable that builds the run's TorchTrainer (`train.build_trainer`)
and waits on it. The trial itself holds no CPU; its Train workers ask for theirs, so the number of
trials running at once is capped by what the cluster's CPUs hold, never oversubscribing them.

Every epoch's rank-0 metrics and checkpoint travel from the Train controller to the trial through a
small queue, and the trial reports them to Tune *with* the checkpoint, so schedulers can use it:
PBT's exploit hands a donor's checkpoint to the weak trial, which copies it into a fresh run folder
where the training loop resumes from it (`checkpoint.resume_point` falls back to the run folder).
"""

from __future__ import annotations

import functools
import json
import math
import os
from pathlib import Path

import yaml

from orchestrator import checkpoint as ckpt
from orchestrator.config import RunConfig, to_yaml
from orchestrator.metrics import read
from orchestrator.search_space import SearchSpace, apply
from orchestrator.train import build_trainer, run_dir

# A trial's own process needs no CPU (its Train workers hold theirs); Tune refuses an empty
# request, so it asks for one byte of memory.
TRIAL_DRIVER = {"CPU": 0, "memory": 1}
SPEC = "sweep.yaml"
KEEP_TRIAL_CHECKPOINTS = 4  # PBT warns below 3: a donor's checkpoint must outlive the exploit


def sweep_dir(cfg: RunConfig) -> Path:
    return Path(ckpt.storage_path(cfg.run.storage)) / cfg.tune.name


def trial_cpus(cfg: RunConfig) -> float:
    return cfg.parallel.world * cfg.parallel.cpus_per_worker


def concurrency(cfg: RunConfig, cluster_cpus: float) -> int:
    """Trials at once: the asked number, lowered to what the cluster's CPUs hold."""
    slots = math.floor(cluster_cpus / trial_cpus(cfg) + 1e-9)
    if slots < 1:
        raise RuntimeError(f"a trial needs {trial_cpus(cfg):g} CPUs ({cfg.parallel.world} workers x {cfg.parallel.cpus_per_worker:g}); "
                           f"the cluster has {cluster_cpus:g}")
    return min(cfg.tune.max_concurrent, slots)


def mutations(cfg: RunConfig, space: SearchSpace) -> dict:
    """PBT's hyperparam_mutations: optim.lr, and LRN alpha/beta with tune.pbt_lrn. A path the space
    does not search mutates around the base value."""
    from ray import tune

    base = {"optim.lr": cfg.optim.lr, "model.lrn.alpha": cfg.model.lrn.alpha, "model.lrn.beta": cfg.model.lrn.beta}
    paths = ["optim.lr"] + (["model.lrn.alpha", "model.lrn.beta"] if cfg.tune.pbt_lrn else [])
    out = {}
    for path in paths:
        dim = space.space.get(path)
        if dim is None:
            out[path] = tune.loguniform(base[path] / 10, base[path] * 10) if path != "model.lrn.beta" else tune.uniform(0.5, 1.0)
        elif dim.grid is not None or dim.choice is not None:
            out[path] = list(dim.grid if dim.grid is not None else dim.choice)
        else:
            out[path] = dim.to_tune()
    return out


def scheduler(cfg: RunConfig, space: SearchSpace):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining

    t = cfg.tune
    if t.scheduler == "asha":
        return ASHAScheduler(time_attr="training_iteration", max_t=cfg.schedule.epochs, grace_period=t.grace_period,
                             reduction_factor=t.reduction_factor)
    if t.scheduler == "pbt":
        return PopulationBasedTraining(time_attr="training_iteration", perturbation_interval=t.perturbation_interval,
                                       hyperparam_mutations=mutations(cfg, space), quantile_fraction=0.5)
    return FIFOScheduler()


def param_space(cfg: RunConfig, space: SearchSpace) -> dict:
    params = space.to_tune()
    if cfg.tune.scheduler == "pbt":  # PBT mutates config keys: each must start with a value
        for path, domain in mutations(cfg, space).items():
            if path not in params:
                from ray import tune

                params[path] = tune.choice(domain) if isinstance(domain, list) else domain
    return params


class ForwardToTrial:
    """A Train V2 callback (on the Train controller): rank 0's metrics and checkpoint path of each
    report go to the trial's queue; the queue holds one item, so training waits for Tune."""

    def __init__(self, queue):
        self.queue = queue

    def after_report(self, run_context, metrics, checkpoint):
        import ray

        scalars = {k: v for k, v in metrics[0].items() if isinstance(v, (int, float, str, bool))}
        # The controller's own handle goes along, so a stopped trial can abort the run cleanly.
        self.queue.put(("report", scalars, checkpoint.path if checkpoint else None, ray.get_runtime_context().current_actor))

    def after_exception(self, run_context, worker_exceptions):
        pass

    def __reduce__(self):  # rebuilt through _callback on the controller: the class is made there
        return _callback, (self.queue,)


@functools.cache
def _callback_class() -> type:
    # ray.train is imported only once Ray is connected (the auth env must be set first).
    from ray.train import UserCallback

    return type("ForwardToTrialCallback", (ForwardToTrial, UserCallback), {})


def _callback(queue):
    return _callback_class()(queue)


def seed_from(checkpoint, dest: Path) -> dict:
    """Copy the checkpoint Tune handed this trial (its own after a restart, a donor's after a PBT
    exploit) into the fresh run folder, with the metrics rows up to it; says where it came from."""
    if checkpoint is None:
        return {}
    staging = dest / "checkpoint_seed.tmp"
    checkpoint.to_directory(str(staging))
    meta = json.loads((staging / "meta.json").read_text())
    source = ckpt.load_config(staging)
    staging.rename(dest / f"checkpoint_seed_{meta['epoch']:06d}")
    rows = [r for r in read(run_dir(source)) if r.get("epoch", -1) <= meta["epoch"]]
    (dest / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"resumed_from_run": source.run.name, "resumed_from_trial": source.run.name.rsplit("-", 1)[0],
            "resumed_from_epoch": meta["epoch"]}


def run_trial(params: dict, base: dict, sweep: str) -> None:
    """The Tune function trainable: one trial = one Ray Train run of the training loop."""
    from ray import tune
    from ray.util.queue import Queue

    trial_id = tune.get_context().get_trial_id()
    cfg = apply(base, params)
    runs = Path(sweep) / "train"
    # A fresh run folder per start: after a PBT exploit the trial must not resume its own run.
    cfg.run.storage, cfg.run.name = str(runs), f"{trial_id}-{len(list(runs.glob(f'{trial_id}-*')))}"
    (runs / cfg.run.name).mkdir(parents=True, exist_ok=True)
    origin = seed_from(tune.get_checkpoint(), runs / cfg.run.name)
    queue = Queue(maxsize=1, actor_options={"num_cpus": 0})
    # The Train run is driven from a task this trial owns: when Tune stops or pauses the trial
    # (ASHA stop, PBT exploit), cancelling the task ends the run and frees its workers' CPUs.
    import ray

    run = ray.remote(num_cpus=0, max_retries=0)(_fit).remote(cfg.model_dump(mode="json"), queue)
    controller = None
    try:
        while True:
            kind, metrics, path, controller = queue.get()
            if kind == "done":
                return
            if kind == "error":
                raise RuntimeError(f"trial {trial_id}: training failed: {metrics}")
            tune.report({**metrics, **origin, "run": cfg.run.name},
                        checkpoint=tune.Checkpoint.from_directory(path) if path else None)
    finally:
        if controller is not None:  # abort through the controller: it releases the workers' placement group
            try:
                ray.get(controller.abort.remote(), timeout=60)
            except Exception:  # noqa: BLE001 - it may have finished or exited already
                pass
        ray.cancel(run, force=True)


def _fit(config: dict, queue) -> None:
    """Run one trial's Train run; the trial hears how it ended through the queue."""
    try:
        result = build_trainer(RunConfig.model_validate(config), callbacks=[_callback(queue)], pin_nodes=False).fit()
        queue.put(("error", str(result.error), None, None) if result.error else ("done", None, None, None))
    except BaseException as exc:  # the trial must hear of it, or it waits forever
        queue.put(("error", repr(exc), None, None))


def save_spec(cfg: RunConfig, space: SearchSpace) -> Path:
    path = sweep_dir(cfg)
    path.mkdir(parents=True, exist_ok=True)
    spec = {"base": cfg.model_dump(mode="json"), "search": space.model_dump(mode="json", exclude_none=True)}
    (path / SPEC).write_text(yaml.safe_dump(spec, sort_keys=False))
    (path / "base.yaml").write_text(to_yaml(cfg))
    return path


def load_spec(path: Path) -> tuple[RunConfig, SearchSpace]:
    spec = yaml.safe_load((Path(path) / SPEC).read_text())
    return RunConfig.model_validate(spec["base"]), SearchSpace.model_validate(spec["search"])


def search(cfg: RunConfig, space: SearchSpace, resume: bool = False):
    """Run (or, with ``resume``, continue) the sweep; returns Tune's ResultGrid."""
    from orchestrator.cluster import connect

    # Every trial finish is recorded within seconds, so a killed driver loses little.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
    connect(cfg.parallel.address, cpus_needed=trial_cpus(cfg))  # before importing ray.tune: auth env
    import ray
    from ray import tune

    path = sweep_dir(cfg)
    base = cfg.model_dump(mode="json")
    trainable = tune.with_resources(tune.with_parameters(run_trial, base=base, sweep=str(path)), TRIAL_DRIVER)
    if resume:
        tuner = tune.Tuner.restore(str(path), trainable=trainable, resume_errored=True)
        return tuner.fit()
    cpus = ray.cluster_resources().get("CPU", 0)
    at_once = concurrency(cfg, cpus)
    print(f"sweep {path}: {cfg.tune.num_samples * space.grid_size()} trial(s), {at_once} at a time "
          f"({trial_cpus(cfg):g} CPUs each of the cluster's {cpus:g}), scheduler {cfg.tune.scheduler}", flush=True)
    save_spec(cfg, space)
    tuner = tune.Tuner(
        trainable,
        param_space=param_space(cfg, space),
        tune_config=tune.TuneConfig(metric=cfg.tune.metric, mode=cfg.tune.mode, scheduler=scheduler(cfg, space),
                                    num_samples=cfg.tune.num_samples, max_concurrent_trials=at_once,
                                    trial_dirname_creator=_trial_dirname),
        run_config=tune.RunConfig(name=cfg.tune.name, storage_path=str(path.parent),
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=KEEP_TRIAL_CHECKPOINTS)),
    )
    return tuner.fit()


def _trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"
