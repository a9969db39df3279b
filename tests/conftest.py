"""Session-wide fixtures: real Fashion-MNIST shards, a tree of real image files, one Ray instance."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnctl.orchestrator.shard_config import ShardConfig
from cnnctl.orchestrator.sharding import run_pack
from cnnctl.shards.fashion_mnist import FASHION_MNIST_DIR, fashion_mnist

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
# The decoder choice cache (shards/decoders.py) of this session only: a test never reads or writes
# the user's ~/.cache. Set before the Ray cluster starts, so its workers use it too.
os.environ["CNNCTL_CACHE_DIR"] = tempfile.mkdtemp(prefix="cnnctl-cache-")


def pack_request(source: str, dest: str, **kw) -> ShardConfig:
    """`cnnctl shard pack SOURCE DEST --shard-size 100` and ``kw``'s options."""
    return ShardConfig(source=source, dest=dest, **{"shard_size": 100, **kw})


@pytest.fixture(scope="session")
def fmnist_root(tmp_path_factory) -> str:
    """A real Fashion-MNIST subset: 60 train and 20 test images per class, 200 per shard."""
    if not FASHION_MNIST_DIR.exists():
        pytest.fail(f"{FASHION_MNIST_DIR} missing: `make test` installs Debian's dataset-fashion-mnist")
    root = tmp_path_factory.mktemp("fmnist")
    run_pack(pack_request("fashion-mnist", str(root), splits=["train"], per_class_limit=60, shard_size=200))
    run_pack(pack_request("fashion-mnist", str(root), splits=["test"], per_class_limit=20, shard_size=200))
    return str(root)


@pytest.fixture(scope="session")
def uneven_fmnist_root(tmp_path_factory) -> str:
    """Fashion-MNIST in uneven shards: 600 train images in shards of 170, 170, 170 and 90 (readers run
    out of their part at different steps and wrap round), 100 test images."""
    root = tmp_path_factory.mktemp("uneven")
    run_pack(pack_request("fashion-mnist", str(root), splits=["train"], per_class_limit=60, shard_size=170))
    run_pack(pack_request("fashion-mnist", str(root), splits=["test"], per_class_limit=10, shard_size=100))
    return str(root)


@pytest.fixture(scope="session")
def image_tree(tmp_path_factory) -> Path:
    """root/<class>/*.{JPEG,png}: real Fashion-MNIST pixels written as RGB JPEGs and grayscale PNGs."""
    root = tmp_path_factory.mktemp("tree")
    images = fashion_mnist("test").records[:60]
    for i, rec in enumerate(images):
        folder = root / f"n{rec.label:08d}"
        folder.mkdir(exist_ok=True)
        img = Image.fromarray(np.kron(rec.pixels, np.ones((2, 2), np.uint8)))  # 56x56
        if i % 3:
            img.convert("RGB").save(folder / f"n{rec.label:08d}_{i}.JPEG", quality=95)
        else:
            img.save(folder / f"n{rec.label:08d}_{i}.png")
    return root


S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
          "AWS_EC2_METADATA_DISABLED": "true"}  # never ask a metadata service off this machine for credentials


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 protocol server (moto's server mode) on 127.0.0.1 for the whole session. Its endpoint
    and test credentials go into this process's environment before the Ray cluster starts, so every
    Ray node and worker has them, as a cluster's nodes have their cloud settings (docs/clusters.md:
    object storage). Yields an s3fs filesystem on it."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    with pytest.MonkeyPatch.context() as mp:
        for key, value in {**S3_ENV, "AWS_ENDPOINT_URL": f"http://{host}:{port}"}.items():
            mp.setenv(key, value)
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()
        yield s3fs.S3FileSystem()
        s3fs.S3FileSystem.clear_instance_cache()
    server.stop()


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory, s3_server):
    """One real 2-node Ray cluster on loopback for the whole session (a start costs 10-20 s), joined
    by this test process. Token auth is on; each node offers 2 logical CPUs. Started after the S3
    server, so its nodes inherit the endpoint."""
    from typer.testing import CliRunner

    from cnnctl.orchestrator import cluster
    from cnnctl.orchestrator.cli import app

    state = tmp_path_factory.mktemp("cluster")
    up = CliRunner().invoke(app, ["cluster", "up", "--local", "--nodes", "2", "--cpus-per-node", "2",
                                  "--state-dir", str(state)])
    assert up.exit_code == 0, up.output
    c = cluster.load(state)
    assert c.address in up.output and c.address.startswith("127.")
    status = CliRunner().invoke(app, ["cluster", "status", "--state-dir", str(state)])
    assert status.exit_code == 0 and "nodes 2/2 alive" in status.output, status.output
    try:
        cluster.connect(c.address, state_dir=state)  # sets the token env before importing ray
        import ray

        yield c
        ray.shutdown()
    finally:
        down = CliRunner().invoke(app, ["cluster", "down", "--state-dir", str(state)])
        assert down.exit_code == 0 and "stopped 2 node(s)" in down.output
        assert not any(cluster.alive(pid) for pid in c.pids)


def pytest_report_header(config):
    import torch

    return "cuda: " + (f"{torch.cuda.get_device_name()}, `gpu` tests run" if torch.cuda.is_available()
                       else "none, `gpu` tests deselected (run them on a GPU machine: pytest tests/gpu)")


def _can_mount_tmpfs() -> bool:
    import subprocess

    if os.geteuid() != 0:
        return False
    with tempfile.TemporaryDirectory() as d:
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", d], capture_output=True).returncode:
            return False
        subprocess.run(["umount", d], check=True)
    return True


# The slow tier (`make test` runs both tiers, `make test-fast` only the other): every test in these
# folders of tests/ (real runs on the session's Ray cluster), every test that asks for the
# `ray_cluster` fixture, and every test marked `slow` by hand (process groups, a wheel build, anything
# that takes more than a few seconds).
SLOW_FOLDERS = {"e2e"}
TESTS = Path(__file__).parent


def in_slow_tier(item) -> bool:
    folder = item.path.relative_to(TESTS).parts[0] if item.path.is_relative_to(TESTS) else None
    return folder in SLOW_FOLDERS or "ray_cluster" in getattr(item, "fixturenames", ())


@pytest.hookimpl(tryfirst=True)  # before `-m` selects on the marks
def pytest_collection_modifyitems(config, items):
    """Marks the slow tier `slow`. Tests that need what this machine lacks are deselected, so a run
    reports no skips: `gpu` (CUDA), `dali` (NVIDIA DALI, not a dependency), `nvimgcodec` (the `gpu`
    extra), `tmpfs` (mounting one: root with CAP_SYS_ADMIN)."""
    import importlib.util

    import torch

    for item in items:
        if in_slow_tier(item) and not item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.slow)
    lacking = {"gpu": lambda: not torch.cuda.is_available(),
               "dali": lambda: (importlib.util.find_spec("nvidia") is None
                                or importlib.util.find_spec("nvidia.dali") is None),
               "nvimgcodec": lambda: (importlib.util.find_spec("nvidia") is None
                                      or importlib.util.find_spec("nvidia.nvimgcodec") is None),
               "tmpfs": lambda: not _can_mount_tmpfs()}
    for marker, lacks in lacking.items():
        marked = [item for item in items if item.get_closest_marker(marker)]
        if marked and lacks():
            config.hook.pytest_deselected(items=marked)
            items[:] = [item for item in items if not item.get_closest_marker(marker)]


@pytest.fixture(autouse=True)
def fast_tier_starts_no_ray(request, monkeypatch):
    """A test outside the slow tier that starts Ray fails at the call, naming the rule: its ray.init
    (which Ray Data, Train and Tune call too) fails the test. Importing Ray costs ~1 s, once."""
    if not request.node.get_closest_marker("slow"):
        import ray

        def refuse(*args, **kwargs):
            pytest.fail(f"{request.node.nodeid} starts Ray: the fast tier never does (mark the test `slow`)",
                        pytrace=False)

        monkeypatch.setattr(ray, "init", refuse)
