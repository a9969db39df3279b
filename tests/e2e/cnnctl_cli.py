"""The real `cnnctl` commands, run through the Typer app in the test process (the e2e tests' driver)."""

from typer.testing import CliRunner

from cnnctl.orchestrator.cli import app


def cli(*args: str) -> str:
    """`cnnctl ARGS...`; asserts it exits 0 and returns what it printed."""
    res = CliRunner().invoke(app, list(args))
    assert res.exit_code == 0, res.output
    return res.output


def sets(*items: str) -> list[str]:
    """`--set` options for each `a.b=value`."""
    return [a for item in items for a in ("--set", item)]


def run_cnnctl(*args: str, env: dict | None = None, timeout: float = 300,
               sockets: set | None = None) -> tuple[int, list[str]]:
    """`cnnctl ARGS...` as a user runs it: its own process, stdout and stderr into one pipe (not a
    terminal). ``env`` replaces the environment; returns the exit code and the lines printed. With a
    ``sockets`` set, every TCP socket that the command's processes (its local Ray's included) listen on
    while it runs is added to it, as (address, port, process name)."""
    import subprocess
    import sys
    import tempfile
    import time
    from pathlib import Path

    from tests.sockets import descendants, listening

    exe = Path(sys.executable).with_name("cnnctl")
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen([str(exe), *args], stdout=out, stderr=subprocess.STDOUT, text=True, env=env)
        deadline = time.monotonic() + timeout
        try:
            while proc.poll() is None:
                if time.monotonic() > deadline:
                    raise subprocess.TimeoutExpired(proc.args, timeout)
                if sockets is not None:
                    sockets |= listening(descendants([proc.pid]))
                time.sleep(0.25)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        out.seek(0)
        return proc.returncode, out.read().splitlines()


def clean_env(**extra: str) -> dict:
    """This environment without the test session's Ray connection (a fresh command starts or joins
    its own Ray), plus ``extra``."""
    import os

    return {**{k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH") and k != "RAY_ADDRESS"}, **extra}
