"""What `cnnctl train` checks on the driver before any worker starts, in one function, run once.

`preflight` finds, in order, what would otherwise fail later in a worker's traceback: a store that
cannot be reached (data.root, run.storage, model.init_from), splits that are missing or too small
for one global batch, a source that cannot initialise the model, a tracker that cannot be used, and
a rerun that would resume mid-epoch at another layout; then it starts (or joins) Ray. A dry run
calls it too and stops before the checks that read a store or start anything, so it works where the
data is not (a README line naming a bucket).
"""

from __future__ import annotations

import importlib
import threading

from cnnctl.orchestrator import tracking
from cnnctl.orchestrator.cluster import connect
from cnnctl.orchestrator.config import ConfigError, RunConfig
from cnnctl.shards import location as loc


class PreflightError(ConfigError):
    """What stops a run before Ray starts: one line per problem."""


def check_data(cfg: RunConfig) -> list[str]:
    """Problems with the stores, the configured splits and model.init_from, found before Ray or any
    worker starts."""
    from cnnctl.shards.manifest import check_splits

    # an object store that cannot be reached (no bucket, no credentials) is one line, not a worker's trace
    unreachable = [line for what, url in (("data.root", cfg.data.root), ("run.storage", cfg.run.storage),
                                          ("model.init_from", cfg.model.init_from or ""))
                   if (line := loc.check_access(url, what))]
    if unreachable:
        return unreachable
    problems = check_splits(cfg.data.root, cfg.data.prefix, [cfg.data.train_split, cfg.data.val_split])
    if not problems and (line := epoch_has_steps(cfg)):
        problems.append(line)
    if not problems and cfg.data.decoder == "device":  # PNG shards, a padded crop: refused here, in one line
        from cnnctl.orchestrator.data import manifest_url, train_transform
        from cnnctl.shards import decoders, manifest as mf

        if line := decoders.device_problem(train_transform(cfg.data), mf.load(manifest_url(cfg, cfg.data.train_split))):
            problems.append(line)
    if cfg.model.init_from:  # a source that cannot initialise this model is refused before Ray starts
        from cnnctl.orchestrator.modeling import init_source

        try:
            init_source(cfg)
        except ValueError as exc:
            problems.append(str(exc))
    return problems


def epoch_has_steps(cfg: RunConfig) -> str | None:
    """One line when the training split holds less than one global batch: every dp rank takes
    (samples // dp) // (batch_size // dp) steps an epoch (shards/reader.py), here none."""
    from cnnctl.shards import manifest as mf

    d, dp = cfg.data, cfg.parallel.dp
    samples = mf.load(mf.manifest_url(d.root, d.prefix, d.train_split))["num_samples"]
    samples = samples if d.limit is None else min(d.limit, samples)
    whole, field = (d.global_batch, "data.global_batch") if d.global_batch else (d.batch_size, "data.batch_size")
    if (samples // dp) // max(whole // dp, 1) == 0:
        limited = " (data.limit)" if d.limit is not None and d.limit <= samples else ""
        return (f"data ({d.train_split}): {samples} samples{limited}, fewer than one global batch of {whole} "
                f"({field}, over dp={dp}): an epoch would have no step; lower {field} or use a larger split")
    return None


def config_problems(cfg: RunConfig) -> list[str]:
    """What stops a run or a sweep before Ray starts: the data and stores, then the tracker."""
    return check_data(cfg) + tracking.check(cfg)


def preflight(cfg: RunConfig, *, dry_run: bool = False, verbose: bool = False) -> str:
    """Check ``cfg`` before a run and, unless ``dry_run``, connect to Ray (every check of a real run
    reads stores, so a dry run stops before them). Returns the cluster shape line; raises
    PreflightError with every problem found."""
    shape = cfg.parallel.shape()
    if dry_run:
        return shape
    if problems := config_problems(cfg):
        raise PreflightError(problems)
    from cnnctl.orchestrator import resume  # torch: only a real run pays for it

    try:  # a rerun that would resume mid-epoch at another layout: refused before Ray starts
        resume.check(cfg, loc.join(loc.absolute(cfg.run.storage), cfg.run.name))
    except ValueError as exc:
        raise PreflightError([str(exc)]) from None
    # Importing the training code and torch (seconds) overlaps with starting Ray, which stays on this
    # thread (Ray ends the processes it starts when the thread that started them ends). Ray Train is
    # imported later, by build_trainer: only after connect() has set a cluster's auth env.
    importer = threading.Thread(target=importlib.import_module, args=("cnnctl.orchestrator.train",), daemon=True)
    importer.start()
    try:
        connect(cfg.parallel.address, cpus_needed=cfg.parallel.world * cfg.parallel.cpus_per_worker, verbose=verbose)
    except RuntimeError as exc:  # a cluster that cannot be joined
        raise PreflightError([str(exc)]) from None
    importer.join()
    return shape
