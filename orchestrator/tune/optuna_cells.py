"""`cnnctl tune --search-alg optuna`: Ray Tune's OptunaSearch behind a searcher that turns each
suggestion into a configuration's seeds and never trains a configuration twice. It is saved with
Tune's experiment state, so `--resume` goes on where it stopped. (A random search needs no searcher:
its trials are planned up front, `plan.make`, and handed to Tune as a grid, which PBT accepts.)

Imported only once Ray is connected (ray.tune reads the auth settings when it is imported).
"""

from __future__ import annotations

import functools
import pickle
import statistics

from ray.tune.search import Searcher

from cnnctl.orchestrator.config import RunConfig
from cnnctl.orchestrator.tune.plan import CELL, SEED, trial_seed
from cnnctl.orchestrator.tune.space import SearchSpace, effective_key
from cnnctl.shards import location as loc

MAX_REPEATS = 50  # optuna: draws in a row that repeat a configuration before the search is called done


def _define_by_run(trial, space: SearchSpace, base: dict) -> None:
    space.define_by_run(trial, base)


class OptunaCells(Searcher):
    """optuna: Ray Tune's OptunaSearch (TPE, the space in Optuna's define-by-run form, so conditional
    dimensions are suggested only where they apply), each suggestion trained with ``tune.seeds``
    seeds; TPE hears the mean of a configuration's seeds once all have finished. A suggestion that
    repeats a configuration is not trained again (``same``: TPE hears that configuration's result)
    or adds seeds to it (``distinct``)."""

    def __init__(self, cfg: RunConfig, space: SearchSpace):
        from optuna.samplers import TPESampler
        from ray.tune.search.optuna import OptunaSearch

        t = cfg.tune
        super().__init__(metric=t.metric, mode=t.mode)
        self.base = cfg.model_dump(mode="json")
        self.seeds, self.trial_seeds, self.draws_left = t.seeds, t.trial_seeds, t.num_samples
        self.inner = OptunaSearch(space=functools.partial(_define_by_run, space=space, base=self.base), metric=t.metric,
                                  mode=t.mode, sampler=TPESampler(seed=cfg.run.seed))
        self.run_seed = cfg.run.seed
        self.queue: list[dict] = []  # trials drawn, not yet handed out
        self.known: dict[str, int] = {}  # effective config -> configuration number
        self.expected: list[int] = []  # trials of each configuration
        self.values: list[list[float]] = []  # metric of each finished trial of it
        self.finished: list[int] = []
        self.waiting: list[list[str]] = []  # suggestions TPE awaits the result of, per configuration
        self.cell_of: dict[str, int] = {}  # trial id -> configuration
        self.given = 0

    def suggest(self, trial_id: str):
        for attempt in range(MAX_REPEATS):
            if self.queue:
                config = self.queue.pop(0)
                self.cell_of[trial_id] = config[CELL]
                self.given += 1
                return {**config, SEED: trial_seed(self.run_seed, self.trial_seeds, config[SEED], self.given - 1)}
            if self.draws_left <= 0:
                return Searcher.FINISHED
            asked = f"{trial_id}-{attempt}"
            values = self.inner.suggest(asked)
            if values in (None, Searcher.FINISHED):
                return values
            self.draws_left -= 1
            self._add(asked, values)
        return Searcher.FINISHED

    def _add(self, asked: str, values: dict) -> None:
        key = effective_key(self.base, values)
        cell = self.known.get(key)
        if cell is None:
            cell = self.known[key] = len(self.expected)
            self.expected.append(0)
            self.values.append([])
            self.finished.append(0)
            self.waiting.append([])
        self.waiting[cell].append(asked)
        if self.expected[cell] and self.trial_seeds == "same":  # a repeat: TPE hears the configuration's result
            self._tell(cell)
            return
        first = self.expected[cell]
        self.expected[cell] += self.seeds
        self.queue += [{CELL: cell, SEED: first + j, **values} for j in range(self.seeds)]

    def on_trial_complete(self, trial_id: str, result=None, error: bool = False) -> None:
        cell = self.cell_of.pop(trial_id, None)
        if cell is None:
            return
        self.finished[cell] += 1
        if not error and result and self.metric in result:
            self.values[cell].append(result[self.metric])
        self._tell(cell)

    def save(self, checkpoint_path: str) -> None:  # Tune saves it with the experiment; --resume restores it
        loc.write_bytes(checkpoint_path, pickle.dumps(self.__dict__))  # whole or not at all

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))

    def _tell(self, cell: int) -> None:
        """Once every trial of the configuration has finished, TPE hears their mean (or a failure)."""
        if self.finished[cell] < self.expected[cell]:
            return
        values = self.values[cell]
        for asked in self.waiting[cell]:
            result = {self.metric: statistics.fmean(values)} if values else None
            self.inner.on_trial_complete(asked, result, error=not values)
        self.waiting[cell] = []


