"""The torch process group's rendezvous store, listening on the master's own address.

torch's TCPStore (rank 0 hosts it; every rank joins through it) listens on every address of its
machine, whatever MASTER_ADDR says, and has no authentication: a local run would offer it to the
network. When Ray Train's master address is a loopback one (a local Ray, `cnnctl cluster up --local`)
rank 0 binds the store's socket there itself and hands it over (TCPStore's ``master_listen_fd``), so
it listens on loopback only. On a real cluster the other nodes must reach it, and torch's own store is
used unchanged.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

from ray.train.torch import TorchConfig
from ray.train.torch.config import _TorchBackend


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _store_on_master_addr() -> None:
    """In a worker, before its process group starts: rank 0's env:// store binds MASTER_ADDR when that
    is loopback. torch builds the store in `rendezvous._create_c10d_store`; this wraps it."""
    import importlib

    import torch.distributed as dist

    rendezvous = importlib.import_module("torch.distributed.rendezvous")  # the module, not dist.rendezvous()

    create = rendezvous._create_c10d_store
    if getattr(create, "binds_master_addr", False):
        return

    def create_store(hostname, port, rank, world_size, timeout, use_libuv=True):
        if rank != 0 or not _loopback(hostname):
            return create(hostname, port, rank, world_size, timeout, use_libuv)
        listener = socket.create_server((hostname, port), backlog=128)
        return dist.TCPStore(host_name=hostname, port=port, world_size=world_size, is_master=True, timeout=timeout,
                             multi_tenant=True, use_libuv=use_libuv,
                             master_listen_fd=listener.detach())

    create_store.binds_master_addr = True
    rendezvous._create_c10d_store = create_store


class _Backend(_TorchBackend):
    def on_start(self, worker_group, backend_config):
        worker_group.execute(_store_on_master_addr)
        super().on_start(worker_group, backend_config)


@dataclass
class LoopbackTorchConfig(TorchConfig):
    """Ray Train's TorchConfig, with the rendezvous store on the master's address where it is loopback."""

    @property
    def backend_cls(self):
        return _Backend
