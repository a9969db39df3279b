"""`cnnctl shard` end to end: the short form and the subcommands, a kill mid-run, bad input."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from skimage import data as photos
from typer.testing import CliRunner

from cnnctl.orchestrator.cli import app

runner = CliRunner()
CNNCTL = str(Path(sys.executable).parent / "cnnctl")


@pytest.fixture(scope="module")
def photo_tree(tmp_path_factory) -> Path:
    """80 JPEGs of ~500x375 (ImageNet's typical size) cut from two photos, in 4 class folders."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    sources = [photos.astronaut(), photos.coffee()]
    for i in range(80):
        src = sources[i % 2]
        top, left = rng.integers(0, 100, 2)
        img = Image.fromarray(src[top : top + 300, left : left + 400]).resize((500, 375))
        folder = root / f"n0{i % 4}000000"
        folder.mkdir(exist_ok=True)
        img.save(folder / f"img_{i:03d}.JPEG", quality=95)
    return root


def test_short_form_and_subcommands(image_tree, tmp_path):
    out = tmp_path / "s"
    res = runner.invoke(app, ["shard", str(image_tree), str(out), "--shard-size", "16", "--resize", "48"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["shard", "pack", str(image_tree), str(tmp_path / "p"), "--shard-size", "16",
                              "--resize", "48"])
    assert res.exit_code == 0, res.output
    tar = f"{image_tree.name}-train-000000.tar"
    assert (out / tar).read_bytes() == (tmp_path / "p" / tar).read_bytes()
    res = runner.invoke(app, ["shard", "verify", str(out)])
    assert res.exit_code == 0 and "60 samples in 4 shards: ok" in res.output
    res = runner.invoke(app, ["shard", "info", str(out)], env={"COLUMNS": "200"})
    assert res.exit_code == 0 and f"{image_tree.name}-train" in res.output and "jpg q90 short 48" in res.output
    bad = out / f"{image_tree.name}-train-000002.tar"
    bad.write_bytes(bad.read_bytes()[:-1024])
    res = runner.invoke(app, ["shard", "verify", str(out)])
    assert res.exit_code == 1 and f"error: {bad.name}: " in res.output


def test_help_for_each_subcommand():
    for cmd in (["shard", "--help"], ["shard", "pack", "--help"], ["shard", "verify", "--help"],
                ["shard", "info", "--help"]):
        res = runner.invoke(app, cmd, terminal_width=200)
        assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["shard", "pack", "--help"], terminal_width=200)
    for option in ("--layout", "--labels", "--synsets", "--shard-bytes", "--address", "--resume", "--max-errors",
                   "--center-crop"):
        assert option in res.output


def test_pipe_url_is_refused_and_creates_nothing(image_tree, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for dest in ("pipe:cat > x.tar", "PIPE:tee y"):
        res = runner.invoke(app, ["shard", str(image_tree), dest])
        assert res.exit_code == 1 and "refused" in res.output
    res = runner.invoke(app, ["shard", "verify", "pipe:cat /etc/passwd"])
    assert res.exit_code == 1 and "refused" in res.output
    assert list(tmp_path.iterdir()) == []


def test_bad_inputs_one_line_each_and_no_manifest(tmp_path):
    tree = tmp_path / "tree" / "n01440764"
    tree.mkdir(parents=True)
    Image.fromarray(photos.chelsea()).save(tree / "good.JPEG")
    (tree / "empty.JPEG").write_bytes(b"")
    (tree / "text.JPEG").write_text("hello")
    res = runner.invoke(app, ["shard", str(tmp_path / "tree"), str(tmp_path / "out")])
    assert res.exit_code == 1
    errors = [line for line in res.output.splitlines() if line.startswith("error: ")]
    assert errors[:2] == ["error: n01440764/empty.JPEG: empty file (0 bytes)",
                          "error: n01440764/text.JPEG: not an image (content matches no known image format)"]
    assert not list((tmp_path / "out").glob("*.manifest.json"))
    res = runner.invoke(app, ["shard", str(tmp_path / "tree"), str(tmp_path / "out"), "--max-errors", "2"])
    assert res.exit_code == 0 and "1 samples in 1 shards" in res.output and "2 rejected" in res.output


def _shards(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.tar")) if folder.exists() else []


def test_kill_mid_run_then_rerun_is_byte_identical(photo_tree, tmp_path):
    args = [str(photo_tree), "--shard-size", "2", "--resize", "256", "--seed", "7"]
    clean = tmp_path / "clean"
    subprocess.run([CNNCTL, "shard", args[0], str(clean), *args[1:]], check=True, capture_output=True)
    out = tmp_path / "killed"
    proc = subprocess.Popen([CNNCTL, "shard", args[0], str(out), *args[1:]], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while len(_shards(out)) < 5 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert 5 <= len(_shards(out)) < 40 and not list(out.glob("*.manifest.json"))
    res = subprocess.run([CNNCTL, "shard", args[0], str(out), *args[1:]], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "reused" in res.stderr and " 0 reused" not in res.stderr
    manifest = json.loads((out / f"{photo_tree.name}-train.manifest.json").read_text())
    assert manifest == json.loads((clean / f"{photo_tree.name}-train.manifest.json").read_text())
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in clean.iterdir())  # no temp files left
    for shard in _shards(clean):
        assert (out / shard.name).read_bytes() == shard.read_bytes()
    assert manifest["num_samples"] == 80 and len(manifest["shards"]) == 40
    res = runner.invoke(app, ["shard", "verify", str(out)])
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize("source,prefix", [
    ("imagenet/train", "imagenet"), ("imagenet/val", "imagenet"), ("ILSVRC2012_img_train.tar", "imagenet"),
    ("mini-train", "mini"), ("flowers", "flowers"),
])
def test_default_prefix_is_the_datasets_name_not_the_splits(source, prefix, tmp_path):
    res = runner.invoke(app, ["shard", f"/data/{source}", str(tmp_path / "o"), "--layout",
                              "class-folders", "--dry-run"])
    assert res.exit_code == 0, res.output
    assert f"shards: {prefix}-<split>-NNNNNN.tar" in res.output, res.output


def test_a_split_folder_packs_under_its_datasets_name(image_tree, tmp_path):
    """`cnnctl shard /data/imagenet/train OUT` wrote train-train-000000.tar; now imagenet-train-000000.tar."""
    (tmp_path / "imagenet").mkdir()
    (tmp_path / "imagenet" / "train").symlink_to(image_tree, target_is_directory=True)
    res = runner.invoke(app, ["shard", str(tmp_path / "imagenet" / "train"), str(tmp_path / "o"), "--shard-size", "30"])
    assert res.exit_code == 0, res.output
    names = sorted(p.name for p in (tmp_path / "o").iterdir())
    assert names == ["imagenet-train-000000.tar", "imagenet-train-000001.tar", "imagenet-train.manifest.json",
                     "imagenet-train.mean.npy"]
    res = runner.invoke(app, ["shard", str(tmp_path / "imagenet" / "train"), str(tmp_path / "p"), "--shard-size", "30",
                              "--prefix", "in100"])
    assert res.exit_code == 0 and (tmp_path / "p" / "in100-train.manifest.json").exists(), res.output


def _plan(args: list[str]) -> dict:
    res = runner.invoke(app, ["shard", *args, "--dry-run"])
    assert res.exit_code == 0, res.output
    return yaml.safe_load(res.output)


def test_options_resolve_defaults_then_file_then_set_then_flags(tmp_path):
    """One precedence for the shard options, as for the training config: defaults < --config <
    --set < flags (and SOURCE, DEST)."""
    f = tmp_path / "shard.yaml"
    f.write_text(yaml.safe_dump({"quality": 70, "seed": 3, "workers": 2, "splits": ["test"], "resize": 64,
                                 "dest": "ignored", "overwrite": True}))
    dest = str(tmp_path / "o")
    defaults = _plan(["fashion-mnist", dest])["options"]
    assert (defaults["quality"], defaults["seed"], defaults["resize"], defaults["shard_size"]) == (90, 0, None, 1000)
    plan = _plan(["fashion-mnist", dest, "--config", str(f)])
    assert (plan["options"]["quality"], plan["options"]["seed"], plan["options"]["resize"]) == (70, 3, 64)
    assert (plan["splits"], plan["runs_on"], plan["destination"]) == (["test"], "2 local process(es)", dest)
    assert plan["options"]["existing_shards"] == "rebuilt (--overwrite)"
    plan = _plan(["fashion-mnist", dest, "--config", str(f), "--set", "quality=80", "--set", "seed=5"])
    assert (plan["options"]["quality"], plan["options"]["seed"], plan["runs_on"]) == (80, 5, "2 local process(es)")
    plan = _plan(["fashion-mnist", dest, "--config", str(f), "--set", "quality=80", "--quality", "95", "--resume",
                  "--split", "train", "--workers", "1"])
    assert (plan["options"]["quality"], plan["options"]["seed"], plan["splits"]) == (95, 3, ["train"])
    assert (plan["runs_on"], plan["options"]["existing_shards"]) == ("1 local process(es)", "kept (--resume)")


def test_bad_shard_options_one_line_each(tmp_path):
    res = runner.invoke(app, ["shard", "fashion-mnist", str(tmp_path), "--set", "colour=red", "--set", "quality=101",
                              "--dry-run"])
    assert res.exit_code == 1
    assert sorted(res.output.splitlines()) == ["error: colour: unknown key",
                                               "error: quality: Input should be less than or equal to 100 (got 101)"]
    res = runner.invoke(app, ["shard", "fashion-mnist", str(tmp_path), "--config", str(tmp_path / "no.yaml")])
    assert res.exit_code == 1 and "no such file" in res.output
    assert list(tmp_path.iterdir()) == []


def test_a_shard_config_packs_as_the_flags_do(tmp_path):
    from cnnctl.orchestrator.shard_config import ShardConfig, resolve_shard

    cfg = resolve_shard(None, ["per_class_limit=2", "shard_bytes=1MB"], {"source": "fashion-mnist", "dest": "d"})
    assert cfg == ShardConfig(source="fashion-mnist", dest="d", per_class_limit=2, shard_bytes="1MB")
    assert resolve_shard(None, ["resize=256"], {"source": "s", "dest": "d"}).resize == "256"  # --set gives a number
