"""An object store that fails for a while: a fault-injecting HTTP proxy in front of the session's
moto S3 server (tests/conftest.py) answers 503 SlowDown to chosen requests and delays others. A shard
write and a checkpoint upload through it either retry and succeed or fail in one line; neither ever
publishes a torn shard, manifest or checkpoint, and a rerun continues.

Retries in play: s3fs (shards, configs, manifests) retries SlowDown 5 times itself (0.1 s x 1.7^i
backoff) on top of botocore's retry mode (AWS_RETRY_MODE / AWS_MAX_ATTEMPTS; these tests set
AWS_MAX_ATTEMPTS=1 so only s3fs's count, and a persistent fault fails in about 2 s); pyarrow's
S3FileSystem (Ray Train's checkpoint storage) has its retry_strategy, and checkpoint.upload_marker_last
retries each file on top of it."""

from __future__ import annotations

import http.client
import http.server
import os
import tempfile
import threading
import time

import pytest
from pyarrow import fs as pafs
from typer.testing import CliRunner

from cnnctl import models
from cnnctl.orchestrator import checkpoint as ckpt
from cnnctl.orchestrator.cli import app
from cnnctl.orchestrator.config import RunConfig
from cnnctl.shards import location as loc

pytestmark = pytest.mark.slow  # retries and backoffs through a faulty proxy: seconds each

SLOW_DOWN = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
             b'<Message>Please reduce your request rate.</Message><RequestId>fault</RequestId></Error>')
LIFETIME_S = 120  # the proxy stops itself after this, whatever the test does


class FaultProxy:
    """A threaded HTTP proxy on 127.0.0.1 in front of ``upstream`` (host, port). ``fail(method, part,
    times)``: the next ``times`` requests of that method whose path holds ``part`` get 503 SlowDown
    (times=None: all of them); ``delay(...)`` holds them ``seconds`` first. ``log``: (method, path,
    status) of every request."""

    def __init__(self, upstream: tuple[str, int]):
        self.upstream, self.rules, self.log, self.lock = upstream, [], [], threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = b""
                    while (size := int(self.rfile.readline().split(b";")[0], 16)):
                        out += self.rfile.read(size)
                        self.rfile.readline()
                    self.rfile.readline()
                    return out
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _handle(self):
                body = self._body()
                action = proxy._match(self.command, self.path)
                if action and action[0] == "delay":
                    time.sleep(action[1])
                if action and action[0] == "fail":
                    status, headers, data = 503, {"Content-Type": "application/xml"}, SLOW_DOWN
                else:
                    drop = ("transfer-encoding", "connection", "content-length")
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in drop}
                    conn = http.client.HTTPConnection(*proxy.upstream, timeout=10)
                    try:
                        conn.request(self.command, self.path,
                                     body=body if body or self.command in ("PUT", "POST") else None, headers=headers)
                        resp = conn.getresponse()
                        status, data = resp.status, resp.read()
                        drop = ("transfer-encoding", "connection")
                        drop += () if self.command == "HEAD" else ("content-length",)
                        headers = {k: v for k, v in resp.getheaders() if k.lower() not in drop}
                    finally:
                        conn.close()
                with proxy.lock:
                    proxy.log.append((self.command, self.path, status))
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                if not any(k.lower() == "content-length" for k in headers):  # a HEAD keeps the object's own
                    self.send_header("Content-Length", str(0 if self.command == "HEAD" else len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.watchdog = threading.Timer(LIFETIME_S, self.stop)
        self.watchdog.daemon = True

    def __enter__(self):
        self.thread.start()
        self.watchdog.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def stop(self):
        self.watchdog.cancel()
        self.server.shutdown()
        self.server.server_close()

    def fail(self, method: str, part: str, times: int | None = None):
        self.rules.append({"action": ("fail",), "method": method, "part": part, "left": times})

    def delay(self, method: str, part: str, seconds: float, times: int | None = None):
        self.rules.append({"action": ("delay", seconds), "method": method, "part": part, "left": times})

    def clear(self):
        self.rules.clear()

    def _match(self, method: str, path: str):
        with self.lock:
            for rule in self.rules:
                if rule["method"] == method and rule["part"] in path and rule["left"] != 0:
                    if rule["left"] is not None:
                        rule["left"] -= 1
                    return rule["action"]
        return None

    def served(self, status: int) -> int:
        return sum(1 for *_, s in self.log if s == status)


@pytest.fixture
def proxy(s3_server, monkeypatch):
    """The proxy in front of the session's moto server; s3fs (through fsspec, as cnnctl uses it) talks
    to the store through it for this test only."""
    import s3fs

    upstream = os.environ["AWS_ENDPOINT_URL"].removeprefix("http://").split(":")
    if not s3_server.exists("faults"):
        s3_server.mkdir("faults")
    with FaultProxy((upstream[0], int(upstream[1]))) as p:
        monkeypatch.setenv("AWS_ENDPOINT_URL", p.url)
        monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
        s3fs.S3FileSystem.clear_instance_cache()
        yield p
        s3fs.S3FileSystem.clear_instance_cache()
    s3fs.S3FileSystem.clear_instance_cache()


def _objects(s3, prefix):
    s3.invalidate_cache()
    return sorted(p.rsplit("/", 1)[1] for p in s3.find(prefix))


def _pack(image_tree, dest):
    return CliRunner().invoke(app, ["shard", "pack", str(image_tree), dest, "--layout", "class-folders",
                                    "--shard-size", "10", "--resize", "none"])


def _errors(output):
    return [line for line in output.splitlines() if "error" in line.lower() or "Traceback" in line]


def test_a_shard_write_through_a_store_that_slows_down_for_a_while_succeeds(proxy, s3_server, image_tree):
    proxy.fail("PUT", ".tar", times=3)
    proxy.delay("PUT", ".manifest.json", 0.5, times=1)
    t0 = time.perf_counter()
    res = _pack(image_tree, "s3://faults/transient")
    assert res.exit_code == 0, res.output
    assert proxy.served(503) == 3 and time.perf_counter() - t0 < 20
    names = _objects(s3_server, "faults/transient")
    assert "tree0-train.manifest.json" in names and len([n for n in names if n.endswith(".tar")]) == 6
    res = CliRunner().invoke(app, ["shard", "verify", "s3://faults/transient/tree0-train.manifest.json"])
    assert res.exit_code == 0, res.output


def test_a_store_that_keeps_failing_a_shard_publishes_no_manifest_and_a_rerun_finishes(proxy, s3_server, image_tree):
    proxy.fail("PUT", "-000001.tar")  # every time
    t0 = time.perf_counter()
    res = _pack(image_tree, "s3://faults/persistent")
    took = time.perf_counter() - t0
    assert res.exit_code == 1
    errors = _errors(res.output)
    assert len(errors) == 1 and errors[0].startswith("error:") and "-000001.tar" in errors[0], res.output
    names = _objects(s3_server, "faults/persistent")
    assert "tree0-train.manifest.json" not in names and "tree0-train-000001.tar" not in names, names
    assert took < 20, took
    proxy.clear()
    res = _pack(image_tree, "s3://faults/persistent")
    assert res.exit_code == 0, res.output
    assert "tree0-train.manifest.json" in _objects(s3_server, "faults/persistent")


def test_config_writes_through_a_slow_store_retry(proxy, s3_server):
    loc.write_bytes("s3://faults/run/config.yaml", b"run: {name: old}\n")
    proxy.fail("PUT", "config.yaml", times=2)
    proxy.delay("GET", "config.yaml", 0.3, times=1)
    loc.write_bytes("s3://faults/run/config.yaml", b"run: {name: new}\n")
    assert loc.read_bytes("s3://faults/run/config.yaml") == b"run: {name: new}\n" and proxy.served(503) == 2


def _store_fs(proxy, attempts=2):
    """Ray Train's storage filesystem for an s3:// run.storage is pyarrow's S3FileSystem."""
    host = proxy.url.removeprefix("http://")
    return pafs.S3FileSystem(access_key="testing", secret_key="testing", region="us-east-1", scheme="http",
                             endpoint_override=host,
                             retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=attempts))


def _stage(epoch):
    model = models.build("alexnet-small", num_classes=10, width=0.25)
    return ckpt.stage(model.state_dict(), RunConfig(), {"optimizer": {}, "epoch": epoch, "step": epoch},
                      {"epoch": epoch, "step": epoch})


@pytest.fixture
def staging(tmp_path, monkeypatch):
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def test_a_checkpoint_upload_through_a_store_that_slows_down_for_a_while_completes(proxy, staging):
    proxy.fail("PUT", "state.pt", times=2)
    fs = _store_fs(proxy)
    ckpt.upload_marker_last(_stage(1), fs, "faults/ckrun/checkpoint_000001", backoff_s=0.05)
    assert proxy.served(503) == 2 and ckpt.is_complete("s3://faults/ckrun/checkpoint_000001")
    assert os.listdir(staging) == []


def test_a_checkpoint_upload_the_store_keeps_refusing_leaves_no_marker_and_the_run_resumes_before_it(proxy, staging):
    fs = _store_fs(proxy)
    ckpt.upload_marker_last(_stage(0), fs, "faults/ckrun2/checkpoint_000000", backoff_s=0.05)
    proxy.fail("PUT", "state.pt")
    t0 = time.perf_counter()
    with pytest.raises(ckpt.CheckpointError) as exc:
        ckpt.upload_marker_last(_stage(1), fs, "faults/ckrun2/checkpoint_000001", backoff_s=0.05)
    assert time.perf_counter() - t0 < 20
    line = str(exc.value)
    assert len(line.splitlines()) == 1 and "state.pt" in line and "AWS Error" not in line, line
    assert not loc.exists("s3://faults/ckrun2/checkpoint_000001/COMPLETE")
    assert os.listdir(staging) == []
    assert ckpt.resume_point(None, "s3://faults/ckrun2") == "s3://faults/ckrun2/checkpoint_000000"
