"""A study's tolerances in metric units: the one conversion from the units a metric's row states them in
(:data:`autotune.config.objectives.OBJECTIVES`: the baseline's seed-to-seed standard deviation, the
seed-to-seed distance, or absolute) to the numbers the rule compares. Pure math, no I/O.

Example:
    >>> tol, noise = tolerance(cfg.recommend, cfg.metrics.objectives, baseline_candidate, seed_lpips=0.04)
    >>> tol.of("lpips")
    0.004
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

from autotune.config.objectives import OBJECTIVES, quality
from autotune.decision.bounds import Tolerance
from autotune.decision.evidence import Candidate

__all__ = ["collapse_of", "seed_spread", "tolerance"]


def seed_spread(baseline: Candidate, metric: str) -> float | None:
    """The baseline's within-prompt standard deviation of ``metric`` over noises, pooled over prompts
    (its search, racing and confirmation images); None with one image per prompt."""
    pooled = _pooled(baseline, metric)
    return None if pooled is None else pooled[0]


def _pooled(baseline: Candidate, metric: str) -> tuple[float, int] | None:
    """:func:`seed_spread` and its degrees of freedom."""
    by_prompt: dict[int, list[float]] = {}
    for (p, _), v in {**baseline.images, **baseline.confirm}.items():
        if metric in v:
            by_prompt.setdefault(p, []).append(v[metric])
    groups = [g for g in by_prompt.values() if len(g) > 1]
    if not groups:
        return None
    dof = sum(len(g) - 1 for g in groups)
    squares = math.fsum((x - m) ** 2 for g in groups for m in [math.fsum(g) / len(g)] for x in g)
    return math.sqrt(squares / dof), dof


def tolerance(
    recommend: Any,
    objectives: Sequence[str],
    baseline: Candidate,
    seed_lpips: float | None,
    *,
    fixed: Mapping[str, float | None] = MappingProxyType({}),
    stated: Mapping[str, float | None] = MappingProxyType({}),
) -> tuple[Tolerance, dict[str, float]]:
    """The study's tolerances in metric units, and the baseline's seed-to-seed spread of each quality
    metric (what a ``seed_sd`` tolerance is scaled by; absent where it is not measurable).

    ``fixed`` gives a metric's limit in its own units, ``stated`` its tolerance in its row's unit; either
    overrides the file's (``autotune validate --clip-tolerance``, ``--lpips-tolerance``).
    """
    limits: dict[str, float] = {}
    unsure: dict[str, float] = {}  # a limit measured on the baseline's images: its standard error
    pooled = {m: p for m in quality(objectives) if (p := _pooled(baseline, m)) is not None}
    spread = {m: p[0] for m, p in pooled.items()}
    for m in quality(objectives):
        value, unit, _ = OBJECTIVES[m].stated(recommend)
        if fixed.get(m) is not None:
            value, unit = fixed[m], "absolute"
        elif stated.get(m) is not None:
            value = stated[m]
        if unit == "absolute":
            limits[m] = float(value)  # type: ignore[arg-type]
        elif unit == "seed_sd":  # in the baseline's noise units: unknown (nan, every bound undecided) until measurable
            limits[m] = value * spread[m] if m in spread else math.nan  # type: ignore[operator]
            if m in pooled:  # an estimated standard deviation is off by about sd / sqrt(2 dof)
                unsure[m] = limits[m] / math.sqrt(2 * pooled[m][1])
        elif seed_lpips is not None:  # seed_distance: the seed-to-seed distance, once measured
            limits[m] = value * seed_lpips  # type: ignore[operator]
    tol = Tolerance(limits, seed_lpips, collapse_of(recommend, objectives), recommend.broken_share, unsure)
    return tol, spread


def collapse_of(recommend: Any, objectives: Sequence[str] | None = None) -> Mapping[str, float]:
    """Each quality metric's collapse threshold in its tolerances, as its row and ``[recommend]`` state them."""
    names = quality(objectives if objectives is not None else tuple(OBJECTIVES))
    return MappingProxyType({m: OBJECTIVES[m].stated(recommend)[2] for m in names})
