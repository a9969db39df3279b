"""The fuzz families: everything cnnctl parses from files, mutated from real inputs.

Each family is a Hypothesis strategy of inputs (real shards, images, manifests, label files,
meta.json, config and sweep YAML, written by the project's own writers or taken from the real
formats, then mutated: bit flips, byte overwrites aimed at header fields, truncations, insertions,
random structure) and a ``check`` that feeds one input to the project's reader and returns what it
got, as a short outcome label: ``ok``, ``skip`` (counted under on_bad_sample=skip) or
``error:<kind>`` (the project's own exception, one line naming the file and, in a shard, the member).
Anything else fails the property: another exception type, a message of several lines or one that
does not name the file, a hang (``guard``: SIGALRM), a file written outside the input's folder,
a label outside the classes, more pixels than codec.MAX_PIXELS.

tests/shards/test_fuzz.py and tests/orchestrator/test_fuzz_files.py run the families on a small
budget (derandomized, so CI sees the same inputs every run); bench/fuzz.py runs them long and prints
per family how many inputs were tried and what each got.
"""

from __future__ import annotations

import collections
import contextlib
import io
import json
import re
import signal
import tarfile
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import strategies as st
from PIL import Image

HANG_S = 10  # one input, from write to verdict: far more than any needs

# outcome counts per family, filled by every check (bench/fuzz.py prints them)
OUTCOMES: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)


class Hang(AssertionError):
    pass


@contextlib.contextmanager
def guard(seconds: int = HANG_S):
    """A hang is a failure, not a stuck test run (main thread only)."""

    def alarm(signum, frame):
        raise Hang(f"no verdict within {seconds} s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def kind(message: str) -> str:
    """A message's kind: its words up to the first parenthesis (plus the exception type named in
    it), with quoted parts (names, payloads), paths and numbers taken out."""
    text = re.sub(r"\\(x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|.)|[^\x20-\x7e]", "?", message)
    text = re.sub(r"b?'[^']*'|b?\"[^\"]*\"", "Q", text)
    head, _, rest = text.partition("(")
    exc = re.match(r"(\w+(Error|Exception))\b", rest)
    head = re.sub(r"(\S*/)+\S*", "F", head)
    head = re.sub(r"\d+", "N", head)
    head = re.sub(r"\s+", " ", head).strip(" :")
    return (head[:60] + (f" ({exc.group(1)})" if exc else "")) or "(empty)"


def one_line(exc: BaseException, names: str) -> str:
    msg = str(exc)
    assert "\n" not in msg.strip(), f"{type(exc).__name__} of several lines: {msg!r}"
    assert names in msg, f"{type(exc).__name__} does not name {names}: {msg!r}"
    return msg


def record(family: str, outcome: str) -> str:
    OUTCOMES[family][outcome] += 1
    return outcome


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


# ---------------------------------------------------------------------------------------------
# The real inputs, made once per process

_CORPUS: dict[str, object] = {}


def photos(n: int = 6, seed: int = 0) -> list[np.ndarray]:
    from skimage import data as sk

    rng = np.random.default_rng(seed)
    srcs = [sk.astronaut(), sk.coffee(), sk.chelsea(), sk.rocket()]
    out = []
    for i in range(n):
        src = srcs[i % len(srcs)]
        h, w = (int(v) for v in rng.integers(40, 96, 2))
        out.append(np.asarray(Image.fromarray(src).resize((w, h), Image.BILINEAR)))
    return out


def encoded(arr: np.ndarray, fmt: str, **kw) -> bytes:
    out = io.BytesIO()
    Image.fromarray(arr).save(out, fmt, **kw)
    return out.getvalue()


def corpus() -> dict:
    """Real shards (the project's writer: JPEG and PNG), images, a manifest, label files."""
    if _CORPUS:
        return _CORPUS
    from cnnctl.shards.fashion_mnist import fashion_mnist
    from cnnctl.shards.sources import open_source
    from cnnctl.shards.writer import PackOptions, pack

    root = Path(tempfile.mkdtemp(prefix="cnnctl-fuzz-corpus-"))
    listing = fashion_mnist("test")
    listing.records = listing.records[:12]
    pack(listing, str(root / "png"), "f", PackOptions(image_format="png", resize=None, shard_size=12))
    pics = photos()
    for i, pic in enumerate(pics):
        d = root / "src" / f"c{i % 2}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"im{i}.JPEG").write_bytes(encoded(pic, "JPEG", quality=85))
    _, _, [jl] = open_source(str(root / "src"))
    pack(jl, str(root / "jpg"), "j", PackOptions(resize=40, shard_size=6))
    _CORPUS.update(
        root=root,
        shards={"png": (root / "png" / "f-test-000000.tar").read_bytes(),
                "jpg": (root / "jpg" / "j-train-000000.tar").read_bytes()},
        manifests={"png": json.loads((root / "png" / "f-test.manifest.json").read_text()),
                   "jpg": json.loads((root / "jpg" / "j-train.manifest.json").read_text())},
        images={"jpg": encoded(pics[0], "JPEG", quality=85), "jpg-gray": encoded(pics[1][:, :, 0], "JPEG"),
                "jpg-progressive": encoded(pics[2], "JPEG", progressive=True), "png": encoded(pics[3], "PNG"),
                "png-gray": encoded(pics[4][:, :, 1], "PNG"), "png-palette": _palette_png(pics[5])},
    )
    return _CORPUS


def _palette_png(arr: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(arr).convert("P").save(out, "PNG")
    return out.getvalue()


# ---------------------------------------------------------------------------------------------
# Mutations


@st.composite
def mutated(draw, blob: bytes, hot: list[tuple[int, int]] | None = None, max_ops: int = 4) -> bytes:
    """``blob`` with 1..max_ops mutations; ``hot``: (start, end) ranges a mutation aims at half the time."""
    data = bytearray(blob)
    for _ in range(draw(st.integers(1, max_ops))):
        if not data:
            break
        if hot and draw(st.booleans()):
            lo, hi = draw(st.sampled_from(hot))
            pos = draw(st.integers(min(lo, len(data) - 1), max(min(hi, len(data)) - 1, min(lo, len(data) - 1))))
        else:
            pos = draw(st.integers(0, len(data) - 1))
        op = draw(st.sampled_from(["flip", "byte", "bytes", "truncate", "insert", "delete", "digits"]))
        if op == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "byte":
            data[pos] = draw(st.sampled_from([0, 0x20, 0x2D, 0x30, 0x37, 0x38, 0x7F, 0x80, 0xFF,
                                              draw(st.integers(0, 255))]))
        elif op == "bytes":
            chunk = draw(st.binary(min_size=1, max_size=12))
            data[pos : pos + len(chunk)] = chunk
        elif op == "truncate":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=600))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 600))]
        else:  # numbers as a writer of another tool, or an attacker, would put them
            text = draw(st.sampled_from([b"-0001000", b"-1", b"7777777777", b"99999999999", b"0x1f", b"+12", b" 1 2",
                                         b"\x80\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01\x00", b"\xff" * 12,
                                         b"00000000000\x00", b"", b"\x00" * 12]))
            data[pos : pos + len(text)] = text
    return bytes(data)


def tar_hot(blob: bytes) -> list[tuple[int, int]]:
    """The size and checksum fields, type flags and names of a tar's headers."""
    out, pos = [], 0
    while pos + 512 <= len(blob) and blob[pos : pos + 512] != bytes(512):
        out += [(pos + 124, pos + 136), (pos + 148, pos + 157), (pos, pos + 100), (pos + 345, pos + 500)]
        size = int(blob[pos + 124 : pos + 136].strip(b" \0") or b"0", 8)
        pos += 512 + size + (-size % 512)
    return out


def jpeg_hot(data: bytes) -> list[tuple[int, int]]:
    """A JPEG's markers and segment headers (SOF dimensions, DQT, DHT, SOS) up to its scan."""
    out, i = [(0, 4)], 2
    while i + 4 <= len(data) and data[i] == 0xFF:
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        out.append((i, i + min(length + 2, 24)))
        if data[i + 1] == 0xDA:
            break
        i += 2 + length
    return out


def png_hot(data: bytes) -> list[tuple[int, int]]:
    out, i = [(0, 8)], 8
    while i + 8 <= len(data):
        length = int.from_bytes(data[i : i + 4], "big")
        out.append((i, i + 8 + min(length, 16)))
        i += 12 + length
    return out


# ---------------------------------------------------------------------------------------------
# Shard families


def resum(blob: bytes) -> bytes:
    """Every header's checksum made right again, as a forger would: the walk then meets the mutated
    fields themselves. Headers are found as the strict reader would find them, up to the first it refuses."""
    from cnnctl.shards import shard_tar

    data, pos = bytearray(blob), 0
    while pos + 512 <= len(data) and data[pos : pos + 512] != bytes(512):
        data[pos + 148 : pos + 156] = b" " * 8
        data[pos + 148 : pos + 156] = b"%06o\0 " % sum(data[pos : pos + 512])
        try:
            size = shard_tar.header_size(bytes(data[pos : pos + 512]))
        except shard_tar.BadSample:
            break
        pos += 512 + size + (-size % 512)
    return bytes(data)


def tar_inputs():
    c = corpus()

    @st.composite
    def one(draw):
        k = draw(st.sampled_from(sorted(c["shards"])))
        blob = draw(mutated(c["shards"][k], tar_hot(c["shards"][k]), 3))
        return k, resum(blob) if draw(st.booleans()) else blob

    return one()


def check_shard(case: tuple[str, bytes], tmp: Path, family: str = "tar") -> str:
    """A mutated shard in its split, read by the loader under both policies and by verify."""
    from cnnctl.shards import manifest as mf
    from cnnctl.shards.reader import BadSample, ShardStream, Split, loader
    from cnnctl.shards.shard_job import shard_keys
    from cnnctl.shards.stages import SkipBad
    from cnnctl.shards.transforms import CenterCrop
    from cnnctl.shards.verify import verify

    which, blob = case
    c = corpus()
    manifest = c["manifests"][which]
    split = tmp / "split"
    split.mkdir(exist_ok=True)
    shard = split / manifest["shards"][0]["name"]
    shard.write_bytes(blob)
    url = mf.manifest_url(str(split), manifest["prefix"], manifest["split"])
    Path(url).write_text(json.dumps(manifest))
    before = files_under(tmp)
    n, classes = manifest["num_samples"], len(manifest["classes"])
    with guard(), contextlib.redirect_stderr(io.StringIO()):  # SkipBad's report lines
        got, skip = [], SkipBad()
        for _, labels in loader(ShardStream(url, Split(), 4, CenterCrop(24), train=False, on_bad=skip)):
            got += labels.tolist()
        assert all(0 <= y < classes for y in got), f"labels outside the classes: {got}"
        assert len(got) <= n
        try:
            list(loader(ShardStream(url, Split(), 4, CenterCrop(24), train=False)))
            outcome = "ok"
        except BadSample as exc:
            outcome = "error:" + kind(one_line(exc, str(shard)).removeprefix(str(shard) + ": "))
        _, problems = verify(url, decode=True)
        for p in problems:
            assert "\n" not in p
        shard_keys(blob)
    assert files_under(tmp) == before, "the readers wrote files"
    if outcome == "ok":
        assert skip.count == 0 and len(got) == n, (skip.count, len(got))
        return record(family, "ok" if not problems else "ok (verify: sha256 differs)")
    assert skip.count > 0
    return record(family, outcome)


_KEY_CHARS = st.characters(codec="utf-8", exclude_characters="\x00")


def member_inputs():
    """Members of arbitrary names, kinds and payloads, written by tarfile in each format."""
    name = st.one_of(
        st.text(_KEY_CHARS, min_size=0, max_size=140),  # any text: long names, slashes, dots
        st.tuples(st.text(_KEY_CHARS, min_size=0, max_size=100),
                  st.sampled_from(["cls", "png", "jpg", "json", "cls.png", "", "\n"]))
        .map(".".join),  # a sample's members: key.ext
    )
    member = st.tuples(
        name,
        st.sampled_from([tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.FIFOTYPE]),
        st.one_of(st.sampled_from([b"1", b"0", b"-100", b"9", b"", b"\xd9\xa3"]), st.binary(max_size=40)),
    )
    return st.tuples(st.sampled_from([tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT]),
                     st.lists(member, max_size=8))


def check_members(case, tmp: Path) -> str:
    from cnnctl.shards import shard_tar, stages
    from cnnctl.shards.transforms import CenterCrop

    fmt, members = case
    out = io.BytesIO()
    try:
        with tarfile.open(fileobj=out, mode="w", format=fmt) as t:
            for name, typ, data in members:
                info = tarfile.TarInfo(name)
                info.type, info.size = typ, len(data) if typ == tarfile.REGTYPE else 0
                t.addfile(info, io.BytesIO(data) if typ == tarfile.REGTYPE else None)
    except (ValueError, UnicodeError):
        return record("members", "unwritable by tarfile")
    url = str(tmp / "m.tar")
    before = files_under(tmp)
    outcomes = []
    with guard():
        try:
            for sample in shard_tar.samples(out.getvalue(), url):
                try:
                    _, label = stages.decode(sample, CenterCrop(8), None, num_classes=10)
                    assert 0 <= label < 10
                    outcomes.append("ok")
                except shard_tar.BadSample as exc:
                    outcomes.append("bad sample: " + kind(one_line(exc, url).split(": ", 2)[-1]))
        except shard_tar.BadSample as exc:
            outcomes.append("error:" + kind(one_line(exc, url).removeprefix(url + ": ")))
    assert files_under(tmp) == before
    return record("members", sorted(set(outcomes))[0] if outcomes else "no samples")


def check_cls(payload: bytes, tmp: Path) -> str:
    from cnnctl.shards import stages

    raw = {"__key__": "k", "__url__": "x.tar", "cls": payload, "png": b""}
    try:
        label = stages.label(raw, 10)
    except stages.BadSample as exc:
        return record("cls", "error:" + kind(one_line(exc, "x.tar: sample 'k'").split(": ", 2)[-1]))
    assert 0 <= label < 10 and payload.strip().isdigit()
    return record("cls", "ok")


def image_inputs():
    c = corpus()
    imgs = c["images"]
    return st.sampled_from(sorted(imgs)).flatmap(
        lambda k: st.tuples(st.just(k),
                            mutated(imgs[k], jpeg_hot(imgs[k]) if k.startswith("jpg") else png_hot(imgs[k]), 3)))


def check_image(case: tuple[str, bytes], tmp: Path) -> str:
    """A mutated image: the loader's decodes (whole, windowed, VGG's scale jitter) and the writer's transcode."""
    import random

    from cnnctl.shards import codec, stages
    from cnnctl.shards.transforms import CenterCrop, ScaleJitter

    which, data = case
    ext = "jpg" if which.startswith("jpg") else "png"
    raw = {"__key__": "k", "__url__": str(tmp / "x.tar"), ext: data, "cls": b"3"}
    outcomes = []
    with guard():
        for windowed in (True, False):
            for transform, into in ((CenterCrop(16), np.empty((16, 16, 3), np.uint8)), (CenterCrop(16), None),
                                    (ScaleJitter(16, 16, 32), None)):
                try:
                    img, _ = stages.decode(raw, transform, random.Random(0), into, windowed=windowed)
                    outcomes.append("ok")
                except stages.BadSample as exc:
                    outcomes.append("error:" + kind(one_line(exc, f"{raw['__url__']}: sample 'k'").split(": ", 2)[-1]))
        try:
            enc = codec.transcode(data, codec.Target(short=32))
            assert enc.orig_size[0] * enc.orig_size[1] <= codec.MAX_PIXELS
            outcomes.append("ok")
        except codec.BadImage as exc:
            outcomes.append("writer " + kind(one_line(exc, "")))
    errors = [o for o in outcomes if o != "ok"]
    return record(f"image-{ext}", errors[0] if errors else "ok")


# ---------------------------------------------------------------------------------------------
# Manifests

_JSON = st.recursive(st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=12),
                     lambda inner: (st.lists(inner, max_size=3)
                                    | st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                     max_leaves=8)
_NAMES = st.sampled_from(["../x.tar", "/etc/passwd", "s3://b/x.tar", "a/../../x.tar", "..", ".", "x.tar",
                          "f-test-000000.tar", "C:\\x.tar", "~/x.tar", "pipe:cat x.tar", "x.npy", "../m.npy",
                          "\x00.tar", ""])


def _pick_field(draw, m: dict) -> tuple[object, object] | None:
    """A field of the JSON document ``m`` drawn at random: (its parent, its key), or None if none."""
    paths = [p for p in _paths(m) if p]
    if not paths:
        return None
    path = draw(st.sampled_from(paths))
    parent = m
    for k in path[:-1]:
        parent = parent[k]
    return parent, path[-1]


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


@st.composite
def manifest_inputs(draw):
    c = corpus()
    which = draw(st.sampled_from(sorted(c["manifests"])))
    m = json.loads(json.dumps(c["manifests"][which]))
    if which == "jpg" and draw(st.booleans()):
        m["stats"]["mean_image"] = {"file": "j-train.mean.npy", "side": 40, "images": 6, "scale": "0-255"}
    if draw(st.integers(0, 9)) == 0:  # bytes: the text itself mutated
        return which, draw(mutated(json.dumps(m).encode(), None, 3))
    for _ in range(draw(st.integers(1, 3))):
        if (picked := _pick_field(draw, m)) is None:
            break
        parent, key = picked
        op = draw(st.sampled_from(["value", "name", "delete", "number"]))
        if op == "delete":
            del parent[key]
        elif op == "name":
            parent[key] = draw(_NAMES)
        elif op == "number":
            parent[key] = draw(st.sampled_from([-1, 0, 1, 10**12, 2**63, 1.5, True, "7", None]))
        else:
            parent[key] = draw(_JSON)
    return which, json.dumps(m).encode()


def check_manifest(case: tuple[str, bytes], tmp: Path) -> str:
    from cnnctl.shards import manifest as mf
    from cnnctl.shards.reader import BadSample, ShardStream, Split
    from cnnctl.shards.transforms import CenterCrop
    from cnnctl.shards.verify import verify

    which, text = case
    c = corpus()
    src = c["root"] / which
    split = tmp / "split"
    split.mkdir(exist_ok=True)
    for p in src.iterdir():
        if not p.name.endswith(".manifest.json"):
            (split / p.name).write_bytes(p.read_bytes())
    name = next(p.name for p in src.iterdir() if p.name.endswith(".manifest.json"))
    url = str(split / name)
    Path(url).write_bytes(text)
    before = files_under(tmp)
    with guard():
        try:
            m = mf.load(url)
        except mf.ManifestError as exc:
            return record("manifest", "error:" + kind(one_line(exc, url).removeprefix(url + ": ")))
        for u in mf.shard_urls(url, m):
            assert Path(u).parent == split and "/" not in u.removeprefix(str(split) + "/"), u
        try:
            stream = ShardStream(url, Split(), 4, CenterCrop(24), train=False)
            list(stream)
            verify(url)
        # a shard the manifest names that is not there, or not as it says
        except (BadSample, FileNotFoundError, ValueError) as exc:
            one_line(exc, "")
            outcome = "loads; reading: " + kind(str(exc))[:40]
        else:
            outcome = "ok"
    assert files_under(tmp) == before
    return record("manifest", outcome)


# ---------------------------------------------------------------------------------------------
# Label files (shards/labels.py)


def label_inputs():
    ids = {"n01440764": 449, "n01443537": 450, "n01484850": 442}  # the devkit's own IDs
    truth_ = {f"ILSVRC2012_val_{i:08d}": list(ids)[(i * 2) % 3] for i in range(1, 10)}
    csv_text = "ImageId,PredictionString\n" + "".join(f"{k},{w} 1 2 3 4\n" for k, w in truth_.items())
    truth = "".join(f"{ids[w]}\n" for w in truth_.values())
    idmap = "".join(f"{i} {w}\n" for w, i in ids.items())
    names = "n01440764 tench, Tinca tinca\nn01443537 goldfish, Carassius auratus\nn01484850 great white shark\n"
    bases = {"csv": csv_text.encode(), "truth": truth.encode(), "idmap": idmap.encode(), "names": names.encode()}
    special = st.sampled_from(["²", "٣", "\x00", "\ufeff", "1" * 5000, "\r", ",", '"', "n0144076", "-1", " ", "\u2028"])
    tokens = st.lists(special, min_size=1, max_size=3).map(lambda xs: "".join(xs).encode())

    @st.composite
    def one(draw):
        k = draw(st.sampled_from(sorted(bases)))
        data = draw(mutated(bases[k], None, 3))
        if draw(st.booleans()):
            pos = draw(st.integers(0, len(data)))
            data = data[:pos] + draw(tokens) + data[pos:]
        return k, data

    return one()


def check_labels(case: tuple[str, bytes], tmp: Path) -> str:
    from cnnctl.shards import labels

    which, data = case
    path = tmp / {"csv": "LOC_val_solution.csv", "truth": "ILSVRC2012_validation_ground_truth.txt",
                  "idmap": "synsets.txt", "names": "LOC_synset_mapping.txt"}[which]
    path.write_bytes(data)
    ids = {449: "n01440764", 450: "n01443537", 442: "n01484850"}
    with guard():
        try:
            if which == "csv":
                labels.kaggle_solution(path)
            elif which == "truth":
                labels.ground_truth(path, ids, tmp / "synsets.txt")
            elif which == "idmap":
                labels.id_map(path)
            else:
                labels.synset_names(path)
        except labels.LabelError as exc:
            return record(f"labels-{which}", "error:" + kind(one_line(exc, str(path)).removeprefix(str(path))))
    return record(f"labels-{which}", "ok")


# ---------------------------------------------------------------------------------------------
# Orchestrator files: checkpoint meta.json, config YAML, a sweep's spec


META = {"epoch": 3, "step": 120, "metrics": {"val_top1": 0.5}}
META_MID = {"epoch": 2, "step": 100, "metrics": {}, "mid_epoch": True,
            "layout": {"dp": 1, "mp": 1, "fc_group": 1, "workers": 2, "batch_size": 32, "seed": 0, "limit": None}}


@st.composite
def meta_inputs(draw):
    m = json.loads(json.dumps(draw(st.sampled_from([META, META_MID]))))
    if draw(st.integers(0, 4)) == 0:
        return draw(mutated(json.dumps(m).encode(), None, 3))
    for _ in range(draw(st.integers(1, 3))):
        if (picked := _pick_field(draw, m)) is None:
            break
        parent, key = picked
        if draw(st.booleans()):
            del parent[key]
        else:
            parent[key] = draw(st.one_of(_JSON, st.sampled_from([-1, 10**30, "3", None, True, 1.5, []])))
    return json.dumps(m).encode()


def check_meta(data: bytes, tmp: Path) -> str:
    from cnnctl.orchestrator import checkpoint as ckpt

    folder = tmp / "checkpoint_000001"
    folder.mkdir(exist_ok=True)
    (folder / "meta.json").write_bytes(data)
    with guard():
        try:
            meta = ckpt.load_meta(folder)
        except ckpt.CheckpointError as exc:
            meta_file = str(folder / "meta.json")
            outcome = "error:" + kind(one_line(exc, meta_file).removeprefix(meta_file + ": "))
        else:
            assert isinstance(meta["epoch"], int) and isinstance(meta.get("step", -1), int)
            outcome = "ok"
        order = ckpt._order(str(folder))  # a run folder's newest checkpoint: a bad meta.json sorts last
        assert order == (-1, -1) or outcome == "ok"
    return record("meta.json", outcome)


CONFIG = """\
model:
  name: alexnet
  lrn: {k: 2.0, n: 5, alpha: 0.0001, beta: 0.75}
optim:
  lr: 0.01
  momentum: 0.9
data:
  root: /data/shards
  batch_size: 64
schedule:
  epochs: 3
run:
  seed: 1
"""
SEARCH = """\
space:
  optim.lr: {loguniform: [0.001, 0.1]}
  model.lrn.k: {choice: [1.0, 2.0]}
  model.lrn.n: {grid: [3, 5]}
  model.lrn.beta: {uniform: [0.5, 0.9], when: "model.lrn.n == 5"}
"""
_YAML_BITS = st.sampled_from([b"&a [*a, *a]", b"*x", b"!!python/object:os.system", b"{", b": :", b"\t", b"---\n---",
                              b"\x00", b"\xff", b"a: &b [1,2]\nc: [*b, *b, *b]", b"1e999", b"~", b"model: []",
                              b"!!binary AAAA", b"<<: *a",
                              b"x: " + b"[" * 200, b"? [1]\n: 2"])


@st.composite
def yaml_inputs(draw, base: str):
    data = draw(mutated(base.encode(), None, 3))
    if draw(st.booleans()):
        pos = draw(st.integers(0, len(data)))
        data = data[:pos] + draw(_YAML_BITS) + data[pos:]
    return data


def check_config(data: bytes, tmp: Path) -> str:
    from cnnctl.orchestrator.config import ConfigError, resolve

    path = tmp / "run.yaml"
    path.write_bytes(data)
    with guard():
        try:
            resolve(config_file=path)
        except ConfigError as exc:
            lines = exc.lines  # one per problem; a YAML or file problem names the file, a field problem the field
            for line in lines:
                assert isinstance(line, str) and "\n" not in line.strip(), line
            return record("config-yaml", "error:" + kind(lines[0].replace(str(path), "FILE")))
    return record("config-yaml", "ok")


def check_search(data: bytes, tmp: Path) -> str:
    from cnnctl.orchestrator.config import ConfigError
    from cnnctl.orchestrator.tune import space as search_space

    path = tmp / "space.yaml"
    path.write_bytes(data)
    with guard():
        try:
            search_space.load(str(path))
        except ConfigError as exc:
            lines = exc.lines
            for line in lines:
                assert isinstance(line, str) and "\n" not in line.strip(), line
            return record("search-yaml", "error:" + kind(lines[0].replace(str(path), "FILE")))
    return record("search-yaml", "ok")


def sweep_spec() -> str:
    import yaml

    from cnnctl.orchestrator.config import RunConfig

    base = RunConfig().model_dump(mode="json")
    return yaml.safe_dump({"base": base, "search": yaml.safe_load(SEARCH), "plan": {"draws": [1, 2]}}, sort_keys=False)


def check_sweep(data: bytes, tmp: Path) -> str:
    from cnnctl.orchestrator.config import ConfigError
    from cnnctl.orchestrator.tune import spec as tune

    folder = tmp / "sweep"
    folder.mkdir(exist_ok=True)
    (folder / tune.SPEC).write_bytes(data)
    with guard():
        try:
            tune.load_spec(str(folder))
            tune.load_draws(str(folder))
        except ConfigError as exc:
            lines = exc.lines
            for line in lines:
                assert "\n" not in line.strip() and str(folder / tune.SPEC) in line, line
            return record("sweep-spec", "error:" + kind(lines[0].replace(str(folder / tune.SPEC), "FILE")))
    return record("sweep-spec", "ok")


def family_table() -> dict:
    """name -> (strategy, check): the families bench/fuzz.py runs (the tests run each on its own)."""
    return {
        "tar": (tar_inputs(), check_shard),
        "members": (member_inputs(), check_members),
        "cls": (st.one_of(st.binary(max_size=24), st.from_regex(rb"\A[ \t]*-?\+?\d{1,25}[ \t\n]*\Z")), check_cls),
        "image": (image_inputs(), check_image),
        "manifest": (manifest_inputs(), check_manifest),
        "labels": (label_inputs(), check_labels),
        "meta.json": (meta_inputs(), check_meta),
        "config-yaml": (yaml_inputs(CONFIG), check_config),
        "search-yaml": (yaml_inputs(SEARCH), check_search),
        "sweep-spec": (st.deferred(lambda: yaml_inputs(sweep_spec())), check_sweep),
    }


def scratch() -> Path:
    """A fresh folder for one input (each check asserts nothing is written outside what it made)."""
    return Path(tempfile.mkdtemp(prefix="cnnctl-fuzz-"))


def run_one(check, case) -> str:
    import shutil

    tmp = scratch()
    try:
        return check(case, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

