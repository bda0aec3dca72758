"""The recommendation rule: a cheaper setting replaces the baseline only when, image by image, it is
not worse by more than the tolerance on a one-sided 95 % bound, and still is on seeds the search
never saw. Pure math on stored numbers: no torch, no I/O.

A setting's images are ``{(prompt index, seed): {metric: value}}``; candidate and baseline are
compared on the images they share (same prompt, same noise: every image draws its own, see
:func:`autotune.decision.panel.noise_seed`). The images of one prompt are related, so the bound is
over prompts: the mean of the per-prompt mean differences, with Student's t on ``prompts - 1``
degrees of freedom (one prompt: over its images).

Broken images are judged apart from the means: an image has *collapsed* when its difference to the
baseline's image of the same prompt and noise is worse than its metric's ``collapse`` tolerances on
any metric (a wrong glyph, a blank; by default 10 CLIP tolerances, 5 LPIPS tolerances: half a
seed-to-seed distance further from the reference). In the mean each difference counts at most that
far (a rare collapse would otherwise pull the mean's bound below its 95 %: measured in
``tests/test_coverage.py``); the share of images where the candidate collapsed minus the share where
the baseline did must lie within ``broken_share`` on the same one-sided bound.

Example:
    >>> base = Candidate(0, {(0, 0): {"clip_score": 30.0}, (1, 0): {"clip_score": 31.0}}, seconds=(1.0,))
    >>> fast = Candidate(1, {(0, 0): {"clip_score": 29.9}, (1, 0): {"clip_score": 30.8}}, seconds=(0.2,))
    >>> decide([base, fast], base, Tolerance({"clip_score": 1.0})).chosen.number
    1
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from autotune.config.objectives import OBJECTIVES
from autotune.decision.evidence import Candidate, Images

__all__ = [
    "BROKEN",
    "TIMED_TOGETHER",
    "Bound",
    "Recommendation",
    "Tolerance",
    "broken_bound",
    "collapsed",
    "collapsed_images",
    "collapsed_text",
    "decide",
    "eligible",
    "excess",
    "margin",
    "overall",
    "paired_bound",
    "ranked",
    "speedup",
    "t95",
    "timed_together",
    "unconfirmed",
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
    (1 + its tolerance) x this; ``collapse``: an image worse than this many tolerances on a metric has
    collapsed (a metric absent: never); ``broken_share``: how many more of a candidate's images may
    collapse than the baseline's."""

    limits: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    seed_lpips: float | None = None
    collapse: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    broken_share: float = 0.03

    def of(self, metric: str) -> float | None:
        return self.limits.get(metric)

    def cap(self, metric: str) -> float:
        """The per-image difference beyond which an image has collapsed on ``metric`` (inf: not known)."""
        t, k = self.limits.get(metric, math.nan), self.collapse.get(metric, math.nan)
        return k * t if t > 0 and math.isfinite(t) and k > 0 else math.inf


BROKEN = "broken"  # the bound of the collapsed share (candidate minus baseline), beside the metrics'


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
    collapse: float = math.inf  # the metric's difference counted at most this far (its collapse threshold)
    collapsed: tuple[int, int] = (0, 0)  # broken: images that collapsed, the candidate's and the baseline's

    @property
    def sign(self) -> int:
        """1 where higher is better, -1 where lower is (an LPIPS, the collapsed share)."""
        return OBJECTIVES[self.metric].sign if self.metric != BROKEN else -1

    @property
    def verdict(self) -> str:
        """``pass``: worse by less than the tolerance (95 %); ``fail``: worse by more (95 %); else ``undecided``."""
        sign = self.sign
        if sign * self.worst >= -self.tolerance:
            return "pass"
        return "fail" if sign * self.best < -self.tolerance else "undecided"

    @property
    def margin(self) -> float:
        """How far inside the tolerance the worse-side bound is, in tolerances (< 0: outside; nan: unknown)."""
        sign = self.sign
        return (sign * self.worst + self.tolerance) / self.tolerance if self.tolerance > 0 else sign * self.worst

    def describe(self) -> str:
        if self.metric == BROKEN:
            mine, theirs = self.collapsed
            return (
                f"collapsed images {mine} of {self.images} (the baseline's: {theirs}), share {self.mean:+.1%}, "
                f"95 % bound {self.worst:+.1%} (needs <= {self.tolerance:+.1%}; {self.prompts} prompts)"
            )
        if math.isnan(self.tolerance):
            need = "a tolerance not known yet: the baseline's seed-to-seed spread needs two seeds of a prompt"
        elif self.sign > 0:
            need = f">= {-self.tolerance:+.3g}"
        else:
            need = f"<= {self.tolerance:+.3g}"
        return (
            f"Δ{self.metric} {self.mean:+.3g}, 95 % bound {self.worst:+.3g} (needs {need}; "
            f"{self.images} images, {self.prompts} prompts)"
        )


def _clustered(by_prompt: Mapping[int, Sequence[float]]) -> tuple[float, float]:
    """The mean of the per-prompt means and the half-width of its one-sided 95 % bound (Student's t on
    prompts - 1 degrees of freedom; one prompt: over its images; one image: infinite)."""
    units = [statistics.fmean(d) for d in by_prompt.values()] if len(by_prompt) > 1 else next(iter(by_prompt.values()))
    mean = statistics.fmean(units)
    half = t95(len(units) - 1) * statistics.stdev(units) / math.sqrt(len(units)) if len(units) > 1 else math.inf
    return mean, half


def _shared(cand: Images, base: Images | float, metrics: Sequence[str]) -> list[tuple[int, int]]:
    """The images both have, on every one of ``metrics``."""
    return [
        k for k in cand
        if all(m in cand[k] and (isinstance(base, float) or m in base.get(k, {})) for m in metrics)
    ]  # fmt: skip


def paired_bound(
    cand: Images, base: Images | float, metric: str, tolerance: float, cap: float = math.inf
) -> Bound | None:
    """The bound of ``cand - base`` on ``metric`` over the images both have (None: none shared), each
    image's difference counted at most ``cap`` either way (a collapse is judged by :func:`broken_bound`).

    ``base`` may be a constant (a stochastic sampler's LPIPS against (1 + tol) x seed-to-seed).
    One image has no spread: its bounds are infinite (undecided).
    """
    shared = _shared(cand, base, [metric])
    if not shared:
        return None
    by_prompt: dict[int, list[float]] = {}
    for p, s in shared:
        b = base if isinstance(base, float) else base[(p, s)][metric]
        by_prompt.setdefault(p, []).append(min(max(cand[(p, s)][metric] - b, -cap), cap))
    mean, half = _clustered(by_prompt)
    lo, hi = mean - half, mean + half
    worst, best = (lo, hi) if OBJECTIVES[metric].sign > 0 else (hi, lo)
    return Bound(metric, mean, worst, best, tolerance, len(shared), len(by_prompt), cap)


def collapsed(
    cand: Mapping[str, float], base: Mapping[str, float], tol: Tolerance, metrics: Sequence[str] | None = None
) -> int:
    """1: the candidate's image collapsed against the baseline's (worse beyond the threshold on a metric);
    -1: the baseline's did (the candidate's is that much better); 0: neither."""
    worse = better = False
    for m in tol.limits if metrics is None else metrics:
        cap, sign = tol.cap(m), OBJECTIVES[m].sign
        if m in cand and m in base and math.isfinite(cap):
            d = sign * (cand[m] - base[m])
            worse, better = worse or d < -cap, better or d > cap
    return int(worse) - int(better)


def broken_bound(cand: Images, base: Images, tol: Tolerance, skip: Collection[str] = ()) -> Bound | None:
    """The collapsed share of ``cand`` minus the baseline's over the images both have, on its one-sided
    95 % bound, on every metric but ``skip`` (None: no threshold known yet, or no image shared)."""
    judged = [m for m in tol.limits if math.isfinite(tol.cap(m)) and m not in skip]
    shared = _shared(cand, base, judged) if judged else []
    if not shared:
        return None
    by_prompt: dict[int, list[float]] = {}
    for p, s in shared:
        by_prompt.setdefault(p, []).append(float(collapsed(cand[(p, s)], base[(p, s)], tol, judged)))
    mean, half = _clustered(by_prompt)
    flags = [v for d in by_prompt.values() for v in d]
    counts = (flags.count(1.0), flags.count(-1.0))
    n = len(shared)
    worst, best = min(mean + half, 1.0), max(mean - half, -1.0)  # a difference of two shares
    return Bound(BROKEN, mean, worst, best, tol.broken_share, n, len(by_prompt), collapsed=counts)


def collapsed_images(cand: Candidate, base: Candidate, tol: Tolerance) -> dict[str, dict[str, float]]:
    """The candidate's collapsed images against the baseline's, on the search and the confirmation images."""
    out = {}
    for stage, confirm in (("search", False), ("confirmation", True)):
        b = next((x for x in verdicts(cand, base, tol, confirm=confirm) if x.metric == BROKEN), None)
        if b is not None:
            mine, theirs = b.collapsed
            out[stage] = {"images": b.images, "recommended": mine, "baseline": theirs, "share_bound": b.worst,
                          "allowed": b.tolerance}  # fmt: skip
    return out


def collapsed_text(stages: Mapping[str, Mapping[str, float]]) -> str:
    """``k/n (baseline j)`` of :func:`collapsed_images`' stages together ("-": none judged)."""
    n, k, j = (sum(int(x[key]) for x in stages.values()) for key in ("images", "recommended", "baseline"))
    return f"{k}/{n} (baseline {j})" if n else "-"


def speedup(cand: Candidate, base: Candidate) -> tuple[float, float, float] | None:
    """Median speed-up over the baseline and its range over the timed calls: (median, low, high)."""
    if not cand.seconds or not base.seconds:
        return None
    ours, theirs = cand.seconds, base.seconds
    return statistics.median(theirs) / statistics.median(ours), min(theirs) / max(ours), max(theirs) / min(ours)


def verdicts(cand: Candidate, base: Candidate, tol: Tolerance, *, confirm: bool = False) -> list[Bound]:
    """The candidate's bound on every judged metric and on its collapsed share, on its search images or
    its confirmation images."""
    mine, theirs = (cand.confirm, base.confirm) if confirm else (cand.images, base.images)
    out, constant = [], []
    for metric, t in tol.limits.items():
        if OBJECTIVES[metric].reference and not cand.deterministic and base.deterministic:
            constant.append(metric)
            seed = tol.seed_lpips or 0.0  # never converges to the reference: no further from it than another seed
            b = paired_bound(mine, float(seed), metric, t)
        else:
            b = paired_bound(mine, theirs, metric, t, tol.cap(metric))
        if b is not None:
            out.append(b)
    if out and (broken := broken_bound(mine, theirs, tol, constant)) is not None:
        out.append(broken)
    return out


def unconfirmed(cand: Candidate, base: Candidate, tol: Tolerance) -> str:
    """Why a candidate rendered on fresh seeds is not recommendable on them ("": it passed there, or has none)."""
    verdict = overall(verdicts(cand, base, tol, confirm=True)) if cand.confirm else "pass"
    return "" if verdict == "pass" else f"{verdict} on its {len(cand.confirm)} fresh images: not confirmed"


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


TIMED_TOGETHER = "timed_together"  # the study attribute: {"trials": [baseline, chosen], "seconds": [[...], [...]]}


def timed_together(rec: Recommendation, attrs: Mapping[str, Any]) -> Recommendation:
    """``rec`` with its setting's seconds and the baseline's as the study timed them in turn once the
    decision settled (:meth:`autotune.study.decide.ClassRun._time_together`), where that pair was timed."""
    t = attrs.get(TIMED_TOGETHER) or {}
    if t.get("trials") != [rec.baseline.number, rec.chosen.number]:
        return rec
    base, mine = (tuple(float(x) for x in s) for s in t["seconds"])
    return replace(rec, chosen=replace(rec.chosen, seconds=mine), baseline=replace(rec.baseline, seconds=base))


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
    """How many tolerances worse than the baseline a candidate's mean is, on its worst metric (inf: unknown);
    the collapsed share is left out: the walk reads this as a mean error that falls as a power of the steps."""
    worse = []
    for b in bounds:
        if b.metric != BROKEN and b.tolerance > 0 and not math.isnan(b.tolerance):
            worse.append(-b.sign * b.mean / b.tolerance)
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
