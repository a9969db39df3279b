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


def run_cnnctl(*args: str, env: dict | None = None, timeout: float = 300) -> tuple[int, list[str]]:
    """`cnnctl ARGS...` as a user runs it: its own process, stdout and stderr into one pipe (not a
    terminal). ``env`` replaces the environment; returns the exit code and the lines printed."""
    import subprocess
    import sys
    from pathlib import Path

    exe = Path(sys.executable).with_name("cnnctl")
    proc = subprocess.run([str(exe), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, timeout=timeout)
    return proc.returncode, proc.stdout.splitlines()


def clean_env(**extra: str) -> dict:
    """This environment without the test session's Ray connection (a fresh command starts or joins
    its own Ray), plus ``extra``."""
    import os

    return {**{k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH") and k != "RAY_ADDRESS"}, **extra}
