"""orchestrator/tracking.py without a server: a tracker that is down is one warning line, tracking is
off by default, a missing mlflow is one line. (tests/e2e/test_tracking.py runs a real `mlflow server`.)"""

import time

import pytest

from cnnctl.orchestrator import tracking
from cnnctl.orchestrator.cluster import free_port
from cnnctl.orchestrator.config import resolve


def test_a_tracker_that_is_down_is_one_warning_line():
    """Down at the start: one line and no tracker (`train.fit` then runs as with tracking off, the
    path tests/e2e/test_tracking.py's run takes without it); gone mid-run: one line, then nothing more
    is sent."""
    pytest.importorskip("mlflow", reason="the extra `track`")
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    said: list[str] = []
    cfg = resolve(preset="demo-fashion", sets=["run.tracker=mlflow", f"run.tracker_uri={down}"])
    t0 = time.monotonic()
    assert tracking.start(cfg, "runs/x", say=said.append) is None
    assert time.monotonic() - t0 < 20  # few retries: seconds, not MLflow's default minutes
    assert len(said) == 1 and said[0].startswith(f"warning: tracker mlflow at {down}: starting a run failed ("), said
    assert said[0].endswith("training goes on without it")
    said.clear()
    tracker = tracking.MlflowTracker(down, "cnnctl", said.append)
    tracker.run_id = "0" * 32  # as if the server went away after the run was created
    for epoch in range(3):
        tracker.log_epoch({"epoch": epoch, "val_top1": 0.5, "train_loss": 1.0})
    tracker.finish("FINISHED", "runs/x/checkpoint_000002")
    assert len(said) == 1 and "logging epoch 0 failed" in said[0], said


def test_tracking_is_off_by_default_and_a_missing_mlflow_is_one_line(monkeypatch):
    assert resolve(preset="demo-fashion").run.tracker == "none"
    assert tracking.start(resolve(preset="demo-fashion"), "runs/x") is None
    cfg = resolve(preset="demo-fashion", sets=["run.tracker=mlflow"])
    real = tracking.importlib.util.find_spec
    monkeypatch.setattr(tracking.importlib.util, "find_spec", lambda name,
                        *a: None if name == "mlflow" else real(name, *a))
    assert tracking.check(cfg) == ["run.tracker=mlflow needs mlflow: pip install 'cnnctl[track]'"]


def test_flat_params():
    assert tracking.flat({"a": {"b": 1, "c": None, "d": [1, 2]}, "e": {}}) == {"a.b": "1", "a.c": "null",
                                                                               "a.d": "[1, 2]", "e": "{}"}
