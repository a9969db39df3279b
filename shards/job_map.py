"""Running the writer's shard jobs: in this process, in local processes (``local_map``), or on Ray
(orchestrator/sharding.py's ``ray_map``, through ``bounded_map``). A map yields (job index, result)
pairs in any order; the writer puts them back in shard order."""

from __future__ import annotations

from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Callable, Iterator

MapFn = Callable[[Callable, list], Iterator[tuple[int, object]]]  # -> (job index, result), any order


def bounded_map(submit: Callable[[object], Future], jobs: list, window: int) -> Iterator[tuple[int, object]]:
    """(index, result) of each job as it finishes, with at most ``window`` submitted and unfinished."""
    todo, pending = iter(enumerate(jobs)), {}
    try:
        while True:
            for i, job in todo:
                pending[submit(job)] = i
                if len(pending) >= window:
                    break
            if not pending:
                return
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                yield pending.pop(fut), fut.result()
    finally:  # an abort (too many errors) must not run the queued jobs
        for fut in pending:
            fut.cancel()


def local_map(workers: int) -> MapFn:
    """Run jobs in this process, or in ``workers`` local processes."""

    def run(fn: Callable, jobs: list) -> Iterator[tuple[int, object]]:
        if workers <= 1:
            yield from ((i, fn(job)) for i, job in enumerate(jobs))
            return
        with ProcessPoolExecutor(workers) as pool:
            yield from bounded_map(lambda job: pool.submit(fn, job), jobs, 2 * workers)

    return run
