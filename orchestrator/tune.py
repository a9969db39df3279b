"""`cnnctl tune`: Ray Tune sweeps whose trials are runs of the ordinary training loop (`train.Trainer`).

A one-worker trial trains inside the trial's own process, which holds that worker's CPU (and GPU):
no Train controller, placement group or worker process is started per trial, and Tune reuses the
process for the next trial. A trial of several workers is a Ray Train run (`train.build_trainer`)
driven from a TrialRun actor; the trial's process holds nothing, its Train workers ask for their
CPUs. Either way the trials running at once never hold more than the cluster's CPUs.

Every epoch's rank-0 metrics and checkpoint reach Tune *with* the checkpoint, so schedulers can use
it: PBT's exploit hands a donor's checkpoint to the weak trial, which copies it into a fresh run
folder where the training loop resumes from it (`checkpoint.resume_point` falls back to the run folder).
"""

from __future__ import annotations

import functools
import json
import math
import os
import tempfile

import yaml
from pydantic import ValidationError

from orchestrator import checkpoint as ckpt
from orchestrator import tune_plan
from orchestrator.config import ConfigError, LRNConfig, RunConfig, check, to_yaml, yaml_problem
from orchestrator.metrics import read
from orchestrator.search_space import SearchSpace, apply
from orchestrator.train import build_trainer, run_dir
from shards import location as loc

# A trial's own process needs no CPU (its Train workers hold theirs); Tune refuses an empty
# request, so it asks for one byte of memory.
TRIAL_DRIVER = {"CPU": 0, "memory": 1}
SPEC = "sweep.yaml"
POLL_S = 0.25  # how often a trial's Train controller polls its workers (Train's default: 2 s)
KEEP_TRIAL_CHECKPOINTS = 4  # PBT warns below 3: a donor's checkpoint must outlive the exploit


def sweep_dir(cfg: RunConfig) -> str:
    """The sweep's folder: a location in run.storage's store (a local folder or a URL)."""
    return loc.join(loc.absolute(cfg.run.storage), cfg.tune.name)


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
        raise RuntimeError(f"a trial needs {trial_cpus(cfg):g} CPUs ({cfg.parallel.world} workers x {cfg.parallel.cpus_per_worker:g}); "
                           f"the cluster has {cluster_cpus:g}")
    return min(cfg.tune.max_concurrent, slots)


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
            f"optuna (TPE): {t.num_samples} suggestion(s) x {t.seeds} seed(s) = at most {t.num_samples * t.seeds} trial(s)")
    return (f"{what}, at most {t.max_concurrent} at once; each trial {p.world} worker(s) x {p.cpus_per_worker:g} CPU on one node; "
            f"scheduler {t.scheduler}; cluster {p.address or 'a local Ray'}")


class ForwardToTrial:
    """A Train V2 callback (on the Train controller): rank 0's metrics and checkpoint of each report go
    to the trial's queue; the queue holds one item, so training waits for Tune. The checkpoint travels
    as its path and pyarrow filesystem: on an object store the path alone has no scheme."""

    def __init__(self, queue):
        self.queue = queue

    def after_report(self, run_context, metrics, checkpoint):
        from ray.exceptions import RayActorError

        if metrics[0].get("mid_epoch"):
            return  # a step checkpoint: trials are compared, stopped and exploited at epochs
        try:
            self.queue.put(("report", _scalars(metrics[0]), (checkpoint.path, checkpoint.filesystem) if checkpoint else None))
        except RayActorError:  # the trial is gone; its TrialRun aborts this run
            pass

    def after_exception(self, run_context, worker_exceptions):
        pass

    def __reduce__(self):  # rebuilt through _callback on the controller: the class is made there
        return _callback, (self.queue,)


class TellRunner:
    """A Train V2 controller callback: hands the controller's own handle to the TrialRun as soon
    as the controller starts, so the run can be aborted before its first report too."""

    def __init__(self, runner):
        self.runner = runner

    def after_controller_start(self, train_run_context):
        import ray

        ray.get(self.runner.set_controller.remote(ray.get_runtime_context().current_actor))

    def __reduce__(self):
        return _tell_runner, (self.runner,)


@functools.cache
def _callback_classes() -> tuple[type, type]:
    # ray.train is imported only once Ray is connected (the auth env must be set first).
    from ray.train import UserCallback
    from ray.train.v2._internal.execution.callback import ControllerCallback

    return (type("ForwardToTrialCallback", (ForwardToTrial, UserCallback), {}),
            type("TellRunnerCallback", (TellRunner, ControllerCallback), {}))


def _callback(queue):
    return _callback_classes()[0](queue)


def _tell_runner(runner):
    return _callback_classes()[1](runner)


class TrialRun:
    """One start of a trial's Train run, driven from a detached actor outside the trial.

    Why: the placement group of a Train run's workers is created by its controller actor, and Ray
    removes such a group only once both that actor and the driver's job are gone. When Tune stops a
    trial (PBT exploit, pause, ASHA stop) it ends the trial's actor, and everything the trial owns
    dies with it, the controller too, ungracefully: the group, and its CPUs, stayed reserved for the
    rest of the sweep (Train's own cleaner watches the controller through the State API, which a
    cluster without the dashboard does not serve). This actor is not owned by the trial: it sees the
    trial go (its queue dies with it) or hears `stop`, then aborts the controller, which removes
    the group itself, and exits. The same happens when the whole driver is killed.
    """

    def __init__(self, queue):
        import threading

        self.queue = queue
        self.controller = None
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.started = threading.Event()
        self.finished = threading.Event()
        self.aborted = False
        threading.Thread(target=self._watch, daemon=True, name="trial-watch").start()

    def fit(self, config: dict) -> None:
        """Run the Train run; the trial hears how it ended through the queue. Exits the actor."""
        import ray

        self.started.set()
        message = ("stopped", None, None)
        try:
            if not self.stopping.is_set():
                # The controller polls its workers this often; Train's 2 s default adds up to that
                # much to every report (a trial's result) and to the run's start and end.
                os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", str(POLL_S))
                me = ray.get_runtime_context().current_actor
                cfg = RunConfig.model_validate(config)
                result = build_trainer(cfg, callbacks=[_callback(self.queue), _tell_runner(me)], pin_nodes=False).fit()
                message = ("error", str(result.error), None) if result.error else ("done", None, None)
        except BaseException as exc:  # noqa: BLE001 - the trial must hear of it, or it waits forever
            message = ("error", repr(exc), None)
        finally:
            self.finished.set()
        if self.stopping.is_set():
            self._abort()  # a no-op unless the run ended some other way while stopping
        else:
            try:
                self.queue.put(message, timeout=120)
            except Exception:  # noqa: BLE001 - the trial is gone or stuck: nothing to tell
                pass
        ray.actor.exit_actor()

    def alive(self) -> bool:
        return True

    def set_controller(self, controller) -> None:
        with self.lock:
            self.controller = controller

    def stop(self, timeout: float = 300) -> bool:
        """Abort the run (if it still runs) and wait until it has ended; True if it did."""
        self.stopping.set()
        return self.finished.wait(timeout)

    def _abort(self) -> None:
        import ray

        with self.lock:
            controller, self.aborted = (None if self.aborted else self.controller), True
        if controller is not None:
            try:  # the controller shuts its workers down, removes their placement group, and exits
                ray.get(controller.abort.remote(), timeout=300)
            except Exception:  # noqa: BLE001 - it finished or exited already
                pass

    def _watch(self) -> None:
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError

        idle = 0
        while not self.finished.wait(1.0):
            idle = 0 if self.started.is_set() or not self.stopping.is_set() else idle + 1
            if idle > 30:  # the trial went before it could start the run: nothing to clean up
                os._exit(0)
            if not self.stopping.is_set():
                try:
                    ray.get(self.queue.actor.qsize.remote(), timeout=30)
                    continue
                except RayActorError:  # the trial's queue died with the trial
                    self.stopping.set()
                except GetTimeoutError:
                    continue
            with self.lock:
                ready = self.controller is not None and not self.aborted
            if ready:
                self._abort()


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


def _scalars(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool))}


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

    from orchestrator.tune_console import quiet_trial

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
        tune.report({**_scalars(metrics), **origin, "run": cfg.run.name, "carried_over": True})
        return
    if cfg.parallel.world == 1:
        _train_here(cfg, origin)
    else:
        _train_run(cfg, origin, trial_id)


def _train_here(cfg: RunConfig, origin: dict) -> None:
    """The training loop in the trial's process, over a one-rank gloo group: no Train controller,
    placement group or worker process to start, and nothing outlives the trial when Tune stops it."""
    import random

    import ray
    import torch.distributed as dist
    from ray import tune

    from orchestrator.train import Trainer, prepare_run

    cfg = prepare_run(cfg)
    random.seed(cfg.run.seed)
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    trainer = None
    try:
        trainer = Trainer(cfg, resume_from=ckpt.resume_point(None, run_dir(cfg)), node=ray.get_runtime_context().get_node_id())

        def report(metrics: dict, folder: str | None) -> None:
            tune.report({**_scalars(metrics), **origin, "run": cfg.run.name},
                        checkpoint=tune.Checkpoint.from_directory(folder) if folder else None)

        trainer.run(report)
    finally:  # a reused trial process starts its next trial afresh: new group, no old loader workers
        if trainer is not None:
            trainer.close()
        dist.destroy_process_group()


def _train_run(cfg: RunConfig, origin: dict, trial_id: str) -> None:
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
            tune.report({**metrics, **origin, "run": cfg.run.name},
                        checkpoint=tune.Checkpoint(*where) if where else None)
    finally:  # stopped by Tune (SystemExit in tune.report), failed or done: the run ends before the trial
        ray.kill(queue.actor)  # a report the controller may be blocked on fails, so it can take the abort
        try:
            ray.get(runner.stop.remote(), timeout=300)
        except Exception:  # noqa: BLE001 - it exited already
            pass


def save_spec(cfg: RunConfig, space: SearchSpace, trials: tune_plan.Plan | None = None) -> str:
    path = sweep_dir(cfg)
    spec = {"base": cfg.model_dump(mode="json"), "search": space.model_dump(mode="json", exclude_none=True)}
    if trials:  # the distinct configurations and how often each was drawn (the report names them)
        spec["plan"] = {"cells": trials.cells, "draws": trials.draws}
    loc.write_bytes(loc.join(path, SPEC), yaml.safe_dump(spec, sort_keys=False).encode())
    loc.write_bytes(loc.join(path, "base.yaml"), to_yaml(cfg).encode())
    return path


def _spec(path: str) -> tuple[dict, str]:
    """A sweep's sweep.yaml as a mapping; ConfigError naming the file, one line, otherwise."""
    file = loc.join(path, SPEC)
    try:
        spec = yaml.safe_load(loc.read_text(file))
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as exc:
        raise ConfigError([f"{file}: not a sweep spec ({yaml_problem(exc)})"]) from None
    if not isinstance(spec, dict):
        raise ConfigError([f"{file}: not a sweep spec (a mapping with base and search)"])
    return spec, file


def load_spec(path: str) -> tuple[RunConfig, SearchSpace]:
    spec, file = _spec(path)
    try:
        return RunConfig.model_validate(spec.get("base")), SearchSpace.model_validate(spec.get("search"))
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise ConfigError([f"{file}: {where or 'base/search'}: {err['msg']} ({exc.error_count()} problem(s))"]) from None


def load_draws(path: str) -> list[int] | None:
    """How many times a random search drew each configuration (None: optuna's, or an older sweep)."""
    spec, file = _spec(path)
    plan_ = spec.get("plan")
    if not plan_:
        return None
    draws = plan_.get("draws") if isinstance(plan_, dict) else None
    if not isinstance(draws, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in draws):
        raise ConfigError([f"{file}: plan.draws is not a list of counts"])
    return draws



def start(cfg: RunConfig, space: SearchSpace, say=print):
    """Start a new sweep (refused where one of that name exists); returns Tune's ResultGrid."""
    folder = sweep_dir(cfg)
    if loc.exists(loc.join(folder, SPEC)):
        raise ConfigError([f"sweep {cfg.tune.name} already exists at {folder}: continue it with --resume {cfg.tune.name}, or pick another --name"])
    trials = plan(cfg, space)
    say(f"tuning {cfg.model.name} on {cfg.data.root} | {shape(cfg, space, trials)} | sweep {folder}")
    return search(cfg, space, trials=trials)


def saved(name: str, storage: str, address: str | None) -> tuple[str, RunConfig, SearchSpace]:
    """The sweep ``name`` under ``storage``: its folder, and its saved config (placed where it is now,
    on ``address``) and space; ConfigError if there is none."""
    folder = loc.join(loc.absolute(storage), name)
    if not loc.exists(loc.join(folder, SPEC)):
        raise ConfigError([f"no sweep {name} at {folder} (no {SPEC}); give its run.storage with --set run.storage=..."])
    base, space = load_spec(folder)
    base.run.storage, base.tune.name = storage, name  # where it is now
    if address:
        base.parallel.address = address
    return folder, base, space


def resume(name: str, storage: str, address: str | None, say=print):
    """Continue the sweep ``name`` under ``storage`` with its saved config and space; returns
    (its folder, Tune's ResultGrid)."""
    folder, base, space = saved(name, storage, address)
    say(f"resuming sweep {folder} | cluster {base.parallel.address or 'a local Ray'}")
    # Ray Tune's experiment and searcher state are pickles: whoever can write the sweep's folder can
    # run code here. It cannot be avoided (Ray's format); it is said, once.
    say(f"note: --resume unpickles Ray Tune's saved state from {folder}: resume only sweeps in a store that only you can write")
    return folder, search(base, space, resume=True)


def search(cfg: RunConfig, space: SearchSpace, resume: bool = False, trials: tune_plan.Plan | None = None):
    """Run (or, with ``resume``, continue) the sweep; returns Tune's ResultGrid."""
    from orchestrator.cluster import connect

    # Every trial finish is recorded within seconds, so a killed driver loses little.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
    connect(cfg.parallel.address, cpus_needed=trial_cpus(cfg))  # before importing ray.tune: auth env
    import ray
    from ray import tune

    from orchestrator import tune_console  # a row per finished trial instead of Tune's status tables
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
          f"({trial_cpus(cfg):g} CPUs each of the cluster's {cpus:g}), scheduler {cfg.tune.scheduler}, search {cfg.tune.search_alg}", flush=True)
    save_spec(cfg, space, trials)
    searcher = None
    if trials is None:
        from orchestrator.tune_search import OptunaCells

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
        run_config=tune.RunConfig(name=cfg.tune.name, storage_path=loc.parent(path), **tune_console.run_config_kwargs(cfg.tune.metric, cfg.tune.mode),
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=KEEP_TRIAL_CHECKPOINTS)),
    )
    return tuner.fit()


def _trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"
