"""The `cnnctl` command line. Each command resolves its inputs and calls one plain function."""

from __future__ import annotations

import importlib
import json
import sys
import threading
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated, Optional

import typer

from orchestrator.cli_common import ConfigFile, Preset, Sets, check_data, fail, resolve_options
from orchestrator.cli_groups import default_command
from orchestrator.cluster import connect
from orchestrator.config import to_yaml
from orchestrator.tune.cli import tune_app
from shards import location as loc

app = typer.Typer(
    help="cnnctl: shard ImageNet-style data, then train and tune AlexNet and VGG on Ray.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Also show everything Ray says (start-up, each report and checkpoint, INFO lines).")]


shard_app = typer.Typer(
    cls=default_command("pack"), no_args_is_help=True,
    help="Pack datasets into WebDataset shards (`cnnctl shard SOURCE DEST` = `cnnctl shard pack SOURCE DEST`), verify them, summarise them.",
)
app.add_typer(shard_app, name="shard")


def _pack_plan(req) -> str:
    """`cnnctl shard --dry-run`: what would be packed, resolved without listing or reading an image.

    SOURCE may be a path that exists only where the command will run (a cluster node's volume),
    so the layout and splits are detected only when it is here."""
    import yaml

    from orchestrator.sharding import _resize, parse_bytes
    from shards import manifest as mf
    from shards import sources

    mf.check_url(req.dest)
    if req.layout not in sources.LAYOUTS:
        raise ValueError(f"--layout {req.layout!r}: one of {', '.join(sources.LAYOUTS)}")
    here = req.source == "fashion-mnist" or Path(req.source).exists()
    layout = sources.detect(req.source) if req.layout == "auto" and here else req.layout
    defaults = {"fashion-mnist": ["train", "test"], "imagenet": ["train", "val"], "auto": ["detected from the source"]}
    single = ["val" if layout.startswith("val") or Path(req.source).name.lower() in ("val", "validation") else "train"]
    small = layout == "fashion-mnist"
    prefix = req.prefix or ("fashion-mnist" if small else sources.source_name(req.source))
    plan = {
        "source": req.source,
        "layout": layout if here or layout != "auto" else "auto (detected where the command runs: the source is not on this machine)",
        "splits": req.splits or defaults.get(layout, single),
        "destination": req.dest,
        "shards": f"{prefix}-<split>-NNNNNN.tar, then {prefix}-<split>.manifest.json (written last)",
        "options": {
            "image_format": req.image_format or ("png" if small else "jpg"), "resize": _resize(req.resize, None if small else 256),
            "center_crop": req.center_crop, "quality": req.quality, "shard_size": req.shard_size or (None if req.shard_bytes else 1000),
            "shard_bytes": parse_bytes(req.shard_bytes), "per_class_limit": req.per_class_limit, "seed": req.seed,
            "existing_shards": "rebuilt (--overwrite)" if req.overwrite else "kept (--resume)", "max_errors": req.max_errors,
        },
        "runs_on": f"Ray tasks on the cluster at {req.address}" if req.address else f"{req.workers} local process(es)",
    }
    return yaml.safe_dump(plan, sort_keys=False, width=200).rstrip() + "\n# dry run: nothing was read, started or written"


@shard_app.command("pack")
def shard(
    source: Annotated[str, typer.Argument(help="'fashion-mnist'; a class-folder tree (train/<wnid>/*.JPEG); a flat validation folder; ILSVRC2012_img_train.tar or ILSVRC2012_img_val.tar; or an ImageNet root holding train and val in any of these forms.")],
    dest: Annotated[str, typer.Argument(help="Destination folder or fsspec URL (s3://bucket/path, gs://..., memory://...). pipe: and other shell URLs are refused.")],
    *,
    layout: Annotated[str, typer.Option(help="Source layout: auto, fashion-mnist, class-folders, val-flat, train-tar, val-tar or imagenet (a root with train and val).")] = "auto",
    split: Annotated[Optional[list[str]], typer.Option("--split", help="Split name(s) to write. fashion-mnist: train and test; an ImageNet root: train and val; one folder or tar: train (val for validation layouts).")] = None,
    labels: Annotated[Optional[str], typer.Option(help="Validation labels: Kaggle's LOC_val_solution.csv or the devkit's ILSVRC2012_validation_ground_truth.txt (default: found next to the source).")] = None,
    synsets: Annotated[Optional[str], typer.Option(help="ILSVRC2012_ID -> wnid map for the devkit ground truth: meta.mat or a text file of '<ID> <wnid>' lines (default: found next to the source).")] = None,
    prefix: Annotated[Optional[str], typer.Option(help="Shard name prefix (default: the dataset's name: /data/imagenet/train and ILSVRC2012_img_train.tar give imagenet-train-000000.tar; fashion-mnist for fashion-mnist).")] = None,
    image_format: Annotated[Optional[str], typer.Option("--image-format", help="jpg (RGB baseline JPEG) or png (lossless). Default: png for fashion-mnist, jpg otherwise.")] = None,
    resize: Annotated[Optional[str], typer.Option(help="Shorter side in pixels, or 'none' to keep the size (and the original bytes of RGB baseline JPEGs). Default: none for fashion-mnist, 256 otherwise.")] = None,
    center_crop: Annotated[bool, typer.Option("--center-crop", help="Center-crop to a square after resizing (AlexNet's 256x256).")] = False,
    quality: Annotated[int, typer.Option(min=1, max=100, help="JPEG quality when re-encoding.")] = 90,
    shard_size: Annotated[Optional[int], typer.Option("--shard-size", min=1, help="Samples per shard (default 1000 unless --shard-bytes is given; with both, the smaller).")] = None,
    shard_bytes: Annotated[Optional[str], typer.Option("--shard-bytes", help="Target shard size, e.g. 256MB: samples per shard from a seeded sample's mean encoded size.")] = None,
    per_class_limit: Annotated[Optional[int], typer.Option("--per-class-limit", min=1, help="Keep the first N images of each class (ImageNet-100-style subsets, quick tests).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the permutation that assigns samples to shards (and of the statistics sample).")] = 0,
    workers: Annotated[int, typer.Option(min=1, help="Local processes encoding shards.")] = 1,
    address: Annotated[Optional[str], typer.Option(help="Write the shards as Ray tasks on this existing cluster ('auto', 'host:6379'); every node must reach SOURCE and DEST.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite/--resume", help="Rebuild every shard, or resume: keep the shards an earlier run of the same command published.")] = False,
    max_errors: Annotated[int, typer.Option("--max-errors", min=0, help="Rejected inputs tolerated (recorded in the manifest) before aborting without a manifest.")] = 0,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the resolved layout, splits, destination and options; read no image, start nothing, write nothing.")] = False,
) -> None:
    """Pack a dataset into WebDataset tar shards plus a manifest per split (written last)."""
    from orchestrator.sharding import PackRequest, run_pack

    req = PackRequest(source, dest, split or [], prefix, image_format, resize, center_crop, quality, shard_size, seed, workers, overwrite,
                      max_errors, per_class_limit, layout=layout, labels=labels, synsets=synsets, shard_bytes=shard_bytes, address=address)
    if not dry_run and (line := loc.check_access(dest, "DEST")):
        raise fail(line)
    try:
        if dry_run:
            typer.echo(_pack_plan(req))
            return
        run_pack(req)
    except (ValueError, OSError, RuntimeError) as exc:
        raise fail(getattr(exc, "lines", None) or str(exc)) from None


@shard_app.command("verify")
def shard_verify(
    url: Annotated[str, typer.Argument(help="A manifest URL, or the folder/URL holding the shards (every split there is checked).")],
    *,
    decode: Annotated[bool, typer.Option("--decode", help="Also decode every image (slower).")] = False,
) -> None:
    """Re-read every shard: tar integrity, sha256 and counts against the manifest, unique keys, labels in range."""
    from rich.console import Console

    from orchestrator.sharding import run_verify

    if line := loc.check_access(url, "URL"):
        raise fail(line)
    try:
        problems = run_verify(url, decode, Console())
    except (ValueError, OSError) as exc:
        raise fail(str(exc)) from None
    if problems:
        raise fail(problems)


@shard_app.command("info")
def shard_info(url: Annotated[str, typer.Argument(help="A manifest URL, or the folder/URL holding the shards.")]) -> None:
    """Print a summary table of the packed splits: samples, shards, size, classes, rejected inputs, options."""
    from rich.console import Console

    from orchestrator.sharding import info_table

    if line := loc.check_access(url, "URL"):
        raise fail(line)
    try:
        Console(width=max(140, Console().width)).print(info_table(url))
    except (ValueError, OSError) as exc:
        raise fail(str(exc)) from None


@app.command()
def train(
    *,
    preset: Preset = None,
    config: ConfigFile = None,
    set_: Sets = None,
    nodes: Annotated[Optional[int], typer.Option(help="Ray nodes to spread the workers over (parallel.nodes).")] = None,
    workers_per_node: Annotated[Optional[int], typer.Option("--workers-per-node", help="Ray Train workers per node (parallel.workers_per_node).")] = None,
    gpus: Annotated[Optional[bool], typer.Option("--gpus/--cpu", help="One GPU per worker with NCCL, or CPU with gloo (parallel.gpus).")] = None,
    address: Annotated[Optional[str], typer.Option(help="Existing Ray cluster address ('auto', 'ray://host:10001', ...). Default: start a local Ray.")] = None,
    parallel: Annotated[Optional[str], typer.Option("--parallel", help="dp: data parallel (mp=1); mp: AlexNet's two towers on a rank pair (mp=2, dp=1); hybrid: both (mp=2, dp=world/2); owt: one weird trick, data-parallel convs and the FC layers sliced over each group of parallel.fc_group ranks (mp=1, fc=model).")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Training epochs (schedule.epochs).")] = None,
    name: Annotated[Optional[str], typer.Option(help="Run name; rerunning the same name resumes it (run.name).")] = None,
    data: Annotated[Optional[str], typer.Option(help="Folder or URL holding the shards (data.root).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the resolved config and cluster shape, start nothing.")] = False,
    verbose: Verbose = False,
) -> None:
    """Train a model with Ray Train workers (data parallel; tower parallel with parallel.mp=2; the FC
    layers model parallel with parallel.fc=model, --parallel owt).

    Shows one progress bar per epoch and a row of metrics when it ends (on a non-terminal, a line
    every run.log_every steps instead of the bar)."""
    mp, fc = {None: (None, None), "dp": (1, "data"), "mp": (2, "data"), "hybrid": (2, "data"), "owt": (1, "model")}.get(parallel, (-1, None))
    if mp == -1:
        raise fail(f"--parallel {parallel!r}: dp, mp, hybrid or owt")
    flags = {"parallel.mp": mp, "parallel.fc": fc, "parallel.nodes": nodes, "parallel.workers_per_node": workers_per_node, "parallel.gpus": gpus,
             "parallel.address": address, "schedule.epochs": epochs, "run.name": name, "data.root": data}
    cfg = resolve_options(preset, config, set_, flags)
    p = cfg.parallel
    if (parallel == "mp" and p.dp != 1) or (parallel == "hybrid" and p.dp < 2):
        raise fail(f"--parallel {parallel}: world {p.world} gives dp={p.dp}; mp means dp=1 (world 2), hybrid dp>=2 (world >= 4)")
    shape = p.shape()
    if dry_run:
        typer.echo(to_yaml(cfg) + f"# cluster: {shape}")
        return
    from orchestrator import tracking

    problems = check_data(cfg) + tracking.check(cfg)
    if problems:
        raise fail(problems)
    from orchestrator import resume

    try:  # a rerun that would resume mid-epoch at another layout: refused before Ray starts
        resume.check(cfg, loc.join(loc.absolute(cfg.run.storage), cfg.run.name))
    except ValueError as exc:
        raise fail(str(exc)) from None
    # Importing the training code and torch (seconds) overlaps with starting Ray, which stays on this
    # thread (Ray ends the processes it starts when the thread that started them ends). Ray Train is
    # imported later, by build_trainer: only after connect() has set a cluster's auth env.
    importer = threading.Thread(target=importlib.import_module, args=("orchestrator.train",), daemon=True)
    importer.start()
    try:
        connect(p.address, cpus_needed=p.world * p.cpus_per_worker, verbose=verbose)
    except RuntimeError as exc:  # a cluster that cannot be joined
        raise fail(str(exc)) from None
    importer.join()
    from orchestrator.console import short
    from orchestrator.runs import TrainingFailed, watched_fit
    from orchestrator.train import run_dir

    typer.echo(f"training {cfg.model.name} on {cfg.data.root} | {shape} | run {run_dir(cfg)}")
    try:
        result = watched_fit(cfg, verbose)
    except TrainingFailed as exc:  # the worker's own traceback is above, under its name
        raise fail(f"training failed: {exc}") from None
    final = result.metrics or {}
    # Ray's Checkpoint.path is the path inside its filesystem (no scheme): name it in the run's own store
    where = loc.join(run_dir(cfg), loc.name(result.checkpoint.path)) if result.checkpoint else None
    typer.echo(f"done: epoch {final.get('epoch')} val_top1 {final.get('val_top1', float('nan')):.4f} | checkpoint {where and short(where)}")


@app.command("eval")
def eval_(
    checkpoints: Annotated[list[str], typer.Argument(help="Checkpoint folder(s) or run folder(s) (the newest complete checkpoint is used).")],
    *,
    data: Annotated[Optional[str], typer.Option(help="Folder or URL holding the shards (default: the checkpoint's data.root).")] = None,
    split: Annotated[str, typer.Option(help="Split to evaluate.")] = "test",
    out: Annotated[Optional[str], typer.Option(help="Where to write the JSON result, a local path or a URL (default: eval-<split>.json in the checkpoint folder, in its store).")] = None,
    threads: Annotated[int, typer.Option(min=1, help="torch threads of the evaluating process; with Ray workers, of each worker, which reserves as many CPUs.")] = 2,
    tta: Annotated[Optional[str], typer.Option(help="Test views: center (the centre crop), ten-crop (AlexNet: 4 corners + centre, and their flips), dense (VGG: the fully-convolutional net on the whole image at each of --scales). Default: the run's eval.tta, which the imagenet-* presets set to their paper's.")] = None,
    scales: Annotated[Optional[str], typer.Option(help="dense: comma-separated shorter sides Q the image is rescaled to, e.g. 224,256,288 (default: the run's eval.scales, else as stored).")] = None,
    flip: Annotated[Optional[bool], typer.Option("--flip/--no-flip", help="Also average the softmax of the horizontally flipped views (center, dense). Default: the run's eval.flip.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(min=1, help="Images per forward (default: the run's data.batch_size; dense: 8 images of one size, which share a batch).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON (what --out holds) instead of a table.")] = False,
    workers: Annotated[Optional[int], typer.Option(min=1, help="Ray workers sharing the split, each evaluating its own exact part (every image once); the driver adds their sums. Default: one evaluation in this process, without Ray (or --nodes x --workers-per-node).")] = None,
    nodes: Annotated[Optional[int], typer.Option(min=1, help="Ray nodes to pin the workers to, --workers-per-node on each (as `cnnctl train`). Default: wherever the workers fit.")] = None,
    workers_per_node: Annotated[Optional[int], typer.Option("--workers-per-node", min=1, help="Ray workers on each of --nodes.")] = None,
    gpus: Annotated[bool, typer.Option("--gpus/--cpu", help="One GPU per Ray worker, evaluating there (implies Ray, one worker unless --workers).")] = False,
    address: Annotated[Optional[str], typer.Option(help="Existing Ray cluster address ('auto', 'host:6379', ...) to run the workers on. Default with --workers/--gpus: start a local Ray.")] = None,
    verbose: Verbose = False,
) -> None:
    """Top-1/top-5 of a checkpoint on a split; several checkpoints average their softmax (with every TTA view).

    With --workers N (or --nodes/--workers-per-node, --gpus, --address) N Ray workers each evaluate
    an exact part of the split and the driver adds their sums: the same top-1 and top-5 as one
    process, the loss to rounding, with a progress bar (images, img/s, time left)."""
    from orchestrator.eval_ray import layout
    from orchestrator.evaluate import plan_eval, run_eval

    try:
        qs = [int(q) for q in scales.split(",") if q.strip()] if scales else None
    except ValueError:
        raise fail(f"--scales {scales!r}: expected comma-separated integers such as 256,384,512") from None
    unreachable = [line for c in checkpoints if (line := loc.check_access(c, "checkpoint"))]
    if data and (line := loc.check_access(data, "--data")):
        unreachable.append(line)
    if unreachable:
        raise fail(unreachable)
    try:
        lay = layout(workers, nodes, workers_per_node)
        if lay.workers == 1 and not (lay.nodes or gpus or address):
            result = run_eval(checkpoints, data=data, split=split, out=out, threads=threads, tta=tta, scales=qs, flip=flip,
                              batch_size=batch_size)
        else:  # everything checked here, before Ray starts
            plan = plan_eval(checkpoints, data=data, split=split, tta=tta, scales=qs, flip=flip, batch_size=batch_size)
            result = _eval_on_ray(plan, lay, threads, gpus, address, out, verbose, show=not as_json)
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        raise fail(str(exc)) from None
    if as_json:
        typer.echo(json.dumps(result, indent=1))
        return
    from rich.console import Console

    from orchestrator.console import eval_table

    out = Console(highlight=False, soft_wrap=True)
    out.print(eval_table(result))
    out.print(f"wrote {result['written_to']}", markup=False)


def _eval_on_ray(plan, lay, threads: int, gpus: bool, address: str | None, out: str | None, verbose: bool, show: bool) -> dict:
    from orchestrator import eval_ray
    from orchestrator.console import EvalProgress
    from orchestrator.evaluate import result_of

    connect(address, cpus_needed=lay.workers * threads, verbose=verbose)
    with EvalProgress(f"eval {plan.split}") if show else nullcontext() as bar:  # --json: nothing but the JSON
        try:
            sums, run = eval_ray.run(plan, lay, threads, gpus, bar.update if show else None)
        except eval_ray.EvalFailed as exc:  # the worker's traceback, then one error line
            typer.echo(exc.trace, err=True)
            raise
    return result_of(plan, sums, run.pop("seconds"), out, **run)


@app.command("models")
def models_(
    *,
    num_classes: Annotated[int, typer.Option("--num-classes", min=2, help="Classes of the final layer.")] = 1000,
) -> None:
    """Table of the registered models: parameters, GMACs at the native input size (measured with
    torch.utils.flop_counter), input size, towers, LRN."""
    import models
    from rich.console import Console
    from rich.table import Table

    table = Table("name", "parameters", "GMACs", "input", "towers", "LRN (paper units: n, k, alpha, beta)")
    for name in models.names():
        row = models.describe(name, num_classes=num_classes)
        lrn = row["lrn"]
        lrn_text = f"n={lrn['n']} k={lrn['k']:g} alpha={lrn['alpha']:g} beta={lrn['beta']:g}" if lrn else "-"
        table.add_row(name, f"{row['params']:,}", f"{row['gmacs']:.3f}", f"{row['input_size']}²", str(row["towers"]), lrn_text)
    Console(width=max(140, Console().width)).print(table)


@app.command()
def report(
    runs: Annotated[list[str], typer.Argument(help="Run folder(s) (runs/<name>) holding metrics.jsonl; several are drawn on shared panels.")],
    *,
    out: Annotated[Optional[str], typer.Option(help="PNG to write, a local path or a URL (default: <run>/report.png; several runs: report-<a>+<b>.png beside the first, in its store).")] = None,
) -> None:
    """Draw loss, accuracy, learning rate and img/s against epoch as a PNG; several runs overlaid,
    the legend saying what differs between their configs."""
    from orchestrator.report import plot_run, plot_runs

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
    storage: Annotated[str, typer.Argument(help="Where the runs are stored (run.storage): a folder or a URL.")] = "runs",
    *,
    as_json: Annotated[bool, typer.Option("--json", help="Print the rows as JSON instead of a table.")] = False,
) -> None:
    """List the runs under STORAGE: model, layout, epochs done of planned, best and last val top-1,
    status (running, finished, failed, resumable) and where each is."""
    from dataclasses import asdict

    from rich.console import Console

    from orchestrator.console import runs_table
    from orchestrator.runs import list_runs

    if line := loc.check_access(storage, "STORAGE"):
        raise fail(line)
    rows = list_runs(storage)
    if as_json:
        typer.echo(json.dumps([asdict(r) for r in rows], indent=1))
    elif not rows:
        typer.echo(f"no runs under {storage}")
    else:
        Console(highlight=False, width=max(240, Console().width)).print(runs_table(rows))  # a log keeps every column


cluster_app = typer.Typer(help="A real multi-node Ray cluster on this machine (head + worker raylets, token auth, loopback).", no_args_is_help=True)
app.add_typer(cluster_app, name="cluster")
StateDir = Annotated[Optional[Path], typer.Option("--state-dir", help="Where the cluster's pids, token and logs are kept (default ~/.cnnctl/cluster).")]


@cluster_app.command("up")
def cluster_up(
    *,
    local: Annotated[bool, typer.Option("--local", help="Start the nodes on this machine (the only mode; remote clusters come from deploy/).")] = False,
    nodes: Annotated[int, typer.Option(min=1, help="Ray nodes: one head plus nodes-1 worker raylets.")] = 2,
    cpus_per_node: Annotated[float, typer.Option("--cpus-per-node", min=0.5, help="Logical CPUs each node offers.")] = 2,
    state_dir: StateDir = None,
) -> None:
    """Start a local multi-node Ray cluster and print the address to pass to --address."""
    from orchestrator import cluster

    if not local:
        raise fail("only --local clusters are started by cnnctl; see deploy/ for the cluster launcher and KubeRay")
    try:
        c = cluster.up_local(nodes, cpus_per_node, state_dir or cluster.DEFAULT_STATE)
    except cluster.ClusterError as exc:
        raise fail(str(exc)) from None
    typer.echo(f"cluster up: {c.nodes} nodes x {c.cpus_per_node:g} CPUs at {c.address} "
               f"(token auth on, token {c.token_path} mode 0600; every node listens on {cluster.LOOPBACK} only)")
    typer.echo(f"  cnnctl train --address {c.address} --nodes {c.nodes} ...")
    typer.echo(f"  other Ray clients: export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH={c.token_path}")


@cluster_app.command("status")
def cluster_status(*, state_dir: StateDir = None) -> None:
    """Print the local cluster's address and whether its node processes are alive."""
    from orchestrator import cluster

    c = cluster.load(state_dir or cluster.DEFAULT_STATE)
    if c is None:
        raise fail("no local cluster is up (cnnctl cluster up --local)")
    alive = [cluster.node_alive(p, t) for p, t in c.processes()]
    typer.echo(f"address {c.address}; nodes {sum(alive)}/{len(alive)} alive; token {c.token_path}")
    if not all(alive):
        raise typer.Exit(1)


@cluster_app.command("down")
def cluster_down(*, state_dir: StateDir = None) -> None:
    """Stop the processes `cluster up` started (by their own pids)."""
    from orchestrator import cluster

    pids = cluster.down(state_dir or cluster.DEFAULT_STATE)
    typer.echo(f"stopped {len(pids)} node(s)" if pids else "no local cluster was up")


app.add_typer(tune_app, name="tune")


def main() -> None:  # pragma: no cover - console script convenience
    sys.exit(app())
