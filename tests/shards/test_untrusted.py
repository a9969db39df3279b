"""Shards, images and manifests from someone else: a forged tar header, a decompression bomb, a
format Pillow should never be asked about, a label out of range and a manifest with the wrong
fields are each one line naming the file (and member), or a counted skip: never a hang or a traceback."""

import io
import json
import re
import shutil
import tarfile
import zlib

import numpy as np
import pytest
from conftest import jpeg_bytes, photo, png_bytes

from cnnctl.shards import codec, shard_tar, stages
from cnnctl.shards import manifest as mf
from cnnctl.shards.fashion_mnist import fashion_mnist
from cnnctl.shards.reader import BadSample, ShardStream, Split, loader
from cnnctl.shards.shard_job import shard_keys
from cnnctl.shards.stages import SkipBad
from cnnctl.shards.transforms import CenterCrop
from cnnctl.shards.verify import verify
from cnnctl.shards.writer import PackOptions, pack


@pytest.fixture(scope="module")
def small_split(tmp_path_factory):
    """60 real Fashion-MNIST images (10 classes) in 3 PNG shards."""
    root = tmp_path_factory.mktemp("small")
    listing = fashion_mnist("test")
    listing.records = listing.records[:60]
    pack(listing, str(root), "s", PackOptions(image_format="png", resize=None, shard_size=20))
    return root


def _copy(src, dst):
    for p in src.iterdir():
        shutil.copy(p, dst / p.name)
    return mf.manifest_url(str(dst), "s", "test")


def _header_offsets(blob: bytes) -> list[int]:
    out, pos = [], 0
    while blob[pos : pos + 512] != bytes(512):
        out.append(pos)
        field = blob[pos + 124 : pos + 136]
        size = int.from_bytes(field[1:], "big") if field[0] == 0x80 else int(field.strip(b" \0"), 8)
        pos += 512 + size + (-size % 512)
    return out


def forge_size(blob: bytes, member: int, field: bytes) -> bytes:
    """Member ``member``'s size field replaced by ``field``, its checksum recomputed (so it is valid)."""
    data = bytearray(blob)
    off = _header_offsets(blob)[member]
    data[off + 124 : off + 136] = field.ljust(12, b"\0")
    data[off + 148 : off + 156] = b" " * 8
    data[off + 148 : off + 156] = b"%06o\0 " % sum(data[off : off + 512])
    return bytes(data)


def _rewrite_member(path, index, new_data: bytes):
    """Replace member ``index`` of the tar at ``path`` by ``new_data`` (a well-formed tar again)."""
    with tarfile.open(path) as t:
        members = [(m, t.extractfile(m).read()) for m in t.getmembers()]
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as t:
        for i, (m, data) in enumerate(members):
            data = new_data if i == index else data
            m.size = len(data)
            t.addfile(m, io.BytesIO(data))
    path.write_bytes(out.getvalue())
    return members[index][0].name


# 1. A forged tar header -------------------------------------------------------------------------


@pytest.mark.timeout(20)
@pytest.mark.parametrize("field", [b"-0001000", b"-1", b"0x10", b"1 2", b"+7", b"\x80" + b"\xff" * 11, b"9"])
def test_forged_tar_size_is_an_error_not_a_hang(small_split, tmp_path, field):
    url = _copy(small_split, tmp_path)
    shard = tmp_path / "s-test-000001.tar"
    shard.write_bytes(forge_size(shard.read_bytes(), 4, field))
    with pytest.raises(BadSample, match=r"s-test-000001.tar: .*member '[^']+'"):
        list(shard_tar.tar_samples(str(shard)))
    # the loader: one line naming the shard under error, a counted skip under skip
    with pytest.raises(BadSample, match=r"s-test-000001.tar") as err:
        list(loader(ShardStream(url, Split(), 8, CenterCrop(28), train=False)))
    assert "\n" not in str(err.value)
    skip = SkipBad()
    batches = list(loader(ShardStream(url, Split(), 8, CenterCrop(28), train=False, on_bad=skip)))
    # the member's sample and those after it
    assert skip.count == 20 - 1 and sum(len(y) for _, y in batches) == 60 - skip.count
    # cnnctl shard verify and the writer's resume check
    _, problems = verify(url)
    assert any(p.startswith("s-test-000001.tar: damaged tar") for p in problems)
    assert shard_keys(shard.read_bytes()) is None


@pytest.mark.timeout(20)
def test_member_past_the_end_names_the_file_and_member(small_split, tmp_path):
    shard = tmp_path / "s.tar"
    blob = (small_split / "s-test-000000.tar").read_bytes()
    shard.write_bytes(forge_size(blob, 2, b"%011o" % (len(blob) * 2)))
    with pytest.raises(BadSample,
                       match=rf"{re.escape(str(shard))}: truncated tar member '[^']+\.\w+' \(\d+ of \d+ bytes\)"):
        list(shard_tar.tar_samples(str(shard)))


def test_gnu_base256_size_is_read_and_bounded():
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as t:
        info = tarfile.TarInfo("k.cls")
        info.size = 1
        t.addfile(info, io.BytesIO(b"3"))
    blob = forge_size(out.getvalue(), 0, b"\x80" + (1).to_bytes(11, "big"))
    assert list(shard_tar.members(blob)) == [("k.cls", b"3")]
    with pytest.raises(BadSample, match="member .k.cls. \\(size field"):
        list(shard_tar.members(forge_size(blob, 0, b"\x80" + (2**80).to_bytes(11, "big"))))


# 2. Pixel limit on the read path -----------------------------------------------------------------


def jpeg_declaring(w: int, h: int) -> bytes:
    data = bytearray(jpeg_bytes(photo(np.random.default_rng(0), 64, 48)))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = h.to_bytes(2, "big") + w.to_bytes(2, "big")
    return bytes(data)


def png_declaring(w: int, h: int) -> bytes:
    """A PNG whose IHDR says w x h, its image data all zeros, deflated: a few hundred KB at most."""
    ihdr = w.to_bytes(4, "big") + h.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])  # 8-bit grayscale
    z = zlib.compressobj(9)
    row = bytes(w + 1)
    idat = b"".join(z.compress(row) for _ in range(min(h, 64))) + z.flush()

    def chunk(kind, body):
        return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("windowed", [True, False])
@pytest.mark.parametrize("ext, image", [("jpg", jpeg_declaring(12000, 12000)), ("png", png_declaring(30000, 30000))])
def test_reader_refuses_images_over_the_pixel_limit_before_decoding(ext, image, windowed):
    raw = {"__key__": "bomb", "__url__": "x.tar", ext: image, "cls": b"0"}
    slot = np.empty((28, 28, 3), np.uint8)
    with pytest.raises(BadSample, match=r"x.tar: sample 'bomb'.*(decompression bomb|pixels)"):
        stages.decode(raw, CenterCrop(28), None, slot, windowed=windowed)


def test_one_pixel_limit_for_writer_and_reader():
    side = int(codec.MAX_PIXELS**0.5) + 1
    with pytest.raises(codec.BadImage, match=str(codec.MAX_PIXELS)):
        codec.transcode(jpeg_declaring(side, side), codec.Target())
    with pytest.raises(codec.BadImage, match=str(codec.MAX_PIXELS)):
        codec.jpeg_size(jpeg_declaring(side, side))


# 3. Only JPEG and PNG reach Pillow --------------------------------------------------------------

EPS = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\n%%EndComments\n"
       b"0 0 moveto 16 16 lineto stroke\nshowpage\n%%EOF\n")


@pytest.fixture
def no_eps(monkeypatch):
    """Fails the test if Pillow is ever asked to parse PostScript (its plugin would run Ghostscript)."""
    from PIL import EpsImagePlugin

    asked = []
    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open",
                        lambda self: asked.append(1) or (_ for _ in ()).throw(AssertionError("EPS")))
    return asked


@pytest.mark.parametrize("payload", [EPS, b"GIF89a" + bytes(40), b"BM" + bytes(60)])
def test_only_jpeg_and_png_reach_pillow_when_packing(tmp_path, no_eps, payload):
    from cnnctl.shards.sources import open_source

    (tmp_path / "src" / "a").mkdir(parents=True)
    (tmp_path / "src" / "a" / "good.JPEG").write_bytes(jpeg_bytes(photo(np.random.default_rng(1), 64, 48)))
    (tmp_path / "src" / "a" / "evil.JPEG").write_bytes(payload)
    (tmp_path / "src" / "b").mkdir()
    # ImageNet has one
    (tmp_path / "src" / "b" / "png.JPEG").write_bytes(png_bytes(photo(np.random.default_rng(2), 40, 30)))
    _, _, [listing] = open_source(str(tmp_path / "src"))
    manifest, _ = pack(listing, str(tmp_path / "out"), "p", PackOptions(max_errors=1))
    [rejected] = manifest["rejected"]
    assert rejected["source"].endswith("evil.JPEG") and "\n" not in rejected["reason"]
    assert "not a JPEG or PNG" in rejected["reason"] or "not an image" in rejected["reason"]
    assert manifest["num_samples"] == 2 and not no_eps


def test_only_jpeg_and_png_reach_pillow_when_reading(no_eps):
    raw = {"__key__": "evil", "__url__": "x.tar", "png": EPS, "cls": b"0"}
    with pytest.raises(BadSample, match=r"^x.tar: sample 'evil': not an image"):
        stages.decode(raw, CenterCrop(28), None)
    assert not no_eps


# 4. Labels in range --------------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("label", [b"-100", b"10", b"99999999999999999999", b" 1_0", b"\xd9\xa3", b"+3", b""])
def test_label_outside_the_classes_is_a_bad_sample(small_split, tmp_path, label):
    url = _copy(small_split, tmp_path)
    shard = tmp_path / "s-test-000002.tar"
    name = _rewrite_member(shard, 3 * 3 + 1, label)  # sample 3's .cls
    key = name.rsplit(".", 1)[0]
    with pytest.raises(BadSample, match=rf"^{re.escape(str(tmp_path))}/s-test-000002.tar: "
                                        rf"sample '{key}': label .* is not a class index 0..9$"):
        list(loader(ShardStream(url, Split(), 8, CenterCrop(28), train=False)))
    skip = SkipBad()
    got = [y for _, y in loader(ShardStream(url, Split(), 8, CenterCrop(28), train=False, on_bad=skip))]
    assert skip.count == 1 and sum(map(len, got)) == 59 and all(0 <= int(v) < 10 for y in got for v in y)


def test_a_model_with_fewer_classes_than_the_manifest_bounds_the_labels(small_split):
    url = mf.manifest_url(str(small_split), "s", "test")
    skip = SkipBad()
    got = [y for _, y in loader(ShardStream(url, Split(), 8, CenterCrop(28), train=False, on_bad=skip, num_classes=5))]
    assert all(int(v) < 5 for y in got for v in y) and skip.count == 60 - sum(map(len, got)) > 0


# 5. Manifest fields ---------------------------------------------------------------------------------

BAD_MANIFESTS = [  # (field, change)
    ("shards", lambda m: m.update(shards={"a": 1})),
    ("shards[0].name", lambda m: m["shards"][0].update(name="../../etc/passwd")),
    ("shards[0].name", lambda m: m["shards"][0].update(name="/etc/passwd")),
    ("shards[0].name", lambda m: m["shards"][0].update(name="s3://bucket/x.tar")),
    ("shards[0].name", lambda m: m["shards"][0].update(name="sub/x.tar")),
    ("shards[0].name", lambda m: m["shards"][0].update(name="..")),
    ("shards[0].name", lambda m: m["shards"][0].update(name=7)),
    ("shards[0].count", lambda m: m["shards"][0].update(count=-1)),
    ("shards[0].count", lambda m: m["shards"][0].update(count="20")),
    ("shards[0].count", lambda m: m["shards"][0].update(count=True)),
    ("shards[0].bytes", lambda m: m["shards"][0].update(bytes=-5)),
    ("shards[0].sha256", lambda m: m["shards"][0].update(sha256=None)),
    ("shards[1]", lambda m: m["shards"].__setitem__(1, "x.tar")),
    ("num_samples", lambda m: m.update(num_samples=61)),
    ("num_samples", lambda m: m.update(num_samples=-60)),
    ("num_samples", lambda m: m.update(num_samples=60.0)),
    ("classes", lambda m: m.update(classes="abc")),
    ("classes", lambda m: m.update(classes=[])),
    ("classes[2].name", lambda m: m["classes"][2].update(name=3)),
    ("classes[2].index", lambda m: m["classes"][2].update(index=5)),
    ("classes[2]", lambda m: m["classes"].__setitem__(2, None)),
    ("stats", lambda m: m.update(stats=[])),
    ("stats.mean_rgb", lambda m: m["stats"].update(mean_rgb=[0.1, "x", 0.3])),
    ("stats.eigvec", lambda m: m["stats"].update(eigvec=[[1, 0, 0]])),
    ("stats.mean_image.file", lambda m: m["stats"].update(mean_image={"file": "../m.npy", "side": 4})),
    ("stats.mean_image.side", lambda m: m["stats"].update(mean_image={"file": "s-test.mean.npy", "side": -4})),
    ("options", lambda m: m.update(options=None)),
    ("prefix", lambda m: m.update(prefix=["s"])),
    ("manifest", lambda m: m.clear() or m.update(format=mf.FORMAT)),
]


@pytest.mark.parametrize("field, change", BAD_MANIFESTS, ids=[f"{f}-{i}" for i, (f, _) in enumerate(BAD_MANIFESTS)])
def test_manifest_fields_are_checked_in_one_line(small_split, tmp_path, field, change):
    url = _copy(small_split, tmp_path)
    manifest = json.loads((tmp_path / "s-test.manifest.json").read_text())
    change(manifest)
    (tmp_path / "s-test.manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(mf.ManifestError) as err:
        mf.load(url)
    msg = str(err.value)
    assert msg.startswith(f"{url}: ") and "\n" not in msg
    assert field == "manifest" or field in msg
    assert isinstance(err.value, ValueError)  # callers that catch ValueError (check_splits) still do


@pytest.mark.parametrize("text", [b"", b"{", b"[1, 2]", b"\xff\xfe", b"null",
                                  b'{"format": "cnnctl-shards/1", "shards": 1e999}'])
def test_a_manifest_that_is_not_a_json_object_is_one_line(tmp_path, text):
    path = tmp_path / "s-test.manifest.json"
    path.write_bytes(text)
    with pytest.raises(mf.ManifestError, match=rf"^{re.escape(str(path))}: ") as err:
        mf.load(str(path))
    assert "\n" not in str(err.value)


def test_a_sound_manifest_loads(small_split):
    m = mf.load(mf.manifest_url(str(small_split), "s", "test"))
    assert m["num_samples"] == 60 and len(m["shards"]) == 3


# Found by the fuzz harness (tests/fuzzing.py) --------------------------------------------------------


@pytest.mark.parametrize("name, text", [
    ("LOC_val_solution.csv", b"\xc9mageId,PredictionString\nILSVRC2012_val_00000001,n01484850 1 2 3 4\n"),  # not UTF-8
    ("ILSVRC2012_validation_ground_truth.txt", "449\n\u00b2\n".encode()),  # '²'.isdigit(), int('²') raises
    ("synsets.txt", "449 n01440764\n\u0663 n01443537\n".encode()),  # '٣' (Arabic-Indic 3)
    ("LOC_synset_mapping.txt", "n0144076\u0664 tench\n".encode()),  # a wnid of non-ASCII digits
    ("LOC_val_solution.csv", b"ImageId,PredictionString\nk," + b"x" * 200_000 + b"\n"),  # a field over csv's limit
])
def test_label_files_that_are_not_what_they_claim_are_one_line(tmp_path, name, text):
    from cnnctl.shards import labels

    path = tmp_path / name
    path.write_bytes(text)
    ids = {449: "n01440764", 450: "n01443537"}
    read = {"LOC_val_solution.csv": lambda: labels.kaggle_solution(path), "synsets.txt": lambda: labels.id_map(path),
            "ILSVRC2012_validation_ground_truth.txt": lambda: labels.ground_truth(path, ids, tmp_path / "synsets.txt"),
            "LOC_synset_mapping.txt": lambda: labels.synset_names(path)}[name]
    with pytest.raises(labels.LabelError, match=re.escape(str(path))) as err:
        read()
    assert "\n" not in str(err.value)


def test_a_member_extension_with_a_newline_stays_one_line():
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as t:
        for _ in range(2):
            info = tarfile.TarInfo("k.x\ny")
            info.size = 1
            t.addfile(info, io.BytesIO(b"1"))
    with pytest.raises(BadSample, match="two '.x\\\\ny' members") as err:
        list(shard_tar.samples(out.getvalue(), "s.tar"))
    assert "\n" not in str(err.value) and str(err.value).startswith("s.tar: ")
