"""`cnnctl eval --tta center|ten-crop|dense` on a real checkpoint and real shards, alone and fused."""

import json

import pytest
import torch
from typer.testing import CliRunner

from cnnctl import models
from cnnctl.orchestrator import checkpoint as ckpt
from cnnctl.orchestrator.cli import app
from cnnctl.orchestrator.config import RunConfig
from cnnctl.orchestrator.device_batch import DeviceBatch, Normalize
from cnnctl.orchestrator.evaluate import make_predict

runner = CliRunner()


@pytest.fixture(scope="module")
def checkpoint(fmnist_root, tmp_path_factory):
    """alexnet-small (28 px) with random weights, saved the way training saves it."""
    torch.manual_seed(0)
    cfg = RunConfig()
    cfg.data.root = fmnist_root
    cfg.model.num_classes = 10
    model = models.build("alexnet-small", num_classes=10, width=0.25)
    cfg.model.width = 0.25
    folder = tmp_path_factory.mktemp("ckpt") / "checkpoint_000000"
    ckpt.save(folder, model.state_dict(), cfg, {"optimizer": torch.optim.SGD(model.parameters(), lr=0.1).state_dict(),
                                                "epoch": 0, "step": 0}, {"epoch": 0})
    return folder


def _eval(tmp_path, *args):
    out = tmp_path / f"eval-{len(list(tmp_path.iterdir()))}.json"
    res = runner.invoke(app, ["eval", *args, "--out", str(out), "--threads", "1", "--json"])
    assert res.exit_code == 0, res.output
    written = json.loads(out.read_text())
    assert json.loads(res.output) == {**written, "written_to": str(out)}  # --json prints what --out holds
    assert written["count"] == 200 and 0 <= written["top1"] <= written["top5"] <= 1
    return written


@pytest.mark.timeout(300)
def test_dense_multi_scale_flip_runs_on_a_real_checkpoint(checkpoint, tmp_path):
    r = _eval(tmp_path, str(checkpoint), "--tta", "dense", "--scales", "28,36,44", "--flip")
    assert r["tta"] == "dense" and r["scales"] == [28, 36, 44] and r["flip"] is True


@pytest.mark.slow  # every TTA form over a real checkpoint: seconds
@pytest.mark.timeout(300)
def test_tta_forms_agree_where_they_must_and_fuse(checkpoint, tmp_path):
    center = _eval(tmp_path, str(checkpoint))
    center_flip = _eval(tmp_path, str(checkpoint), "--flip")
    # 28-px images and a 28-px crop: all 5 ten-crop views are the image, so ten-crop = centre + flip
    ten = _eval(tmp_path, str(checkpoint), "--tta", "ten-crop")
    assert ten["top1"] == center_flip["top1"] and ten["loss"] == pytest.approx(center_flip["loss"], rel=1e-5)
    # dense at the native size: the score map is 1x1, so dense = centre (up to conv vs linear rounding)
    dense = _eval(tmp_path, str(checkpoint), "--tta", "dense")
    assert dense["top1"] == center["top1"] and dense["loss"] == pytest.approx(center["loss"], rel=1e-4)
    # batched dense evaluation (8 images of one size per forward by default) = one image at a time
    one = _eval(tmp_path, str(checkpoint), "--tta", "dense", "--batch-size", "1")
    assert one["top1"] == dense["top1"] and one["loss"] == pytest.approx(dense["loss"], rel=1e-5)
    # fusing a checkpoint with itself averages identical softmaxes: the same as one, for every TTA
    for args, alone in ((["--tta", "ten-crop"], ten), (["--tta", "dense"], dense), ([], center)):
        fused = _eval(tmp_path, str(checkpoint), str(checkpoint), *args)
        assert len(fused["checkpoints"]) == 2
        assert fused["top1"] == alone["top1"] and fused["loss"] == pytest.approx(alone["loss"], rel=1e-4)


def test_ten_crop_of_a_constant_image_equals_the_center_crop():
    torch.manual_seed(0)
    model = models.build("alexnet-small", num_classes=10, width=0.25).eval()
    prep = [DeviceBatch(Normalize([0.5] * 3, [0.25] * 3), channels_last=True)]
    img = torch.full((2, 3, 32, 32), 77, dtype=torch.uint8)
    img[1] = 200
    views = img[:, None, :, 2:30, 2:30].expand(2, 10, 3, 28, 28)  # a constant image's 10 views
    with torch.no_grad():
        ten = make_predict([model], prep, "ten-crop", [None], False)(views)
        center = make_predict([model], prep, "center", [None], True)(img[:, :, 2:30, 2:30])
    assert torch.allclose(ten, center, atol=1e-6)


@pytest.mark.parametrize("args, message", [
    (["--tta", "five-crop"], "--tta 'five-crop'"),
    (["--scales", "256"], "--scales applies to --tta dense only"),
    (["--tta", "dense", "--scales", "256,x"], "--scales '256,x'"),
    (["--tta", "dense", "--scales", "16"], "Q >= the crop size 28 the model trained on"),
])
def test_bad_tta_options_exit_1_with_a_reason(checkpoint, args, message):
    res = runner.invoke(app, ["eval", str(checkpoint), *args])
    assert res.exit_code == 1 and message in res.output, res.output


def test_eval_prints_a_table_by_default(checkpoint, tmp_path):
    out = tmp_path / "e.json"
    res = runner.invoke(app, ["eval", str(checkpoint), str(checkpoint), "--out", str(out), "--threads", "1"])
    assert res.exit_code == 0, res.output
    written = json.loads(out.read_text())
    lines = res.output.splitlines()
    assert "softmax averaged" in lines[0] and lines[1].split() == ["split", "images", "views", "top-1",
                                                                   "top-5", "loss", "time"]
    row = lines[3].split()
    assert row[:4] == ["test", "200", "centre", "crop"]
    assert row[4] == f"{written['top1']:.2%}" and row[5] == f"{written['top5']:.2%}"
    assert lines[-1] == f"wrote {out}" and len(lines) == 5


@pytest.mark.parametrize("args, message", [
    (["/nonexistent/run", "--workers", "2"], "error: /nonexistent/run: no complete checkpoint found"),
    (["{ckpt}", "--workers", "2", "--data", "/nonexistent/shards"],
     "error: /nonexistent/shards/fashion-mnist-test.manifest.json: no manifest"),
    (["{ckpt}", "--workers", "2", "--gpus", "--split", "nosuch"], "error: "),
    (["{ckpt}", "--workers", "3", "--nodes", "2"], "error: --workers 3 is not a multiple of --nodes 2"),
    (["{ckpt}", "--workers", "4", "--nodes", "3", "--workers-per-node", "2"],
     "error: --workers 4: --nodes 3 x --workers-per-node 2 = 6"),
    (["{ckpt}", "--workers", "2", "--tta", "dense", "--scales", "16"],
     "error: --scales [16]: dense evaluation needs every Q >= the crop size 28"),
])
def test_eval_on_workers_refuses_bad_paths_in_one_line_before_ray_starts(checkpoint, monkeypatch, args, message):
    from cnnctl.orchestrator import cluster

    def no_ray(*a, **k):
        raise AssertionError("Ray must not start")

    monkeypatch.setattr(cluster, "connect", no_ray)  # eval_ray imports it when it starts Ray
    res = runner.invoke(app, ["eval", *[a.format(ckpt=checkpoint) for a in args]])
    assert res.exit_code == 1 and len(res.output.splitlines()) == 1 and res.output.startswith(message), res.output


def test_eval_progress_lines_off_a_terminal():
    import io

    from rich.console import Console

    from cnnctl.orchestrator.console import EvalProgress

    buf = io.StringIO()
    with EvalProgress("eval test", Console(file=buf, width=200)) as bar:
        for done, seconds in ((0, 0.5), (100, 2.0), (300, 4.0), (1100, 12.0), (1500, 14.0), (2000, 16.0)):
            bar.update(done, 2000, seconds)
    assert buf.getvalue().splitlines() == ["eval test 1,100/2,000 images  100 img/s  eta 0:09"]
