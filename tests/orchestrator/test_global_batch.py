"""data.global_batch: the same samples per optimiser step at any dp (orchestrator/elastic.py). A
Trainer that accumulates two batches of 4 a step trains what one batch of 8 a step trains (the same
samples, steps, lr and, dropout off, the same weights up to float reassociation); a global batch that
is not whole batches is refused in one line; a step checkpoint's batch settles a rerun's at another
dp, and its position is dealt to the new layout with every sample of the epoch once."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from cnnctl.orchestrator import checkpoint as ckpt
from cnnctl.orchestrator import elastic, resume
from cnnctl.orchestrator.config import ConfigError, resolve
from cnnctl.shards import dealt
from cnnctl.shards.position import ReaderPosition
from cnnctl.shards.redistribute import items, source_work
from test_step_checkpoint import rows, train


def test_a_global_batch_that_is_not_whole_batches_is_refused_in_one_line():
    with pytest.raises(ConfigError) as exc:
        resolve("demo-fashion", None, ["data.batch_size=48", "data.global_batch=100"])
    assert exc.value.lines == ["data.global_batch: 100 is not a whole number of batches of data.batch_size 48"]
    assert elastic.accumulation(resolve("demo-fashion", None, ["data.batch_size=48", "data.global_batch=144"])) == 3


@pytest.mark.parametrize("total, dp, batch, expected", [(128, 1, 64, (64, 2)), (128, 2, 64, (64, 1)),
                                                        (128, 4, 64, (32, 1)), (96, 3, 64, (32, 1)),
                                                        (120, 1, 64, (60, 2)), (128, 3, 64, None)])
def test_the_per_rank_batch_at_another_dp_is_the_largest_that_fits(total, dp, batch, expected):
    assert elastic.per_rank(total, dp, batch) == expected


def settings(dp: int, *more: str):
    return resolve("demo-fashion", None, [f"parallel.workers_per_node={dp}", *more])


def test_a_rerun_at_another_dp_keeps_the_checkpoints_global_batch():
    saved = resume.layout(settings(2, "data.batch_size=128", "data.loader_workers=2"))
    cfg = settings(1, "data.batch_size=128", "data.loader_workers=1")
    assert elastic.adjust(cfg, saved, "x") is None and resume.refusal(saved, cfg, "x") is None
    assert (cfg.data.batch_size, cfg.data.global_batch) == (64, 128)
    assert elastic.summary(cfg) == "global batch 128 = 1 x 64 x 2 accumulation steps"
    line = elastic.adjust(settings(1, "data.global_batch=256"), saved, "x")
    assert line == "x: data.global_batch is fixed when the run starts: this run's is 128, not 256"
    assert "does not split over dp 3" in elastic.adjust(settings(3, "data.batch_size=129"), saved, "x")
    other_seed = resume.refusal(saved, settings(1, "run.seed=7", "data.batch_size=64", "data.global_batch=128"), "x")
    assert "run.seed 0 -> 7" in other_seed and "data.batch_size" not in other_seed and "\n" not in other_seed


def test_a_position_at_dp_2_dealt_to_dp_1_keeps_every_sample_once():
    """A fabricated step checkpoint of 2 ranks x 2 loader workers after 30 of 75 steps of 8 (600
    samples), dealt to 1 rank x 1 worker accumulating 2 batches of 4: the readers start afresh on
    the rest, the epoch's sums so far on rank 0, and the trained and dealt items are the epoch's."""
    cfg2 = settings(2, "data.batch_size=8", "data.loader_workers=2")
    cfg = settings(1, "data.batch_size=8", "data.loader_workers=1")
    assert elastic.adjust(cfg, resume.layout(cfg2), "x") is None
    positions = [[ReaderPosition(4 * len(range(w, 30, 2)) + w, len(range(w, 30, 2)), 60, 7 + w).as_list()
                  for w in range(2)] for _ in range(2)]
    old = {"epoch": 1, "steps_done": 30, "layout": resume.layout(cfg2), "shards": "s",
           "ranks": [{"readers": positions[r], "sums": [1.5, 3.0, 120], "rng": {}} for r in range(2)]}
    new = elastic.relayout(old, cfg, SimpleNamespace(samples=600), resume.layout(cfg))
    assert new["steps_done"] == 60 and new["layout"]["dp"] == 1 and new["deal"]["carried"] == [240, 30]
    assert new["ranks"] == [{"readers": [[0, 60, 0, 0]], "sums": [3.0, 6.0, 240]}]
    assert [s["world"] for s in new["segments"]] == [2, 1] and new["segments"][1]["from_step"] == 30
    # reader w of each rank took 15 batches of 4 (w items more: bad samples made up)
    trained = {(2 * r + w, k) for r in range(2) for w in range(2) for k in range(60 + w)}
    dealt_items = items(dealt.work_of(new["deal"])[0])
    epoch = {x for pieces in source_work(2, 2, 4, 75) for x in items(pieces)}
    assert len(dealt_items) == 45 * 8 and not trained & set(dealt_items)
    assert len(epoch - trained - set(dealt_items)) == 0 and len(set(dealt_items)) == len(dealt_items)
    assert elastic.resumed_line(old, cfg) == ("resumed at world 1 (dp 1) from step 30 of epoch 2; "
                                              "global batch 8 = 1 x 4 x 2 accumulation steps")


@pytest.mark.slow  # a Trainer on a gloo process group
@pytest.mark.timeout(300)
def test_two_accumulated_batches_train_as_one_batch_of_their_size(uneven_fmnist_root, tmp_path):
    # one loader worker: with two, a batch of 4 or 8 gives each worker's part another quota
    no_dropout = ["schedule.epochs=1", "model.dropout=0", "run.checkpoint_every_steps=4", "data.loader_workers=1",
                  "data.limit=80"]  # 10 steps: longer, float differences grow past any tolerance
    whole = train(uneven_fmnist_root, tmp_path, "whole", no_dropout)
    halves = train(uneven_fmnist_root, tmp_path, "halves", [*no_dropout, "data.batch_size=4", "data.global_batch=8"])
    assert [m.get("global_step") for m, _ in whole] == [m.get("global_step") for m, _ in halves] == [4, 8, None]
    one, two = rows(tmp_path, "whole")[0], rows(tmp_path, "halves")[0]
    assert two["global_batch"] == one["global_batch"] == [8, 8] and two["steps_per_rank"] == [20]
    assert (two["samples_trained"], two["samples_digest"], two["lr"]) == (one["samples_trained"], one["samples_digest"],
                                                                          one["lr"])
    a, b = ckpt.load_weights(str(whole[-1][1])), ckpt.load_weights(str(halves[-1][1]))
    assert all(torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6) for k in a)  # not bitwise: float reassociation
    assert two["train_loss"] == pytest.approx(one["train_loss"], rel=1e-5)
