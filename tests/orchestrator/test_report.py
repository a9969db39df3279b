import json

from PIL import Image
from typer.testing import CliRunner

from cnnctl.orchestrator.cli import app


def test_report_draws_a_png(tmp_path):
    rows = [{"epoch": e, "train_loss": 1 / (e + 1), "val_loss": 1.1 / (e + 1), "train_top1": 0.5 + e / 20,
             "val_top1": 0.5 + e / 25, "val_top5": 0.9, "lr": 0.01 * 0.5**e, "images_per_sec": 900 + e}
            for e in range(5)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert res.exit_code == 0, res.output
    img = Image.open(tmp_path / "report.png")
    assert img.format == "PNG" and img.size[0] > 800


def test_report_without_metrics_is_an_error(tmp_path):
    res = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert res.exit_code == 1 and "no metrics.jsonl" in res.output


def test_sweep_plots_read_a_grid_over_decades_on_a_log_axis():
    from cnnctl.orchestrator.tune.plots import _spans_decades

    assert _spans_decades([1e-5, 1e-4, 1e-3])
    assert not _spans_decades([0.5, 0.75, 1.0])
    assert not _spans_decades([True, False])  # an on/off switch is categorical
    assert not _spans_decades([0.0, 1e-3, 1.0])  # zero has no logarithm
