"""The config options every training command takes (--preset, --config, --set, --verbose) and their
resolution. The main app (cli.py) and the sweep commands (tune/cli.py) both import them."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from cnnctl.orchestrator.cli_groups import fail
from cnnctl.orchestrator.config import ConfigError, RunConfig, resolve

Preset = Annotated[Optional[str], typer.Option(
    "--preset", help="Preset from configs/ (e.g. demo-fashion), applied before --config.")]
ConfigFile = Annotated[Optional[str], typer.Option(
    "--config", help="YAML file (a local path or a URL such as s3://bucket/runs/x/config.yaml) with RunConfig "
                     "sections (data, model, optim, schedule, parallel, run, tune).")]
Sets = Annotated[Optional[list[str]], typer.Option(
    "--set", help="Override one field, e.g. --set model.lrn.alpha=2e-4 (repeatable).")]
Verbose = Annotated[bool, typer.Option(
    "--verbose", "-v", help="Also show everything Ray says (start-up, each report and checkpoint, INFO lines).")]


def resolve_options(preset, config_file, sets, flags) -> RunConfig:
    """The config of --preset, --config, --set and the command's flags; a refused one exits with its lines."""
    try:
        return resolve(preset, config_file, sets, flags)
    except ConfigError as exc:
        raise fail(exc.lines) from None
