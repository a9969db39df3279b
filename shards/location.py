"""A location: a local path or an fsspec URL (`s3://bucket/key`, `gs://…`, `memory://…`), one type for
every run, checkpoint, shard folder, config file and output that cnnctl reads, writes or prints.

A location is a plain string. A URL keeps its scheme and its `//`; a local path stays a plain path
(relative or absolute, as given) and is never turned into a URL. Only fsspec's interface is used, so
every protocol it has a filesystem for (s3fs, gcsfs, ...) works the same way.

    join(base, *parts)      "s3://b/runs" + "x" -> "s3://b/runs/x";  "runs" + "x" -> "runs/x"
    absolute(loc)           a local path made absolute (Ray workers run elsewhere); a URL unchanged
    name(loc), parent(loc)  the last part, and the location above it
    exists, read_bytes, read_text, write_bytes, listdir, makedirs, put_dir
    check_access(loc, what) one line naming the location when its store cannot be reached
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import uuid

import fsspec


def is_url(loc: str) -> bool:
    return "://" in str(loc)


def _split(loc: str) -> tuple[str, str]:
    scheme, _, rest = str(loc).partition("://")
    return scheme, rest


def join(base: str, *parts: str) -> str:
    base = str(base)
    if not is_url(base):
        return os.path.join(base, *parts)
    scheme, rest = _split(base)
    return f"{scheme}://" + "/".join([rest.rstrip("/"), *(p.strip("/") for p in parts if p)])


def absolute(loc: str) -> str:
    return str(loc) if is_url(loc) else os.path.abspath(loc)


def name(loc: str) -> str:
    return posixpath.basename(str(loc).rstrip("/")) if is_url(loc) else os.path.basename(os.path.normpath(loc))


def parent(loc: str) -> str:
    if not is_url(loc):
        return os.path.dirname(os.path.normpath(loc))
    scheme, rest = _split(loc)
    return f"{scheme}://" + posixpath.dirname(rest.rstrip("/"))


def _fs(loc: str):
    return fsspec.core.url_to_fs(str(loc))


def exists(loc: str) -> bool:
    """Asks the store itself: a folder listing that fsspec kept would hide a file that another process
    (a Ray worker, a concurrent run) wrote since."""
    fs, path = _fs(loc)
    fs.invalidate_cache(path)
    return fs.exists(path)


def read_bytes(loc: str) -> bytes:
    fs, path = _fs(loc)
    return fs.cat_file(path)


def read_text(loc: str) -> str:
    return read_bytes(loc).decode()


def _is_local(fs) -> bool:
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else fs.protocol
    return "file" in protocols or "local" in protocols


def write_bytes(loc: str, data: bytes, mode: int = 0o666) -> str:
    """Publish a whole file: a reader (a later command, a concurrent `cnnctl runs`) sees the old
    content or the new, never a prefix; a write that fails (a full disk) leaves the old file and no
    temporary one. Returns ``loc``.

    Local disk: a temporary file in the same folder, fsync'd, then `os.replace` over the name (a
    folder is made if needed). Object stores: one PUT, which the store makes visible only once it
    completes, so it is atomic already (and they have no folders: asking for one there would ask to
    create the bucket). ``mode``: a local file's permissions before the umask (0o600 for a secret: it
    is never readable by others, not even for a moment)."""
    fs, path = _fs(loc)
    if not _is_local(fs):
        fs.pipe_file(path, data)
        return str(loc)
    path = os.path.abspath(path)
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    # <name>.tmp-<random>: unique (a worker orphaned by a killed run may write the same name), and
    # what the shard writer's tidy-up removes after a killed run (shards/writer.py)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:12]}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)  # the umask applies, as to open(path, "w")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())  # a full disk with delayed allocation fails here, not at close
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # the rename itself durable (best effort: not every filesystem allows it)
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    return str(loc)


def makedirs(loc: str) -> None:
    fs, path = _fs(loc)
    fs.makedirs(path, exist_ok=True)


def listdir(loc: str) -> list[str]:
    """The entries of a folder as locations of the same kind (URL entries keep the scheme); [] if
    the folder does not exist."""
    fs, path = _fs(loc)
    try:
        entries = fs.ls(path, detail=False, refresh=True)  # never a listing cached before a write
    except (FileNotFoundError, NotADirectoryError):
        return []
    finally:
        fs.invalidate_cache(path)  # nor one kept for later: other processes write here too (see exists)
    # an object store's folder marker ("dir/") lists as the folder itself
    return sorted({join(loc, name(e)) for e in entries if e.rstrip("/") != path.rstrip("/")})


def put_dir(local: str, dest: str, last: str | None = None) -> str:
    """Copy a local folder's files to ``dest`` (any store), the file named ``last`` after all the others
    (a marker written last stays the sign of a complete copy); returns ``dest``."""
    files = sorted((os.path.relpath(os.path.join(d, f), local) for d, _, fs in os.walk(local) for f in fs),
                   key=lambda f: (f == last, f))
    for rel in files:
        with open(os.path.join(local, rel), "rb") as f:
            write_bytes(join(dest, *rel.split(os.sep)), f.read())
    return dest


def check_access(loc: str, what: str) -> str | None:
    """None when ``loc``'s store answers (the location itself may not exist yet); otherwise one line
    naming ``what`` and ``loc``: a missing bucket, missing or refused credentials, an unknown scheme.

    It lists the location, or the nearest folder above it that exists, so a role allowed only under
    a prefix passes; the bucket itself is listed only when nothing below it exists."""
    if not is_url(loc):
        return None
    try:
        fs, path = _fs(loc)
        if path.startswith("/"):  # memory://, file://: no buckets, nothing to reach
            return None
        parts = path.rstrip("/").split("/")
        bucket = parts[0]
        for depth in range(len(parts), 0, -1):
            try:
                fs.ls("/".join(parts[:depth]), detail=False, refresh=True)
                return None
            except (FileNotFoundError, NotADirectoryError):
                continue
        return f"{what} {loc}: bucket {bucket!r} not found"
    except PermissionError as exc:
        return f"{what} {loc}: access denied ({exc})"
    except ImportError as exc:
        return f"{what} {loc}: no filesystem for this URL ({exc})"
    except Exception as exc:  # noqa: BLE001 - botocore's NoCredentialsError and the like: report, do not trace
        return f"{what} {loc}: cannot reach the store: {type(exc).__name__}: {exc}"
    return None
