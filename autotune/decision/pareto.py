"""Pure math on trial results: Pareto front, hypervolume, the cost line. No torch, no I/O.

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
from typing import Any

__all__ = [
    "SecondsFit",
    "clearly_dominated",
    "dominates",
    "fit_seconds",
    "hypervolume",
    "hypervolume_history",
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


def _nonnegative_lstsq(x: Any, y: Any) -> Any:
    """Least squares with every coefficient >= 0: the best of the fits on each subset of the columns
    whose coefficients come out non-negative (three columns: seven small solves)."""
    import itertools

    import numpy as np

    best, best_sse = np.zeros(x.shape[1]), float(np.sum(y**2))
    for k in range(1, x.shape[1] + 1):
        for cols in itertools.combinations(range(x.shape[1]), k):
            coef = np.linalg.lstsq(x[:, cols], y, rcond=None)[0]
            if (coef < 0).any():
                continue
            sse = float(np.sum((y - x[:, cols] @ coef) ** 2))
            if sse < best_sse:
                best, best_sse = np.zeros(x.shape[1]), sse
                best[list(cols)] = coef
    return best


def fit_seconds(
    calls: Sequence[float], guided: Sequence[bool], seconds: Sequence[float], min_points: int = 5
) -> SecondsFit | None:
    """Non-negative least squares, then again without the points further than 3 robust deviations
    (None: too few points). Non-negative: no setting costs negative seconds, more calls never cost
    less, guidance never costs less than none, however noisy the timings."""
    import numpy as np

    if len(seconds) < min_points:
        return None
    x = np.array([[1.0, c, c * g] for c, g in zip(calls, guided, strict=True)])
    y = np.asarray(seconds, dtype=float)
    keep = np.ones(len(y), dtype=bool)
    for _ in range(2):
        coef = _nonnegative_lstsq(x[keep], y[keep])
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
