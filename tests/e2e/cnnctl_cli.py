"""The real `cnnctl` commands, run through the Typer app in the test process (the e2e tests' driver)."""

from typer.testing import CliRunner

from orchestrator.cli import app


def cli(*args: str) -> str:
    """`cnnctl ARGS...`; asserts it exits 0 and returns what it printed."""
    res = CliRunner().invoke(app, list(args))
    assert res.exit_code == 0, res.output
    return res.output


def sets(*items: str) -> list[str]:
    """`--set` options for each `a.b=value`."""
    return [a for item in items for a in ("--set", item)]
