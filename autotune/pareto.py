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

__all__ = ["Candidate", "Recommendation", "dominates", "match_baseline", "pareto_front"]

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
    base = baseline.values
    seed = seed_lpips or 0.0
    ok = []
    for c in candidates:
        v = c.values
        if "clip_score" in base and v["clip_score"] < base["clip_score"] - clip_tolerance:
            continue
        if "lpips" in base:
            same_kind = c.deterministic or not baseline.deterministic
            limit = base["lpips"] + lpips_tolerance * seed if same_kind else (1 + lpips_tolerance) * seed
            if v["lpips"] > limit:
                continue
        ok.append(c)
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
