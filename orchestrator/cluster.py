"""Connecting to Ray (``connect``), and `cnnctl cluster up --local`: a real multi-node Ray cluster on
one machine.

A local cluster is a head plus worker raylets (`cluster add` starts one more), each `ray start --block`
in its own process session whose pid (and start time) cnnctl records, so `cluster down` stops exactly the
processes it started. Token authentication is on (RAY_AUTH_MODE=token, one 0600 token file shared by
every node and client) and every node, with all its servers, listens on 127.0.0.1 only
(orchestrator/ray_security.py). A run's workers on a cluster: orchestrator/ray_workers.py; ranks as
local processes without Ray: orchestrator/local_ranks.py.
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

from cnnctl.orchestrator.ray_security import ensure_private_token, keep_loopback, private_dir, write_private

DEFAULT_STATE = Path(os.environ.get("CNNCTL_CLUSTER_DIR", Path.home() / ".cnnctl" / "cluster"))
# Ray's GCS, raylets and agents listen on loopback only when the node's address is exactly 127.0.0.1
# (any other address, 127.0.0.2 included, binds 0.0.0.0); `keep_loopback` stops Ray from swapping it.
LOOPBACK = "127.0.0.1"
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
    # each pid's start time (`start_time`): `down` signals a pid only while it is still that process
    started: list[int] = field(default_factory=list)
    dashboard: str | None = None  # the head's dashboard and jobs API (`up --dashboard`), on loopback

    def env(self) -> dict[str, str]:
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": self.token_path}

    def save(self, state_dir: Path) -> None:
        write_private(_state_file(state_dir), json.dumps(asdict(self), indent=1))

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


def start_time(pid: int) -> int | None:
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
_KEEP_LOOPBACK = "from cnnctl.orchestrator.ray_security import keep_loopback; keep_loopback();"
_RAY_CLI = _KEEP_LOOPBACK + "from ray.scripts.scripts import main; main()"
# With the dashboard, the processes the nodes start join at 127.0.0.1 too (`ray job submit`'s drivers).
_RAY_CLI_BELOW = _RAY_CLI.replace("keep_loopback", "keep_loopback_below")
# The index of each node Ray holds alive, read from its NODE_RESOURCE.
_PROBE = (_KEEP_LOOPBACK + "import ray, sys;"
          "ray.init(address=sys.argv[1], _node_ip_address=sys.argv[2], logging_level='ERROR');"
          "print(sorted(int(k.rsplit('_', 1)[1]) for n in ray.nodes() if n['Alive'] for k in n['Resources']"
          f" if k.startswith('{NODE_RESOURCE.format('')}')))")
# Ray's GCS declares a node dead after `threshold` failed health checks `period` apart (by default 5 x 3 s:
# a SIGKILLed node stayed alive in Ray's view for ~15 s). A check of a killed node is refused at once, so
# a local one is noticed dead in ~3 s; one alive but slow still has 3 checks of 10 s (the timeout) to answer.
_HEALTH_CHECK = {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3"}


def live_nodes(cluster: LocalCluster, timeout: float = 60) -> list[int] | None:
    """The indices of the nodes Ray holds alive (their NODE_RESOURCE), asked from a probe process of
    its own; None while Ray does not answer."""
    cmd = [sys.executable, "-c", _PROBE, cluster.address, LOOPBACK]
    try:
        out = subprocess.run(cmd, env={**os.environ, **cluster.env()}, capture_output=True, text=True, timeout=timeout)
        return json.loads(out.stdout.splitlines()[-1]) if out.returncode == 0 else None
    except (subprocess.TimeoutExpired, IndexError, ValueError):
        return None


def _wait_for_nodes(cluster: LocalCluster, new: int, log: Path, timeout: float) -> None:
    """Poll Ray until the nodes it holds alive are exactly those whose processes are (a node killed a
    moment ago is dead in Ray's view only once its health checks fail), node ``new`` among them."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        running = [i for i, (pid, started) in enumerate(cluster.processes()) if node_alive(pid, started)]
        if new not in running:
            raise ClusterError(f"node {new} exited while joining the cluster at {cluster.address}; see {log}")
        if live_nodes(cluster, max(deadline - time.monotonic(), 1)) == running:
            return
        time.sleep(1)
    raise ClusterError(f"node {new} did not join the cluster at {cluster.address} within {timeout:.0f}s; see {log}")


def _node_env(cluster: LocalCluster) -> dict[str, str]:
    # Nothing preempts nodes on this machine: Train's preemption watcher (an actor per run, which also logs
    # an error line about its constructor arguments) only costs start-up time. The head's metrics servers
    # (autoscaler, dashboard) on free ports: Ray's fixed ones clash between clusters.
    return {**os.environ, **cluster.env(), **_HEALTH_CHECK, "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
            **{name: str(free_port(LOOPBACK)) for name in ("AUTOSCALER_METRIC_PORT", "DASHBOARD_METRIC_PORT")}}


def _start_node(cluster: LocalCluster, cpus: float, env: dict, state_dir: Path, timeout: float,
                head: list[str] | None = None) -> None:
    """Start the next node (`ray start --block`, a session of its own), record it, wait for Ray to see it."""
    i = len(cluster.pids)
    # each node's dashboard agent on a port of its own (Ray's fixed default would clash)
    cmd = [sys.executable, "-c", _RAY_CLI_BELOW if cluster.dashboard else _RAY_CLI, "start",
           *(head or [f"--address={cluster.address}"]), f"--dashboard-agent-listen-port={free_port(LOOPBACK)}",
           "--block", f"--node-ip-address={LOOPBACK}", f"--num-cpus={cpus:g}", "--num-gpus=0", "--disable-usage-stats",
           f"--resources={json.dumps({NODE_RESOURCE.format(i): 1})}"]
    log = state_dir / "logs" / f"node-{i}.log"
    log.parent.mkdir(exist_ok=True)
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    cluster.pids.append(proc.pid)
    cluster.started.append(start_time(proc.pid))
    cluster.save(state_dir)
    _wait_for_nodes(cluster, i, log, timeout)


def up_local(nodes: int, cpus_per_node: float, state_dir: Path = DEFAULT_STATE,
             timeout: float = 90, dashboard: bool = False) -> LocalCluster:
    """Start ``nodes`` Ray nodes on 127.0.0.1, each listening there only, with one 0600 token; with
    ``dashboard``, the head also serves Ray's dashboard and jobs API (`ray job submit`) there."""
    state_dir = Path(state_dir)
    existing = load(state_dir)
    if existing and any(node_alive(p, t) for p, t in existing.processes()):
        raise ClusterError(f"a local cluster is already up at {existing.address} (state in {state_dir}); "
                           "run `cnnctl cluster down` first")
    private_dir(state_dir)
    token_path = state_dir / "auth_token"
    write_private(token_path, secrets.token_hex(32))
    temp_dir = Path("/tmp") / f"cnnctl-ray-{os.getpid()}"  # short: Ray's socket paths have a length limit
    port = free_port(LOOPBACK)
    cluster = LocalCluster(f"{LOOPBACK}:{port}", str(token_path), str(temp_dir), [], nodes, cpus_per_node)
    # the head's Ray Client server on a free port too (its fixed default would clash with another cluster's)
    head = ["--head", f"--port={port}", f"--temp-dir={temp_dir}", f"--ray-client-server-port={free_port(LOOPBACK)}",
            "--include-dashboard=false"]
    if dashboard:
        dashboard_port = free_port(LOOPBACK)
        cluster.dashboard = f"http://{LOOPBACK}:{dashboard_port}"
        head[-1:] = ["--include-dashboard=true", f"--dashboard-host={LOOPBACK}", f"--dashboard-port={dashboard_port}"]
    env = _node_env(cluster)
    try:
        for i in range(nodes):
            _start_node(cluster, cpus_per_node, env, state_dir, timeout, head if i == 0 else None)
    except Exception:
        down(state_dir)
        raise
    return cluster


def add_local(state_dir: Path = DEFAULT_STATE, cpus: float | None = None, timeout: float = 90) -> int:
    """Start one more worker node as `up_local` starts its workers (to bring a lost node back or grow an
    elastic run), by default with as many CPUs as each of the others; returns its index."""
    state_dir = Path(state_dir)
    cluster = load(state_dir)
    if cluster is None:
        raise ClusterError(f"no local cluster is up in {state_dir} (cnnctl cluster up --local)")
    if not node_alive(*cluster.processes()[0]):
        raise ClusterError(f"the head of the local cluster at {cluster.address} (pid {cluster.pids[0]}) is not "
                           f"alive; run `cnnctl cluster down --state-dir {state_dir}` and start a new one")
    i, cluster.nodes = len(cluster.pids), cluster.nodes + 1
    try:
        _start_node(cluster, cpus or cluster.cpus_per_node, _node_env(cluster), state_dir, timeout)
    except Exception:  # a node that did not join is stopped and forgotten
        if len(cluster.pids) > i:
            _stop_node(cluster.pids.pop(), cluster.started.pop())
            cluster.nodes -= 1
            cluster.save(state_dir)
        raise
    return i


def node_alive(pid: int, started: int | None) -> bool:
    """Whether ``pid`` is still the node process `up_local` started: alive, and started when it was
    (a pid the kernel handed to another process since is never signalled)."""
    return alive(pid) and started is not None and start_time(pid) == started


def _stop_node(pid: int, started: int | None, grace: float = 10) -> None:
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10)):
        if not node_alive(pid, started):
            break
        os.killpg(pid, sig)  # the node's own session: its raylet, gcs and workers
        deadline = time.monotonic() + wait
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
    if started is not None and start_time(pid) in (started, None):
        try:  # anything of that session the leader left behind
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def down(state_dir: Path = DEFAULT_STATE, grace: float = 10) -> list[int]:
    """Stop the processes `up_local` and `add_local` started (by their recorded pids and their own
    sessions); returns the pids stopped. A recorded pid that is no longer that node (it exited; the pid
    was reused) is left alone."""
    cluster = load(state_dir)
    if cluster is None:
        return []
    stopped = []
    # Workers first, head last; each `ray start --block` stops its node's processes on SIGTERM.
    for pid, started in reversed(cluster.processes()):
        if node_alive(pid, started):
            stopped.insert(0, pid)
        _stop_node(pid, started, grace)
    _state_file(state_dir).unlink(missing_ok=True)
    return stopped


def connect(address: str | None, cpus_needed: float = 0, state_dir: Path = DEFAULT_STATE,
            verbose: bool = False) -> None:
    """Start (or join) Ray once per process: `cnnctl shard --address`, `train` and `tune` all come here.

    A local Ray gets at least the CPUs the run asks for, so a small machine oversubscribes its cores
    rather than waiting forever for resources that will never appear. Joining the cluster that
    `cnnctl cluster up --local` started picks up its auth token. Ray's own INFO lines (and its
    token-auth notice) are shown with ``verbose`` only; its warnings and errors always are.
    """
    # A Ray job's driver (`ray job submit -- cnnctl train ...`) joins the cluster its RAY_ADDRESS names
    # (a GCS address; a dashboard URL there is for Ray's job client, and left to Ray as before).
    env_address = os.environ.get("RAY_ADDRESS", "")
    address = address or (env_address if env_address and "://" not in env_address else None)
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
            raise ClusterError(f"cannot join the Ray cluster at {address} ({exc}). "
                               "A cluster with token auth needs its token: "
                               "for one that `cnnctl cluster up` started, set CNNCTL_CLUSTER_DIR to its --state-dir; "
                               "otherwise export RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH") from None
        return
    cpus = max(len(os.sched_getaffinity(0)), int(-(-cpus_needed // 1)))  # the cores this process may use
    ensure_private_token()
    # Nothing preempts a Ray that lives and dies with this process: Train's preemption watcher (one
    # actor process per run) only costs start-up time. The local raylet's workers inherit this env.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    ray.init(num_cpus=cpus, include_dashboard=False, _node_ip_address=LOOPBACK, log_to_driver=True,
             logging_level=level)


class _TokenNotice(logging.Filter):
    """Ray says at every start that token auth is on; that is how cnnctl runs it, not news."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Token authentication is enabled" not in record.getMessage()


def quiet_driver(verbose: bool) -> None:
    if not verbose:
        logging.getLogger("ray._private.authentication.authentication_token_setup").addFilter(_TokenNotice())
