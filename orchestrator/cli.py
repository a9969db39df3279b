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

from models import layout as layouts
from orchestrator.cli_groups import default_command
from orchestrator.cluster import connect
from orchestrator.config import ConfigError, RunConfig, resolve, to_yaml
from shards import location as loc

app = typer.Typer(
    help="cnnctl: shard ImageNet-style data, then train and tune AlexNet and VGG on Ray.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def fail(lines: list[str] | str, code: int = 1) -> typer.Exit:
    for line in [lines] if isinstance(lines, str) else lines:
        typer.echo(f"error: {line}", err=True)
    return typer.Exit(code)


Preset = Annotated[Optional[str], typer.Option("--preset", help="Preset from configs/ (e.g. demo-fashion), applied before --config.")]
ConfigFile = Annotated[Optional[str], typer.Option("--config", help="YAML file (a local path or a URL such as s3://bucket/runs/x/config.yaml) with RunConfig sections (data, model, optim, schedule, parallel, run, tune).")]
Sets = Annotated[Optional[list[str]], typer.Option("--set", help="Override one field, e.g. --set model.lrn.alpha=2e-4 (repeatable).")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Also show everything Ray says (start-up, each report and checkpoint, INFO lines).")]


def check_data(cfg: RunConfig) -> list[str]:
    """Problems with the stores, the configured splits and model.init_from, found before Ray or any
    worker starts."""
    from shards.manifest import check_splits

    # an object store that cannot be reached (no bucket, no credentials) is one line, not a worker's trace
    unreachable = [line for what, url in (("data.root", cfg.data.root), ("run.storage", cfg.run.storage),
                                          ("model.init_from", cfg.model.init_from or ""))
                   if (line := loc.check_access(url, what))]
    if unreachable:
        return unreachable
    problems = check_splits(cfg.data.root, cfg.data.prefix, [cfg.data.train_split, cfg.data.val_split])
    if not problems and (line := _epoch_has_steps(cfg)):
        problems.append(line)
    if cfg.model.init_from:  # a source that cannot initialise this model is refused before Ray starts
        from orchestrator.modeling import init_source

        try:
            init_source(cfg)
        except ValueError as exc:
            problems.append(str(exc))
    return problems


def _epoch_has_steps(cfg: RunConfig) -> str | None:
    """One line when the training split holds less than one global batch: every dp rank takes
    (samples // dp) // (batch_size // dp) steps an epoch (shards/reader.py), here none."""
    from shards import manifest as mf

    d, dp = cfg.data, cfg.parallel.dp
    samples = mf.load(mf.manifest_url(d.root, d.prefix, d.train_split))["num_samples"]
    samples = samples if d.limit is None else min(d.limit, samples)
    if (samples // dp) // max(d.batch_size // dp, 1) == 0:
        limited = " (data.limit)" if d.limit is not None and d.limit <= samples else ""
        return (f"data ({d.train_split}): {samples} samples{limited}, fewer than one global batch of {d.batch_size} "
                f"(data.batch_size, over dp={dp}): an epoch would have no step; lower data.batch_size or use a larger split")
    return None


def _config(preset, config_file, sets, flags) -> RunConfig:
    try:
        return resolve(preset, config_file, sets, flags)
    except ConfigError as exc:
        raise fail(exc.lines) from None


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
    parallel: Annotated[Optional[str], typer.Option("--parallel", help=layouts.NAMED_HELP)] = None,
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
    try:
        named = layouts.named(parallel) if parallel is not None else None
    except ValueError as exc:
        raise fail(str(exc)) from None
    flags = {"parallel.mp": named.mp if named else None, "parallel.fc": named.fc if named else None, "parallel.nodes": nodes,
             "parallel.workers_per_node": workers_per_node, "parallel.gpus": gpus,
             "parallel.address": address, "schedule.epochs": epochs, "run.name": name, "data.root": data}
    cfg = _config(preset, config, set_, flags)
    p = cfg.parallel
    if named and (line := named.problem(p.layout)):
        raise fail(line)
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


tune_app = typer.Typer(cls=default_command("run", bare_runs_default=True), help="Ray Tune sweeps over LRN settings and lr schedules; each trial is a Ray Train run (`cnnctl tune [OPTIONS]` = `cnnctl tune run [OPTIONS]`).")
app.add_typer(tune_app, name="tune")


Baseline = Annotated[Optional[str], typer.Option(help="The configuration every other is compared with, path=value[,path=value...] (e.g. model.lrn.enabled=false, or the paper's cell model.lrn.alpha=1e-4,model.lrn.beta=0.75); Welch's t-test over the seeds. Default: the best configuration (tune.baseline).")]


@tune_app.command("run")
def tune_run(
    *,
    preset: Preset = None,
    config: ConfigFile = None,
    set_: Sets = None,
    search: Annotated[Optional[str], typer.Option(help="Search space: lrn, lr-schedule, lrn+lr, lrn-grid (configs/search/) or a YAML file (tune.search).")] = None,
    search_alg: Annotated[Optional[str], typer.Option("--search-alg", help="random: --num-samples draws of the space, grids enumerated; optuna: TPE (Ray Tune's OptunaSearch) over the conditional space, --num-samples suggestions, each chosen from the results so far; a repeated suggestion is not trained again (tune.search_alg).")] = None,
    scheduler: Annotated[Optional[str], typer.Option(help="fifo, asha (early stopping on the metric) or pbt (weak trials continue from a strong trial's checkpoint with perturbed lr) (tune.scheduler).")] = None,
    num_samples: Annotated[Optional[int], typer.Option("--num-samples", help="Draws of the space (each draw a whole grid when the space has grid dimensions); draws of one configuration train once (tune.num_samples).")] = None,
    seeds: Annotated[Optional[int], typer.Option("--seeds", help="Seeds per configuration; the results give each configuration's mean, standard deviation, 95 % confidence interval and a t-test against --baseline (tune.seeds).")] = None,
    baseline: Baseline = None,
    max_concurrent: Annotated[Optional[int], typer.Option("--max-concurrent", help="Trials at once; lowered to what the cluster's CPUs hold (tune.max_concurrent).")] = None,
    trial_workers: Annotated[Optional[int], typer.Option("--trial-workers", help="Ray Train workers per trial (tune.trial_workers).")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Epochs of each trial (schedule.epochs).")] = None,
    name: Annotated[Optional[str], typer.Option(help="Sweep name; its folder is <run.storage>/<name> (tune.name).")] = None,
    data: Annotated[Optional[str], typer.Option(help="Folder or URL holding the shards (data.root).")] = None,
    address: Annotated[Optional[str], typer.Option(help="Existing Ray cluster address. Default: start a local Ray.")] = None,
    resume: Annotated[Optional[str], typer.Option("--resume", help="Continue the sweep of this name (under run.storage) after its driver stopped: finished trials are kept, unfinished ones continue from their last checkpoint, and the searcher (random's plan, optuna's study) goes on where it was. Its saved config and search space are used; only --address and --set run.storage=... apply.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the resolved base config, the search space, the configurations and trials it gives, and the cluster shape; start nothing.")] = False,
) -> None:
    """Search hyperparameters with Ray Tune; print and save the results table, the best config and plots."""
    from orchestrator import search_space
    from orchestrator import tune as sweeps

    flags = {"tune.search": search, "tune.search_alg": search_alg, "tune.scheduler": scheduler, "tune.num_samples": num_samples,
             "tune.seeds": seeds, "tune.baseline": baseline, "tune.max_concurrent": max_concurrent, "tune.trial_workers": trial_workers,
             "schedule.epochs": epochs, "tune.name": resume or name, "data.root": data, "parallel.address": address}
    cfg = _config(preset, config, set_, flags)
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
        if problems := check_data(cfg):
            raise ConfigError(problems)
        _tune_finish(sweeps.start(cfg, space, say=typer.echo), sweeps.sweep_dir(cfg))
    except ConfigError as exc:
        raise fail(exc.lines) from None


def _tune_dry_run(cfg, space, note: str = "") -> None:
    """The resolved base config, the search space, and the trials and cluster shape it gives."""
    import yaml

    from orchestrator import tune as sweeps

    shape = sweeps.shape(cfg, space, sweeps.plan(cfg, space))
    typer.echo(to_yaml(cfg) + "# search space\n" + yaml.safe_dump(space.model_dump(mode="json", exclude_none=True), sort_keys=False)
               + f"# cluster: {shape}" + (f"\n# {note}" if note else ""))


def _tune_finish(results, folder: str) -> None:
    _tune_print(folder)
    errors = [r.error for r in results if r.error]
    if errors and len(errors) == len(results):
        raise fail(f"every trial failed; the first: {errors[0]}")
    if errors:
        typer.echo(f"warning: {len(errors)} of {len(results)} trial(s) failed (see the trial folders' error.txt)", err=True)


def _cell(v) -> str:
    if isinstance(v, list):
        return " ".join(map(_cell, v))
    return f"{v:.4g}" if isinstance(v, float) else "" if v is None else str(v)


def _tune_print(folder: str, baseline: str | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    from orchestrator.tune_report import write

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


@tune_app.command("report")
def tune_report(
    sweep: Annotated[str, typer.Argument(help="Sweep folder (a local path or a URL), or a sweep name under --storage.")],
    *,
    storage: Annotated[str, typer.Option(help="Where sweeps are stored (run.storage).")] = "runs",
    baseline: Baseline = None,
) -> None:
    """Redraw a sweep's results table (per configuration: mean, sd, 95 % CI, seeds), CSVs, best config, comparisons and PNG plots from its folder (no Ray)."""
    folder = sweep if loc.is_url(sweep) or loc.exists(loc.join(sweep, "sweep.yaml")) else loc.join(storage, sweep)
    if line := loc.check_access(folder, "sweep"):
        raise fail(line)
    if not loc.exists(loc.join(folder, "sweep.yaml")):
        raise fail(f"{folder}: not a sweep folder (no sweep.yaml)")
    try:
        _tune_print(folder, baseline)
    except ConfigError as exc:
        raise fail(exc.lines) from None


def main() -> None:  # pragma: no cover - console script convenience
    sys.exit(app())
