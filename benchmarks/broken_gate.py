"""How often the collapsed-share gate passes a candidate that truly breaks more images than it allows.

    .venv/bin/python benchmarks/broken_gate.py [--reps 2000]

The rule (:func:`autotune.decision.rule.broken_bound`) bounds the candidate's collapsed share minus the
baseline's with Student's t over prompts and passes it within ``broken_share`` (3 %). A 95 % bound
should pass a candidate whose true extra collapse rate is exactly 3 % at most 5 % of the time. Each
replication draws a panel (prompts x images a prompt, each image collapsing independently at the
candidate's true rate; the baseline never collapses) and asks the rule. No model: seconds on a CPU.
Writes benchmarks/results/broken_gate.json.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from autotune.decision.rule import Tolerance, broken_bound

TOL = Tolerance({"clip_score": 1.0}, collapse={"clip_score": 5.0}, broken_share=0.03)
PANELS = [(4, 2), (8, 4), (12, 4), (20, 2), (20, 4), (40, 4)]  # prompts x images a prompt
RATES = [0.0, 0.01, 0.03, 0.05, 0.10]


def pass_rate(prompts: int, per: int, rate: float, reps: int, rng: random.Random) -> float:
    base = {(p, s): {"clip_score": 30.0} for p in range(prompts) for s in range(per)}
    passed = 0
    for _ in range(reps):
        cand = {u: {"clip_score": 30.0 - (70.0 if rng.random() < rate else 0.0)} for u in base}
        b = broken_bound(cand, base, TOL)
        passed += b is not None and b.verdict == "pass"
    return passed / reps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=2000)
    args = parser.parse_args()
    rng = random.Random(0)
    out = {}
    for prompts, per in PANELS:
        row = {f"{r:.0%}": pass_rate(prompts, per, r, args.reps, rng) for r in RATES}
        out[f"{prompts}x{per}"] = row
        cells = ", ".join(f"true extra {k}: passes {v:.1%}" for k, v in row.items())
        print(f"{prompts} prompts x {per} images: {cells}", flush=True)
    (Path(__file__).parent / "results" / "broken_gate.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
