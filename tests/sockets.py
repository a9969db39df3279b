"""Which TCP addresses a tree of processes listens on, read from /proc (Linux), for the tests that
check nothing cnnctl starts is reachable beyond loopback."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

LISTEN = "0A"  # the TCP state in /proc/net/tcp{,6}


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def descendants(roots: list[int]) -> set[int]:
    """``roots`` and every live process below them."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (ppid := _parent(int(entry))) is not None:
            children.setdefault(ppid, []).append(int(entry))
    tree, todo = set(), list(roots)
    while todo:
        pid = todo.pop()
        if pid not in tree:
            tree.add(pid)
            todo.extend(children.get(pid, []))
    return tree


def _address(hex_addr: str) -> tuple[str, int]:
    host, port = hex_addr.split(":")
    raw = bytes.fromhex(host)
    # /proc prints the address as 32-bit words in host (little-endian) order
    packed = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    ip = ipaddress.ip_address(packed)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return str(ip), int(port, 16)


def _listening_inodes() -> dict[str, tuple[str, int]]:
    found = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == LISTEN:
                found[fields[9]] = _address(fields[1])
    return found


def listening(pids: set[int]) -> set[tuple[str, int, str]]:
    """(address, port, process name) of every TCP socket that one of ``pids`` listens on."""
    inodes = _listening_inodes()
    out = set()
    for pid in pids:
        try:
            name = Path(f"/proc/{pid}/comm").read_text().strip()
            links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        except OSError:  # the process exited meanwhile
            continue
        for link in links:
            if link.startswith("socket:[") and (inode := link[8:-1]) in inodes:
                out.add((*inodes[inode], name))
    return out


def beyond_loopback(sockets: set[tuple[str, int, str]]) -> list[tuple[str, int, str]]:
    """The sockets reachable from another machine: any address that is not loopback (0.0.0.0 and ::
    are every address)."""
    return sorted(s for s in sockets if not ipaddress.ip_address(s[0]).is_loopback)
