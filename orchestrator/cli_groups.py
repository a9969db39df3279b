"""What the command modules share: ``fail`` (the error lines and the exit code), and command groups
whose first command is the default: `cnnctl shard SOURCE DEST` is `cnnctl shard pack SOURCE DEST`,
`cnnctl tune [OPTIONS]` is `cnnctl tune run [OPTIONS]`, and their --help shows that command's
arguments and options beside the other commands (a newcomer types `cnnctl tune --help`)."""

from __future__ import annotations

import typer
from typer.core import TyperGroup


def fail(lines: list[str] | str, code: int = 1) -> typer.Exit:
    """Print ``error: <line>`` for each line on stderr; the Exit to raise."""
    for line in [lines] if isinstance(lines, str) else lines:
        typer.echo(f"error: {line}", err=True)
    return typer.Exit(code)


class DefaultCommandGroup(TyperGroup):
    default = ""
    bare_runs_default = False  # no arguments at all: run the default (tune) or show the help (shard)

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        routed = args[0] in self.commands or args[0] in ("--help", "-h") if args else not self.bare_runs_default
        return super().parse_args(ctx, args if routed else [self.default, *args])

    def format_help(self, ctx, formatter) -> None:
        default, own = self.commands[self.default], self.params
        self.params = [*default.params, *own]  # for the help only: parsing routes them to the default
        try:
            super().format_help(ctx, formatter)
        finally:
            self.params = own

    def collect_usage_pieces(self, ctx) -> list[str]:
        default = self.commands[self.default]
        args = [p.name.upper() for p in default.params if p.param_type_name == "argument"]
        return ["[OPTIONS]", *args, f"| {ctx.command_path} COMMAND [ARGS]..."]


def default_command(name: str, bare_runs_default: bool = False) -> type[DefaultCommandGroup]:
    """A group class whose default command is ``name``."""
    return type(f"Default{name.title()}Group", (DefaultCommandGroup,),
                {"default": name, "bare_runs_default": bare_runs_default})
