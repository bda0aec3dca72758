"""A candidate's bounds against the baseline, image by image: one per quality metric and one on its
broken images, each at the level its look may spend. Pure math on stored numbers: no torch, no I/O.

A setting's images are ``{(prompt index, seed): {metric: value}}``; candidate and baseline are
compared on the images they share (same prompt, same noise: every image draws its own, see
:func:`autotune.decision.panel.noise_seed`). The images of one prompt are related, so a metric's bound
is over prompts: the mean of the per-prompt mean differences, with Student's t on ``prompts - 1``
degrees of freedom (one prompt: over its images). Each difference counts at most its metric's collapse
threshold either way (a rare collapse would otherwise pull the mean's bound below its level: measured in
``tests/test_coverage.py``).

Broken images are judged apart from the means: an image has *collapsed* when its difference to the
baseline's image of the same prompt and noise is worse than its metric's ``collapse`` tolerances on
any metric (a wrong glyph, a blank; by default 10 CLIP tolerances, 5 LPIPS tolerances: half a
seed-to-seed distance further from the reference). Collapses are 0 or 1, so their bound is exact: the
Clopper-Pearson upper bound of the share of images where the candidate collapsed and the baseline did
not (the discordant pairs that count against it; the baseline's own collapses are not credited), which
must lie within ``broken_share``. With none seen, n images support a share of at most
``1 - alpha ** (1 / n)``: at 95 %, 59 images for 5 %, 99 for 3 %.

A bound's *worse* side (``worst``, what must lie within the tolerance for a pass) is taken at the level
of the candidate's last look (:mod:`autotune.decision.looks`) over that look's images; its *better* side
(``best``, beyond the tolerance: a fail) at 95 % over every image it has (a fail spends nothing).

Example:
    >>> b = paired_bound({(0, 0): {"clip_score": 29.9}, (1, 0): {"clip_score": 30.8}},
    ...                  {(0, 0): {"clip_score": 30.0}, (1, 0): {"clip_score": 31.0}}, "clip_score", 1.0)
    >>> round(b.mean, 2), b.verdict
    (-0.15, 'pass')
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from autotune.config.objectives import OBJECTIVES
from autotune.decision.looks import ALPHA, binomial_lower, binomial_upper, t_quantile

__all__ = ["BROKEN", "Bound", "Images", "Tolerance", "broken_bound", "collapsed", "paired_bound", "t95"]

Images = Mapping[tuple[int, int], Mapping[str, float]]
BROKEN = "broken"  # the bound of the collapsed share, beside the metrics'


def t95(df: int) -> float:
    """One-sided 95 % quantile of Student's t."""
    return t_quantile(max(df, 1), ALPHA)


@dataclass(frozen=True)
class Tolerance:
    """How much worse than the baseline a setting may be, per quality metric in its own units (a metric
    absent: not judged); ``seed_lpips``: a stochastic sampler's reference distance is held within
    (1 + its tolerance) x this; ``collapse``: an image worse than this many tolerances on a metric has
    collapsed (a metric absent: never); ``broken_share``: how many more of a candidate's images may
    collapse than the baseline's; ``unsure``: the standard error of a limit measured on the baseline's
    images (a tolerance in its seed-to-seed units), which a bound carries beside its own."""

    limits: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    seed_lpips: float | None = None
    collapse: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    broken_share: float = 0.05
    unsure: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))

    def of(self, metric: str) -> float | None:
        return self.limits.get(metric)

    def cap(self, metric: str) -> float:
        """The per-image difference beyond which an image has collapsed on ``metric`` (inf: not known)."""
        t, k = self.limits.get(metric, math.nan), self.collapse.get(metric, math.nan)
        return k * t if t > 0 and math.isfinite(t) and k > 0 else math.inf


@dataclass(frozen=True)
class Bound:
    """Candidate minus baseline on one metric (or the collapsed share): the mean over every image it has,
    the worse side's bound at ``level`` over the images of its last look (``judged`` of them) and the
    better side's at 95 % over every image."""

    metric: str
    mean: float
    worst: float
    best: float
    tolerance: float
    images: int
    prompts: int
    collapse: float = math.inf  # the metric's difference counted at most this far (its collapse threshold)
    collapsed: tuple[int, int] = (0, 0)  # broken: images that collapsed, the candidate's and the baseline's
    level: float = 1 - ALPHA  # the worse side's one-sided confidence
    judged: int = -1  # images the worse side is over (-1: all of ``images``)
    against: str = ""  # what the candidate is held to when not the baseline's images (a stochastic sampler)
    gate: bool = True  # False: an undecided bound does not hold a pass back (it waits for more images)
    why: str = "judged with the confirmation's images"  # what a bound that does not gate says instead

    @property
    def sign(self) -> int:
        """1 where higher is better, -1 where lower is (an LPIPS, the collapsed share)."""
        return OBJECTIVES[self.metric].sign if self.metric != BROKEN else -1

    @property
    def verdict(self) -> str:
        """``pass``: worse by less than the tolerance (at ``level``); ``fail``: worse by more (95 %); else
        ``undecided``."""
        sign = self.sign
        if sign * self.worst >= -self.tolerance:
            return "pass"
        return "fail" if sign * self.best < -self.tolerance else "undecided"

    @property
    def margin(self) -> float:
        """How far inside the tolerance the worse-side bound is, in tolerances (< 0: outside; nan: unknown)."""
        if not (self.tolerance > 0 and math.isfinite(self.tolerance)):
            return math.nan
        return (self.sign * self.worst + self.tolerance) / self.tolerance

    def _level(self) -> str:
        judged = self.images if self.judged < 0 else self.judged
        of = "" if judged == self.images else f" over the first {judged}"
        return f"{self.level:.2%} bound{of}"

    def describe(self) -> str:
        if self.metric == BROKEN:
            mine, theirs = self.collapsed
            wait = "" if self.gate else f"; {self.why}"
            return (
                f"collapsed images {mine} of {self.images} (the baseline's: {theirs}), share {self.mean:.1%}, "
                f"exact {self._level()} {self.worst:.1%} (needs <= {self.tolerance:.1%}{wait})"
            )
        if math.isnan(self.tolerance):
            need = "a tolerance not known yet: the baseline's seed-to-seed spread needs two seeds of a prompt"
        elif self.sign > 0:
            need = f">= {-self.tolerance:+.3g}"
        else:
            need = f"<= {self.tolerance:+.3g}"
        against = f"; {self.against}" if self.against else ""
        return (
            f"Δ{self.metric} {self.mean:+.3g}, {self._level()} {self.worst:+.3g} (needs {need}; "
            f"{self.images} images, {self.prompts} prompts{against})"
        )


def _clustered(by_prompt: Mapping[int, list[float]], alpha: float, unsure: float = 0.0) -> tuple[float, float]:
    """The mean of the per-prompt means and the half-width of its one-sided ``1 - alpha`` bound (Student's t
    on prompts - 1 degrees of freedom; one prompt: over its images; one image: infinite), widened by a
    tolerance's own standard error ``unsure`` (the two errors add as variances)."""
    units = (
        [math.fsum(d) / len(d) for d in by_prompt.values()] if len(by_prompt) > 1 else next(iter(by_prompt.values()))
    )
    n = len(units)
    mean = math.fsum(units) / n
    if n < 2 or alpha <= 0:
        return mean, math.inf
    var = math.fsum((u - mean) ** 2 for u in units) / (n - 1) / n
    return mean, t_quantile(n - 1, alpha) * math.sqrt(var + unsure**2)


def paired_bound(
    cand: Images,
    base: Images | float,
    metric: str,
    tolerance: float,
    cap: float = math.inf,
    *,
    units: Collection[tuple[int, int]] | None = None,
    alpha: float = ALPHA,
    futility: float = ALPHA,
    unsure: float = 0.0,
) -> Bound | None:
    """The bound of ``cand - base`` on ``metric`` over the images both have (None: none shared), each image's
    difference counted at most ``cap`` either way (a collapse is judged by :func:`broken_bound`); the worse
    side at ``1 - alpha`` over ``units`` of them (None: all), the better side at ``1 - futility`` over all.

    ``base`` may be a constant (a stochastic sampler's LPIPS against (1 + tol) x seed-to-seed); ``unsure``:
    the tolerance's own standard error, carried in both bounds. One image has no spread: its bounds are
    infinite (undecided).
    """
    constant = isinstance(base, float)
    by_prompt: dict[int, list[float]] = {}
    look: dict[int, list[float]] = {}
    for (p, s), v in cand.items():
        if metric not in v:
            continue
        if constant:
            b = base
        else:
            other = base.get((p, s))  # type: ignore[union-attr]
            if other is None or metric not in other:
                continue
            b = other[metric]
        d = min(max(v[metric] - b, -cap), cap)  # type: ignore[operator]
        by_prompt.setdefault(p, []).append(d)
        if units is None or (p, s) in units:
            look.setdefault(p, []).append(d)
    if not by_prompt:
        return None
    mean, half = _clustered(by_prompt, futility, unsure)
    judged = sum(map(len, look.values()))
    at, worse_half = _clustered(look, alpha, unsure) if look else (mean, math.inf)
    sign = OBJECTIVES[metric].sign
    worst, best = at - sign * worse_half, mean + sign * half
    n = sum(map(len, by_prompt.values()))
    return Bound(metric, mean, worst, best, tolerance, n, len(by_prompt), cap, level=1 - alpha,
                 judged=judged if judged != n else -1)  # fmt: skip


def collapsed(
    cand: Mapping[str, float], base: Mapping[str, float], tol: Tolerance, metrics: Collection[str] | None = None
) -> int:
    """1: the candidate's image collapsed against the baseline's (worse beyond the threshold on a metric);
    -1: the baseline's did (the candidate's is that much better); 0: neither."""
    caps = [(m, OBJECTIVES[m].sign, tol.cap(m)) for m in (tol.limits if metrics is None else metrics)]
    return _flag(cand, base, [(m, s, c) for m, s, c in caps if math.isfinite(c)])


def _flag(cand: Mapping[str, float], base: Mapping[str, float], caps: list[tuple[str, int, float]]) -> int:
    worse = better = False
    for m, sign, cap in caps:
        if m in cand and m in base:
            d = sign * (cand[m] - base[m])
            worse, better = worse or d < -cap, better or d > cap
    return int(worse) - int(better)


def broken_bound(
    cand: Images,
    base: Images,
    tol: Tolerance,
    skip: Collection[str] = (),
    *,
    units: Collection[tuple[int, int]] | None = None,
    alpha: float = ALPHA,
    gate: bool = True,
) -> Bound | None:
    """The share of images where ``cand`` collapsed and the baseline did not, on every metric but ``skip``:
    its exact upper bound at ``1 - alpha`` over ``units`` of the shared images (None: all) and its exact
    lower bound at 95 % over all (None: no threshold known yet, or no image shared)."""
    judged = [m for m in tol.limits if math.isfinite(tol.cap(m)) and m not in skip]
    if not judged:
        return None
    flags: list[int] = []
    look: list[int] = []
    prompts = set()
    caps = [(m, OBJECTIVES[m].sign, tol.cap(m)) for m in judged]
    for k, v in cand.items():
        other = base.get(k)
        if other is None or not all(m in v and m in other for m in judged):
            continue
        f = _flag(v, other, caps)
        flags.append(f)
        prompts.add(k[0])
        if units is None or k in units:
            look.append(f)
    if not flags:
        return None
    n, mine, theirs = len(flags), flags.count(1), flags.count(-1)
    worst = binomial_upper(look.count(1), len(look), alpha) if look and alpha > 0 else 1.0
    best = binomial_lower(mine, n, ALPHA)
    return Bound(BROKEN, mine / n, worst, best, tol.broken_share, n, len(prompts), collapsed=(mine, theirs),
                 level=1 - alpha, judged=len(look) if len(look) != n else -1, gate=gate)  # fmt: skip
