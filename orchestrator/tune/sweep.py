"""`cnnctl tune`: a Ray Tune sweep whose trials are runs of the ordinary training loop (trial.py).

Here the sweep as a whole: each trial's shape and how many run at once, the plan, and starting,
resuming and running the Tuner.
"""

from __future__ import annotations

import math
import os

from cnnctl.orchestrator import checkpoint as ckpt
from cnnctl.orchestrator.config import ConfigError, RunConfig, check
from cnnctl.orchestrator.tune import plan as tune_plan
from cnnctl.orchestrator.tune.schedulers import param_space, pbt_start, scheduler
from cnnctl.orchestrator.tune.space import SearchSpace
from cnnctl.orchestrator.tune.spec import SPEC, save_spec, saved, sweep_dir
from cnnctl.orchestrator.tune.trial import run_trial, trial_resources
from cnnctl.shards import location as loc

KEEP_TRIAL_CHECKPOINTS = 4  # PBT warns below 3: a donor's checkpoint must outlive the exploit


def trial_shape(cfg: RunConfig) -> RunConfig:
    """The sweep's config with each trial's shape: one node, tune.trial_workers workers on it (every
    cross-field rule checked again for that shape; ConfigError otherwise)."""
    cfg = cfg.model_copy(deep=True)
    cfg.parallel.nodes, cfg.parallel.workers_per_node = 1, cfg.tune.trial_workers
    if problems := check(cfg):
        raise ConfigError(problems)
    return cfg


def trial_cpus(cfg: RunConfig) -> float:
    return cfg.parallel.world * cfg.parallel.cpus_per_worker


def concurrency(cfg: RunConfig, cluster_cpus: float) -> int:
    """Trials at once: the asked number, lowered to what the cluster's CPUs hold."""
    slots = math.floor(cluster_cpus / trial_cpus(cfg) + 1e-9)
    if slots < 1:
        raise RuntimeError(f"a trial needs {trial_cpus(cfg):g} CPUs ({cfg.parallel.world} workers x "
                           f"{cfg.parallel.cpus_per_worker:g}); the cluster has {cluster_cpus:g}")
    return min(cfg.tune.max_concurrent, slots)


def plan(cfg: RunConfig, space: SearchSpace) -> tune_plan.Plan | None:
    """The trials of a random search (None for optuna, which decides as results come in); a
    baseline that names no single planned configuration is refused here, before anything starts."""
    if cfg.tune.search_alg != "random":
        return None
    trials = tune_plan.make(cfg, space, pbt_start(cfg))
    if cfg.tune.baseline:
        tune_plan.baseline_cell(cfg.tune.baseline, trials.cells, cfg.model_dump(mode="json"))
    return trials


def shape(cfg: RunConfig, space: SearchSpace, trials: tune_plan.Plan | None) -> str:
    p, t = cfg.parallel, cfg.tune
    what = (trials.summary(cfg) if trials else
            f"optuna (TPE): {t.num_samples} suggestion(s) x {t.seeds} seed(s) = "
            f"at most {t.num_samples * t.seeds} trial(s)")
    return (f"{what}, at most {t.max_concurrent} at once; "
            f"each trial {p.world} worker(s) x {p.cpus_per_worker:g} CPU on one node; "
            f"scheduler {t.scheduler}; cluster {p.address or 'a local Ray'}")


def start(cfg: RunConfig, space: SearchSpace, say=print):
    """Start a new sweep (refused where one of that name exists); returns Tune's ResultGrid."""
    folder = sweep_dir(cfg)
    if loc.exists(loc.join(folder, SPEC)):
        raise ConfigError([f"sweep {cfg.tune.name} already exists at {folder}: "
                           f"continue it with --resume {cfg.tune.name}, or pick another --name"])
    trials = plan(cfg, space)
    say(f"tuning {cfg.model.name} on {cfg.data.root} | {shape(cfg, space, trials)} | sweep {folder}")
    return search(cfg, space, trials=trials)


def resume(name: str, storage: str, address: str | None, say=print):
    """Continue the sweep ``name`` under ``storage`` with its saved config and space; returns
    (its folder, Tune's ResultGrid)."""
    folder, base, space = saved(name, storage, address)
    say(f"resuming sweep {folder} | cluster {base.parallel.address or 'a local Ray'}")
    # Ray Tune's experiment and searcher state are pickles: whoever can write the sweep's folder can
    # run code here. It cannot be avoided (Ray's format); it is said, once.
    say(f"note: --resume unpickles Ray Tune's saved state from {folder}: "
        "resume only sweeps in a store that only you can write")
    return folder, search(base, space, resume=True)


def search(cfg: RunConfig, space: SearchSpace, resume: bool = False, trials: tune_plan.Plan | None = None):
    """Run (or, with ``resume``, continue) the sweep; returns Tune's ResultGrid."""
    from cnnctl.orchestrator.cluster import connect

    # Every trial finish is recorded within seconds, so a killed driver loses little.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
    connect(cfg.parallel.address, cpus_needed=trial_cpus(cfg))  # before importing ray.tune: auth env
    import ray
    from ray import tune

    from cnnctl.orchestrator.tune import console  # a row per finished trial instead of Tune's status tables
    ckpt.absolute_paths(cfg)  # trials run in Tune's working folders
    path = sweep_dir(cfg)
    base = cfg.model_dump(mode="json")
    trainable = tune.with_resources(tune.with_parameters(run_trial, base=base, sweep=path), trial_resources(cfg))
    if resume:  # Tune restores the grid's or the searcher's state too: it hands out what it had not yet
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_errored=True)
        return tuner.fit()
    cpus = ray.cluster_resources().get("CPU", 0)
    at_once = concurrency(cfg, cpus)
    count = len(trials.trials) if trials else cfg.tune.num_samples * cfg.tune.seeds
    print(f"sweep {path}: {'' if trials else 'at most '}{count} trial(s), {at_once} at a time "
          f"({trial_cpus(cfg):g} CPUs each of the cluster's {cpus:g}), scheduler {cfg.tune.scheduler}, "
          f"search {cfg.tune.search_alg}", flush=True)
    save_spec(cfg, space, trials)
    searcher = None
    if trials is None:
        from cnnctl.orchestrator.tune.optuna_cells import OptunaCells

        searcher = OptunaCells(cfg, space)
    tuner = tune.Tuner(
        trainable,
        param_space=param_space(cfg, trials),
        tune_config=tune.TuneConfig(metric=cfg.tune.metric, mode=cfg.tune.mode, scheduler=scheduler(cfg, space),
                                    search_alg=searcher,
                                    num_samples=1 if trials else count, max_concurrent_trials=at_once,
                                    trial_dirname_creator=_trial_dirname,
                                    # a finished trial's process runs the next one (saves its start);
                                    # PBT's exploits restart trials through a fresh one
                                    reuse_actors=cfg.tune.scheduler != "pbt"),
        run_config=tune.RunConfig(name=cfg.tune.name, storage_path=loc.parent(path),
                                  **console.run_config_kwargs(cfg.tune.metric, cfg.tune.mode),
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=KEEP_TRIAL_CHECKPOINTS)),
    )
    return tuner.fit()


def _trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"
