"""data.decoder: the windowed and the whole-image JPEG decoders give the same pixels (the batch digests
hold for both: test_batch_digest.py); ``auto`` measures them once on the split's own samples and
caches the cheaper one; ``windowed`` and ``whole`` override it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import jpeg_bytes, photo
from cnnctl.shards import codec, decoders
from cnnctl.shards import manifest as mf
from cnnctl.shards.layouts import class_folders
from cnnctl.shards.transforms import AlexNetCrop, CenterCrop
from cnnctl.shards.writer import PackOptions, pack


@pytest.fixture(scope="module")
def jpeg_split(tmp_path_factory):
    root = tmp_path_factory.mktemp("decoders")
    rng = np.random.default_rng(3)
    for i in range(24):
        folder = root / "tree" / f"c{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"img{i}.JPEG").write_bytes(jpeg_bytes(photo(rng, 96, 80)))
    pack(class_folders(root / "tree", "train"), str(root), "d", PackOptions(resize=64, shard_size=12))
    url = mf.manifest_url(str(root), "d", "train")
    return url, mf.load(url)


def test_overrides_and_unknown_settings(jpeg_split):
    url, manifest = jpeg_split
    assert decoders.windowed("whole", AlexNetCrop(56), url, manifest) is False
    assert decoders.windowed("windowed", AlexNetCrop(56), url, manifest) is codec.WINDOWED
    with pytest.raises(ValueError, match="data.decoder 'fast': one of auto, windowed, whole"):
        decoders.windowed("fast", AlexNetCrop(56), url, manifest)


def test_auto_measures_once_and_caches_the_cheaper_decoder(jpeg_split, tmp_path, monkeypatch):
    assert codec.WINDOWED, "the windowed decoder (shards/_jpegcrop.c) is not built"
    monkeypatch.setenv("CNNCTL_CACHE_DIR", str(tmp_path))
    url, manifest = jpeg_split
    transform = AlexNetCrop(56)
    choice = decoders.windowed("auto", transform, url, manifest)
    cached = json.loads((tmp_path / "decoders.json").read_text())
    entry = cached[decoders.cache_key(transform, manifest)]
    cost = entry["cpu_s_per_image"]
    assert cost["windowed"] > 0 and cost["whole"] > 0
    assert choice == (cost["windowed"] <= cost["whole"]) and entry["choice"] == ("windowed" if choice else "whole")
    # The next stream reads the cache instead of measuring: flip the recorded choice and it follows.
    entry["choice"] = "whole" if choice else "windowed"
    (tmp_path / "decoders.json").write_text(json.dumps(cached))
    assert decoders.windowed("auto", transform, url, manifest) is (not choice)
    # Another transform is another key, measured on its own.
    decoders.windowed("auto", CenterCrop(56), url, manifest)
    assert len(json.loads((tmp_path / "decoders.json").read_text())) == 2


def test_measure_counts_cpu_seconds_per_image(jpeg_split):
    url, manifest = jpeg_split
    samples = decoders._jpeg_samples(url, manifest)
    assert len(samples) == 12  # the first shard's JPEGs
    cost = decoders.measure(AlexNetCrop(56), samples, min_cpu_s=0.05)
    # a 64-px JPEG decodes in well under a millisecond, and not in no time at all
    assert all(1e-6 < c < 5e-3 for c in cost.values()), cost


def test_auto_measures_nothing_where_there_is_nothing_to_choose(jpeg_split, tmp_path, monkeypatch):
    from cnnctl.shards.transforms import CropFlip, Full

    monkeypatch.setenv("CNNCTL_CACHE_DIR", str(tmp_path))
    url, manifest = jpeg_split
    assert decoders.windowed("auto", Full(), url, manifest) is True  # whole images: one way to decode them
    assert decoders.windowed("auto", CropFlip(32, 4), url, manifest) is True  # a padded crop is not a window
    png = {**manifest, "options": {**manifest["options"], "image_format": "png"}}
    assert decoders.windowed("auto", AlexNetCrop(56), url, png) is True  # no JPEGs in the shards
    assert not (tmp_path / "decoders.json").exists()  # nothing was measured or cached
