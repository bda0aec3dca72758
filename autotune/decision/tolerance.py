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
import statistics
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

from autotune.config.objectives import OBJECTIVES, quality
from autotune.decision.evidence import Candidate
from autotune.decision.rule import Tolerance

__all__ = ["collapse_of", "seed_spread", "tolerance"]


def seed_spread(baseline: Candidate, metric: str) -> float | None:
    """The baseline's within-prompt standard deviation of ``metric`` over noises, pooled over prompts
    (its search, racing and confirmation images); None with one image per prompt."""
    by_prompt: dict[int, list[float]] = {}
    for (p, _), v in {**baseline.images, **baseline.confirm}.items():
        if metric in v:
            by_prompt.setdefault(p, []).append(v[metric])
    groups = [g for g in by_prompt.values() if len(g) > 1]
    if not groups:
        return None
    dof = sum(len(g) - 1 for g in groups)
    return float((sum(statistics.variance(g) * (len(g) - 1) for g in groups) / dof) ** 0.5)


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
    spread = {m: s for m in quality(objectives) if (s := seed_spread(baseline, m)) is not None}
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
        elif seed_lpips is not None:  # seed_distance: the seed-to-seed distance, once measured
            limits[m] = value * seed_lpips  # type: ignore[operator]
    return Tolerance(limits, seed_lpips, collapse_of(recommend, objectives), recommend.broken_share), spread


def collapse_of(recommend: Any, objectives: Sequence[str] | None = None) -> Mapping[str, float]:
    """Each quality metric's collapse threshold in its tolerances, as its row and ``[recommend]`` state them."""
    names = quality(objectives if objectives is not None else tuple(OBJECTIVES))
    return MappingProxyType({m: OBJECTIVES[m].stated(recommend)[2] for m in names})
