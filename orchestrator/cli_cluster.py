"""`cnnctl cluster up --local | add | status | down`: a real multi-node Ray cluster on this machine
(orchestrator/cluster.py starts, grows, finds and stops it)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cnnctl.orchestrator.cli_groups import fail

cluster_app = typer.Typer(
    help="A real multi-node Ray cluster on this machine (head + worker raylets, token auth, loopback).",
    no_args_is_help=True)
StateDir = Annotated[Optional[Path], typer.Option(
    "--state-dir", help="Where the cluster's pids, token and logs are kept (default ~/.cnnctl/cluster).")]


@cluster_app.command("up")
def cluster_up(
    *,
    local: Annotated[bool, typer.Option(
        "--local", help="Start the nodes on this machine (the only mode; remote clusters come from deploy/).")] = False,
    nodes: Annotated[int, typer.Option(min=1, help="Ray nodes: one head plus nodes-1 worker raylets.")] = 2,
    cpus_per_node: Annotated[float, typer.Option(
        "--cpus-per-node", min=0.5, help="Logical CPUs each node offers.")] = 2,
    dashboard: Annotated[bool, typer.Option(
        "--dashboard", help="Also serve Ray's dashboard and jobs API (`ray job submit`) on 127.0.0.1.")] = False,
    state_dir: StateDir = None,
) -> None:
    """Start a local multi-node Ray cluster and print the address to pass to --address."""
    from cnnctl.orchestrator import cluster

    if not local:
        raise fail("only --local clusters are started by cnnctl; see deploy/ for the cluster launcher and KubeRay")
    try:
        c = cluster.up_local(nodes, cpus_per_node, state_dir or cluster.DEFAULT_STATE, dashboard=dashboard)
    except cluster.ClusterError as exc:
        raise fail(str(exc)) from None
    typer.echo(f"cluster up: {c.nodes} nodes x {c.cpus_per_node:g} CPUs at {c.address} "
               f"(token auth on, token {c.token_path} mode 0600; every node listens on {cluster.LOOPBACK} only)")
    typer.echo(f"  cnnctl train --address {c.address} --nodes {c.nodes} ...")
    typer.echo(f"  other Ray clients: export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH={c.token_path}")
    if c.dashboard:
        typer.echo(f"dashboard and jobs API at {c.dashboard}; submit a run as a Ray job:")
        typer.echo(f"  RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH={c.token_path} "
                   f"ray job submit --address {c.dashboard} -- cnnctl train --nodes {c.nodes} ...")


@cluster_app.command("add")
def cluster_add(
    *,
    cpus_per_node: Annotated[Optional[float], typer.Option(
        "--cpus-per-node", min=0.5, help="Logical CPUs the new node offers (default: as the cluster's nodes).")] = None,
    state_dir: StateDir = None,
) -> None:
    """Start one more worker node joining the running local cluster, and wait until Ray counts it.

    For bringing back a lost node, or growing an elastic run (`cnnctl train --nodes MIN-MAX`) at its next resize.
    """
    from cnnctl.orchestrator import cluster

    state = state_dir or cluster.DEFAULT_STATE
    try:
        i = cluster.add_local(state, cpus_per_node)
    except cluster.ClusterError as exc:
        raise fail(str(exc)) from None
    c = cluster.load(state)
    alive = sum(cluster.node_alive(p, t) for p, t in c.processes())
    typer.echo(f"node {i} joined {c.address} ({alive} nodes alive)")


@cluster_app.command("status")
def cluster_status(*, state_dir: StateDir = None) -> None:
    """Print the local cluster's address and whether each of its node processes is alive (exit 1 if one is not)."""
    from cnnctl.orchestrator import cluster

    c = cluster.load(state_dir or cluster.DEFAULT_STATE)
    if c is None:
        raise fail("no local cluster is up (cnnctl cluster up --local)")
    alive = [cluster.node_alive(p, t) for p, t in c.processes()]
    dashboard = f"; dashboard {c.dashboard}" if c.dashboard else ""
    typer.echo(f"address {c.address}; nodes {sum(alive)}/{len(alive)} alive; token {c.token_path}{dashboard}")
    for i, (pid, up) in enumerate(zip(c.pids, alive)):
        typer.echo(f"  node {i}{' (head)' if i == 0 else ''}: pid {pid} {'alive' if up else 'dead'}")
    if not all(alive):
        raise typer.Exit(1)


@cluster_app.command("down")
def cluster_down(*, state_dir: StateDir = None) -> None:
    """Stop the processes `cluster up` started (by their own pids)."""
    from cnnctl.orchestrator import cluster

    pids = cluster.down(state_dir or cluster.DEFAULT_STATE)
    typer.echo(f"stopped {len(pids)} node(s)" if pids else "no local cluster was up")
