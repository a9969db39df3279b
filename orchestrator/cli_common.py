"""What the `cnnctl` command groups share: the error exit, the config options every training command
takes (--preset, --config, --set) and their resolution, and the data check run before Ray starts.
The main app (cli.py) and the sweep commands (tune/cli.py) both import it."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from orchestrator.config import ConfigError, RunConfig, resolve
from shards import location as loc


def fail(lines: list[str] | str, code: int = 1) -> typer.Exit:
    for line in [lines] if isinstance(lines, str) else lines:
        typer.echo(f"error: {line}", err=True)
    return typer.Exit(code)


Preset = Annotated[Optional[str], typer.Option(
    "--preset", help="Preset from configs/ (e.g. demo-fashion), applied before --config.")]
ConfigFile = Annotated[Optional[str], typer.Option(
    "--config", help="YAML file (a local path or a URL such as s3://bucket/runs/x/config.yaml) with RunConfig "
                     "sections (data, model, optim, schedule, parallel, run, tune).")]
Sets = Annotated[Optional[list[str]], typer.Option(
    "--set", help="Override one field, e.g. --set model.lrn.alpha=2e-4 (repeatable).")]


def resolve_options(preset, config_file, sets, flags) -> RunConfig:
    """The config of --preset, --config, --set and the command's flags; a refused one exits with its lines."""
    try:
        return resolve(preset, config_file, sets, flags)
    except ConfigError as exc:
        raise fail(exc.lines) from None


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
                f"(data.batch_size, over dp={dp}): an epoch would have no step; "
                "lower data.batch_size or use a larger split")
    return None
