"""Connecting to Ray, and `cnnctl cluster up --local`: a real multi-node Ray cluster on one machine.

A local cluster is a head plus worker raylets, each started as `ray start --block` in its own
process session whose pid (and start time) cnnctl records, so `cluster down` stops exactly the
processes it started. Token authentication is on (RAY_AUTH_MODE=token, one 0600 token file shared by
every node and client) and every node, with all its servers, listens on 127.0.0.1 only.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from shards import location as loc

DEFAULT_STATE = Path(os.environ.get("CNNCTL_CLUSTER_DIR", Path.home() / ".cnnctl" / "cluster"))
# Ray's GCS, raylets and agents listen on loopback only when the node's address is exactly 127.0.0.1
# (any other address, 127.0.0.2 included, binds 0.0.0.0); `keep_loopback` stops Ray from swapping it.
LOOPBACK = "127.0.0.1"
_LOCALHOST = {"127.0.0.1", "localhost", "::1"}
NODE_RESOURCE = "cnnctl_node_{}"  # one custom resource per node, so tests can tell the nodes apart


class ClusterError(RuntimeError):
    pass


@dataclass
class LocalCluster:
    address: str
    token_path: str
    temp_dir: str
    pids: list[int]
    nodes: int
    cpus_per_node: float
    # each pid's start time (`_start_time`): `down` signals a pid only while it is still that process
    started: list[int] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": self.token_path}

    def processes(self) -> list[tuple[int, int | None]]:
        """(pid, start time) of each node; a state file without start times names no process of ours."""
        return list(zip(self.pids, self.started + [None] * (len(self.pids) - len(self.started))))


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _state_file(state_dir: Path) -> Path:
    return Path(state_dir) / "cluster.json"


def load(state_dir: Path = DEFAULT_STATE) -> LocalCluster | None:
    f = _state_file(state_dir)
    return LocalCluster(**json.loads(f.read_text())) if f.exists() else None


def write_private(path: Path, data: str) -> None:
    """Publish ``data`` at ``path`` readable by its owner only (0600 from the first byte, never a
    moment at the umask's mode) and atomically: a reader sees the old file or the new one whole."""
    loc.write_bytes(str(path), data.encode(), mode=0o600)


def private_dir(path: Path) -> Path:
    """``path`` as a folder only its owner can enter (created 0700, or tightened to it)."""
    path = Path(path)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o077:
        path.chmod(0o700)
    return path


def ensure_private_token() -> None:
    """Give a local Ray a token file only its owner can read, before Ray writes one itself.

    A new local `ray.init()` with token auth (Ray 2.60's default) writes ``~/.ray/auth_token`` with the
    umask's mode (0644 in a 0755 folder), so anyone on a shared machine could read it and run code on
    the cluster. cnnctl writes it first, 0600 in a 0700 folder, and tightens an existing one. A token
    the user points Ray at (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH) is theirs to keep, and left as it is.
    """
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return
    token = private_dir(Path.home() / ".ray") / "auth_token"
    if token.exists():
        if token.stat().st_mode & 0o077:
            token.chmod(0o600)
    else:
        write_private(token, secrets.token_hex(32))


def keep_loopback() -> None:
    """Stop Ray from swapping a loopback node address for the machine's routable one.

    Ray (multi-node support on, as on Linux) resolves 127.0.0.1 to the routable address whenever it is
    given as a node or bootstrap address, and its GCS, raylets and agents then listen on 0.0.0.0. With
    the address kept, a node started at 127.0.0.1 listens on 127.0.0.1 only, and drivers reach it there.
    Every other address resolves as Ray resolves it. Applied in each process that starts or joins a
    cnnctl-started Ray (the driver, each `cluster up` node); idempotent.
    """
    import ray._private.services as services

    resolve = services.resolve_ip_for_localhost
    if getattr(resolve, "keeps_loopback", False):
        return

    def keep(host: str) -> str:
        return host if host in _LOCALHOST else resolve(host)

    keep.keeps_loopback = True
    services.resolve_ip_for_localhost = keep


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22), None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def alive(pid: int) -> bool:
    try:  # reap it first if it is our own exited child (a zombie still answers kill 0)
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# `ray start` and a driver's probe, each in a process of its own that keeps loopback addresses as given.
_RAY_CLI = "from orchestrator.cluster import keep_loopback; keep_loopback(); from ray.scripts.scripts import main; main()"
_PROBE = ("from orchestrator.cluster import keep_loopback; keep_loopback(); import ray, sys;"
          "ray.init(address=sys.argv[1], _node_ip_address=sys.argv[2], logging_level='ERROR');"
          "print(sum(n['Alive'] for n in ray.nodes()))")


def _wait_for_nodes(address: str, env: dict, count: int, timeout: float) -> None:
    """Poll `ray status`-like information until ``count`` nodes are alive."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run([sys.executable, "-c", _PROBE, address, LOOPBACK], env={**os.environ, **env},
                             capture_output=True, text=True, timeout=timeout)
        if out.returncode == 0 and out.stdout.strip().splitlines()[-1:] == [str(count)]:
            return
        time.sleep(1)
    raise ClusterError(f"the local cluster did not reach {count} live nodes within {timeout:.0f}s")


def up_local(nodes: int, cpus_per_node: float, state_dir: Path = DEFAULT_STATE, timeout: float = 90) -> LocalCluster:
    """Start ``nodes`` Ray nodes on 127.0.0.1, each listening there only, with one 0600 token."""
    state_dir = Path(state_dir)
    existing = load(state_dir)
    if existing and any(node_alive(p, t) for p, t in existing.processes()):
        raise ClusterError(f"a local cluster is already up at {existing.address} (state in {state_dir}); run `cnnctl cluster down` first")
    private_dir(state_dir)
    token_path = state_dir / "auth_token"
    write_private(token_path, secrets.token_hex(32))
    temp_dir = Path("/tmp") / f"cnnctl-ray-{os.getpid()}"  # short: Ray's socket paths have a length limit
    port = free_port(LOOPBACK)
    cluster = LocalCluster(f"{LOOPBACK}:{port}", str(token_path), str(temp_dir), [], nodes, cpus_per_node)
    # Nothing preempts nodes on this machine: Train's preemption watcher (an actor per run, which
    # also logs an error line about its constructor arguments) only costs start-up time.
    env = {**os.environ, **cluster.env(), "RAY_USAGE_STATS_ENABLED": "0", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}
    common = ["--block", f"--node-ip-address={LOOPBACK}", f"--num-cpus={cpus_per_node:g}", "--num-gpus=0", "--disable-usage-stats"]
    logs = state_dir / "logs"
    logs.mkdir(exist_ok=True)
    try:
        for i in range(nodes):
            role = ["--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={temp_dir}"] if i == 0 else [f"--address={cluster.address}"]
            cmd = [sys.executable, "-c", _RAY_CLI, "start", *role, *common, f"--resources={json.dumps({NODE_RESOURCE.format(i): 1})}"]
            with open(logs / f"node-{i}.log", "w") as log:
                proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            cluster.pids.append(proc.pid)
            cluster.started.append(_start_time(proc.pid))
            write_private(_state_file(state_dir), json.dumps(asdict(cluster), indent=1))
            _wait_for_nodes(cluster.address, cluster.env(), i + 1, timeout)
    except Exception:
        down(state_dir)
        raise
    return cluster


def node_alive(pid: int, started: int | None) -> bool:
    """Whether ``pid`` is still the node process `up_local` started: alive, and started when it was
    (a pid the kernel handed to another process since is never signalled)."""
    return alive(pid) and started is not None and _start_time(pid) == started


def down(state_dir: Path = DEFAULT_STATE, grace: float = 10) -> list[int]:
    """Stop the processes `up_local` started (by their recorded pids and their own sessions); returns
    the pids stopped. A recorded pid that is no longer that node (it exited; the pid was reused) is
    left alone."""
    cluster = load(state_dir)
    if cluster is None:
        return []
    stopped = []
    # Workers first, head last; each `ray start --block` stops its node's processes on SIGTERM.
    for pid, started in reversed(cluster.processes()):
        if node_alive(pid, started):
            stopped.insert(0, pid)
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10)):
            if not node_alive(pid, started):
                break
            os.killpg(pid, sig)  # the node's own session: its raylet, gcs and workers
            deadline = time.monotonic() + wait
            while alive(pid) and time.monotonic() < deadline:
                time.sleep(0.2)
        if started is not None and _start_time(pid) in (started, None):
            try:  # anything of that session the leader left behind
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    _state_file(state_dir).unlink(missing_ok=True)
    return stopped


def connect(address: str | None, cpus_needed: float = 0, state_dir: Path = DEFAULT_STATE, verbose: bool = False) -> None:
    """Start (or join) Ray once per process: `cnnctl shard --address`, `train` and `tune` all come here.

    A local Ray gets at least the CPUs the run asks for, so a small machine oversubscribes its cores
    rather than waiting forever for resources that will never appear. Joining the cluster that
    `cnnctl cluster up --local` started picks up its auth token. Ray's own INFO lines (and its
    token-auth notice) are shown with ``verbose`` only; its warnings and errors always are.
    """
    local = load(state_dir) if address else None
    if local and address in (local.address, "auto"):
        # Ray reads RAY_AUTH_MODE when it is imported: set the token before the import, and make an
        # already imported Ray read its config again (what Ray itself does when it turns auth on).
        os.environ.update(local.env())
        if "ray" in sys.modules:
            from ray._raylet import Config

            Config.initialize("")
    keep_loopback()  # imports ray
    import ray

    if ray.is_initialized():
        return
    quiet_driver(verbose)
    level = logging.INFO if verbose else logging.WARNING
    if local and address in (local.address, "auto"):
        # A driver on the machine of a local cluster joins through the node at its loopback address.
        ray.init(address=local.address, _node_ip_address=LOOPBACK, log_to_driver=True, logging_level=level)
        return
    if address:
        try:
            ray.init(address=address, log_to_driver=True, logging_level=level)
        except ConnectionError as exc:
            raise ClusterError(f"cannot join the Ray cluster at {address} ({exc}). A cluster with token auth needs its token: "
                               "for one that `cnnctl cluster up` started, set CNNCTL_CLUSTER_DIR to its --state-dir; "
                               "otherwise export RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH") from None
        return
    cpus = max(len(os.sched_getaffinity(0)), int(-(-cpus_needed // 1)))  # the cores this process may use
    ensure_private_token()
    # Nothing preempts a Ray that lives and dies with this process: Train's preemption watcher (one
    # actor process per run) only costs start-up time. The local raylet's workers inherit this env.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    ray.init(num_cpus=cpus, include_dashboard=False, _node_ip_address=LOOPBACK, log_to_driver=True, logging_level=level)


class _TokenNotice(logging.Filter):
    """Ray says at every start that token auth is on; that is how cnnctl runs it, not news."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Token authentication is enabled" not in record.getMessage()


def quiet_driver(verbose: bool) -> None:
    if not verbose:
        logging.getLogger("ray._private.authentication.authentication_token_setup").addFilter(_TokenNotice())


def _start_coordinator() -> None:
    from ray.data._internal.cluster_autoscaler.default_autoscaling_coordinator import get_or_create_autoscaling_coordinator

    get_or_create_autoscaling_coordinator()


def warm_up_train() -> None:
    """Start Ray Train's autoscaling coordinator (a detached actor) while the driver prepares the
    run. A Train controller starts it on its first resource request and waits 5 s at most; on a
    busy machine the actor's process takes longer, and the controller logs a warning with a
    traceback ("safe to ignore") and asks again later. Not waited for."""
    import ray

    ray.remote(num_cpus=0, max_retries=0)(_start_coordinator).remote()


def state_api_served() -> bool:
    """Whether the cluster serves Ray's State API (it comes with the dashboard)."""
    from ray.util.state import list_nodes

    try:
        list_nodes(limit=1, timeout=5)
    except Exception:  # noqa: BLE001 - no dashboard: the client cannot connect
        return False
    return True


def torch_trainer():
    """Ray Train's TorchTrainer, less its placement-group cleaner on a cluster without the State API.

    Why: the cleaner (a detached actor per run) asks the State API every second whether the run's
    controller still lives, and the State API is served by the dashboard, which cnnctl's Rays do not
    run (a local Ray for a run, `cnnctl cluster up`, the `ray[train,tune]` install). Each ask failed
    with a warning (215 lines in a 10-epoch demo) and the cleaner could never clean anything. A run's
    placement group goes with its driver's job in any case; a Tune trial's Train run is cleaned up
    by `tune.TrialRun`. A cluster that serves the State API keeps the cleaner.
    """
    from ray.train.torch import TorchTrainer

    if state_api_served():
        return TorchTrainer
    from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback

    class Trainer(TorchTrainer):
        def _create_default_callbacks(self):
            return [c for c in super()._create_default_callbacks() if not isinstance(c, PlacementGroupCleanerCallback)]

    return Trainer


def place_workers(nodes: int, workers_per_node: int, cpus_per_worker: float, gpus: bool) -> list[dict] | None:
    """One label selector per worker: exactly ``workers_per_node`` workers on each of ``nodes`` nodes.

    Ray Train numbers workers node by node, so with an even count per node the mp-inner tower pairs
    (ranks 2i, 2i+1) share a node. A cluster that cannot hold the request is an error now, not an
    endless wait for a placement group.
    """
    import ray
    from ray._raylet import RAY_NODE_ID_KEY

    need_cpu, need_gpu = workers_per_node * cpus_per_worker, workers_per_node if gpus else 0
    alive = [n for n in ray.nodes() if n["Alive"]]
    fit = [n for n in alive if n["Resources"].get("CPU", 0) >= need_cpu and n["Resources"].get("GPU", 0) >= need_gpu]
    if len(fit) < nodes:
        raise ClusterError(
            f"the cluster has {len(alive)} live node(s), {len(fit)} with {need_cpu:g} CPU{f' and {need_gpu} GPU' if need_gpu else ''} "
            f"free for {workers_per_node} worker(s) each; --nodes {nodes} needs {nodes}"
        )
    if nodes == 1 and len(alive) == 1:
        return None
    chosen = sorted(fit, key=lambda n: n["NodeID"])[:nodes]
    return [{RAY_NODE_ID_KEY: n["NodeID"]} for n in chosen for _ in range(workers_per_node)]


def _local_rank(rank: int, fn: Callable, world: int, port: int, args: tuple) -> None:
    import torch
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)  # `world` processes share the cores; oversubscription is far slower
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        fn(rank, world, *args)
    finally:
        dist.destroy_process_group()


def run_local(fn: Callable, world: int, *args, timeout_s: float = 60.0) -> None:
    """Run `fn(rank, world, *args)` in `world` spawned processes over a gloo group on loopback,
    without Ray (tests and bench/).

    A rank that raises fails the call with its traceback; if the ranks have not all finished after
    `timeout_s` (a collective hang), they are killed and TimeoutError is raised.
    """
    import torch.multiprocessing as tmp

    ctx = tmp.start_processes(_local_rank, args=(fn, world, free_port(), args), nprocs=world, join=False,
                              start_method="spawn")
    deadline = time.monotonic() + timeout_s
    try:
        while not ctx.join(timeout=max(deadline - time.monotonic(), 0.01)):
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{world} local ranks still running after {timeout_s:.0f} s (a hung collective?)")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
                p.join(5)
