"""ImageNet's original tars (or any tar of images), read in place: indexed, never extracted.

``ILSVRC2012_img_train.tar`` holds one uncompressed tar per class, so every image is a byte range
of the outer file: the outer member's data offset plus the inner member's data offset. The index
is built by walking the headers once; images are then read with one seek each, in any process.
Nothing in an archive is ever written anywhere, so no member name can escape the output; members
that could (absolute paths, ``..``), links and devices are still rejected with a reason. cnnctl's
own shard tars are read elsewhere (shards/shard_tar.py).
"""

from __future__ import annotations

import io
import os
import tarfile
from dataclasses import dataclass
from pathlib import PurePosixPath


class TarError(ValueError):
    pass


@dataclass(frozen=True)
class Member:
    name: str  # path inside the archive; a nested member is "<inner>.tar/<name>"
    offset: int  # absolute offset of the data in the archive file
    size: int


class _Window(io.RawIOBase):
    """A byte range of a file, as a seekable file (tarfile reads an inner tar through it)."""

    def __init__(self, f, start: int, size: int):
        self.f, self.start, self.size, self.pos = f, start, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, pos: int, whence: int = 0) -> int:
        self.pos = max(0, pos + (0, self.pos, self.size)[whence])
        return self.pos

    def readinto(self, buf) -> int:
        n = max(0, min(len(buf), self.size - self.pos))
        self.f.seek(self.start + self.pos)
        data = self.f.read(n)
        buf[: len(data)] = data
        self.pos += len(data)
        return len(data)


def unsafe_reason(info: tarfile.TarInfo) -> str | None:
    """Why a member cannot be an input, or None for a plain file with a plain relative name."""
    name = info.name
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return "absolute path in archive"
    if ".." in PurePosixPath(name).parts:
        return "path escapes the archive ('..')"
    if info.issym() or info.islnk():
        return f"link member (to {info.linkname!r})"
    if info.ischr() or info.isblk() or info.isfifo():
        return "device or fifo member"
    if not info.isreg():
        return f"not a regular file (tar type {info.type!r})"
    return None


def _walk(f, start: int, size: int, where: str, nested: bool, members: list[Member], rejected: list[dict],
          archive: str) -> None:
    try:
        tar = tarfile.open(fileobj=io.BufferedReader(_Window(f, start, size), 1 << 16), mode="r:")
    except tarfile.TarError as exc:
        raise TarError(f"not an uncompressed tar ({exc})") from None
    with tar:
        while True:
            try:
                info = tar.next()
            except tarfile.TarError as exc:
                reason = f"corrupt tar header, the rest is unreadable ({exc})"
                rejected.append({"source": where or archive, "reason": reason})
                return
            if info is None:
                return
            name = info.name.removeprefix("./")
            source = f"{where}/{name}" if where else name
            if info.isdir():
                continue
            reason = unsafe_reason(info)
            if reason is None and info.offset_data + info.size > size:
                reason = "truncated archive member"
            if reason:
                rejected.append({"source": source, "reason": reason})
                if reason.startswith("truncated"):
                    return  # nothing after it can be there
            elif nested and name.endswith(".tar") and "/" not in name:
                try:
                    _walk(f, start + info.offset_data, info.size, source, False, members, rejected, archive)
                except TarError as exc:
                    rejected.append({"source": source, "reason": str(exc)})
            else:
                members.append(Member(source, start + info.offset_data, info.size))


def scan(path: str | os.PathLike, nested: bool = True) -> tuple[list[Member], list[dict]]:
    """Every regular member of a tar (and of the per-class tars inside it), plus rejected members."""
    members: list[Member] = []
    rejected: list[dict] = []
    with open(path, "rb") as f:
        try:
            _walk(f, 0, os.fstat(f.fileno()).st_size, "", nested, members, rejected, os.path.basename(path))
        except TarError as exc:
            raise TarError(f"{path}: {exc}") from None
    return members, rejected


def peek(path: str | os.PathLike, count: int = 20) -> list[str]:
    """The first few member names: enough to tell a tar of class tars from a flat tar of images."""
    names = []
    try:
        with tarfile.open(path, mode="r:") as tar:
            for info in tar:
                names.append(info.name.removeprefix("./"))
                if len(names) >= count:
                    break
    except tarfile.TarError as exc:
        raise TarError(f"{path}: not an uncompressed tar ({exc})") from None
    return names
