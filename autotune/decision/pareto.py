"""Pareto fronts: dominance, the front, the rough-first cut. Pure math, no torch, no I/O.

Values are plain dicts ``{"clip_score": 31.2, "lpips": 0.01, "seconds": 0.4}``; directions
come from each metric's ``higher_is_better``.

Example:
    >>> pts = [{"q": 1.0, "s": 2.0}, {"q": 2.0, "s": 3.0}, {"q": 0.5, "s": 3.0}]
    >>> pareto_front(pts, {"q": True, "s": False})
    [0, 1]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

__all__ = ["clearly_dominated", "dominates", "pareto_front"]

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
