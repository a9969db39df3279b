"""A really full disk: a tiny tmpfs, mounted where the machine allows it (root with the mount
capability, as on CI), under `cnnctl shard pack` and a checkpoint's staging. The kernel's own ENOSPC,
wherever in the write it comes (data, fsync, the rename's folder): one error line, nothing torn or
temporary left on the full disk, no manifest, and a rerun with room finishes.
(tests/shards/test_write_faults.py and tests/orchestrator/test_checkpoint_faults.py patch the writes
instead, and run anywhere.)"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cnnctl.orchestrator import checkpoint as ckpt
from cnnctl.orchestrator.cli import app
from cnnctl.orchestrator.config import RunConfig


pytestmark = pytest.mark.tmpfs  # deselected where a tmpfs cannot be mounted (tests/conftest.py)


def _mount(path: Path, size: str, remount: bool = False) -> bool:
    opts = f"remount,size={size}" if remount else f"size={size}"
    return subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True).returncode == 0


@pytest.fixture
def tiny_disk(tmp_path):
    """A 96 KiB tmpfs; the test can grow it (``grow``) to free space."""
    disk = tmp_path / "disk"
    disk.mkdir()
    assert _mount(disk, "96k")
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_a_full_tmpfs_while_packing_leaves_no_torn_shard_and_a_rerun_with_room_finishes(image_tree, tiny_disk):
    out = tiny_disk / "shards"
    args = ["shard", "pack", str(image_tree), str(out), "--layout", "class-folders", "--shard-size", "5",
            "--resize", "none", "--image-format", "png"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 1, res.output
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "No space left on device" in errors[0], res.output
    names = sorted(os.listdir(out))
    assert not [n for n in names if n.endswith(".manifest.json")], names  # the split is not complete
    assert not [n for n in names if ".tmp" in n], names  # no temporary file on the full disk
    published = {n: (out / n).read_bytes() for n in names if n.endswith(".tar")}
    assert _mount(tiny_disk, "16m", remount=True)  # room again
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    names = sorted(os.listdir(out))
    assert [n for n in names if n.endswith(".manifest.json")] and not [n for n in names if ".tmp" in n], names
    assert all((out / n).read_bytes() == data for n, data in published.items())  # kept, not rewritten torn
    verify = CliRunner().invoke(app, ["shard", "verify", str(out)])
    assert verify.exit_code == 0, verify.output


def test_a_full_tmpfs_while_staging_a_checkpoint_removes_the_staging_folder(tiny_disk, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tiny_disk))  # where mkdtemp stages
    weights = {"w": torch.zeros(64 * 1024)}  # 256 KiB of safetensors on a 96 KiB disk
    with pytest.raises(ckpt.CheckpointError) as err:
        ckpt.stage(weights, RunConfig(), {"epoch": 0, "step": 1}, {"epoch": 0, "step": 1})
    assert "\n" not in str(err.value) and "No space left on device" in str(err.value)
    assert os.listdir(tiny_disk) == []  # the staging folder is gone, the disk as it was
