"""How often the broken-image gate passes a candidate that truly breaks as many more images as it allows.

    .venv/bin/python benchmarks/broken_gate.py [--reps 2000]

The rule (:func:`autotune.decision.bounds.broken_bound`) bounds the share of images where the candidate
collapsed and the baseline did not with an exact (Clopper-Pearson) one-sided bound and passes it within
``broken_share``. A 95 % bound should pass a candidate whose true extra collapse rate is exactly the
allowance at most 5 % of the time, at every panel size. Each replication draws a panel (prompts x images
a prompt, each image collapsing independently at the candidate's true rate; the baseline never
collapses) and asks the rule, once at 95 % (one look, as ``validate`` judges held-out images), for the
allowances 3 % and 5 % (the default). The exact gate reads only how many images collapsed, so its pass
rate is computed exactly (the binomial sum over the counts the rule passes: no Monte Carlo error). Beside
it, the gate before this one (Student's t over prompts on the 0/1 images, 3 %), which has no width when
nothing collapsed, over ``--reps`` seeded panels. No model: seconds on a CPU.
Writes benchmarks/results/broken_gate.json.
"""

from __future__ import annotations

import argparse
import json
import math
import random
from pathlib import Path

from autotune.decision.bounds import Tolerance, broken_bound
from autotune.decision.looks import t_quantile

PANELS = [(4, 2), (8, 4), (12, 4), (20, 2), (20, 4), (40, 4), (20, 8)]  # prompts x images a prompt
RATES = [0.0, 0.01, 0.03, 0.05, 0.10]
ALLOWANCES = [0.03, 0.05]


def _old_gate(flags: dict[tuple[int, int], int], allowance: float) -> bool:
    """The t bound over prompts on the 0/1 flags the rule used before (a pass when its 95 % bound is within)."""
    by: dict[int, list[int]] = {}
    for (p, _), f in flags.items():
        by.setdefault(p, []).append(f)
    means = [sum(v) / len(v) for v in by.values()]
    n = len(means)
    mean = sum(means) / n
    sd = math.sqrt(sum((m - mean) ** 2 for m in means) / (n - 1))
    return mean + t_quantile(n - 1, 0.05) * sd / math.sqrt(n) <= allowance


def pass_rates(prompts: int, per: int, rate: float, reps: int, rng: random.Random) -> dict[str, float]:
    """The exact gate's pass probability (it reads only how many of the n images collapsed: the binomial sum
    over the counts it passes, each count asked of the rule once) and the old gate's over ``reps`` panels."""
    units = [(p, s) for p in range(prompts) for s in range(per)]
    base = {u: {"clip_score": 30.0} for u in units}
    n = len(units)
    out = {}
    for a in ALLOWANCES:
        tol = Tolerance({"clip_score": 1.0}, collapse={"clip_score": 5.0}, broken_share=a)
        p = 0.0
        for k in range(n + 1):
            cand = {u: {"clip_score": 30.0 - 70.0 * (i < k)} for i, u in enumerate(units)}
            b = broken_bound(cand, base, tol)
            if b is not None and b.verdict == "pass":
                p += math.comb(n, k) * rate**k * (1 - rate) ** (n - k)
        out[f"exact {a:.0%}"] = p
    old = sum(_old_gate({u: int(rng.random() < rate) for u in units}, 0.03) for _ in range(reps))
    return out | {"before (t, 3 %)": old / reps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=2000)
    args = parser.parse_args()
    rng = random.Random(0)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for prompts, per in PANELS:
        cells = out[f"{prompts}x{per}"] = {f"{r:.0%}": pass_rates(prompts, per, r, args.reps, rng) for r in RATES}
        at = ", ".join(f"{k} passes {cells[k.split()[1]][k]:.1%}" for k in ("exact 3%", "exact 5%"))
        print(f"{prompts} prompts x {per} images: a candidate at the allowance: {at}; "
              f"the t gate passes 3 % more in {cells['3%']['before (t, 3 %)']:.1%}; "
              f"a clean one passes at 5 %: {cells['0%']['exact 5%']:.1%}", flush=True)  # fmt: skip
    (Path(__file__).parent / "results" / "broken_gate.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
