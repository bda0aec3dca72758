"""The recommendation rule: a cheaper setting replaces the baseline only when, image by image, it is
not worse by more than the tolerance on a one-sided 95 % bound, and still is on seeds the search
never saw. Pure math on stored numbers: no torch, no I/O.

A setting's images are ``{(prompt index, seed): {metric: value}}``; candidate and baseline are
compared on the images they share (same prompt, same seed). The images of one prompt are related,
so the bound is over prompts: the mean of the per-prompt mean differences, with Student's t on
``prompts - 1`` degrees of freedom (one prompt: over its images).

Example:
    >>> base = Candidate(0, {(0, 0): {"clip_score": 30.0}, (1, 0): {"clip_score": 31.0}}, seconds=(1.0,))
    >>> fast = Candidate(1, {(0, 0): {"clip_score": 29.9}, (1, 0): {"clip_score": 30.8}}, seconds=(0.2,))
    >>> decide([base, fast], base, Tolerance({"clip_score": 1.0})).chosen.number
    1
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from autotune.config.objectives import OBJECTIVES
from autotune.decision.evidence import Candidate, Images

__all__ = [
    "Bound",
    "Recommendation",
    "Tolerance",
    "decide",
    "eligible",
    "excess",
    "margin",
    "overall",
    "paired_bound",
    "ranked",
    "speedup",
    "t95",
    "verdicts",
]

_T95 = (6.314, 2.920, 2.353, 2.132, 2.015, 1.943, 1.895, 1.860, 1.833, 1.812)  # one-sided, df 1..10


def t95(df: int) -> float:
    """One-sided 95 % quantile of Student's t (exact to 3 decimals for df <= 10, then Cornish-Fisher)."""
    if df <= len(_T95):
        return _T95[max(df, 1) - 1]
    z = 1.6448536
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


@dataclass(frozen=True)
class Tolerance:
    """How much worse than the baseline a setting may be, per quality metric in its own units (a metric
    absent: not judged); ``seed_lpips``: a stochastic sampler's reference distance is held within
    (1 + its tolerance) x this."""

    limits: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    seed_lpips: float | None = None

    def of(self, metric: str) -> float | None:
        return self.limits.get(metric)


@dataclass(frozen=True)
class Bound:
    """Candidate minus baseline on one metric, over shared images: the mean, and the one-sided 95 %
    bounds on the worse side (``worst``: what must lie within tolerance) and on the better side."""

    metric: str
    mean: float
    worst: float
    best: float
    tolerance: float
    images: int
    prompts: int

    @property
    def verdict(self) -> str:
        """``pass``: worse by less than the tolerance (95 %); ``fail``: worse by more (95 %); else ``undecided``."""
        sign = 1 if OBJECTIVES[self.metric].higher_is_better else -1
        if sign * self.worst >= -self.tolerance:
            return "pass"
        return "fail" if sign * self.best < -self.tolerance else "undecided"

    @property
    def margin(self) -> float:
        """How far inside the tolerance the worse-side bound is, in tolerances (< 0: outside; nan: unknown)."""
        sign = 1 if OBJECTIVES[self.metric].higher_is_better else -1
        return (sign * self.worst + self.tolerance) / self.tolerance if self.tolerance > 0 else sign * self.worst

    def describe(self) -> str:
        if math.isnan(self.tolerance):
            need = "a tolerance not known yet: the baseline's seed-to-seed spread needs two seeds of a prompt"
        elif OBJECTIVES[self.metric].higher_is_better:
            need = f">= {-self.tolerance:+.3g}"
        else:
            need = f"<= {self.tolerance:+.3g}"
        return (
            f"Δ{self.metric} {self.mean:+.3g}, 95 % bound {self.worst:+.3g} (needs {need}; "
            f"{self.images} images, {self.prompts} prompts)"
        )


def paired_bound(cand: Images, base: Images | float, metric: str, tolerance: float) -> Bound | None:
    """The bound of ``cand - base`` on ``metric`` over the images both have (None: none shared).

    ``base`` may be a constant (a stochastic sampler's LPIPS against (1 + tol) x seed-to-seed).
    One image has no spread: its bounds are infinite (undecided).
    """
    shared = [k for k in cand if metric in cand[k] and (isinstance(base, float) or metric in base.get(k, {}))]
    if not shared:
        return None
    by_prompt: dict[int, list[float]] = {}
    for p, s in shared:
        b = base if isinstance(base, float) else base[(p, s)][metric]
        by_prompt.setdefault(p, []).append(cand[(p, s)][metric] - b)
    units = [statistics.fmean(d) for d in by_prompt.values()] if len(by_prompt) > 1 else by_prompt[shared[0][0]]
    mean = statistics.fmean(units)
    half = t95(len(units) - 1) * statistics.stdev(units) / math.sqrt(len(units)) if len(units) > 1 else math.inf
    lo, hi = mean - half, mean + half
    worst, best = (lo, hi) if OBJECTIVES[metric].higher_is_better else (hi, lo)
    return Bound(metric, mean, worst, best, tolerance, len(shared), len(by_prompt))


def speedup(cand: Candidate, base: Candidate) -> tuple[float, float, float] | None:
    """Median speed-up over the baseline and its range over the timed calls: (median, low, high)."""
    if not cand.seconds or not base.seconds:
        return None
    ours, theirs = cand.seconds, base.seconds
    return statistics.median(theirs) / statistics.median(ours), min(theirs) / max(ours), max(theirs) / min(ours)


def verdicts(cand: Candidate, base: Candidate, tol: Tolerance, *, confirm: bool = False) -> list[Bound]:
    """The candidate's bound on every judged metric, on its search images or its confirmation images."""
    mine, theirs = (cand.confirm, base.confirm) if confirm else (cand.images, base.images)
    out = []
    for metric, t in tol.limits.items():
        if OBJECTIVES[metric].reference and not cand.deterministic and base.deterministic:
            seed = tol.seed_lpips or 0.0  # never converges to the reference: no further from it than another seed
            b = paired_bound(mine, float(seed), metric, t)
        else:
            b = paired_bound(mine, theirs, metric, t)
        if b is not None:
            out.append(b)
    return out


def overall(bounds: Sequence[Bound]) -> str:
    """``fail`` if any metric fails, ``pass`` if every one passes, else ``undecided`` (no bound: undecided)."""
    v = {b.verdict for b in bounds}
    return "fail" if "fail" in v else "pass" if v == {"pass"} else "undecided"


@dataclass(frozen=True)
class Recommendation:
    chosen: Candidate
    baseline: Candidate
    met_tolerance: bool  # False: no cheaper setting qualified, the baseline is kept
    reason: str
    confirmed: bool  # the chosen setting passed on the confirmation seeds (the baseline: trivially)
    stages: tuple[dict[str, object], ...] = ()  # every candidate considered, cheapest first

    @property
    def speedup(self) -> float | None:
        s = speedup(self.chosen, self.baseline)
        return s[0] if s else None

    @property
    def speedup_range(self) -> tuple[float, float] | None:
        s = speedup(self.chosen, self.baseline)
        return (s[1], s[2]) if s else None


def eligible(c: Candidate, base: Candidate, stochastic: bool) -> str | None:
    """Why ``c`` cannot replace the baseline whatever its images (None: it can)."""
    if c.number == base.number:
        return "the baseline"
    if not c.deterministic and not stochastic:
        return "stochastic sampler (recommend.stochastic = false)"
    s = speedup(c, base)
    if s is None:
        return "not timed"
    if s[1] <= 1.0:
        return f"not cheaper on every timed call (speed-up {s[1]:.2f}x-{s[2]:.2f}x)"
    return None


def ranked(candidates: Sequence[Candidate], baseline: Candidate, stochastic: bool) -> list[Candidate]:
    """The candidates that may replace the baseline, cheapest first (ties: the earlier trial)."""
    ok = [c for c in candidates if eligible(c, baseline, stochastic) is None]
    return sorted(ok, key=lambda c: (c.rank_cost, c.number))


def excess(bounds: Sequence[Bound]) -> float:
    """How many tolerances worse than the baseline a candidate's mean is, on its worst metric (inf: unknown)."""
    worse = []
    for b in bounds:
        sign = 1 if OBJECTIVES[b.metric].higher_is_better else -1
        if b.tolerance > 0 and not math.isnan(b.tolerance):
            worse.append(-sign * b.mean / b.tolerance)
    return max(worse) if worse else math.inf


def margin(bounds: Sequence[Bound]) -> float:
    """A candidate's closeness to passing: its worst metric's margin (-inf without a bound)."""
    values = [b.margin for b in bounds if not math.isnan(b.margin)]
    return min(values) if values else -math.inf


def decide(
    candidates: Sequence[Candidate], baseline: Candidate, tol: Tolerance, *, stochastic: bool = False
) -> Recommendation:
    """The cheapest candidate that passes on its search images and again on its confirmation images.

    Candidates are visited cheapest first, each with its bounds (the ``stages``); one that passed the
    search but not (or not yet) the confirmation is passed over: the winner's curse. Without such a
    candidate the baseline is kept, and the reason says why.
    """
    stages: list[dict[str, object]] = []
    passed: list[Candidate] = []
    for c in ranked(candidates, baseline, stochastic):
        bounds = verdicts(c, baseline, tol)
        verdict = overall(bounds)
        stage: dict[str, object] = {"trial": c.number, "setting": c.label, "search": verdict}
        stage["search_bounds"] = [b.describe() for b in bounds]
        if verdict == "pass":
            passed.append(c)
            if c.confirm:
                cb = verdicts(c, baseline, tol, confirm=True)
                stage["confirmation"] = overall(cb) if cb else "not rendered"
                stage["confirmation_bounds"] = [b.describe() for b in cb]
        stages.append(stage)
        if stage.get("confirmation") == "pass":
            dropped = len(passed) - 1
            why = f"; {dropped} cheaper passed the search but not the confirmation" if dropped else ""
            reason = f"cheapest setting within tolerance on the search and on {len(c.confirm)} fresh images{why}"
            return Recommendation(c, baseline, True, reason, True, tuple(stages))
    pending = [c for c in passed if not c.confirm]
    finalists = len(passed) - len(pending)
    if finalists:  # the pending ones wait for a finalist slot (`finalists`) or for a longer study
        why = f"no finalist of {finalists} passed again on fresh seeds"
        why += f"; {len(pending)} more passed the search, not confirmed" if pending else ""
    elif pending:
        why = f"{len(pending)} passed the search and await confirmation on fresh seeds"
    else:
        why = "no cheaper setting passed"
    return Recommendation(baseline, baseline, False, f"{why}; keeping the baseline", True, tuple(stages))
