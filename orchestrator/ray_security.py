"""What keeps a cnnctl Ray to its owner: its servers on loopback only, and its token readable by its
owner only (DESIGN.md §11, README's Security).

``keep_loopback`` is applied in every process that starts or joins a cnnctl Ray (the driver through
``connect``, each `cluster up` node and its probe, orchestrator/cluster.py); ``ensure_private_token``
before a local Ray starts; ``write_private`` and ``private_dir`` for the state of `cluster up`.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from cnnctl.shards import location as loc

_LOCALHOST = {"127.0.0.1", "localhost", "::1"}


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


def keep_loopback_below() -> None:
    """``keep_loopback`` in this process, and in every process a node started from it runs: the
    dashboard, its agents, a Ray job's driver (each joins at 127.0.0.1, and would otherwise go to the
    routable address, where nothing listens). Ray resolves loopback to loopback when its multi-node
    support is off; this process has read that setting already, so its own node still joins a cluster.
    """
    keep_loopback()  # imports Ray's constants, with multi-node support on
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
