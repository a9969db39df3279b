"""A full disk while `cnnctl shard pack` writes: no shard is left under its final name part-written,
no temporary file is left on the full disk, no manifest is published (the split is not complete),
the error is one line, and a rerun keeps the shards already published and finishes.

A real small filesystem (tmpfs) needs root to mount, so the disk fills by a patch: the local file
write of the third shard writes half of its bytes, then raises OSError(ENOSPC)."""

import errno
import os

import fsspec.implementations.local as fsspec_local
import pytest
from typer.testing import CliRunner

from cnnctl.orchestrator.cli import app

runner = CliRunner()


@pytest.fixture
def disk_full_at_third_shard(monkeypatch):
    """Every write into a third shard's file (its final name or a temporary one, through fsspec's
    local files or os.fdopen) writes half of its bytes, then fails."""
    real_open = open
    opener_write = fsspec_local.LocalFileOpener.write

    def full(path):
        return "-000002.tar" in os.path.basename(str(path))

    class Half:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            self.f.write(bytes(data)[: len(data) // 2])
            self.f.flush()
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def write(self, data):
        if full(self.path):
            opener_write(self, bytes(data)[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        return opener_write(self, data)

    monkeypatch.setattr(fsspec_local.LocalFileOpener, "write", write)

    def fdopen(fd, mode="r", *args, **kwargs):  # location.write_bytes writes through os.fdopen
        f = real_open(fd, mode, *args, **kwargs)
        return Half(f) if "w" in mode and full(os.readlink(f"/proc/self/fd/{fd}")) else f

    monkeypatch.setattr(os, "fdopen", fdopen)


def test_enospc_while_packing_publishes_nothing_torn_and_a_rerun_finishes(image_tree, tmp_path, monkeypatch,
                                                                          disk_full_at_third_shard):
    out = tmp_path / "shards"
    args = ["shard", "pack", str(image_tree), str(out), "--layout", "class-folders", "--shard-size", "10",
            "--resize", "none"]
    res = runner.invoke(app, args)
    assert res.exit_code == 1, res.output
    errors = [line for line in res.output.splitlines() if "error" in line.lower() or "Errno" in line]
    assert len(errors) == 1 and errors[0].startswith("error:") and "No space left on device" in errors[0], res.output
    assert "-000002.tar" in errors[0], res.output  # the line names what could not be written
    names = sorted(os.listdir(out))
    assert not [n for n in names if n.endswith(".manifest.json")], names  # the split is not complete
    assert not [n for n in names if "-000002.tar" in n], names  # neither torn under its name nor a temp
    published = [n for n in names if n.endswith(".tar")]
    monkeypatch.undo()  # space freed
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    names = sorted(os.listdir(out))
    assert [n for n in names if n.endswith(".manifest.json")] and not [n for n in names if ".tmp" in n], names
    assert set(published) <= set(names)
