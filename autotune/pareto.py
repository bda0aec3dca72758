"""Pure math on trial results: Pareto front and the recommendation rule. No torch, no I/O.

Values are plain dicts ``{"clip_score": 31.2, "lpips": 0.01, "seconds": 0.4}``; directions
come from each metric's ``higher_is_better``.

Example:
    >>> pts = [{"q": 1.0, "s": 2.0}, {"q": 2.0, "s": 3.0}, {"q": 0.5, "s": 3.0}]
    >>> pareto_front(pts, {"q": True, "s": False})
    [0, 1]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "Candidate",
    "Recommendation",
    "SecondsFit",
    "clearly_dominated",
    "dominates",
    "failed_tolerance",
    "fit_seconds",
    "hypervolume",
    "hypervolume_history",
    "match_baseline",
    "pareto_front",
]

Values = Mapping[str, float]


def dominates(a: Values, b: Values, higher_is_better: Mapping[str, bool]) -> bool:
    """True when ``a`` is at least as good as ``b`` on every metric and better on one."""
    better = False
    for name, up in higher_is_better.items():
        x, y = (a[name], b[name]) if up else (b[name], a[name])
        if x < y:
            return False
        better = better or x > y
    return better


def pareto_front(points: Sequence[Values], higher_is_better: Mapping[str, bool]) -> list[int]:
    """Indices of the non-dominated points, in input order.

    Points are visited best first in lexicographic order, so a point can only be dominated by
    one visited before it, and by then by a member of the front: O(points x front size).
    """
    names = list(higher_is_better)

    def key(i: int) -> tuple[float, ...]:
        return tuple(-points[i][m] if higher_is_better[m] else points[i][m] for m in names)

    front: list[int] = []
    for i in sorted(range(len(points)), key=key):
        if not any(dominates(points[j], points[i], higher_is_better) for j in front):
            front.append(i)
    return sorted(front)


def clearly_dominated(
    rough: Values, rendered: Sequence[Values], higher_is_better: Mapping[str, bool], margin: float = 0.05
) -> int | None:
    """Index of a point of ``rendered`` better than ``rough`` on every metric by at least ``margin``
    of that metric's spread over ``rendered``; None when there is none or fewer than 3 points.

    The rough-first cut: a setting whose first-seed images lose this clearly to a setting already
    rendered (compared on the same first seed) is not worth rendering for the other seeds.
    """
    if len(rendered) < 3:
        return None
    spread = {m: max(p[m] for p in rendered) - min(p[m] for p in rendered) for m in higher_is_better}
    for i, p in enumerate(rendered):
        gains = {m: (p[m] - rough[m]) if up else (rough[m] - p[m]) for m, up in higher_is_better.items()}
        if all(g > 0 and g >= margin * spread[m] for m, g in gains.items()):
            return i
    return None


@dataclass(frozen=True)
class SecondsFit:
    """Seconds per image as a line in the denoiser calls: ``a + b * calls + c * calls * guided``.

    One noisy timing per setting makes a front of seconds unstable (the same render timed twice
    differs by ~10 %, up to 40 %, on a shared machine); the line, fitted to every trial of the
    model, averages that noise away. ``guided`` (classifier-free guidance on) doubles the batch.
    """

    a: float
    b: float
    c: float
    mad: float  # median absolute deviation of the residuals of the points kept

    def __call__(self, calls: float, guided: bool) -> float:
        return self.a + self.b * calls + self.c * calls * guided

    def outlier(self, calls: float, guided: bool, seconds: float) -> bool:
        """Further from the line than 3 robust standard deviations and 10 % of the fitted value."""
        fitted = self(calls, guided)
        return abs(seconds - fitted) > max(3 * 1.4826 * self.mad, 0.1 * abs(fitted))


def fit_seconds(
    calls: Sequence[float], guided: Sequence[bool], seconds: Sequence[float], min_points: int = 5
) -> SecondsFit | None:
    """Least squares, then again without the points further than 3 robust deviations (None: too few points)."""
    import numpy as np

    if len(seconds) < min_points:
        return None
    x = np.array([[1.0, c, c * g] for c, g in zip(calls, guided, strict=True)])
    y = np.asarray(seconds, dtype=float)
    keep = np.ones(len(y), dtype=bool)
    for _ in range(2):
        coef = np.linalg.lstsq(x[keep], y[keep], rcond=None)[0]
        resid = y - x @ coef
        mad = float(np.median(np.abs(resid[keep] - np.median(resid[keep]))))
        keep = np.abs(resid) <= max(3 * 1.4826 * mad, 1e-12)
        if keep.sum() < min_points:
            break
    return SecondsFit(float(coef[0]), float(coef[1]), float(coef[2]), mad)


def hypervolume(points: Sequence[Sequence[float]], reference: Sequence[float]) -> float:
    """Volume dominated by ``points`` (every objective minimised) and bounded by ``reference``.

    Points not better than the reference on every objective add nothing. Exact, by Optuna's WFG
    algorithm (about 50x faster than slicing objectives on a 150-point 3-D front).
    """
    import numpy as np
    from optuna._hypervolume import compute_hypervolume

    pts = [tuple(p) for p in points if all(x < r for x, r in zip(p, reference, strict=True))]
    if not pts:
        return 0.0
    return float(compute_hypervolume(np.array(pts, dtype=float), np.array(reference, dtype=float)))


def hypervolume_history(
    points: Sequence[Values], higher_is_better: Mapping[str, bool], resolution: int = 250
) -> list[float]:
    """Hypervolume of the front after each point, every metric scaled to [0, 1] over all points.

    Higher-is-better metrics are flipped; the reference point is 1.1 on every axis, so the
    range's worst point still adds volume. 1.1**d would be a front of one ideal point. With
    more than ``resolution`` points the volume is computed every ``len(points) / resolution``
    points (and after the last), each in between repeating the one before: a 10,000-trial
    study's curve in seconds, not minutes.
    """
    names = list(higher_is_better)
    lo = {m: min(p[m] for p in points) for m in names} if points else {}
    hi = {m: max(p[m] for p in points) for m in names} if points else {}

    def scaled(p: Values) -> tuple[float, ...]:
        out = []
        for m in names:
            x = (p[m] - lo[m]) / (hi[m] - lo[m]) if hi[m] > lo[m] else 0.0
            out.append(1.0 - x if higher_is_better[m] else x)
        return tuple(out)

    stride = max(1, -(-len(points) // resolution))
    history: list[float] = []
    front: list[tuple[float, ...]] = []  # scaled non-dominated points so far
    moved = False  # the front changed since its volume was last computed
    for i, p in enumerate(points):
        q = scaled(p)
        if not any(all(a <= b for a, b in zip(f, q, strict=True)) for f in front):
            front = [f for f in front if not all(a <= b for a, b in zip(q, f, strict=True))] + [q]
            moved = True
        if moved and ((i + 1) % stride == 0 or i == len(points) - 1):
            history.append(hypervolume(front, [1.1] * len(names)))
            moved = False
        else:
            history.append(history[-1] if history else 0.0)
    return history


@dataclass(frozen=True)
class Candidate:
    """A completed trial as the rule sees it."""

    number: int
    values: Values
    deterministic: bool = True  # ancestral/SDE samplers never converge to the reference image


@dataclass(frozen=True)
class Recommendation:
    chosen: Candidate
    baseline: Candidate
    met_tolerance: bool  # False: nothing cheaper met the tolerance, the baseline is kept
    reason: str

    @property
    def speedup(self) -> float | None:
        ours, theirs = self.chosen.values.get("seconds"), self.baseline.values.get("seconds")
        return theirs / ours if ours and theirs else None


def failed_tolerance(
    c: Candidate, baseline: Candidate, *, clip_tolerance: float, lpips_tolerance: float, seed_lpips: float | None
) -> list[str]:
    """Why ``c`` is not within tolerance of the baseline (empty: it is); see :func:`match_baseline`."""
    base, v, seed = baseline.values, c.values, seed_lpips or 0.0
    why = []
    if "clip_score" in base and v["clip_score"] < base["clip_score"] - clip_tolerance:
        why.append(f"CLIP score {v['clip_score']:.4g} < baseline {base['clip_score']:.4g} - {clip_tolerance:g}")
    if "lpips" in base:
        if c.deterministic or not baseline.deterministic:
            limit, rule = base["lpips"] + lpips_tolerance * seed, f"baseline + {lpips_tolerance:g} x seed-to-seed"
        else:
            limit, rule = (1 + lpips_tolerance) * seed, f"{1 + lpips_tolerance:g} x seed-to-seed"
        if v["lpips"] > limit:
            why.append(f"LPIPS {v['lpips']:.4g} > {limit:.4g} ({rule})")
    return why


def match_baseline(
    candidates: Sequence[Candidate],
    baseline: Candidate,
    *,
    clip_tolerance: float,
    lpips_tolerance: float,
    seed_lpips: float | None,
) -> Recommendation:
    """The cheapest setting whose quality is within tolerance of the baseline's.

    Accepted: CLIP score >= baseline - ``clip_tolerance`` and LPIPS <= baseline +
    ``lpips_tolerance`` x ``seed_lpips`` (the LPIPS between two seeds of one prompt, so the
    tolerance means the same on any LPIPS backbone). Metrics absent from the study are not
    checked. Ties on seconds go to the better quality. Without a ``seconds`` objective the
    best-quality accepted setting wins.

    A non-deterministic sampler (ancestral, SDE) draws fresh noise each step and never
    converges to the reference, so its LPIPS is not compared with the baseline's: it must
    instead stay within ``(1 + lpips_tolerance) x seed_lpips`` of the reference, i.e. be no
    further from it than another seed's image is, and meet the CLIP tolerance.
    """
    ok = [
        c
        for c in candidates
        if not failed_tolerance(
            c, baseline, clip_tolerance=clip_tolerance, lpips_tolerance=lpips_tolerance, seed_lpips=seed_lpips
        )
    ]
    if not any(c.number == baseline.number for c in ok):
        ok.append(baseline)

    def cost(c: Candidate) -> tuple[float, float, float]:
        v = c.values
        return (v.get("seconds", 0.0), -v.get("clip_score", 0.0), v.get("lpips", 0.0))

    chosen = min(ok, key=cost)
    if chosen.number == baseline.number:
        return Recommendation(
            chosen, baseline, False, "no setting cheaper than the baseline met the tolerance; keeping the baseline"
        )
    return Recommendation(chosen, baseline, True, f"cheapest of {len(ok)} settings within tolerance of the baseline")
