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
    "dominates",
    "failed_tolerance",
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
    """Indices of the non-dominated points, in input order."""
    return [
        i
        for i, p in enumerate(points)
        if not any(dominates(q, p, higher_is_better) for j, q in enumerate(points) if j != i)
    ]


def hypervolume(points: Sequence[Sequence[float]], reference: Sequence[float]) -> float:
    """Volume dominated by ``points`` (every objective minimised) and bounded by ``reference``.

    Hypervolume by slicing objectives (While et al., HSO): exact, fine for fronts of a few hundred points.
    """
    pts = sorted(tuple(p) for p in points if all(x < r for x, r in zip(p, reference, strict=True)))
    if not pts:
        return 0.0
    if len(reference) == 1:
        return reference[0] - pts[0][0]
    total = 0.0
    for i, p in enumerate(pts):
        width = (pts[i + 1][0] if i + 1 < len(pts) else reference[0]) - p[0]
        if width > 0:
            total += width * hypervolume([q[1:] for q in pts[: i + 1]], reference[1:])
    return total


def hypervolume_history(points: Sequence[Values], higher_is_better: Mapping[str, bool]) -> list[float]:
    """Hypervolume of the front after each point, every metric scaled to [0, 1] over all points.

    Higher-is-better metrics are flipped; the reference point is 1.1 on every axis, so the
    range's worst point still adds volume. 1.1**d would be a front of one ideal point.
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

    history: list[float] = []
    front: list[tuple[float, ...]] = []  # scaled non-dominated points so far
    for p in points:
        q = scaled(p)
        if not any(all(a <= b for a, b in zip(f, q, strict=True)) for f in front):
            front = [f for f in front if not all(a <= b for a, b in zip(q, f, strict=True))] + [q]
        history.append(hypervolume(front, [1.1] * len(names)))
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
