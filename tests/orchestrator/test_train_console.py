"""The driver's console (orchestrator/console.TrainConsole) drawing the events of a run that lost its
workers after an epoch's report: Ray Train never passes that report on (its checkpoint was still
uploading when the group failed), and the run resumes from it. The epoch's row is still printed, from
metrics.jsonl, where the workers wrote it; an earlier run's epochs are not."""

from __future__ import annotations

import io
import json

from rich.console import Console

from cnnctl.orchestrator.console import TrainConsole


def row(epoch: int) -> dict:
    return {"epoch": epoch, "train_loss": 2.0 - epoch / 10, "train_top1": 0.5, "val_loss": 1.9 - epoch / 10,
            "val_top1": 0.6, "val_top5": 0.9, "lr": 0.01, "images_per_sec": 100.0, "epoch_time_s": 4.0}


def drawn(tmp_path, events) -> list[str]:
    out = io.StringIO()
    console = TrainConsole(str(tmp_path), epochs=6, log_every=1000, console=Console(file=out, width=200))
    console._draw(events)
    return out.getvalue().splitlines()


def test_an_epoch_report_lost_with_its_workers_is_printed_from_metrics(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(row(e)) + "\n" for e in range(4)))
    step = ("step", 2, 6, 10, 50, 2.0, 0.01, 100.0, 1.0)  # this run's console starts in epoch 3 (a rerun)
    lines = drawn(tmp_path, [step, ("epoch", row(2), None), ("note", "node lost: continuing at world 1"),
                             ("epoch", row(4), None)])
    rows = [line.split()[0] for line in lines if line.split()[0].count("/") == 1 and line.split()[0][0].isdigit()]
    assert rows == ["3/6", "4/6", "5/6"]  # 4/6 from metrics.jsonl; 1/6 and 2/6 were an earlier run's
    assert lines.index("node lost: continuing at world 1") > [i for i, line in enumerate(lines)
                                                              if line.startswith("  4/6")][0]  # before the restart
    # the lost report arriving after all: its checkpoint line, not its row again
    again = drawn(tmp_path, [("epoch", row(2), None), ("note", "resuming"), ("epoch", row(3), str(tmp_path / "c"))])
    assert [line.split()[0] for line in again[1:]] == ["3/6", "4/6", "resuming", "checkpoint"]  # [0]: the header
