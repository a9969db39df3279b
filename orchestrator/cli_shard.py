"""`cnnctl shard`: pack a dataset into shards, verify them, summarise them (orchestrator/sharding.py).

`pack` resolves its options once into a ShardConfig (orchestrator/shard_config.py: defaults <
--config < --set < flags and arguments), then prints the plan (--dry-run) or packs."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from cnnctl.orchestrator.cli_groups import default_command, fail
from cnnctl.orchestrator.config import ConfigError
from cnnctl.orchestrator.shard_config import describe, resolve_shard
from cnnctl.shards import location as loc

shard_app = typer.Typer(
    cls=default_command("pack"), no_args_is_help=True,
    help="Pack datasets into WebDataset shards (`cnnctl shard SOURCE DEST` = `cnnctl shard pack SOURCE DEST`), "
         "verify them, summarise them.",
)


def _opt(field: str, *decls: str, **kw) -> typer.models.OptionInfo:
    """A flag of `shard pack`: its help is the ShardConfig field's description. Not given, it is None,
    so a --config file or --set below it stands (the default is the field's)."""
    return typer.Option(*decls, help=describe(field), **kw)


@shard_app.command("pack")
def shard(
    source: Annotated[str, typer.Argument(help=describe("source"))],
    dest: Annotated[str, typer.Argument(help=describe("dest"))],
    *,
    layout: Annotated[Optional[str], _opt("layout", show_default="auto")] = None,
    split: Annotated[Optional[list[str]], _opt("splits", "--split")] = None,
    labels: Annotated[Optional[str], _opt("labels")] = None,
    synsets: Annotated[Optional[str], _opt("synsets")] = None,
    prefix: Annotated[Optional[str], _opt("prefix")] = None,
    image_format: Annotated[Optional[str], _opt("image_format", "--image-format")] = None,
    resize: Annotated[Optional[str], _opt("resize")] = None,
    center_crop: Annotated[Optional[bool], _opt("center_crop", "--center-crop")] = None,
    quality: Annotated[Optional[int], _opt("quality", min=1, max=100, show_default="90")] = None,
    shard_size: Annotated[Optional[int], _opt("shard_size", "--shard-size", min=1)] = None,
    shard_bytes: Annotated[Optional[str], _opt("shard_bytes", "--shard-bytes")] = None,
    per_class_limit: Annotated[Optional[int], _opt("per_class_limit", "--per-class-limit", min=1)] = None,
    seed: Annotated[Optional[int], _opt("seed", show_default="0")] = None,
    workers: Annotated[Optional[int], _opt("workers", min=1, show_default="1")] = None,
    address: Annotated[Optional[str], _opt("address")] = None,
    overwrite: Annotated[Optional[bool], _opt("overwrite", "--overwrite/--resume", show_default="resume")] = None,
    max_errors: Annotated[Optional[int], _opt("max_errors", "--max-errors", min=0, show_default="0")] = None,
    config: Annotated[Optional[str], typer.Option(
        "--config", help="YAML file (a local path or a URL) of these options by their field names (splits, "
        "image_format, shard_size, ...); --set and the flags override it.")] = None,
    set_: Annotated[Optional[list[str]], typer.Option(
        "--set", help="Override one option by its field name, e.g. --set quality=95 (repeatable).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the resolved layout, splits, destination and "
                                          "options; read no image, start nothing, write nothing.")] = False,
) -> None:
    """Pack a dataset into WebDataset tar shards plus a manifest per split (written last)."""
    from cnnctl.orchestrator.sharding import pack_plan, run_pack

    flags = {"source": source, "dest": dest, "layout": layout, "splits": split or None, "labels": labels,
             "synsets": synsets, "prefix": prefix, "image_format": image_format, "resize": resize,
             "center_crop": center_crop, "quality": quality, "shard_size": shard_size, "shard_bytes": shard_bytes,
             "per_class_limit": per_class_limit, "seed": seed, "workers": workers, "address": address,
             "overwrite": overwrite, "max_errors": max_errors}
    try:
        cfg = resolve_shard(config, set_, flags)
        if dry_run:
            typer.echo(pack_plan(cfg))
            return
        run_pack(cfg)
    except ConfigError as exc:
        raise fail(exc.lines) from None
    except (ValueError, OSError, RuntimeError) as exc:
        raise fail(getattr(exc, "lines", None) or str(exc)) from None


@shard_app.command("verify")
def shard_verify(
    url: Annotated[str, typer.Argument(
        help="A manifest URL, or the folder/URL holding the shards (every split there is checked).")],
    *,
    decode: Annotated[bool, typer.Option("--decode", help="Also decode every image (slower).")] = False,
) -> None:
    """Re-read every shard: tar integrity, sha256 and counts against the manifest, unique keys, labels in range."""
    from rich.console import Console

    from cnnctl.orchestrator.sharding import run_verify

    if line := loc.check_access(url, "URL"):
        raise fail(line)
    try:
        problems = run_verify(url, decode, Console())
    except (ValueError, OSError) as exc:
        raise fail(str(exc)) from None
    if problems:
        raise fail(problems)


@shard_app.command("info")
def shard_info(
    url: Annotated[str, typer.Argument(help="A manifest URL, or the folder/URL holding the shards.")],
) -> None:
    """Print a summary table of the packed splits: samples, shards, size, classes, rejected inputs, options."""
    from rich.console import Console

    from cnnctl.orchestrator.sharding import info_table

    if line := loc.check_access(url, "URL"):
        raise fail(line)
    try:
        Console(width=max(140, Console().width)).print(info_table(url))
    except (ValueError, OSError) as exc:
        raise fail(str(exc)) from None
