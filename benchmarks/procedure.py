"""The procedure's guarantee, measured: whole studies through autotune's own decision code, against worlds
whose truth is known.

    .venv/bin/python benchmarks/procedure.py --render    # once: the glyphs grid's truth panel (~40 min, 2 cores)
    .venv/bin/python benchmarks/procedure.py [--studies 300] [--worlds glyphs,edge,...] [--classes thin,bold]
        [--jobs 2] [--merge]   # --merge keeps the other worlds' results already in results/procedure.json

A user trusts the whole of propose, race, confirm and pick, not one bound. Each simulated study runs
:class:`autotune.study.decide.ClassRun` (the baseline first; confirm, race, the recommendation's
neighbours, else a new setting: the decision's walk or the optimiser's), the loop ``autotune study``
runs, with the demo's ``[recommend]`` and the decision benchmark's space, on an in-memory Optuna study;
a synthetic scorer stands in for the pipeline. Every setting of a world has a truth: the mean difference
to the baseline per metric, its spread between prompts and within a prompt, and how often its image
collapses where the baseline's does not. Each image is drawn as the baseline's image plus a difference:
its prompt's part, its noise's part (shared by every setting on that image: a hard noise is hard for
all of them), a residual of its own, and a collapse drawn against one uniform per image (a noise that
breaks one few-step setting breaks the worse ones too). Baseline images collapse on their own at the
class's rate. Timings are drawn around the world's cost line, x lognormal(0, 0.1) per call.

The worlds (per class of studies/demo.toml):

- ``glyphs``: the glyphs model's measured truths, every setting of the decision benchmark's grid (605:
  11 lines x 11 step counts x CFG 3-7) on its 16 held-out prompts x 4 image numbers (the
  decision benchmark's truth panel, benchmarks/cache/); steps between the grid's interpolated in log
  steps; a variant the grid lacks takes its sampler's nearest line (karras, exponential, beta and AYS
  sigmas the Karras line's; linspace and leading spacing the default's).
- ``edge``: every setting cheaper than the baseline sits just beyond the tolerance (its CLIP mean 1.02
  tolerances below the baseline's): nothing cheaper holds, and every one is as close to passing as a
  truly worse setting can be. Any pick but the baseline is truly worse.
- ``edge_above``: the glyphs world, but every setting cheaper than its robust answer sits just beyond the
  tolerance: the answer holds, and many cheaper ones tempt.
- ``collapses``: the glyphs world, but every setting cheaper than its robust answer has the answer's
  means and breaks 1.2 x the allowed share of images more than the baseline: good means, too many
  broken images.
- ``nothing``: every setting cheaper than the baseline is 1 to 3 tolerances worse on CLIP.
- ``non_monotone``: the glyphs world, but the robust answer's line is truly worse (1.5 tolerances) on the
  6 rungs above the answer: a sampler that is not monotone in steps.

Per world and class: the share of studies whose pick is truly worse (its true mean beyond the tolerance
on a metric, or its true extra collapsed share beyond the allowance) with its Clopper-Pearson 95 % upper
bound; kept, the pick's ratio of model evaluations to the baseline's over the robust answer's (0 for a
truly worse pick), median and quartiles; how often the baseline is kept where a 1.5x setting robustly
holds; the images a study rendered against the exhaustive grid's (every setting of the grid on every
class prompt x 2 seeds). The *robust answer* is the cheapest setting of the space that robustly holds:
its mean inside the tolerance by the half-width a 95 % bound has on 16 prompts x 4 images (the decision
benchmark's truth panel), its extra collapsed share at most half the allowance.

Writes benchmarks/results/procedure.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import json
import math
import multiprocessing
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

import decision as grid  # noqa: E402  (the decision benchmark: its space, its render cache, its study file)

from autotune.decision.looks import binomial_upper  # noqa: E402

METRICS = ("clip_score", "lpips")
SIGN = {"clip_score": 1, "lpips": -1}  # higher is better, lower is better
NOISE_SHARE = {"clip_score": 0.5, "lpips": 0.3}  # share of a difference that every setting shares on one image
# (measured on the glyphs grid: the median correlation of two settings' differences on the same images)
TIMING_NOISE = 0.1  # lognormal sigma of one timed call
WORLDS = ("glyphs", "edge", "edge_above", "collapses", "nothing", "non_monotone")
Line = tuple[str, tuple[tuple[str, str], ...]]
Key = tuple[str, tuple[tuple[str, str], ...], int, float]  # scheduler, options, steps, guidance


@dataclasses.dataclass(frozen=True)
class Truth:
    """One setting's difference to the baseline (candidate minus baseline, per image), as a world states it."""

    mean: Mapping[str, float]  # of the difference where neither image collapsed
    sd_prompt: Mapping[str, float]  # between prompts
    sd_within: Mapping[str, float]  # between the images of one prompt
    rho: float  # correlation of the CLIP and LPIPS differences of one image
    broken: float  # share of images that collapse against the baseline's (beyond the normal part's tails)

    def shifted(self, **changes: Any) -> Truth:
        return dataclasses.replace(self, **changes)


def _interpolate(a: Truth, b: Truth, w: float) -> Truth:
    def mix(x: Mapping[str, float], y: Mapping[str, float]) -> dict[str, float]:
        return {m: (1 - w) * x[m] + w * y[m] for m in METRICS}

    return Truth(
        mix(a.mean, b.mean),
        mix(a.sd_prompt, b.sd_prompt),
        mix(a.sd_within, b.sd_within),
        (1 - w) * a.rho + w * b.rho,
        (1 - w) * a.broken + w * b.broken,
    )


@dataclasses.dataclass
class World:
    """A class's settings with their truths; the baseline's own images; the tolerances and the cost line."""

    name: str
    class_name: str
    tol: Mapping[str, float]  # the true tolerances, metric units
    cap: Mapping[str, float]  # a difference beyond this has collapsed (the rule's collapse threshold)
    allowance: float  # the extra collapsed share allowed
    base_sd: Mapping[str, tuple[float, float]]  # the baseline's images: sd between prompts, within a prompt
    base_broken: float  # share of the baseline's own images that collapse
    seed_lpips: float
    table: dict[tuple[Line, float], dict[int, Truth]]  # (line, guidance) -> grid steps -> truth
    cost: tuple[float, float]  # seconds = a + b x model evaluations
    baseline: Key
    change: Any = None  # (world, key, truth) -> the truth this world states instead (an adversarial world)
    _facts: dict[Key, tuple[dict[str, float], float]] = dataclasses.field(default_factory=dict, repr=False)
    _truths: dict[Key, Truth] = dataclasses.field(default_factory=dict, repr=False)

    def derive(self, name: str, change: Any) -> World:
        """This world with ``change`` applied to every setting's truth (computed against this world)."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if not f.name.startswith("_")}
        return World(**{**fields, "name": name, "change": functools.partial(change, self)})

    # the truth of any setting ----------------------------------------------------------------------
    def line_of(self, scheduler: str, options: tuple[tuple[str, Any], ...]) -> Line:
        """The grid line a setting's sampler and variants are (or stand nearest to)."""
        o = dict(options)
        sigmas, spacing = o.get("sigmas"), o.get("timestep_spacing")
        if scheduler == "dpmpp_2m_karras" or (scheduler == "dpmpp_2m" and sigmas not in (None, "default")):
            return ("dpmpp_2m_karras", ())
        lines = {ln for ln, _ in self.table}
        if sigmas not in (None, "default") and (scheduler, (("sigmas", "karras"),)) in lines:
            return (scheduler, (("sigmas", "karras"),))
        if spacing == "trailing" and (scheduler, (("timestep_spacing", "trailing"),)) in lines:
            return (scheduler, (("timestep_spacing", "trailing"),))
        return (scheduler, ())

    @staticmethod
    def canonical(scheduler: str, options: tuple[tuple[str, Any], ...]) -> Line:
        """One name for one schedule: the model's own spacing (leading) is no variant, and DPM++ 2M with Karras
        sigmas steps through the same schedule under any spacing (it is DPM++ 2M Karras)."""
        o = {k: v for k, v in options if not (k == "timestep_spacing" and v == "leading")}
        if scheduler == "dpmpp_2m_karras" or (scheduler == "dpmpp_2m" and o.get("sigmas") == "karras"):
            return ("dpmpp_2m_karras", ())
        return (scheduler, tuple(sorted(o.items())))

    def truth(self, key: Key) -> Truth:
        if key not in self._truths:
            t = self._measured(key)
            self._truths[key] = t if self.change is None or key == self.baseline else self.change(key, t)
        return self._truths[key]

    def _measured(self, key: Key) -> Truth:
        scheduler, options, steps, guidance = key
        line = self.line_of(scheduler, options)
        rungs = self.table[(line, float(guidance))]
        grid_steps = sorted(rungs)
        lo = max((s for s in grid_steps if s <= steps), default=grid_steps[0])
        hi = min((s for s in grid_steps if s >= steps), default=grid_steps[-1])
        t = rungs[lo] if lo == hi else _interpolate(rungs[lo], rungs[hi], math.log(steps / lo) / math.log(hi / lo))
        if line == self.canonical(scheduler, options):
            return t
        # a variant the grid lacks: its nearest line's truth, moved by an offset of its own (a quarter of a
        # tolerance's spread, the same at every step count): like the line, not the same setting
        z = np.random.default_rng(_stable("variant", scheduler, tuple(options), float(guidance))).standard_normal(2)
        return t.shifted(mean={m: t.mean[m] - SIGN[m] * 0.25 * self.tol[m] * z[i] for i, m in enumerate(METRICS)})

    def evaluations(self, key: Key) -> float:
        from autotune.space import schedulers

        return key[2] * schedulers.get(key[0]).calls_per_step * (2 if key[3] > 1 else 1)

    def seconds(self, key: Key) -> float:
        return self.cost[0] + self.cost[1] * self.evaluations(key)

    def space(self) -> list[Key]:
        """Every setting of the grid's lines and guidance values at every step count the study searches."""
        return [(ln[0], ln[1], s, g) for (ln, g) in self.table for s in range(2, 31)]

    # what is true of a setting -------------------------------------------------------------------
    def facts(self, key: Key) -> tuple[dict[str, float], float]:
        """The setting's true mean difference per metric as the rule counts it (each difference capped at the
        collapse threshold), exact, and its true extra collapsed share, from 200,000 draws."""
        if key not in self._facts:
            self._facts[key] = self._draw_facts(key)
        return self._facts[key]

    def _draw_facts(self, key: Key) -> tuple[dict[str, float], float]:
        if key == self.baseline:
            return {m: 0.0 for m in METRICS}, 0.0
        t = self.truth(key)
        means = {m: capped_mean(t, m, self.cap[m], self.base_broken) for m in METRICS}  # exact
        rng = np.random.default_rng(12345)  # the extra collapsed share: both metrics of one image at once
        n = 200_000
        d, _ = _differences(t, rng.standard_normal((4, 2, n)), rng.random(n), self.cap)
        worse = np.zeros(n, dtype=bool)
        for m in METRICS:
            worse |= SIGN[m] * d[m] < -self.cap[m]
        base_broken = rng.random(n) < self.base_broken
        return means, float((worse & ~base_broken).mean() - (base_broken & ~worse).mean())

    def truly_worse(self, key: Key) -> bool:
        means, extra = self.facts(key)
        return any(SIGN[m] * means[m] < -self.tol[m] for m in METRICS) or extra > self.allowance

    def robust(self, key: Key) -> bool:
        """Holds with room: inside the tolerance by a 95 % bound's half-width on 16 prompts x 4 images, its
        extra collapsed share at most half the allowance."""
        if key == self.baseline:
            return True
        means, extra = self.facts(key)
        t = self.truth(key)
        for m in METRICS:
            se = math.sqrt(t.sd_prompt[m] ** 2 / 16 + t.sd_within[m] ** 2 / 64)
            if SIGN[m] * means[m] - 1.753 * se < -self.tol[m]:
                return False
        return extra <= self.allowance / 2

    @functools.cached_property
    def robust_answer(self) -> Key:
        for k in sorted(self.space(), key=lambda k: (self.evaluations(k), k[2], k[3], k[0], k[1])):
            if self.evaluations(k) < self.evaluations(self.baseline) and self.robust(k):
                return k
        return self.baseline


def _differences(
    t: Truth, z: np.ndarray, u: np.ndarray, cap: Mapping[str, float]
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Differences of images from standard normals ``z`` [part (prompt shared, prompt own, noise shared,
    residual), metric (CLIP, LPIPS), image] and uniforms ``u``: the normal part, or a collapse."""
    rho, rest = t.rho, math.sqrt(max(1 - t.rho**2, 0.0))
    out = {}
    for i, m in enumerate(METRICS):
        zs = z[:, 0] if i == 0 else rho * z[:, 0] + rest * z[:, 1]  # CLIP and LPIPS of one image correlate
        share, own = math.sqrt(NOISE_SHARE[m]), math.sqrt(1 - NOISE_SHARE[m])
        prompt = share * zs[0] + own * zs[1]
        within = share * zs[2] + own * zs[3]
        out[m] = t.mean[m] + t.sd_prompt[m] * prompt + t.sd_within[m] * within
    broken = u < t.broken
    for m in METRICS:
        out[m] = np.where(broken, -SIGN[m] * 2 * cap[m], out[m])
    return out, broken


def _stable(*parts: Any) -> int:
    return int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=8).digest(), "big")


class SimScorer:
    """autotune's Scorer protocol, answered by drawing from a world: each image is the baseline's plus the
    setting's difference, every draw fixed by (study, prompt, image number, setting) so a unit rendered
    twice is the same image and candidate and baseline stay paired."""

    def __init__(self, world: World, study_seed: int, family: Any, scheduler_config: Mapping[str, Any]) -> None:
        self.world, self.seed, self.images = world, study_seed, 0
        self._family, self._config = family, scheduler_config
        self.rng = random.Random(study_seed)
        self._units: dict[tuple[str, int], tuple[np.ndarray, float, bool, np.ndarray]] = {}

    @property
    def family(self) -> Any:
        return self._family

    @property
    def scheduler_config(self) -> Mapping[str, Any]:
        return self._config

    def _unit(self, prompt: str, seed: int) -> tuple[np.ndarray, float, bool, np.ndarray]:
        """The image's shared draws: its prompt's and its noise's parts, its collapse uniform, whether the
        baseline's image collapsed, and the baseline's own values."""
        if (prompt, seed) not in self._units:
            w = self.world
            rp = np.random.default_rng(_stable(self.seed, prompt))
            ru = np.random.default_rng(_stable(self.seed, prompt, seed))
            shared = np.stack([rp.standard_normal(2), ru.standard_normal(2)])  # prompt part, noise part
            zb = np.stack([rp.standard_normal(2), ru.standard_normal(2)])
            centre = {"clip_score": 30.0, "lpips": 0.003}
            base = np.array([centre[m] + w.base_sd[m][0] * zb[0, i] + w.base_sd[m][1] * zb[1, i]
                             for i, m in enumerate(METRICS)])  # fmt: skip
            broken = bool(ru.random() < w.base_broken)
            self._units[(prompt, seed)] = (shared, float(ru.random()), broken, base)
        return self._units[(prompt, seed)]

    def values(self, key: Key, prompt: str, seed: int) -> dict[str, float]:
        w = self.world
        shared, u, base_broken, base = self._unit(prompt, seed)
        if key == w.baseline:
            d = {m: 0.0 for m in METRICS}
        else:
            alias = (w.canonical(key[0], key[1]), key[2], key[3])  # a setting's own images (variants differ)
            own_p = np.random.default_rng(_stable(self.seed, prompt, alias)).standard_normal(2)
            own_u = np.random.default_rng(_stable(self.seed, prompt, seed, alias)).standard_normal(2)
            z = np.stack([shared[0], own_p, shared[1], own_u])[:, :, None]
            diff, _ = _differences(w.truth(key), z, np.array([u]), w.cap)
            d = {m: float(diff[m][0]) for m in METRICS}
        out = {}
        for i, m in enumerate(METRICS):
            clean = float(base[i])
            b = clean - SIGN[m] * 2 * w.cap[m] if base_broken else clean
            out[m] = b if key == w.baseline else clean + d[m]
        return out

    def evaluate(self, settings: Any, prompts: Sequence[str], seeds: Sequence[int], timed: bool = True) -> Any:
        from autotune.model.evaluate import Evaluation

        key: Key = (settings.scheduler, settings.options, settings.steps, settings.guidance)
        rows = [self.values(key, q, s) for q in prompts for s in seeds]
        self.images += len(rows)
        per_image = {m: [r[m] for r in rows] for m in METRICS}
        seconds = self.time(settings, prompts[0], seeds[0], 3) if timed else []
        return Evaluation(per_image, settings.calls, None, seconds)

    def time(self, settings: Any, prompt: str, seed: int, repeats: int) -> list[float]:
        key: Key = (settings.scheduler, settings.options, settings.steps, settings.guidance)
        return [self.world.seconds(key) * math.exp(self.rng.gauss(0, TIMING_NOISE)) for _ in range(repeats)]

    def fit_schedule(self, *args: Any) -> Any:
        raise NotImplementedError("the simulated space has no fitted schedules")


# the glyphs world, from the decision benchmark's renders ------------------------------------------------
def _normal_part(d: Mapping[str, Sequence[float]], prompts: Sequence[int]) -> tuple[dict, dict, dict, float]:
    """Mean, sd between prompts and sd within a prompt of each metric's differences, and the correlation of
    the two metrics' differences within a prompt (method of moments)."""
    mean, between, within, resid = {}, {}, {}, {}
    for m in METRICS:
        x = np.asarray(d[m], dtype=float)
        by = {p: x[[i for i, q in enumerate(prompts) if q == p]] for p in set(prompts)}
        groups = [g for g in by.values() if len(g) > 1]
        dof = sum(len(g) - 1 for g in groups)
        w2 = sum(float(((g - g.mean()) ** 2).sum()) for g in groups) / dof if dof else 0.0
        means = np.array([g.mean() for g in by.values()])
        r = statistics.fmean(len(g) for g in by.values())
        b2 = max(float(means.var(ddof=1)) - w2 / r, 0.0) if len(means) > 1 else 0.0
        mean[m], between[m], within[m] = float(x.mean()), math.sqrt(b2), math.sqrt(w2)
        resid[m] = np.concatenate([g - g.mean() for g in by.values()])
    a, b = resid["clip_score"], resid["lpips"]
    rho = float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else 0.0
    return mean, between, within, rho


def glyphs_world(class_name: str, allowance: float) -> World:
    """The glyphs model's class as the decision benchmark rendered it (its cache must hold the truth panel:
    run ``benchmarks/decision.py`` or this module's ``--render`` first)."""
    r = grid.Renders()
    held = grid.holdouts(r)[class_name]
    seeds = grid.TRUTH_SEEDS
    missing = [k for k in grid.space() if f"{k!r}|{held[0]}|{seeds[0]}" not in r.data]
    if missing or f"{class_name}|seed_lpips" not in r.data:
        raise SystemExit(f"the render cache lacks {len(missing)} settings of {class_name}: run with --render first")
    units = [(q, s) for q in held for s in seeds]
    prompts = [held.index(q) for q, _ in units]

    def values(k: Any) -> dict[str, np.ndarray]:
        return {m: np.array([r.data[f"{k!r}|{q}|{s}"][m] for q, s in units]) for m in METRICS}

    base = values(grid.BASELINE)
    _, b_between, b_within, _ = _normal_part(base, prompts)
    seed_lpips = float(r.data[f"{class_name}|seed_lpips"])
    from autotune.config.study_file import RecommendConfig

    rec = RecommendConfig()
    tol = {"clip_score": rec.clip_tolerance_sd * b_within["clip_score"], "lpips": rec.lpips_tolerance * seed_lpips}
    cap = {"clip_score": rec.clip_collapse * tol["clip_score"], "lpips": rec.lpips_collapse * tol["lpips"]}
    table: dict[tuple[Line, float], dict[int, Truth]] = {}
    fixed = []
    for k in grid.space():
        if k == grid.BASELINE:
            continue
        v = values(k)
        d = {m: v[m] - base[m] for m in METRICS}
        worse = np.zeros(len(units), dtype=bool)
        better = np.zeros(len(units), dtype=bool)
        for m in METRICS:
            worse |= SIGN[m] * d[m] < -cap[m]
            better |= SIGN[m] * d[m] > cap[m]
        ok = ~worse & ~better
        if k[2] >= 10:
            fixed.append(float((better & ~worse).mean()))
        kept = [i for i in range(len(units)) if ok[i]]
        kept = kept if len(kept) >= 8 else list(range(len(units)))  # nearly all collapsed: its spread from all
        mean, between, within, rho = _normal_part({m: d[m][kept] for m in METRICS}, [prompts[i] for i in kept])
        table.setdefault(((k[0], k[1]), k[3]), {})[k[2]] = Truth(mean, between, within, rho, float(worse.mean()))
    cost = _cost_line(r)
    return World(
        "glyphs", class_name, tol, cap, allowance,
        {m: (b_between[m], b_within[m]) for m in METRICS}, statistics.median(fixed) if fixed else 0.0,
        seed_lpips, table, cost, grid.BASELINE,
    )  # fmt: skip


def _cost_line(r: Any) -> tuple[float, float]:
    """Seconds on model evaluations, least squares over the grid's timed settings."""
    keys = [k for k in grid.space() if f"{k!r}|seconds" in r.data]
    if len(keys) < 2:
        raise SystemExit("the render cache holds no cost line's timings: run with --render first")
    fit = statistics.linear_regression([grid.model_calls(k) for k in keys], [r.data[f"{k!r}|seconds"] for k in keys])
    return max(fit.intercept, 0.0), fit.slope


# adversarial worlds: the glyphs world with some truths moved --------------------------------------------
def capped_mean(t: Truth, metric: str, cap: float, base_broken: float) -> float:
    """The mean difference as the rule counts it (each at most ``cap`` either way), collapses included."""
    from scipy.special import ndtr

    mu, sd, s = t.mean[metric], math.hypot(t.sd_prompt[metric], t.sd_within[metric]), SIGN[metric]
    lo, hi = (-cap - mu) / sd, (cap - mu) / sd
    pdf_lo, pdf_hi = (math.exp(-x * x / 2) / math.sqrt(2 * math.pi) for x in (lo, hi))
    normal = -cap * ndtr(lo) + cap * ndtr(-hi) + mu * (ndtr(hi) - ndtr(lo)) + sd * (pdf_lo - pdf_hi)
    return (1 - base_broken) * ((1 - t.broken) * normal + t.broken * -s * cap) + base_broken * s * cap


def with_mean(world: World, t: Truth, metric: str, target: float) -> Truth:
    """``t`` with its normal part's mean moved so that its capped mean is ``target``."""
    from scipy.optimize import brentq

    cap = world.cap[metric]

    def gap(mu: float) -> float:
        return capped_mean(t.shifted(mean={**t.mean, metric: mu}), metric, cap, world.base_broken) - target

    if gap(3 * cap) * gap(-3 * cap) > 0:  # its collapses alone put it beyond the target: as it is
        return t
    mu = brentq(gap, -3 * cap, 3 * cap, xtol=1e-9 * cap)
    return t.shifted(mean={**t.mean, metric: mu})


def _cheaper(world: World, key: Key, than: Key) -> bool:
    return world.evaluations(key) < world.evaluations(than)


def _unit_hash(key: Key) -> float:
    return _stable(key) / 2**64


def edge(world: World, key: Key, t: Truth, than: Key | None = None) -> Truth:
    """Just beyond the CLIP tolerance (1.02 tolerances worse), inside it on LPIPS, no extra collapses."""
    if not _cheaper(world, key, than or world.baseline):
        return t
    t = t.shifted(broken=0.0, mean={**t.mean, "lpips": min(t.mean["lpips"], 0.0)})
    return with_mean(world, t, "clip_score", -1.02 * world.tol["clip_score"])


def edge_above(world: World, key: Key, t: Truth) -> Truth:
    return edge(world, key, t, world.robust_answer)


def collapses(world: World, key: Key, t: Truth) -> Truth:
    """Cheaper than the robust answer: the answer's means and spreads, 1.2 x the allowance more collapses."""
    if not _cheaper(world, key, world.robust_answer):
        return t
    return world.truth(world.robust_answer).shifted(broken=1.2 * world.allowance + world.base_broken)


def nothing(world: World, key: Key, t: Truth) -> Truth:
    if not _cheaper(world, key, world.baseline):
        return t
    return with_mean(world, t, "clip_score", -(1.02 + 2 * _unit_hash(key)) * world.tol["clip_score"])


def non_monotone(world: World, key: Key, t: Truth) -> Truth:
    """The robust answer's line, at its guidance, 1.5 tolerances worse on the 6 rungs above the answer."""
    a = world.robust_answer
    line = world.line_of(a[0], a[1])
    if world.line_of(key[0], key[1]) != line or key[3] != a[3] or not a[2] < key[2] <= a[2] + 6:
        return t
    return with_mean(world, t, "clip_score", -1.5 * world.tol["clip_score"])


CHANGES = {"edge": edge, "edge_above": edge_above, "collapses": collapses, "nothing": nothing,
           "non_monotone": non_monotone}  # fmt: skip


def worlds(class_name: str, names: Sequence[str], allowance: float) -> list[World]:
    glyphs = glyphs_world(class_name, allowance)
    return [glyphs if n == "glyphs" else glyphs.derive(n, CHANGES[n]) for n in names]


# whole studies through autotune's own loop ---------------------------------------------------------------
def study_config(front_share: float = 0.34, n_trials: int = 40) -> Any:
    """The decision benchmark's study file (the demo's model, metrics, baseline and ``[recommend]``, its
    605-setting space), resolved against the glyphs model's family (read from its model_index.json)."""
    from autotune.config import load_config
    from autotune.model.pipeline import resolve_config

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "procedure.toml"
        path.write_text(grid._study_text(front_share, n_trials))
        return resolve_config(load_config(path))


def scheduler_config() -> dict[str, Any]:
    from autotune.micro import pipeline_dir

    return json.loads((pipeline_dir("glyphs") / "scheduler" / "scheduler_config.json").read_text())


def one_study(world: World, seed: int, cfg: Any, base_config: Mapping[str, Any]) -> dict[str, Any]:
    """A study of the world's class through :class:`ClassRun`; what it picked, what that truly is, its cost."""
    import optuna

    from autotune.study.decide import ClassRun
    from autotune.study.run import open_class_study
    from autotune.study.sampling import make_sampler
    from autotune.study.trials import TrialRunner

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    c = world.class_name
    rng = random.Random(seed)
    prompts = list(cfg.classes[c])
    rng.shuffle(prompts)
    cfg = dataclasses.replace(
        cfg, search=dataclasses.replace(cfg.search, seed=seed), classes={**cfg.classes, c: tuple(prompts)}
    )
    stand = SimScorer(world, seed, cfg.family, base_config)
    study = open_class_study(cfg, c, optuna.storages.InMemoryStorage())
    study.sampler = make_sampler(cfg.search.sampler, seed)
    study.set_user_attr("seed_lpips", world.seed_lpips)
    study.set_user_attr("scheduler_base", dict(base_config))
    n_trials = cfg.search.n_trials
    run = ClassRun(cfg, study, c, stand, TrialRunner(cfg, study, c, stand, n_trials, rng=random.Random(seed)))
    while run.step():
        pass
    rec = run.recommendation()
    s = run.settings()[rec.chosen.number]
    pick: Key = (s.scheduler, s.options, s.steps, s.guidance)
    means, extra = world.facts(pick)
    ratio = world.evaluations(world.baseline) / world.evaluations(pick)
    answer = world.evaluations(world.baseline) / world.evaluations(world.robust_answer)
    worse = world.truly_worse(pick)
    confirmed = sum(1 for st in rec.stages if "confirmation" in st)
    return {
        "seed": seed, "pick": repr(pick), "truly_worse": worse, "robust": world.robust(pick),
        "true_means": means, "true_extra_collapsed": extra, "call_ratio": ratio,
        "kept": 0.0 if worse else ratio / answer, "images": stand.images, "settings": len(run.trials),
        "confirmations": confirmed, "reason": rec.reason,
    }  # fmt: skip


_STATE: dict[str, Any] = {}  # set before the workers fork: the worlds, the study file, the scheduler config


def _run(task: tuple[str, str, int]) -> tuple[str, str, dict[str, Any]]:
    name, c, seed = task
    return name, c, one_study(_STATE["worlds"][(name, c)], seed, _STATE["cfg"], _STATE["base"])


def summary(world: World, rows: Sequence[dict[str, Any]], grid_images: int) -> dict[str, Any]:
    n, worse = len(rows), sum(r["truly_worse"] for r in rows)
    kept = [r["kept"] for r in rows]
    q1, med, q3 = statistics.quantiles(kept, n=4) if n > 1 else (kept[0],) * 3
    answer = world.robust_answer
    ratio = world.evaluations(world.baseline) / world.evaluations(answer)
    base = repr(world.baseline)
    return {
        "studies": n,
        "truly_worse": worse,
        "truly_worse_share": worse / n,
        "truly_worse_upper_95": binomial_upper(worse, n, 0.05),
        "robust_answer": repr(answer),
        "robust_answer_call_ratio": ratio,
        "kept_median": med,
        "kept_quartiles": [q1, q3],
        "baseline_kept": sum(r["pick"] == base for r in rows) / n,
        "baseline_kept_where_1.5x_robustly_holds": sum(r["pick"] == base for r in rows) / n if ratio >= 1.5 else None,
        "images_share_of_grid": statistics.fmean(r["images"] for r in rows) / grid_images,
        "grid_images": grid_images,
    }


def _line(name: str, c: str, s: dict[str, Any]) -> str:
    bk = s["baseline_kept_where_1.5x_robustly_holds"]
    return (
        f"{name:>12} {c:>4}: truly worse {s['truly_worse']}/{s['studies']} ({s['truly_worse_share']:.1%}, "
        f"95 % upper {s['truly_worse_upper_95']:.1%}); kept {s['kept_median']:.0%} "
        f"(quartiles {s['kept_quartiles'][0]:.0%}-{s['kept_quartiles'][1]:.0%}) "
        f"of {s['robust_answer_call_ratio']:.2f}x; "
        f"baseline kept {s['baseline_kept']:.1%}{'' if bk is None else ' (a 1.5x setting holds)'}; "
        f"images {s['images_share_of_grid']:.1%} of the grid"
    )


TIMED = [("euler", (), s, 5.0) for s in (2, 4, 8, 15, 30)] + [grid.BASELINE]  # the cost line's settings


def render() -> None:
    """Render the glyphs world's truth panel into the decision benchmark's cache: every setting of its grid on
    each class's held-out prompts x TRUTH_SEEDS, each class's seed LPIPS, and the cost line's timings."""
    import torch

    torch.set_num_threads(1)  # small models: one thread each, a process per core, renders more
    r = grid.Renders()
    held = grid.holdouts(r)
    for c in r.config().classes:
        r.seed_lpips(c)
        for i, k in enumerate(grid.space()):
            r.units(k, held[c], grid.TRUTH_SEEDS)
            if i % 50 == 0:
                print(f"{c}: {i} of {len(grid.space())} settings", flush=True)
    for k in TIMED:
        r.seconds(k)
    r.save()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--render", action="store_true", help="render the glyphs world's truth panel first")
    parser.add_argument("--studies", type=int, default=300)
    parser.add_argument("--worlds", default=",".join(WORLDS))
    parser.add_argument("--classes", default="thin,bold")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--out", default=str(HERE / "results" / "procedure.json"))
    parser.add_argument("--merge", action="store_true", help="keep the other worlds' results already in --out")
    args = parser.parse_args()
    if args.render:
        render()
    cfg = study_config()
    allowance = cfg.recommend.broken_share
    names, classes = args.worlds.split(","), args.classes.split(",")
    _STATE.update(cfg=cfg, base=scheduler_config(), worlds={})
    for c in classes:
        for w in worlds(c, names, allowance):
            _STATE["worlds"][(w.name, c)] = w
            w.robust_answer  # noqa: B018  (computed once, before the workers fork)
    grid_images = len(grid.space()) * len(cfg.classes[classes[0]]) * 2
    tasks = [(n, c, args.first_seed + i) for n in names for c in classes for i in range(args.studies)]
    rows: dict[tuple[str, str], list[dict[str, Any]]] = {}
    out_path = Path(args.out)
    results: dict[str, Any] = json.loads(out_path.read_text()) if args.merge and out_path.exists() else {}
    start = time.monotonic()
    with multiprocessing.get_context("fork").Pool(args.jobs) as pool:
        for name, c, row in pool.imap_unordered(_run, tasks, chunksize=2):
            rows.setdefault((name, c), []).append(row)
            if len(rows[(name, c)]) == args.studies:
                world = _STATE["worlds"][(name, c)]
                s = summary(world, rows[(name, c)], grid_images)
                print(_line(name, c, s), f"[{(time.monotonic() - start) / 60:.1f} min]", flush=True)
                results[f"{name}/{c}"] = {**s, "rows": sorted(rows[(name, c)], key=lambda x: x["seed"])}
                out_path.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
