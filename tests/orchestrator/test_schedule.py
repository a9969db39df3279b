import math

import pytest

from cnnctl.orchestrator.config import resolve
from cnnctl.orchestrator.schedule import Plateau, lr_at, peak_lr


def cfg(*sets):
    return resolve(None, None, list(sets))


def test_linear_scaling_rule():
    assert peak_lr(cfg("optim.lr=0.1", "data.batch_size=1024", "optim.scale_lr=linear")) == pytest.approx(0.4)
    assert peak_lr(cfg("optim.lr=0.1", "data.batch_size=1024")) == 0.1


def test_warmup_then_cosine():
    c = cfg("optim.lr=0.1", "schedule.kind=cosine", "schedule.epochs=10", "schedule.warmup_epochs=2")
    assert lr_at(c, 0, 100) == pytest.approx(0.001)
    assert lr_at(c, 100, 100) == pytest.approx(0.1 * (0.01 + 0.99 * 0.5))
    assert lr_at(c, 200, 100) == pytest.approx(0.1)
    assert lr_at(c, 600, 100) == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(c, 1000, 100) == pytest.approx(0.0)


def test_step_divides_by_gamma():
    c = cfg("optim.lr=0.01", "schedule.kind=step", "schedule.step_epochs=30", "schedule.epochs=90")
    assert [lr_at(c, e * 10, 10) for e in (0, 29, 30, 60, 89)] == pytest.approx([0.01, 0.01, 0.001, 0.0001, 0.0001])


def test_plateau_divides_by_ten_at_most_max_drops_times():
    c = cfg("optim.lr=0.01", "schedule.kind=plateau")
    p = Plateau(patience=1, max_drops=3)
    for acc in (0.5, 0.6, 0.6, 0.6):  # two epochs without a gain > patience=1
        p.update(acc)
    assert p.drops == 1 and lr_at(c, 1000, 10, p.drops) == pytest.approx(0.001)
    for _ in range(20):
        p.update(0.6)
    assert p.drops == 3 and lr_at(c, 1000, 10, p.drops) == pytest.approx(1e-5)
    assert Plateau(1, 3, p.state()).state() == p.state()
