"""The `cnnctl` command line. Each command parses its options, resolves them once, calls one library
function and prints what it returns: `shard` (orchestrator/cli_shard.py, sharding.py), `train`
(preflight.py, launch.py), `eval` (eval_ray.py), `models`, `report`, `runs`, `cluster` and `tune`."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Optional

import typer

from cnnctl.models import layout as layouts
from cnnctl.orchestrator.cli_cluster import cluster_app
from cnnctl.orchestrator.cli_common import ConfigFile, Preset, Sets, Verbose, resolve_options
from cnnctl.orchestrator.cli_groups import fail
from cnnctl.orchestrator.cli_shard import shard_app
from cnnctl.orchestrator.config import to_yaml
from cnnctl.orchestrator.preflight import PreflightError, preflight
from cnnctl.orchestrator.tune.cli import tune_app
from cnnctl.shards import location as loc

app = typer.Typer(
    help="cnnctl: shard ImageNet-style data, then train and tune AlexNet and VGG on Ray.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(shard_app, name="shard")
app.add_typer(cluster_app, name="cluster")


@app.command()
def train(
    *,
    preset: Preset = None,
    config: ConfigFile = None,
    set_: Sets = None,
    nodes: Annotated[Optional[str], typer.Option(help=(
        "Ray nodes to spread the workers over (parallel.nodes), or MIN-MAX: elastic, training on as many whole "
        "nodes as the cluster holds, resized from the newest checkpoint when one is lost or returns "
        "(parallel.min_nodes; set run.checkpoint_every_steps)."))] = None,
    workers_per_node: Annotated[Optional[int], typer.Option(
        "--workers-per-node", help="Ray Train workers per node (parallel.workers_per_node).")] = None,
    gpus: Annotated[Optional[bool], typer.Option(
        "--gpus/--cpu", help="One GPU per worker with NCCL, or CPU with gloo (parallel.gpus).")] = None,
    address: Annotated[Optional[str], typer.Option(
        help="Existing Ray cluster address ('auto', 'ray://host:10001', ...). Default: start a local Ray.")] = None,
    parallel: Annotated[Optional[str], typer.Option("--parallel", help=layouts.NAMED_HELP)] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Training epochs (schedule.epochs).")] = None,
    name: Annotated[Optional[str], typer.Option(
        help="Run name; rerunning the same name resumes it (run.name).")] = None,
    data: Annotated[Optional[str], typer.Option(help="Folder or URL holding the shards (data.root).")] = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Print the resolved config and cluster shape, start nothing.")] = False,
    verbose: Verbose = False,
) -> None:
    """Train a model with Ray Train workers (data parallel; tower parallel with parallel.mp=2; the FC
    layers model parallel with parallel.fc=model, --parallel owt).

    Shows one progress bar per epoch and a row of metrics when it ends (on a non-terminal, a line
    every run.log_every steps instead of the bar)."""
    try:
        named = layouts.named(parallel) if parallel is not None else None
        least, most = node_range(nodes) if nodes is not None else (None, None)
    except ValueError as exc:
        raise fail(str(exc)) from None
    flags = {"parallel.mp": named.mp if named else None, "parallel.fc": named.fc if named else None,
             "parallel.nodes": most, "parallel.min_nodes": least, "parallel.workers_per_node": workers_per_node,
             "parallel.gpus": gpus,
             "parallel.address": address, "schedule.epochs": epochs, "run.name": name, "data.root": data}
    cfg = resolve_options(preset, config, set_, flags)
    p = cfg.parallel
    if named and (line := named.problem(p.layout)):
        raise fail(line)
    try:
        shape = preflight(cfg, dry_run=dry_run, verbose=verbose)  # data, stores, resume, then Ray: once
    except PreflightError as exc:
        raise fail(exc.lines) from None
    if dry_run:
        typer.echo(to_yaml(cfg) + f"# cluster: {shape}")
        return
    from cnnctl.orchestrator.console import short
    from cnnctl.orchestrator.launch import TrainingFailed, watched_fit
    from cnnctl.orchestrator.train import run_dir

    typer.echo(f"training {cfg.model.name} on {cfg.data.root} | {shape} | run {run_dir(cfg)}")
    try:
        result = watched_fit(cfg, verbose)
    except TrainingFailed as exc:  # the worker's own traceback is above, under its name
        raise fail(f"training failed: {exc}") from None
    final = result.metrics or {}
    # Ray's Checkpoint.path is the path inside its filesystem (no scheme): name it in the run's own store
    where = loc.join(run_dir(cfg), loc.name(result.checkpoint.path)) if result.checkpoint else None
    typer.echo(f"done: epoch {final.get('epoch')} val_top1 {final.get('val_top1', float('nan')):.4f} | "
               f"checkpoint {where and short(where)}")


def node_range(text: str) -> tuple[int | None, int]:
    """--nodes N (None, N) or MIN-MAX (MIN, MAX): whole numbers of nodes, at least one."""
    parts = text.split("-")
    if len(parts) > 2 or not all(p.strip().isdigit() and int(p) >= 1 for p in parts):
        raise ValueError(f"--nodes {text!r}: a number of nodes (4) or a range MIN-MAX (2-4), each at least 1")
    return (int(parts[0]) if len(parts) == 2 else None), int(parts[-1])


@app.command("eval")
def eval_(
    checkpoints: Annotated[list[str], typer.Argument(
        help="Checkpoint folder(s) or run folder(s) (the newest complete checkpoint is used).")],
    *,
    data: Annotated[Optional[str], typer.Option(
        help="Folder or URL holding the shards (default: the checkpoint's data.root).")] = None,
    split: Annotated[str, typer.Option(help="Split to evaluate.")] = "test",
    out: Annotated[Optional[str], typer.Option(
        help="Where to write the JSON result, a local path or a URL (default: eval-<split>.json in the checkpoint "
        "folder, in its store).")] = None,
    threads: Annotated[int, typer.Option(
        min=1, help="torch threads of the evaluating process; with Ray workers, of each worker, which reserves as "
        "many CPUs.")] = 2,
    tta: Annotated[Optional[str], typer.Option(
        help="Test views: center (the centre crop), ten-crop (AlexNet: 4 corners + centre, and their flips), dense "
        "(VGG: the fully-convolutional net on the whole image at each of --scales). Default: the run's eval.tta, "
        "which the imagenet-* presets set to their paper's.")] = None,
    scales: Annotated[Optional[str], typer.Option(
        help="dense: comma-separated shorter sides Q the image is rescaled to, e.g. 224,256,288 (default: the run's "
        "eval.scales, else as stored).")] = None,
    flip: Annotated[Optional[bool], typer.Option(
        "--flip/--no-flip", help="Also average the softmax of the horizontally flipped views (center, dense). "
        "Default: the run's eval.flip.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(
        min=1, help="Images per forward (default: the run's data.batch_size; dense: 8 images of one size, which "
        "share a batch).")] = None,
    as_json: Annotated[bool, typer.Option(
        "--json", help="Print the result as JSON (what --out holds) instead of a table.")] = False,
    workers: Annotated[Optional[int], typer.Option(
        min=1, help="Ray workers sharing the split, each evaluating its own exact part (every image once); the "
        "driver adds their sums. Default: one evaluation in this process, without Ray (or --nodes x "
        "--workers-per-node).")] = None,
    nodes: Annotated[Optional[int], typer.Option(
        min=1, help="Ray nodes to pin the workers to, --workers-per-node on each (as `cnnctl train`). Default: "
        "wherever the workers fit.")] = None,
    workers_per_node: Annotated[Optional[int], typer.Option(
        "--workers-per-node", min=1, help="Ray workers on each of --nodes.")] = None,
    gpus: Annotated[bool, typer.Option(
        "--gpus/--cpu", help="One GPU per Ray worker, evaluating there (implies Ray, one worker unless "
        "--workers).")] = False,
    address: Annotated[Optional[str], typer.Option(
        help="Existing Ray cluster address ('auto', 'host:6379', ...) to run the workers on. Default with "
        "--workers/--gpus: start a local Ray.")] = None,
    verbose: Verbose = False,
) -> None:
    """Top-1/top-5 of a checkpoint on a split; several checkpoints average their softmax (with every TTA view).

    With --workers N (or --nodes/--workers-per-node, --gpus, --address) N Ray workers each evaluate
    an exact part of the split and the driver adds their sums: the same top-1 and top-5 as one
    process, the loss to rounding, with a progress bar (images, img/s, time left)."""
    from cnnctl.orchestrator import eval_ray

    try:
        qs = [int(q) for q in scales.split(",") if q.strip()] if scales else None
    except ValueError:
        raise fail(f"--scales {scales!r}: expected comma-separated integers such as 256,384,512") from None
    unreachable = [line for c in checkpoints if (line := loc.check_access(c, "checkpoint"))]
    if data and (line := loc.check_access(data, "--data")):
        unreachable.append(line)
    if unreachable:
        raise fail(unreachable)
    views = {"data": data, "split": split, "tta": tta, "scales": qs, "flip": flip, "batch_size": batch_size}
    try:
        lay = eval_ray.layout(workers, nodes, workers_per_node)
        result = eval_ray.evaluate(checkpoints, lay, views, threads=threads, gpus=gpus, address=address, out=out,
                                   verbose=verbose, show=not as_json)
    except eval_ray.EvalFailed as exc:  # the worker's traceback, then one error line
        typer.echo(exc.trace, err=True)
        raise fail(str(exc)) from None
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        raise fail(str(exc)) from None
    if as_json:
        typer.echo(json.dumps(result, indent=1))
        return
    from rich.console import Console

    from cnnctl.orchestrator.console import eval_table

    out = Console(highlight=False, soft_wrap=True)
    out.print(eval_table(result))
    out.print(f"wrote {result['written_to']}", markup=False)


@app.command("models")
def models_(
    *,
    num_classes: Annotated[int, typer.Option("--num-classes", min=2, help="Classes of the final layer.")] = 1000,
) -> None:
    """Table of the registered models: parameters, GMACs at the native input size (measured with
    torch.utils.flop_counter), input size, towers, LRN."""
    from cnnctl import models
    from rich.console import Console
    from rich.table import Table

    table = Table("name", "parameters", "GMACs", "input", "towers", "LRN (paper units: n, k, alpha, beta)")
    for name in models.names():
        row = models.describe(name, num_classes=num_classes)
        lrn = row["lrn"]
        lrn_text = f"n={lrn['n']} k={lrn['k']:g} alpha={lrn['alpha']:g} beta={lrn['beta']:g}" if lrn else "-"
        table.add_row(name, f"{row['params']:,}", f"{row['gmacs']:.3f}", f"{row['input_size']}²", str(row["towers"]),
                      lrn_text)
    Console(width=max(140, Console().width)).print(table)


@app.command()
def report(
    runs: Annotated[list[str], typer.Argument(
        help="Run folder(s) (runs/<name>) holding metrics.jsonl; several are drawn on shared panels.")],
    *,
    out: Annotated[Optional[str], typer.Option(
        help="PNG to write, a local path or a URL (default: <run>/report.png; several runs: report-<a>+<b>.png "
        "beside the first, in its store).")] = None,
) -> None:
    """Draw loss, accuracy, learning rate and img/s against epoch as a PNG; several runs overlaid,
    the legend saying what differs between their configs."""
    from cnnctl.orchestrator.report import plot_run, plot_runs

    unreachable = [line for run in runs if (line := loc.check_access(run, "run"))]
    if unreachable:
        raise fail(unreachable)
    try:
        path = plot_run(runs[0], out) if len(runs) == 1 else plot_runs(runs, out)
    except FileNotFoundError as exc:
        raise fail(str(exc)) from None
    typer.echo(f"wrote {path}")


@app.command("runs")
def runs_(
    storage: Annotated[str, typer.Argument(
        help="Where the runs are stored (run.storage): a folder or a URL.")] = "runs",
    *,
    as_json: Annotated[bool, typer.Option("--json", help="Print the rows as JSON instead of a table.")] = False,
) -> None:
    """List the runs under STORAGE: model, layout, epochs done of planned, best and last val top-1,
    status (running, finished, failed, resumable) and where each is."""
    from dataclasses import asdict

    from rich.console import Console

    from cnnctl.orchestrator.console import runs_table
    from cnnctl.orchestrator.runs import list_runs

    if line := loc.check_access(storage, "STORAGE"):
        raise fail(line)
    rows = list_runs(storage)
    if as_json:
        typer.echo(json.dumps([asdict(r) for r in rows], indent=1))
    elif not rows:
        typer.echo(f"no runs under {storage}")
    else:
        # a log keeps every column
        Console(highlight=False, width=max(240, Console().width)).print(runs_table(rows))


app.add_typer(tune_app, name="tune")


def main() -> None:  # pragma: no cover - console script convenience
    sys.exit(app())
