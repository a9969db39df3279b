"""The compute the `lrn` preset saves with conditions and deduplication, for the same number of
distinct configurations.

    .venv/bin/python bench/tune_dedup.py [--sweep runs/lrn-reference] [--out docs/tune-dedup.png]

Before: every draw of the space was a trial, and k, n, alpha and beta were drawn for LRN-off trials
too, where they change nothing: the distinct configurations among N trials were the LRN-on draws plus
one LRN-off. After: `when:` leaves those knobs out with LRN off, and a configuration drawn again is
trained once. Both are counted with the sweep planner itself (`tune.plan.make`, "before" on the preset
with its conditions removed and every draw kept as a trial), over 100 sweep seeds per --num-samples.
CPU-seconds are trials x the mean CPU-seconds of one trial, measured from a finished sweep's trials
(Tune's `time_total_s` x the CPUs a trial holds), so the figure carries that sweep's trial length.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from cnnctl.orchestrator.config import resolve  # noqa: E402
from cnnctl.orchestrator.tune import plan as tune_plan  # noqa: E402
from cnnctl.orchestrator.tune import space as search_space  # noqa: E402
from cnnctl.orchestrator.tune.space import SearchSpace, effective_key  # noqa: E402
from cnnctl.orchestrator.tune.spec import load_spec  # noqa: E402
from cnnctl.orchestrator.tune.sweep import trial_cpus  # noqa: E402

SAMPLES = (4, 8, 16, 32, 64)
SEEDS = 100


def trial_cpu_seconds(sweep: Path) -> float:
    base, _ = load_spec(str(sweep))
    times = []
    for f in sweep.glob("trial_*/result.json"):
        rows = [json.loads(x) for x in f.read_text().splitlines() if x.strip()]
        if rows:
            times.append(rows[-1]["time_total_s"])
    return statistics.fmean(times) * trial_cpus(base)


def counts(num_samples: int) -> tuple[float, float, float]:
    """Mean over sweep seeds: distinct configurations, trials before, trials after."""
    lrn = search_space.load("lrn")
    unconditional = SearchSpace.model_validate({"space": {p: d.model_dump(exclude_none=True, exclude={"when"})
                                                          for p, d in lrn.space.items()}})
    distinct, before, after = [], [], []
    for seed in range(SEEDS):
        cfg = resolve("demo-fashion", sets=[f"tune.num_samples={num_samples}", f"run.seed={seed}"])
        base = cfg.model_dump(mode="json")
        old = tune_plan.make(cfg, unconditional)
        # what an old trial effectively trained: its values with those LRN off ignores left out
        old_distinct = len({effective_key(base, {p: v for p, v in c.items() if lrn.space[p].holds(c, base)})
                            for c in old.cells})
        new = tune_plan.make(cfg, lrn)
        distinct.append(old_distinct)
        before.append(sum(old.draws))  # every draw was a trial
        after.append(len(new.trials))
        assert len(new.cells) == len(new.trials)
    return statistics.fmean(distinct), statistics.fmean(before), statistics.fmean(after)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sweep", type=Path, default=Path("runs/lrn-reference"),
                    help="A finished sweep whose trials give the CPU-seconds of one trial.")
    ap.add_argument("--out", type=Path, default=Path("docs/tune-dedup.png"))
    args = ap.parse_args()
    per_trial = trial_cpu_seconds(args.sweep)
    rows = [(n, *counts(n)) for n in SAMPLES]
    print(f"one trial: {per_trial:.1f} CPU-s (mean over {args.sweep}'s trials)")
    print("num_samples  distinct  trials_before  trials_after  cpu_s_before  cpu_s_after  saved")
    for n, d, b, a in rows:
        print(f"{n:11d}  {d:8.1f}  {b:13.1f}  {a:12.1f}  {b * per_trial:12.0f}  {a * per_trial:11.0f}  "
              f"{1 - a / b:5.0%}")
    fig, ax = plt.subplots(figsize=(6.5, 4.2), constrained_layout=True)
    ds = [r[1] for r in rows]
    ax.plot(ds, [r[2] for r in rows], "o-", label="before: every draw a trial")
    ax.plot(ds, [r[3] for r in rows], "o-", label="after: when: + one trial per configuration")
    for n, d, b, a in rows:
        ax.annotate(f"N={n}", (d, b), textcoords="offset points", xytext=(-10, 6), fontsize=7)
    ax.set_xlabel("distinct configurations (mean over 100 sweep seeds)")
    ax.set_ylabel("trials")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    right = ax.secondary_yaxis("right", functions=(lambda t: t * per_trial, lambda s: s / per_trial))
    right.set_ylabel(f"CPU-seconds ({per_trial:.0f} per trial)")
    ax.set_title("lrn preset: trials and CPU-seconds for the same distinct configurations")
    fig.savefig(args.out, dpi=100)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
