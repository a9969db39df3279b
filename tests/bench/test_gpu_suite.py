"""bench/gpu_suite.py, so that it cannot rot while no GPU runs it: its dry form (`--device cpu`, the
same code at tiny sizes) prints and writes every row, each a positive number with its baseline and
ratio, or an explicit "skipped: reason"; and `--device cuda` without CUDA is one line and exit 1.

The dry form starts a local Ray (the training and evaluation rows run `cnnctl train` and `cnnctl eval`'s
code), so it is in the slow tier: the fast tier never starts Ray (tests/conftest.py). ~60 s on 2 cores."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cnnctl.orchestrator.config_sections import DataConfig

ROOT = Path(__file__).resolve().parents[2]
SUITE = ROOT / "bench" / "gpu_suite.py"
STEP = [f"{model} {v}, batch 2" for model in ("alexnet", "vgg-a") for v in (
    "fp32 contiguous", "fp32 channels_last", "bf16 contiguous", "bf16 channels_last",
    "fp32 channels_last compiled", "bf16 channels_last compiled")]
EVAL = [f"cnnctl eval, {what}, {how}" for what in ("alexnet ten views", "vgg-a dense multi-scale + flips")
        for how in ("1 Ray worker end to end", "the evaluation alone")]
ROWS = {  # section -> every row the dry form must print
    "synthetic step": STEP,
    "LRN": ["fused LRN fwd+bwd, fp32 contiguous", "fused LRN fwd+bwd, fp32 channels_last"],
    "train": ["cnnctl train, real shards, data.decoder=windowed", "cnnctl train, real shards, data.decoder=device"],
    "eval": EVAL,
}
BASELINES = {"alexnet fp32 contiguous, batch 2", "vgg-a fp32 contiguous, batch 2"}  # the rows others divide by


def clean_env() -> dict:
    """This environment without the test session's Ray connection: the suite starts its own."""
    return {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH") and k != "RAY_ADDRESS"}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_dry_form_prints_every_row(tmp_path):
    out = tmp_path / "suite.json"
    run = subprocess.run([sys.executable, str(SUITE), "--device", "cpu", "--json", str(out)], cwd=tmp_path,
                         capture_output=True, text=True, timeout=540, env=clean_env())
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    got = {(r["group"], r["name"]): r for r in rows}
    assert sorted(got) == sorted((g, n) for g, names in ROWS.items() for n in names)
    device_built = "device" in DataConfig.model_fields["decoder"].annotation.__args__
    for (group, name), r in got.items():
        if "skipped" in r:  # only the device decoder's row may be, and only where the build lacks it
            assert name.endswith("decoder=device") and not device_built, (name, r)
            assert r["skipped"] == "data.decoder=device is not in this build"
            assert f"| {name} | skipped: {r['skipped']} |" in run.stdout
            continue
        assert math.isfinite(r["value"]) and r["value"] > 0, (name, r)
        lo, hi = r["spread"]
        assert 0 < lo <= r["value"] <= hi, (name, r)
        if name in BASELINES:
            assert r["baseline"] is None and r["ratio"] is None
        else:
            assert r["baseline"] and r["baseline_value"] > 0 and math.isfinite(r["ratio"]) and r["ratio"] > 0, r
        assert f"| {group} | {name}" in run.stdout


def test_cuda_without_a_gpu_is_one_line(tmp_path):
    run = subprocess.run([sys.executable, str(SUITE), "--device", "cuda"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})  # no GPU, anywhere
    assert run.returncode == 1 and run.stdout == ""
    assert run.stderr.strip().splitlines() == [
        "gpu_suite: --device cuda but torch sees no CUDA device; --device cpu runs the dry form"]
