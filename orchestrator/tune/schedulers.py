"""How Tune schedules a sweep's trials: FIFO, ASHA's early stopping or PBT's exploits (and the paths
PBT mutates, with their starting values), and the param_space a random search's plan becomes.
"""

from __future__ import annotations

import functools

from cnnctl.orchestrator.config import LRNConfig, RunConfig
from cnnctl.orchestrator.tune import plan as tune_plan
from cnnctl.orchestrator.tune.space import SearchSpace


def _pbt_base(cfg: RunConfig) -> dict:
    """The paths PBT mutates, with the base config's values."""
    lrn = cfg.model.lrn or LRNConfig()  # unset: the paper's values, which the model's own LRN uses
    base = {"optim.lr": cfg.optim.lr, "model.lrn.alpha": lrn.alpha, "model.lrn.beta": lrn.beta}
    return {p: base[p] for p in ["optim.lr"] + (["model.lrn.alpha", "model.lrn.beta"] if cfg.tune.pbt_lrn else [])}


def mutations(cfg: RunConfig, space: SearchSpace) -> dict:
    """PBT's hyperparam_mutations: optim.lr, and LRN alpha/beta with tune.pbt_lrn. A path the space
    does not search mutates around the base value."""
    from ray import tune

    base = _pbt_base(cfg)
    out = {}
    for path in base:
        dim = space.space.get(path)
        if dim is None:
            out[path] = (tune.loguniform(base[path] / 10, base[path] * 10) if path != "model.lrn.beta"
                         else tune.uniform(0.5, 1.0))
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


def pbt_start(cfg: RunConfig) -> dict:
    """PBT mutates config keys, so each trial must start with a value for every mutated path: the
    base config's, where the space does not draw it."""
    return _pbt_base(cfg) if cfg.tune.scheduler == "pbt" else {}


def param_space(cfg: RunConfig, trials: tune_plan.Plan | None) -> dict:
    """random: the planned trials as one grid (PBT accepts no search algorithm), and the paths PBT
    mutates at the top level, where it looks for them; optuna: its searcher gives every value."""
    from ray import tune

    if trials is None:
        return {}
    space = {tune_plan.TRIAL: tune.grid_search(trials.trials)}
    for path in pbt_start(cfg):
        space[path] = tune.sample_from(functools.partial(_planned, path))
    return space


def _planned(path: str, spec):
    return spec.config[tune_plan.TRIAL][path]

