"""metrics.MetricsLog on an object store (a real S3 server, moto): metrics.jsonl and TensorBoard events
land beside the run, as a local run's do."""

import os

from cnnctl.orchestrator.metrics import MetricsLog, read


def scalars(folder) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, round(e.value, 6)) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_an_object_store_run_gets_its_tensorboard_events(s3_server, tmp_path):
    s3_server.mkdir("tboard")
    log = MetricsLog("s3://tboard/runs/r")
    log.write({"epoch": 0, "train_loss": 2.0, "val_top1": 0.25})
    first = s3_server.ls("tboard/runs/r/tensorboard")
    assert len(first) == 1 and os.path.basename(first[0]).startswith("events.out.tfevents.")
    log.write({"epoch": 1, "train_loss": 1.5, "val_top1": 0.5})
    local = log.tb_local
    log.close()
    assert not os.path.exists(local)  # the local copy is gone; the store's is the run's
    s3_server.get("tboard/runs/r/tensorboard", str(tmp_path / "tb"), recursive=True)
    assert scalars(tmp_path / "tb") == {"train_loss": [(0, 2.0), (1, 1.5)], "val_top1": [(0, 0.25), (1, 0.5)]}
    assert [r["epoch"] for r in read("s3://tboard/runs/r")] == [0, 1]


def test_a_local_run_writes_its_events_in_place(tmp_path):
    log = MetricsLog(str(tmp_path / "run"))
    log.write({"epoch": 0, "train_loss": 2.0})
    log.close()
    assert log.tb_local is None
    assert scalars(tmp_path / "run" / "tensorboard") == {"train_loss": [(0, 2.0)]}
