"""The `cnnctl tune` commands: `run` (the default: `cnnctl tune [OPTIONS]`) starts, resumes or dry-runs
a sweep; `report` redraws a sweep's results from its folder. cli.py adds them to the main app."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from cnnctl.orchestrator.cli_common import ConfigFile, Preset, Sets, resolve_options
from cnnctl.orchestrator.cli_groups import default_command, fail
from cnnctl.orchestrator.config import ConfigError, to_yaml
from cnnctl.orchestrator.preflight import config_problems
from cnnctl.shards import location as loc

tune_app = typer.Typer(
    cls=default_command("run", bare_runs_default=True),
    help="Ray Tune sweeps over LRN settings and lr schedules; each trial is a Ray Train run "
         "(`cnnctl tune [OPTIONS]` = `cnnctl tune run [OPTIONS]`).")


Baseline = Annotated[Optional[str], typer.Option(
    help="The configuration every other is compared with, path=value[,path=value...] (e.g. model.lrn.enabled=false, "
         "or the paper's cell model.lrn.alpha=1e-4,model.lrn.beta=0.75); Welch's t-test over the seeds. "
         "Default: the best configuration (tune.baseline).")]
Search = Annotated[Optional[str], typer.Option(
    help="Search space: lrn, lr-schedule, lrn+lr, lrn-grid (configs/search/) or a YAML file (tune.search).")]
SearchAlg = Annotated[Optional[str], typer.Option(
    "--search-alg",
    help="random: --num-samples draws of the space, grids enumerated; optuna: TPE (Ray Tune's OptunaSearch) over "
         "the conditional space, --num-samples suggestions, each chosen from the results so far; a repeated "
         "suggestion is not trained again (tune.search_alg).")]
Scheduler = Annotated[Optional[str], typer.Option(
    help="fifo, asha (early stopping on the metric) or pbt (weak trials continue from a strong trial's checkpoint "
         "with perturbed lr) (tune.scheduler).")]
NumSamples = Annotated[Optional[int], typer.Option(
    "--num-samples",
    help="Draws of the space (each draw a whole grid when the space has grid dimensions); draws of one "
         "configuration train once (tune.num_samples).")]
Seeds = Annotated[Optional[int], typer.Option(
    "--seeds",
    help="Seeds per configuration; the results give each configuration's mean, standard deviation, 95 % "
         "confidence interval and a t-test against --baseline (tune.seeds).")]
MaxConcurrent = Annotated[Optional[int], typer.Option(
    "--max-concurrent", help="Trials at once; lowered to what the cluster's CPUs hold (tune.max_concurrent).")]
TrialWorkers = Annotated[Optional[int], typer.Option(
    "--trial-workers", help="Ray Train workers per trial (tune.trial_workers).")]
Resume = Annotated[Optional[str], typer.Option(
    "--resume",
    help="Continue the sweep of this name (under run.storage) after its driver stopped: finished trials are kept, "
         "unfinished ones continue from their last checkpoint, and the searcher (random's plan, optuna's study) "
         "goes on where it was. Its saved config and search space are used; only --address and "
         "--set run.storage=... apply.")]
DryRun = Annotated[bool, typer.Option(
    "--dry-run",
    help="Print the resolved base config, the search space, the configurations and trials it gives, and the "
         "cluster shape; start nothing.")]


@tune_app.command("run")
def tune_run(
    *,
    preset: Preset = None,
    config: ConfigFile = None,
    set_: Sets = None,
    search: Search = None,
    search_alg: SearchAlg = None,
    scheduler: Scheduler = None,
    num_samples: NumSamples = None,
    seeds: Seeds = None,
    baseline: Baseline = None,
    max_concurrent: MaxConcurrent = None,
    trial_workers: TrialWorkers = None,
    epochs: Annotated[Optional[int], typer.Option(help="Epochs of each trial (schedule.epochs).")] = None,
    name: Annotated[Optional[str], typer.Option(
        help="Sweep name; its folder is <run.storage>/<name> (tune.name).")] = None,
    data: Annotated[Optional[str], typer.Option(help="Folder or URL holding the shards (data.root).")] = None,
    address: Annotated[Optional[str], typer.Option(
        help="Existing Ray cluster address. Default: start a local Ray.")] = None,
    resume: Resume = None,
    dry_run: DryRun = False,
) -> None:
    """Search hyperparameters with Ray Tune; print and save the results table, the best config and plots."""
    from cnnctl.orchestrator.tune import space as search_space
    from cnnctl.orchestrator.tune import sweep as sweeps

    flags = {"tune.search": search, "tune.search_alg": search_alg, "tune.scheduler": scheduler,
             "tune.num_samples": num_samples, "tune.seeds": seeds, "tune.baseline": baseline,
             "tune.max_concurrent": max_concurrent, "tune.trial_workers": trial_workers,
             "schedule.epochs": epochs, "tune.name": resume or name, "data.root": data, "parallel.address": address}
    cfg = resolve_options(preset, config, set_, flags)
    if not dry_run and (line := loc.check_access(cfg.run.storage, "run.storage")):
        raise fail(line)
    try:
        if resume and dry_run:  # what --resume would continue; nothing starts
            folder, base, space = sweeps.saved(resume, cfg.run.storage, address)
            return _tune_dry_run(base, space, f"would resume sweep {folder}")
        if resume:
            folder, results = sweeps.resume(resume, cfg.run.storage, address, say=typer.echo)
            return _tune_finish(results, folder)
        cfg = sweeps.trial_shape(cfg)  # one node per trial, tune.trial_workers workers on it
        space = search_space.load(cfg.tune.search)
        if problems := search_space.validate(space, cfg):
            raise ConfigError(problems)
        if dry_run:
            return _tune_dry_run(cfg, space)
        if problems := config_problems(cfg):  # before Ray starts, as `cnnctl train`
            raise ConfigError(problems)
        _tune_finish(sweeps.start(cfg, space, say=typer.echo), sweeps.sweep_dir(cfg))
    except ConfigError as exc:
        raise fail(exc.lines) from None


def _tune_dry_run(cfg, space, note: str = "") -> None:
    """The resolved base config, the search space, and the trials and cluster shape it gives."""
    import yaml

    from cnnctl.orchestrator.tune import sweep as sweeps

    shape = sweeps.shape(cfg, space, sweeps.plan(cfg, space))
    typer.echo(to_yaml(cfg) + "# search space\n"
               + yaml.safe_dump(space.model_dump(mode="json", exclude_none=True), sort_keys=False)
               + f"# cluster: {shape}" + (f"\n# {note}" if note else ""))


def _tune_finish(results, folder: str) -> None:
    _tune_print(folder)
    errors = [r.error for r in results if r.error]
    if errors and len(errors) == len(results):
        raise fail(f"every trial failed; the first: {errors[0]}")
    if errors:
        typer.echo(f"warning: {len(errors)} of {len(results)} trial(s) failed (see the trial folders' error.txt)",
                   err=True)


def _cell(v) -> str:
    if isinstance(v, list):
        return " ".join(map(_cell, v))
    return f"{v:.4g}" if isinstance(v, float) else "" if v is None else str(v)


def _tune_print(folder: str, baseline: str | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    from cnnctl.orchestrator.tune.report import write

    out = write(folder, baseline)
    typer.echo(out["summary"])
    table = Table(*out["header"])
    for row in out["table"]:
        table.add_row(*[_cell(v) for v in row])
    Console(width=220).print(table)
    for line in out["comparisons"]:
        typer.echo(line)
    for key in ("csv", "trials_csv", "best", "metric_vs_params", "parallel_coordinates", "learning_curves"):
        if key in out:
            typer.echo(f"wrote {out[key]}")


@tune_app.command("report", help="Redraw a sweep's results table (per configuration: mean, sd, 95 % CI, seeds), CSVs, "
                                  "best config, comparisons and PNG plots from its folder (no Ray).")
def tune_report(
    sweep: Annotated[str, typer.Argument(
        help="Sweep folder (a local path or a URL), or a sweep name under --storage.")],
    *,
    storage: Annotated[str, typer.Option(help="Where sweeps are stored (run.storage).")] = "runs",
    baseline: Baseline = None,
) -> None:
    folder = sweep if loc.is_url(sweep) or loc.exists(loc.join(sweep, "sweep.yaml")) else loc.join(storage, sweep)
    if line := loc.check_access(folder, "sweep"):
        raise fail(line)
    if not loc.exists(loc.join(folder, "sweep.yaml")):
        raise fail(f"{folder}: not a sweep folder (no sweep.yaml)")
    try:
        _tune_print(folder, baseline)
    except ConfigError as exc:
        raise fail(exc.lines) from None
