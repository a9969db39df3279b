"""The rest of an epoch dealt to another reader layout (shards/redistribute.py): what the old
readers trained and what the new readers are dealt make up the source epoch's items, each once,
for 1->2, 2->1 and 4->3 dp ranks, loader workers changing too, quotas that differ by reader (steps
not a multiple of the workers), and a second resize of an epoch already resized once."""

from __future__ import annotations

from collections import Counter

import pytest

from cnnctl.shards.redistribute import Piece, deal, items, quotas, reader_batches, redistribute, rest, source_work

T = 7  # optimiser steps in the epoch


def layout_steps(accumulate: int) -> int:
    return T * accumulate


def trained(work: list[list[Piece]], workers: int, batch: int, start: int, at: int) -> tuple[list, list]:
    """(items trained from ``work`` between steps ``start`` and ``at`` of every rank, each reader's
    (ordinal, batches) position at step ``at``), with no bad sample."""
    done, positions = [], []
    for i, w in enumerate(work):
        batches = reader_batches(at, workers, i % workers)
        ordinal = (batches - reader_batches(start, workers, i % workers)) * batch
        done += items(rest(w, 0, ordinal)) if ordinal else []
        positions.append((ordinal, batches))
    return done, positions


# (dp, loader workers, micro batch, accumulation) -> the same, at one global batch of 24
CASES = {"1->2": ((1, 1, 24, 1), (2, 1, 12, 1)), "2->1": ((2, 2, 6, 2), (1, 2, 6, 4)),
         "4->3": ((4, 3, 6, 1), (3, 2, 8, 1)), "4->3-workers-1->0": ((4, 1, 3, 2), (3, 1, 4, 2)),
         "2->1-workers-2->3": ((2, 2, 12, 1), (1, 3, 12, 2))}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("cut", [1, 3, 6])
def test_trained_and_dealt_make_up_the_epoch_each_item_once(case, cut):
    (dp, w, b, a), (dp2, w2, b2, a2) = CASES[case]
    assert dp * b * a == dp2 * b2 * a2 == 24
    work = source_work(dp, w, b, layout_steps(a))
    epoch = Counter(x for pieces in work for x in items(pieces))
    assert sum(epoch.values()) == T * 24 and max(epoch.values()) == 1
    done, positions = trained(work, w, b, 0, cut * a)
    dealt = redistribute(work, positions, w, b, layout_steps(a), (dp2, w2, b2, layout_steps(a2), cut * a2))
    assert [len(items(x)) for x in dealt] == quotas(dp2, w2, b2, layout_steps(a2), cut * a2)
    assert Counter(done) + Counter(x for pieces in dealt for x in items(pieces)) == epoch


def test_a_second_resize_of_a_resized_epoch_still_makes_it_up():
    """4x3 readers -> 3x2 after step 2 -> 1x3 after step 5 (accumulating 3 micro-batches of 8)."""
    work = source_work(4, 3, 6, T)
    epoch = Counter(x for pieces in work for x in items(pieces))
    done1, positions = trained(work, 3, 6, 0, 2)
    work2 = redistribute(work, positions, 3, 6, T, (3, 2, 8, T, 2))
    done2, positions2 = trained(work2, 2, 8, 2, 5)
    work3 = redistribute(work2, positions2, 2, 8, T, (1, 3, 8, 3 * T, 15))
    rest_ = Counter(x for pieces in work3 for x in items(pieces))
    assert Counter(done1) + Counter(done2) + rest_ == epoch
    assert sum(rest_.values()) == (T - 5) * 24


def test_a_reader_that_made_up_bad_samples_owes_items_past_its_work():
    """A reader whose 2 bad samples were made up has taken 2 more items than it trained: its rest
    goes on along its last piece's source stream, and the deal stays a function of the positions."""
    work = [Piece(3, 10, 4), Piece(5, 0, 6)]
    assert rest(work, 0, 10) == work
    assert rest(work, 3, 5) == [Piece(3, 13, 1), Piece(5, 0, 4)]
    assert rest(work, 12, 2) == [Piece(5, 8, 2)]  # 2 bad taken: 10 items for 8 samples, 2 owed
    assert rest(work, 12, 4) == [Piece(5, 8, 4)]


def test_deal_cuts_the_line_in_reader_order_and_refuses_a_wrong_total():
    line = [Piece(0, 4, 3), Piece(1, 2, 5)]
    assert deal(line, [2, 4, 2]) == [[Piece(0, 4, 2)], [Piece(0, 6, 1), Piece(1, 2, 3)], [Piece(1, 5, 2)]]
    with pytest.raises(ValueError, match="8 items left in the epoch, the new readers take 9"):
        deal(line, [3, 3, 3])
