"""ImageNet's archives read in place: the same samples as the folders, and nothing unsafe admitted."""

import io
import tarfile

import numpy as np
import pytest
import simplejpeg
import webdataset as wds
from conftest import REJECTED, VAL_COUNT, WNIDS, jpeg_bytes, photo, val_truth

from cnnctl.shards.listing import SourceError
from cnnctl.shards.sources import open_source
from cnnctl.shards.writer import PackOptions, pack


def contents(listing, dest) -> dict[str, tuple[int, bytes]]:
    """key -> (label, decoded pixels) of a packed listing."""
    manifest, _ = pack(listing, str(dest), "t", PackOptions(shard_size=7, resize=48, max_errors=len(REJECTED) + 1))
    urls = [f"{dest}/{s['name']}" for s in manifest["shards"]]
    return {s["__key__"]: (int(s["cls"]), simplejpeg.decode_jpeg(s["jpg"]).tobytes())
            for s in wds.WebDataset(urls, shardshuffle=False)}


def test_nested_train_tar_is_the_folder(imagenet, archives, tmp_path):
    _, layout, [from_tar] = open_source(str(archives / "ILSVRC2012_img_train.tar"))
    _, _, [from_dir] = open_source(str(imagenet / "train"))
    assert layout == "train-tar" and from_tar.split == "train"
    assert from_tar.classes == from_dir.classes  # names found next to the archive too
    assert [(r.key, r.label) for r in from_tar.records] == [(r.key, r.label) for r in from_dir.records]
    assert from_tar.records[0].source == f"{WNIDS[0]}.tar/{from_dir.records[0].source.split('/')[1]}"
    tar_samples, dir_samples = contents(from_tar, tmp_path / "tar"), contents(from_dir, tmp_path / "dir")
    assert len(tar_samples) == len(from_dir.records) - len(REJECTED) + 1  # README.txt is rejected when listing
    assert tar_samples == dir_samples


def test_val_tar_with_devkit_labels_is_the_folder(imagenet, archives, tmp_path):
    _, layout, [from_tar] = open_source(str(archives / "ILSVRC2012_img_val.tar"))
    _, _, [from_dir] = open_source(str(imagenet / "val"))
    assert layout == "val-tar" and "meta.mat" in from_tar.description["labels"]
    assert {r.key: WNIDS[r.label] for r in from_tar.records} == val_truth()
    assert len(from_tar.records) == VAL_COUNT
    assert contents(from_tar, tmp_path / "a") == contents(from_dir, tmp_path / "b")


def test_archive_root_packs_train_and_val(archives):
    name, layout, listings = open_source(str(archives))
    assert layout == "imagenet" and [listing.split for listing in listings] == ["train", "val"]
    assert [listing.description["layout"] for listing in listings] == ["train-tar", "val-tar"]


def _member(tar, name, data=b"", **kw):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for k, v in kw.items():
        setattr(info, k, v)
    tar.addfile(info, io.BytesIO(data) if data else None)


def test_unsafe_members_are_rejected_and_nothing_is_written_outside(tmp_path):
    good = jpeg_bytes(photo(np.random.default_rng(3), 64, 48))
    inner = io.BytesIO()
    with tarfile.open(fileobj=inner, mode="w") as t:
        _member(t, "n01440764_1.JPEG", good)
        _member(t, "../n01440764_2.JPEG", good)
        _member(t, "/tmp/n01440764_3.JPEG", good)
        _member(t, "n01440764_4.JPEG", type=tarfile.SYMTYPE, linkname="/etc/passwd")
        _member(t, "n01440764_5.JPEG", type=tarfile.LNKTYPE, linkname="n01440764_1.JPEG")
        _member(t, "n01440764_6.JPEG", type=tarfile.CHRTYPE, devmajor=1, devminor=3)
    work = tmp_path / "work"
    work.mkdir()
    archive = work / "train.tar"
    with tarfile.open(archive, "w") as outer:
        _member(outer, "n01440764.tar", inner.getvalue())
        _member(outer, "../../escape/n01443537.tar", inner.getvalue())
        _member(outer, "n01443537/x.JPEG", good)
    before = sorted(p for p in tmp_path.rglob("*"))
    _, _, [listing] = open_source(str(archive))
    reasons = {r["source"]: r["reason"] for r in listing.rejected}
    assert reasons == {
        "n01440764.tar/../n01440764_2.JPEG": "path escapes the archive ('..')",
        "n01440764.tar//tmp/n01440764_3.JPEG": "absolute path in archive",
        "n01440764.tar/n01440764_4.JPEG": "link member (to '/etc/passwd')",
        "n01440764.tar/n01440764_5.JPEG": "link member (to 'n01440764_1.JPEG')",
        "n01440764.tar/n01440764_6.JPEG": "device or fifo member",
        "../../escape/n01443537.tar": "path escapes the archive ('..')",
    }
    assert [r.key for r in listing.records] == ["n01440764_1", "x"]
    with pytest.raises(Exception, match="more than --max-errors 0"):
        pack(listing, str(work / "out"), "t", PackOptions(resize=32))
    assert not (work / "out").exists()
    manifest, _ = pack(listing, str(work / "out"), "t", PackOptions(resize=32, max_errors=6))
    assert manifest["num_samples"] == 2
    after = sorted(p for p in tmp_path.rglob("*"))
    assert [p for p in after if p not in before] == [work / "out"] + sorted((work / "out").iterdir())
    assert sorted(p.name for p in (work / "out").iterdir()) == ["t-train-000000.tar", "t-train.manifest.json",
                                                                "t-train.mean.npy"]


def test_truncated_and_compressed_archives(tmp_path):
    good = jpeg_bytes(photo(np.random.default_rng(4), 64, 48))
    archive = tmp_path / "val.tar"
    with tarfile.open(archive, "w") as t:
        _member(t, "ILSVRC2012_val_00000001.JPEG", good)
        _member(t, "ILSVRC2012_val_00000002.JPEG", good)
    data = archive.read_bytes()
    archive.write_bytes(data[: 512 + len(good) + 512 + 100])  # cut inside the second member
    (tmp_path / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n"
                                                   "ILSVRC2012_val_00000001,n01440764 1 2 3 4\n"
                                                   "ILSVRC2012_val_00000002,n01440764 1 2 3 4\n")
    _, _, [listing] = open_source(str(archive), layout="val-tar")
    assert [r.key for r in listing.records] == ["ILSVRC2012_val_00000001"]
    assert listing.rejected == [{"source": "ILSVRC2012_val_00000002.JPEG", "reason": "truncated archive member"}]
    gz = tmp_path / "g.tar.gz"
    with tarfile.open(gz, "w:gz") as t:
        t.add(tmp_path / "LOC_val_solution.csv", arcname="x.JPEG")
    with pytest.raises(SourceError, match="g.tar.gz: not an uncompressed tar"):
        open_source(str(gz), layout="val-tar")
