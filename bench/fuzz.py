"""The fuzz families of tests/fuzzing.py with a large budget: per family, how many inputs were tried
and what each got (ok, a counted skip, or the project's error, by message kind), and every input
that broke the property (a hang, a traceback, another exception type, a message of several lines
or not naming its file, a file written outside its folder), saved under --out for a regression test.

    python bench/fuzz.py                          # every family, 60 s each
    python bench/fuzz.py --seconds 600 tar image  # two families, 10 minutes each
    make fuzz FUZZ_SECONDS=120

Inputs are random (a seed per run, printed); the tests run the same properties derandomized on a
small budget. Exit status 1 when any input broke the property.
"""

from __future__ import annotations

import argparse
import collections
import resource
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from hypothesis import HealthCheck, Phase, given, seed, settings  # noqa: E402

import fuzzing as fz  # noqa: E402


class OutOfTime(BaseException):  # not an Exception: Hypothesis lets it through at once
    pass


def run(name: str, strategy, check, seconds: float, out: Path, run_seed: int) -> dict:
    tried, failures, start = 0, collections.Counter(), time.monotonic()

    @seed(run_seed)
    @settings(max_examples=10**7, deadline=None, database=None, phases=[Phase.generate], derandomize=False,
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def prop(case):
        nonlocal tried
        if time.monotonic() - start > seconds:
            raise OutOfTime
        tried += 1
        try:
            fz.run_one(check, case)
        except Exception as exc:  # noqa: BLE001 - the property broke: count it, keep the input, go on
            what = "HUNG" if isinstance(exc, fz.Hang) else f"FAILED {type(exc).__name__}"
            failures[what] += 1
            fz.record(name, what)
            out.mkdir(parents=True, exist_ok=True)
            (out / f"{name}-{sum(failures.values()):04d}.txt").write_text(f"{case!r}\n\n{traceback.format_exc()}")

    try:
        prop()
    except OutOfTime:
        pass
    return {"tried": tried, "seconds": time.monotonic() - start, "failures": sum(failures.values())}


def main() -> int:
    families = fz.family_table()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("families", nargs="*", help=f"of: {', '.join(families)} (default: all)")
    ap.add_argument("--seconds", type=float, default=60, help="per family")
    ap.add_argument("--seed", type=int, default=int(time.time()) % 100000)
    ap.add_argument("--out", type=Path, default=Path("fuzz-failures"), help="inputs that broke the property")
    args = ap.parse_args()
    unknown = set(args.families) - set(families)
    if unknown:
        ap.error(f"unknown families: {', '.join(sorted(unknown))}")
    print(f"seed {args.seed}, {args.seconds:g} s per family", flush=True)
    fz.corpus()
    summary, broke = {}, 0
    for name in args.families or families:
        strategy, check = families[name]
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        res = run(name, strategy, check, args.seconds, args.out, args.seed)
        res["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        res["rss_growth_mib"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
        summary[name], broke = res, broke + res["failures"]
        print(f"  {name}: {res['tried']} inputs in {res['seconds']:.0f} s, {res['failures']} broke the property",
              flush=True)
    print()
    print(f"{'family':<16}{'inputs':>8}{'in/s':>7}{'broke':>7}{'hung':>6}{'peak RSS':>10}  outcomes (count  kind)")
    for name, res in summary.items():
        counts = collections.Counter()
        for fam, c in fz.OUTCOMES.items():
            if fam == name or fam.startswith(name + "-") or (name == "image" and fam.startswith("image-")):
                counts.update(c)
        hung = counts.get("HUNG", 0)
        rate = res['tried'] / max(res['seconds'], 1e-9)
        head = f"{name:<16}{res['tried']:>8}{rate:>7.1f}{res['failures']:>7}{hung:>6}{res['peak_rss_mib']:>8.0f}Mi"
        rows = counts.most_common()
        print(f"{head}  {rows[0][1]:>6}  {rows[0][0]}" if rows else head)
        for outcome, n in rows[1:12]:
            print(f"{'':<54}  {n:>6}  {outcome}")
        if len(rows) > 12:
            print(f"{'':<54}  {sum(n for _, n in rows[12:]):>6}  ({len(rows) - 12} other kinds)")
    any_hung = any(fz.OUTCOMES[f].get("HUNG") for f in fz.OUTCOMES)
    found = "no input broke the property" if not broke else f"{broke} inputs broke the property: see {args.out}/"
    print(f"\n{found}; none hung" if not any_hung
          else f"\n{broke} inputs broke the property (some hung): see {args.out}/")
    return 1 if broke else 0


if __name__ == "__main__":
    sys.exit(main())
