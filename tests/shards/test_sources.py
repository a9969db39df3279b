"""ImageNet's layouts and label formats, and every kind of bad input, on real files."""

import hashlib
import json
import re

import numpy as np
import pytest
import simplejpeg
import webdataset as wds
from conftest import (FIXED, GOOD_PER_CLASS, NAMES, REJECTED, VAL_COUNT, WNIDS, jpeg_bytes, make_val_images, photo,
                      val_truth, write_devkit, write_kaggle_csv, write_names)
from PIL import Image

from cnnctl.shards import manifest as mf
from cnnctl.shards.listing import SourceError
from cnnctl.shards.sources import open_source
from cnnctl.shards.writer import PackOptions, pack


def samples(dest, manifest) -> dict[str, dict]:
    urls = [f"{dest}/{s['name']}" for s in manifest["shards"]]
    return {s["__key__"]: s for s in wds.WebDataset(urls, shardshuffle=False)}


@pytest.fixture(scope="module")
def packed_train(imagenet, tmp_path_factory):
    dest = tmp_path_factory.mktemp("train-shards")
    _, layout, [listing] = open_source(str(imagenet / "train"))
    manifest, _ = pack(listing, str(dest), "in", PackOptions(shard_size=8, resize=64, max_errors=len(REJECTED)))
    return layout, dest, manifest


def test_root_is_detected_with_both_splits_and_names(imagenet):
    name, layout, listings = open_source(str(imagenet))
    assert layout == "imagenet" and [listing.split for listing in listings] == ["train", "val"]
    for listing in listings:  # indices follow the sorted wnids; names from LOC_synset_mapping.txt
        assert listing.classes == [{"index": i, "wnid": w, "name": NAMES[w]} for i, w in enumerate(WNIDS)]
    val = listings[1]
    assert {r.key: WNIDS[r.label] for r in val.records} == val_truth()


def test_bad_inputs_are_fixed_or_rejected_with_a_reason(packed_train):
    layout, dest, manifest = packed_train
    assert layout == "class-folders"
    reasons = {r["source"]: r["reason"] for r in manifest["rejected"]}
    assert set(reasons) == set(REJECTED)
    for source, word in REJECTED.items():
        assert word in reasons[source], (source, reasons[source])
    listed = len(WNIDS) * GOOD_PER_CLASS + len(FIXED) + len(REJECTED)
    assert manifest["source"]["listed"] == listed
    assert manifest["num_samples"] == listed - len(REJECTED) == sum(s["count"] for s in manifest["shards"])
    got = samples(dest, manifest)
    for source in FIXED:  # CMYK, a PNG named .JPEG and grayscale all come out as RGB baseline JPEGs
        s = got[source.split("/")[1][:-5]]
        assert s["jpg"][:2] == b"\xff\xd8" and simplejpeg.decode_jpeg_header(s["jpg"])[2] == "YCbCr"
        assert json.loads(s["json"])["source"] == source


def test_cmyk_and_gray_keep_their_colours(packed_train, imagenet):
    _, dest, manifest = packed_train
    got = samples(dest, manifest)
    png = Image.open(imagenet / "train/n01440764/n01440764_png.JPEG")
    ref = np.asarray(png.convert("RGB").resize((82, 64)), np.float64)
    cmyk = simplejpeg.decode_jpeg(got["n01440764_cmyk"]["jpg"]).astype(np.float64)
    gray = simplejpeg.decode_jpeg(got["n01440764_gray"]["jpg"]).astype(np.float64)
    assert cmyk.shape == ref.shape == gray.shape
    assert np.abs(cmyk - ref).mean() < 12  # an un-inverted Adobe CMYK would be off by ~100
    assert np.abs(gray[..., 0] - gray[..., 2]).max() <= 3 and np.abs(gray.mean(2) - ref.mean(2)).mean() < 12


def test_labels_and_sizes_match_the_source(packed_train, imagenet):
    _, dest, manifest = packed_train
    for key, s in samples(dest, manifest).items():
        meta = json.loads(s["json"])
        assert WNIDS[int(s["cls"])] == meta["wnid"] == meta["source"].split("/")[0]
        w, h = Image.open(imagenet / "train" / meta["source"]).size
        assert meta["orig_size"] == [w, h]
        assert min(simplejpeg.decode_jpeg_header(s["jpg"])[:2]) == 64


@pytest.mark.parametrize("form", ["kaggle-csv", "devkit-meta.mat", "devkit-text-map", "class-folders"])
def test_every_validation_label_form_gives_the_same_labels(form, imagenet, tmp_path):
    val = make_val_images(tmp_path / "val")
    args = {}
    if form == "kaggle-csv":
        write_kaggle_csv(tmp_path / "LOC_val_solution.csv")
    elif form == "devkit-meta.mat":
        write_devkit(tmp_path / "ILSVRC2012_devkit_t12" / "data", "mat")
    elif form == "devkit-text-map":
        write_devkit(tmp_path / "devkit", "text")
        args = {"labels": str(tmp_path / "devkit/ILSVRC2012_validation_ground_truth.txt"),
                "synsets": str(tmp_path / "devkit/synsets.txt")}
    else:
        for key, wnid in val_truth().items():
            (val / wnid).mkdir(exist_ok=True)
            (val / f"{key}.JPEG").rename(val / wnid / f"{key}.JPEG")
    write_names(tmp_path)
    _, layout, [listing] = open_source(str(val), **args)
    assert layout == ("class-folders" if form == "class-folders" else "val-flat")
    assert listing.split == "val" and not listing.rejected and len(listing.records) == VAL_COUNT
    assert {r.key: WNIDS[r.label] for r in listing.records} == val_truth()
    assert [c["name"] for c in listing.classes] == [NAMES[w] for w in WNIDS]


def test_ground_truth_without_a_map_and_unlabelled_images_are_named(tmp_path):
    val = make_val_images(tmp_path / "val")
    write_devkit(tmp_path / "devkit", "text")
    gt = tmp_path / "devkit/ILSVRC2012_validation_ground_truth.txt"
    with pytest.raises(SourceError,
                       match="ILSVRC2012_validation_ground_truth.txt gives ILSVRC2012_IDs: pass --synsets"):
        open_source(str(val), labels=str(gt))
    with pytest.raises(SourceError, match="no validation labels"):
        open_source(str(val))
    (tmp_path / "devkit/bad.txt").write_text("1 n01440764\nn01443537\n")
    with pytest.raises(SourceError, match="bad.txt line 2"):
        open_source(str(val), labels=str(gt), synsets=str(tmp_path / "devkit/bad.txt"))
    (val / "ILSVRC2012_val_00000099.JPEG").write_bytes((val / "ILSVRC2012_val_00000001.JPEG").read_bytes())
    _, _, [listing] = open_source(str(val), labels=str(gt), synsets=str(tmp_path / "devkit/synsets.txt"))
    assert listing.rejected == [{"source": "ILSVRC2012_val_00000099.JPEG",
                                 "reason": f"no label in {gt} + {tmp_path / 'devkit/synsets.txt'}"}]


def test_resize_none_keeps_baseline_jpeg_bytes_and_reencodes_the_rest(tmp_path):
    rng = np.random.default_rng(5)
    tree = tmp_path / "tree" / "n01440764"
    tree.mkdir(parents=True)
    baseline, progressive = jpeg_bytes(photo(rng, 80, 60)), jpeg_bytes(photo(rng, 80, 60), progressive=True)
    (tree / "a.JPEG").write_bytes(baseline)
    (tree / "b.JPEG").write_bytes(progressive)
    _, _, [listing] = open_source(str(tmp_path / "tree"))
    manifest, _ = pack(listing, str(tmp_path / "out"), "t", PackOptions(resize=None))
    got = samples(tmp_path / "out", manifest)
    assert got["a"]["jpg"] == baseline
    assert got["b"]["jpg"] != progressive and simplejpeg.decode_jpeg(got["b"]["jpg"]).shape == (60, 80, 3)


def test_shard_bytes_sets_the_samples_per_shard(imagenet, tmp_path):
    _, _, [listing] = open_source(str(imagenet / "train"))
    listing.rejected = []
    opts = PackOptions(resize=64, shard_size=None, shard_bytes=40_000, max_errors=len(REJECTED))
    manifest, _ = pack(listing, str(tmp_path), "t", opts)
    sizes = [s["bytes"] for s in manifest["shards"]]
    assert len(sizes) >= 3 and manifest["options"]["shard_size"] < len(listing.records)
    assert max(sizes[:-1]) < 1.25 * 40_000 and np.mean(sizes[:-1]) < 40_000


def test_per_class_limit_and_seed_change_the_plan(imagenet, tmp_path):
    _, _, [listing] = open_source(str(imagenet / "train"))
    listing.rejected = []
    a, _ = pack(listing, str(tmp_path / "a"), "t", PackOptions(resize=32, shard_size=5, max_errors=9))
    b, _ = pack(listing, str(tmp_path / "b"), "t", PackOptions(resize=32, shard_size=5, seed=1, max_errors=9))
    assert a["num_samples"] == b["num_samples"] and a["shards"][0]["sha256"] != b["shards"][0]["sha256"]
    keys = lambda d, m: [k for s in m["shards"] for k in samples(d, {"shards": [s]})]  # noqa: E731
    assert sorted(keys(tmp_path / "a", a)) == sorted(keys(tmp_path / "b", b))


def test_unsafe_destination_is_refused_before_anything(imagenet, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _, _, [listing] = open_source(str(imagenet / "val"))
    with pytest.raises(mf.UnsafeURLError):
        pack(listing, "pipe:cat > hacked", "t", PackOptions())
    assert list(tmp_path.iterdir()) == []


def test_changed_options_do_not_mix_into_an_unfinished_run(imagenet, tmp_path):
    _, _, [listing] = open_source(str(imagenet / "val"))
    pack(listing, str(tmp_path), "v", PackOptions(resize=32, shard_size=4))
    (tmp_path / "v-val.manifest.json").unlink()
    (tmp_path / "v-val.pending.json").write_text(json.dumps({"fingerprint": "another run"}))
    with pytest.raises(ValueError, match="unfinished run with other options"):
        pack(listing, str(tmp_path), "v", PackOptions(resize=48, shard_size=4))
    manifest, reused = pack(listing, str(tmp_path), "v", PackOptions(resize=48, shard_size=4, overwrite=True))
    assert reused == 0 and not (tmp_path / "v-val.pending.json").exists()
    again, reused = pack(listing, str(tmp_path), "v", PackOptions(resize=48, shard_size=4))
    assert again == manifest and reused == len(manifest["shards"])
    with pytest.raises(ValueError, match="finished split with other options"):
        pack(listing, str(tmp_path), "v", PackOptions(resize=32, shard_size=4))
    digest = hashlib.sha256((tmp_path / manifest["shards"][0]["name"]).read_bytes()).hexdigest()
    assert digest == manifest["shards"][0]["sha256"]


def test_meta_mat_without_scipy_names_the_extra(tmp_path, monkeypatch):
    """scipy is the optional extra `imagenet`: without it a devkit's meta.mat is one line naming it."""
    import sys

    from typer.testing import CliRunner

    from cnnctl.orchestrator.cli import app

    val = make_val_images(tmp_path / "val")
    write_devkit(tmp_path / "ILSVRC2012_devkit_t12" / "data", "mat")
    write_names(tmp_path)
    # `import scipy.io` raises ImportError, as where it is not installed
    monkeypatch.setitem(sys.modules, "scipy", None)
    monkeypatch.setitem(sys.modules, "scipy.io", None)
    want = "reading the devkit's meta.mat needs scipy: pip install 'cnnctl[imagenet]'"
    with pytest.raises(SourceError, match=re.escape(want)):
        open_source(str(val))
    res = CliRunner().invoke(app, ["shard", str(val), str(tmp_path / "out")])
    assert res.exit_code == 1, res.output
    want_line = f"error: {tmp_path}/ILSVRC2012_devkit_t12/data/meta.mat: {want}"
    assert [line for line in res.output.splitlines() if line.strip()] == [want_line], res.output
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("*.manifest.json"))
