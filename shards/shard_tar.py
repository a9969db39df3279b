"""cnnctl's shard tars, both ways: the one reader (bytes -> (name, data) members -> samples) and the
member bytes the writer (shards/shard_job.py) lays down.

The loader (shards/stages.py), `cnnctl shard verify` and the writer's check of an earlier run's shard
all read shards through here. A shard is USTAR as the writer writes it (GNU long names and pax path
records are read too); a damaged header or a short member raises BadSample after the members before
it, so a truncated shard is never taken for a shorter one. Headers are read strictly (header_size):
a crafted size can neither move the walk backwards nor past the end of the shard. ImageNet's own tars
are read elsewhere (shards/imagenet_tars.py).
"""

from __future__ import annotations

import tarfile
from typing import Iterator

import fsspec
import numpy as np

from cnnctl.shards import manifest as mf

Sample = dict  # {"__key__", "__url__", "jpg"|"jpeg"|"png": bytes, "cls": bytes, ...}
BLOCK = 512
ZERO_BLOCK = bytes(BLOCK)


class BadSample(RuntimeError):
    """A sample or shard that cannot be read as it should: the message names the shard and key."""


def members(blob: bytes) -> Iterator[tuple[str, bytes]]:
    """(name, data) of the regular members of a tar held in memory, read straight off its headers.

    tarfile's streaming reader costs ~75 us per member in Python, a quarter of decoding a 256-px JPEG
    for each of a sample's three members; this walk costs about one. It reads USTAR (what the writer
    writes), GNU long names and pax path records, checks every header's checksum (all at once, see
    checksums_fail), and raises BadSample where a header is damaged or a member is short, after the
    members before it, so a truncated shard is never taken for a shorter one.
    """
    members, headers, error = [], [], None
    long_name, pos, end = None, 0, len(blob)
    try:
        while True:
            header = blob[pos : pos + BLOCK]
            if len(header) < BLOCK:
                raise BadSample(f"truncated tar header ({len(header)} of {BLOCK} bytes)")
            if header == ZERO_BLOCK:
                break
            headers.append(pos)
            size = header_size(header)  # >= 0: every header moves the walk on by a block at least
            start, pos = pos + BLOCK, pos + BLOCK + size + (-size % BLOCK)
            if start + size > end:
                raise BadSample(f"truncated tar member {_name(header)!r} ({end - start} of {size} bytes)")
            kind = header[156:157]
            if kind in (b"L", b"x"):  # the next member's long name: GNU (the name itself) or pax (a path= record)
                data = blob[start : start + size]
                long_name = data.rstrip(b"\0").decode() if kind == b"L" else _pax_path(data)
                continue
            if kind in (b"0", b"\0"):
                name = long_name or header[:100].split(b"\0", 1)[0].decode()
                prefix = header[345:500].split(b"\0", 1)[0] if header[257:262] == b"ustar" and not long_name else b""
                members.append((len(headers), prefix.decode() + "/" + name if prefix else name, start, size))
            long_name = None
    except (BadSample, UnicodeDecodeError) as exc:
        error = exc if isinstance(exc, BadSample) else BadSample(
            f"damaged tar header of member {_name(header)!r} (a name that is not UTF-8)")
        if len(blob) - pos >= BLOCK and (not headers or headers[-1] != pos):
            headers.append(pos)  # the header it failed on: a checksum mismatch says more
    first_bad = checksums_fail(blob, headers)
    if first_bad is not None:
        members = [m for m in members if m[0] <= first_bad]
        bad_header = blob[headers[first_bad] : headers[first_bad] + BLOCK]
        error = BadSample(f"damaged tar header of member {_name(bad_header)!r} (checksum mismatch)")
    for _, name, start, size in members:
        yield name, blob[start : start + size]
    if error is not None:
        raise error


OCTAL = frozenset(b"01234567")
# base-256 sizes above this are refused outright (any size past the shard's end is refused anyway)
MAX_SIZE = 1 << 63


def header_size(header: bytes) -> int:
    """A header's size field, strictly: octal digits, optionally led by spaces and ended by NUL or
    space padding (POSIX), or GNU's base-256 form (0x80 then a big-endian number), never negative.
    ``int(field, 8)`` would also take a sign, underscores or inner spaces: ``-0001000`` is -512, a
    member that moves the walk back onto its own header, for ever."""
    field = header[124:136]
    if field[0] == 0x80:  # GNU base-256, positive only (0xff would be negative)
        size = int.from_bytes(field[1:], "big")
        if size < MAX_SIZE:
            return size
    else:
        digits = field.lstrip(b" ").rstrip(b" \0")
        if OCTAL.issuperset(digits):
            return int(digits or b"0", 8)
    shown = bytes(field).rstrip(b"\0")
    raise BadSample(f"damaged tar header of member {_name(header)!r} (size field {shown!r} is not a size)")


def _name(header: bytes) -> str:
    """The member name a header gives, for messages (never raises)."""
    return header[:100].split(b"\0", 1)[0].decode("utf-8", "replace")


def checksums_fail(blob: bytes, headers: list[int]) -> int | None:
    """Index of the first header (by offset) whose checksum is wrong, or None.

    All headers at once, in numpy: a Python sum over a 512-byte header costs ~2.5 us, three times
    per sample. The stored checksum is the octal digits of its field (then NUL or space); a field
    whose digits are not one run reads as another number, so it fails too.
    """
    if not headers:
        return None
    # headers are block-aligned
    blocks = np.frombuffer(blob, np.uint8, count=len(blob) // BLOCK * BLOCK).reshape(-1, BLOCK)
    rows = blocks[np.asarray(headers) // BLOCK]
    field = rows[:, 148:156].astype(np.int64)
    digit = (field >= 0x30) & (field <= 0x37)
    weight = 8 ** (np.cumsum(digit[:, ::-1], axis=1)[:, ::-1] - 1).clip(0)  # 8^(digits after this one)
    stored = (np.where(digit, field - 0x30, 0) * weight).sum(1)
    # the field itself sums as spaces
    bad = np.flatnonzero(rows.sum(1, dtype=np.int64) - field.sum(1) + 8 * 0x20 != stored)
    return int(bad[0]) if len(bad) else None


def _pax_path(data: bytes) -> str | None:
    for record in data.decode("utf-8", "replace").splitlines():
        _, _, kv = record.partition(" ")
        key, _, value = kv.partition("=")
        if key == "path":
            return value
    return None


def read(url: str) -> bytes:
    """A shard's bytes in one read, through fsspec (never webdataset's shell-capable gopen): shards
    are ~100 MB, and per-member reads cost more than the walk."""
    mf.check_url(url)
    with fsspec.open(url, "rb") as stream:
        return stream.read()


def samples(blob: bytes, url: str = "") -> Iterator[Sample]:
    """The samples of a shard's bytes, grouped webdataset's way: members sharing the name up to the
    basename's first dot form one sample, {"__key__", "__url__", ext: bytes, ...}."""
    try:
        yield from _samples(blob, url)
    except BadSample as exc:
        raise BadSample(f"{url}: {exc}") if url and not str(exc).startswith(url) else exc from None


def _samples(blob: bytes, url: str) -> Iterator[Sample]:
    sample: Sample = {}
    for name, data in members(blob):
        slash = name.rfind("/") + 1
        dot = name.find(".", slash)
        if dot < 0:
            continue
        key, ext = name[:dot], name[dot + 1 :]
        if sample and key != sample["__key__"]:
            yield sample
            sample = {}
        if not sample:
            sample = {"__key__": key, "__url__": url}
        elif ext in sample:
            raise BadSample(f"sample {key!r} has two {'.' + ext!r} members")
        sample[ext] = data
    if sample:
        yield sample


def tar_samples(url: str) -> Iterator[Sample]:
    """The samples of the shard at ``url``."""
    return samples(read(url), url)


def member(name: str, data: bytes) -> bytes:
    """One USTAR member (header, data, padding) with mtime 0, mode 0644 and owner 0, byte for byte
    what tarfile writes; built directly because tarfile's header code costs ~4% of a shard's time.
    Names fit: keys are at most MAX_KEY characters (shards/listing.py's admit rejects longer ones)."""
    h = bytearray(_HEADER)
    raw = name.encode()
    h[: len(raw)] = raw
    h[124:136] = b"%011o\0" % len(data)
    h[148:155] = b"%06o\0" % sum(h)
    return bytes(h) + data + bytes(-len(data) % tarfile.BLOCKSIZE)


def _header_template() -> bytes:
    h = bytearray(tarfile.BLOCKSIZE)
    h[100:124] = b"0000644\0" + b"0000000\0" * 2  # mode, uid, gid
    h[136:157] = b"00000000000\0" + b" " * 8 + tarfile.REGTYPE  # mtime, checksum placeholder, type
    h[257:265] = tarfile.POSIX_MAGIC  # devmajor/devminor stay NUL for regular files
    return bytes(h)


_HEADER = _header_template()


def member_bytes(size: int) -> int:
    """The bytes a member of ``size`` data bytes takes in a shard: its header and padded data."""
    return BLOCK + -(-size // BLOCK) * BLOCK


def end_of_archive(size: int) -> bytes:
    """Two zero blocks, then zeros up to a whole record, as tarfile.close writes."""
    size += 2 * tarfile.BLOCKSIZE
    return bytes(2 * tarfile.BLOCKSIZE + -size % tarfile.RECORDSIZE)
