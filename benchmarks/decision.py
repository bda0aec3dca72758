"""The recommendation rule against the truth: how often a study's pick is truly worse than the
tolerance, and how much of the available speed-up it keeps.

    .venv/bin/python benchmarks/decision.py [--studies 40] [--settings 30]

On autotune's trained micro model (32 px digits, its digits CLIP; the LPIPS backbone is random),
for the two classes of studies/demo.toml (round: 4 prompts, straight: 3) and a space of 96
settings (Euler, DPM++ 2M, DDIM and Euler a x 8 step counts 3..16 x CFG 3, 5, 7), each simulated
study scores a random sample of ``--settings`` settings and the baseline (DPM++ 2M Karras, 30
steps, CFG 5) on 2 search seeds drawn from a pool of 6, with timings drawn around each setting's
measured serving cost (3 calls of batch 1 after a warm-up, this machine's noise: x lognormal(0,
0.15) per call). The search itself is stood in by that random sample: what is measured is the
decision. Two rules decide on the same study:

- ``mean``: the rule before issue 13: the cheapest setting (median seconds) whose *mean* CLIP and
  LPIPS lie within tolerance of the baseline's on the search images (stochastic samplers judged
  against seed-to-seed LPIPS, as it did);
- ``bound``: autotune.decision as ``autotune study`` runs it: racing (up to 8 more seeds for the
  cheapest undecided candidates, within 256 images) and confirmation of 3 finalists on 4 fresh
  seeds (drawn per study from a pool of 8), stochastic samplers excluded.

The truth: the picks and the baseline rendered on seeds never used otherwise, the same prompts
(16 seeds, 64 images for round; 22 seeds, 66 images for straight). A pick is *bad*
when its mean CLIP difference to the baseline on those images is below -tolerance, or its LPIPS
difference above the LPIPS tolerance. *Kept* is the pick's true speed-up (measured medians) over
the best true speed-up among the settings the study rendered that truly qualify. The tolerance
is the demo's: 0.5 x the baseline's seed-to-seed CLIP standard deviation, LPIPS 0.1 x seed-to-seed.

Images are rendered lazily through autotune's own Evaluator and cached per (class, setting,
seed) in benchmarks/cache/decision-*.json (the first run renders for about 10-15 minutes on 2 cores).
Writes benchmarks/results/decision.json.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from search import MICRO_DIGITS  # benchmarks/ is on sys.path when run as a script

HERE = Path(__file__).parent
SCHEDULERS = ["euler", "dpmpp_2m", "ddim", "euler_a"]
STEPS = [3, 4, 5, 6, 8, 10, 13, 16]
GUIDANCE = [3.0, 5.0, 7.0]
BASELINE = ("dpmpp_2m_karras", 30, 5.0)
SEARCH_POOL = list(range(6))
RACE_POOL = list(range(6, 14))
CONFIRM_POOL = list(range(20, 28))
TRUTH = {"round": list(range(100, 116)), "straight": list(range(100, 122))}
PROMPTS = {"round": 4, "straight": 3}
LPIPS_X = 0.1  # as the study file's default lpips_tolerance (the CLIP tolerance is its clip_tolerance_sd = 0.5)
NOISE = 0.15  # lognormal sigma of one timed call around the setting's measured cost
STUDY = (
    """
name = "decision"
[model]
id = "micro"
device = "cpu"
height = 32
width = 32
[search]
seeds = [0, 1]
batch_size = 16
"""
    + MICRO_DIGITS
)
Key = tuple[str, int, float]


class Renders:
    """Per-prompt CLIP and LPIPS of (class, setting, seed), and each setting's serving seconds; cached."""

    def __init__(self) -> None:
        self.path = HERE / "cache" / "decision-v1.json"
        self.data: dict[str, Any] = json.loads(self.path.read_text()) if self.path.exists() else {}
        self.evaluator: Any = None
        self.dirty = 0

    def _load(self) -> Any:
        if self.evaluator is None:
            from autotune.config import load_config
            from autotune.model.evaluate import Evaluator
            from autotune.model.pipeline import resolve_config

            self.tmp = tempfile.TemporaryDirectory()
            path = Path(self.tmp.name) / "decision.toml"
            path.write_text(STUDY)
            self.cfg = resolve_config(load_config(path))
            self.evaluator = Evaluator(self.cfg, self.cfg.default_storage, None)
        return self.evaluator

    def images(self, c: str, k: Key, seeds: list[int]) -> dict[tuple[int, int], dict[str, float]]:
        from autotune.space.settings import Settings

        todo = [s for s in seeds if f"{c}|{k}|{s}" not in self.data]
        if todo:
            ev = self._load()
            e = ev.evaluate(Settings.make(*k), self.cfg.classes[c], todo, timed=False)
            for j, s in enumerate(todo):
                self.data[f"{c}|{k}|{s}"] = {m: v[j :: len(todo)] for m, v in e.per_image.items()}
            self.dirty += len(todo)
            if self.dirty > 200:
                self.save()
        out: dict[tuple[int, int], dict[str, float]] = {}
        for s in seeds:
            row = self.data[f"{c}|{k}|{s}"]
            for m, per_prompt in row.items():
                for p, x in enumerate(per_prompt):
                    out.setdefault((p, s), {})[m] = x
        return out

    def seconds(self, c: str, k: Key) -> float:
        """Median of 3 serving calls (batch 1, after a warm-up) of the setting: its measured cost."""
        from autotune.model.render import time_serving
        from autotune.space.settings import Settings

        key = f"{c}|{k}|seconds"
        if key not in self.data:
            ev = self._load()
            m = self.cfg.model
            prompt = self.cfg.classes[c][0]
            self.data[key] = statistics.median(
                time_serving(ev.pipeline, Settings.make(*k), prompt, 0, m.height, m.width)
            )
        return float(self.data[key])

    def seed_lpips(self, c: str) -> float:
        key = f"{c}|seed_lpips"
        if key not in self.data:
            self.data[key] = self._load().seed_lpips(self.cfg.classes[c])
        return float(self.data[key])

    def save(self) -> None:
        self.path.parent.mkdir(exist_ok=True)
        self.path.write_text(json.dumps(self.data))
        self.dirty = 0


def _deterministic(k: Key) -> bool:
    from autotune.space import schedulers

    return schedulers.get(k[0]).deterministic


def _mean(images: dict[tuple[int, int], dict[str, float]], m: str) -> float:
    return statistics.fmean(v[m] for v in images.values())


def one_study(r: Renders, c: str, rng: random.Random, n_settings: int, space: list[Key]) -> dict[str, Any]:
    from autotune.decision.evidence import Candidate
    from autotune.decision.rule import decide, finalists, next_to_race
    from autotune.decision.tolerance import tolerance

    r._load()  # the study file as autotune resolves it

    search = rng.sample(SEARCH_POOL, 2)
    race = rng.sample(RACE_POOL, len(RACE_POOL))
    confirm = rng.sample(CONFIRM_POOL, 4)
    keys = [BASELINE, *rng.sample(space, n_settings)]
    secs = {k: tuple(r.seconds(c, k) * math.exp(rng.gauss(0, NOISE)) for _ in range(3)) for k in keys}
    imgs = {k: r.images(c, k, search) for k in keys}
    base_conf = r.images(c, BASELINE, confirm)
    # the tolerance as autotune computes it (the study file's defaults), from the
    # baseline's images on the search and confirmation seeds
    seed_lpips = r.seed_lpips(c)
    tol, _ = tolerance(
        r.cfg.recommend, r.cfg.metrics.objectives, Candidate(0, {**imgs[BASELINE], **base_conf}), seed_lpips
    )

    # the mean rule, on the search images
    base_mean = {m: _mean(imgs[BASELINE], m) for m in ("clip_score", "lpips")}

    clip_tol, lpips_tol = tol.of("clip_score") or 0.0, tol.of("lpips") or 0.0

    def mean_ok(k: Key) -> bool:
        clip_ok = _mean(imgs[k], "clip_score") >= base_mean["clip_score"] - clip_tol
        limit = base_mean["lpips"] + lpips_tol if _deterministic(k) else (1 + LPIPS_X) * seed_lpips
        return clip_ok and _mean(imgs[k], "lpips") <= limit

    ok = [k for k in keys if mean_ok(k)]
    mean_pick = min(ok, key=lambda k: statistics.median(secs[k])) if ok else BASELINE

    # the bound rule: racing, then confirmation, through autotune.decision
    index = {k: i for i, k in enumerate(keys)}
    spent = 0

    def cands() -> list[Candidate]:
        return [Candidate(index[k], imgs[k], conf.get(k, {}), secs[k], None, _deterministic(k), str(k)) for k in keys]

    conf: dict[Key, Any] = {BASELINE: base_conf}
    while spent < 256:
        cs = cands()
        step = next_to_race(cs, cs[0], tol, race)
        if step is None:
            break
        k, seed = keys[step[0]], step[1]
        for kk in (k, BASELINE):
            if (0, seed) not in imgs[kk]:
                imgs[kk] = {**imgs[kk], **r.images(c, kk, [seed])}
                spent += PROMPTS[c]
    cs = cands()
    final = finalists(cs, cs[0], tol)
    for f in final:
        conf[keys[f.number]] = r.images(c, keys[f.number], confirm)
    cs = cands()
    rec = decide(cs, cs[0], tol)
    bound_pick = keys[rec.chosen.number]
    n_prompts = PROMPTS[c]
    return {
        "keys": keys,
        "mean": mean_pick,
        "bound": bound_pick,
        "tol": tol,
        "decision_images": spent + 4 * n_prompts * (len(final) + 1),
    }


def truth(r: Renders, c: str, k: Key, tol: Any) -> tuple[bool, float]:
    """Whether ``k`` truly qualifies (mean differences on the truth seeds), and its true speed-up."""
    seeds = TRUTH[c]
    a, b = r.images(c, k, seeds), r.images(c, BASELINE, seeds)
    d_clip = statistics.fmean(a[x]["clip_score"] - b[x]["clip_score"] for x in a)
    d_lpips = statistics.fmean(a[x]["lpips"] - b[x]["lpips"] for x in a)
    if not _deterministic(k):
        d_lpips = statistics.fmean(a[x]["lpips"] for x in a) - tol.seed_lpips
    good = d_clip >= -tol.of("clip_score") and d_lpips <= tol.of("lpips")
    return good, r.seconds(c, BASELINE) / r.seconds(c, k)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--studies", type=int, default=40)
    ap.add_argument("--settings", type=int, default=30)
    args = ap.parse_args()
    r = Renders()
    space = [(s, n, g) for s in SCHEDULERS for n in STEPS for g in GUIDANCE]
    t0 = time.perf_counter()
    results: dict[str, Any] = {}
    for c in ("round", "straight"):
        rng = random.Random(f"{c}-{args.studies}-{args.settings}")
        rows = {"mean": [], "bound": []}  # type: dict[str, list[dict[str, Any]]]
        for i in range(args.studies):
            st = one_study(r, c, rng, args.settings, space)
            by_speed = sorted(st["keys"], key=lambda k: r.seconds(c, k))  # fastest first: the first that
            best = next((truth(r, c, k, st["tol"])[1] for k in by_speed if truth(r, c, k, st["tol"])[0]), 1.0)
            for rule in ("mean", "bound"):
                good, speed = truth(r, c, st[rule], st["tol"])
                rows[rule].append(
                    {
                        "pick": list(st[rule]),
                        "bad": not good,
                        "speedup": speed,
                        "best": best,
                        "kept": (speed if good else 1.0) / best if best > 0 else 1.0,
                        "decision_images": st["decision_images"] if rule == "bound" else 0,
                    }
                )
            r.save()
            print(
                f"{c} study {i + 1}/{args.studies}: mean -> {st['mean']}, bound -> {st['bound']} "
                f"({time.perf_counter() - t0:.0f} s)",
                flush=True,
            )
        results[c] = {
            rule: {
                "bad_pick_rate": statistics.fmean(x["bad"] for x in v),
                "speedup_kept_mean": statistics.fmean(x["kept"] for x in v),
                "speedup_mean": statistics.fmean(x["speedup"] for x in v),
                "baseline_kept": statistics.fmean(x["pick"] == list(BASELINE) for x in v),
                "decision_images_mean": statistics.fmean(x["decision_images"] for x in v),
                "studies": v,
            }
            for rule, v in rows.items()
        }
    out = HERE / "results" / "decision.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=1, default=str))
    print(
        f"\n{'class':10} {'rule':6} {'bad picks':>10} {'speed-up kept':>14} {'baseline kept':>14}"
        f" {'decision images':>16}"
    )
    for c, by_rule in results.items():
        for rule, x in by_rule.items():
            print(
                f"{c:10} {rule:6} {x['bad_pick_rate']:>10.0%} {x['speedup_kept_mean']:>14.0%} "
                f"{x['baseline_kept']:>14.0%} {x['decision_images_mean']:>16.0f}"
            )
    print(f"wrote {out} ({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
