"""The `tune` and `eval` sections of cnnctl's config tree: how `cnnctl tune` sweeps a run and how
`cnnctl eval` tests it (the other sections: orchestrator/config_sections.py)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from cnnctl.orchestrator.config_sections import Section, folder_name


class TuneConfig(Section):
    num_samples: int = Field(8, ge=1, description="Number of trials.")
    metric: str = Field("val_top1", description="Metric that ranks trials.")
    mode: Literal["max", "min"] = Field("max", description="Whether the metric is maximised or minimised.")
    max_concurrent: int = Field(1, ge=1, description=(
        "Trials running at once (lowered to what the cluster's CPUs hold)."))
    name: str = Field("sweep", pattern=r"^[A-Za-z0-9_.-]+$", description=(
        "Sweep name: its folder is <run.storage>/<name>; `--resume NAME` continues it."))
    search: str = Field("lrn", description=(
        "Search space: a preset from configs/search/ (lrn, lr-schedule, lrn+lr) or a YAML file."))
    scheduler: Literal["fifo", "asha", "pbt"] = Field("fifo", description=(
        "fifo: run every trial to the end; asha: stop weak trials early; pbt: weak trials copy a strong trial's "
        "checkpoint and perturb its hyperparameters."))
    grace_period: int = Field(1, ge=1, description="asha: epochs every trial runs before it can be stopped.")
    reduction_factor: float = Field(2.0, gt=1, description="asha: 1/reduction_factor of the trials pass each rung.")
    perturbation_interval: int = Field(1, ge=1, description="pbt: epochs between exploit/explore steps.")
    pbt_lrn: bool = Field(False, description=(
        "pbt: also mutate LRN alpha and beta (when the search space has them), not only optim.lr."))
    trial_workers: int = Field(1, ge=1, description=(
        "Ray Train workers of each trial (sets parallel.workers_per_node, one node per trial)."))
    trial_seeds: Literal["same", "distinct"] = Field("same", description=(
        "same: seed j of every configuration is run.seed + j (common random numbers: two configurations differ only "
        "by their hyperparameters), and a configuration drawn twice is trained once; distinct: trial i uses run.seed "
        "+ i, and a configuration drawn again becomes another seed of it."))
    seeds: int = Field(1, ge=1, description=(
        "Seeds each configuration trains with; the results give each configuration's mean, standard deviation and 95 "
        "% confidence interval."))
    search_alg: Literal["random", "optuna"] = Field("random", description=(
        "random: draw tune.num_samples samples of the space (grids enumerated); optuna: Tree-structured Parzen "
        "Estimator (Ray Tune's OptunaSearch) over the conditional space, tune.num_samples suggestions, each informed "
        "by the configurations finished so far."))
    baseline: str | None = Field(None, description=(
        "The configuration every other is compared with (Welch's t-test over seeds): path=value[,path=value...], e.g. "
        "model.lrn.enabled=false; None: the best configuration is compared with the rest."))

    _name = field_validator("name")(classmethod(lambda cls, v: folder_name(v)))


class EvalConfig(Section):
    tta: Literal["center", "ten-crop", "dense"] = Field("center", description=(
        "The test views `cnnctl eval` uses for this run unless told otherwise: center (one centre crop), ten-crop "
        "(AlexNet §4.1: 4 corners + centre and their flips, softmax averaged), dense (VGG §3.2: the "
        "fully-convolutional net on the whole image at each of `scales`)."))
    scales: list[int] | None = Field(None, description=(
        "dense: the shorter sides Q the image is rescaled to (VGG §4.2 multi-scale: Smin, (Smin+Smax)/2, Smax); None "
        "keeps the image as stored."))
    flip: bool = Field(False, description=(
        "Also average the softmax of the horizontally flipped views (center, dense; ten-crop always does)."))

    @field_validator("scales")
    @classmethod
    def _positive(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (not v or min(v) <= 0):
            raise ValueError(f"scales must be a non-empty list of positive sides, got {v}")
        return v
