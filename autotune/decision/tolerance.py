"""A study file's tolerances in metric units: the one conversion from the units that travel between
models (CLIP in the baseline's seed-to-seed standard deviations, LPIPS in seed-to-seed LPIPS) to the
numbers the rule compares. Pure math, no I/O.

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

from autotune.decision.evidence import Candidate
from autotune.decision.rule import Tolerance

__all__ = ["clip_noise", "tolerance"]


def clip_noise(baseline: Candidate) -> float | None:
    """The baseline's within-prompt standard deviation of CLIP score over seeds, pooled over prompts
    (its search, racing and confirmation images); None with one seed per prompt."""
    by_prompt: dict[int, list[float]] = {}
    for (p, _), v in {**baseline.images, **baseline.confirm}.items():
        if "clip_score" in v:
            by_prompt.setdefault(p, []).append(v["clip_score"])
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
    clip_points: float | None = None,
    lpips_x_seed: float | None = None,
) -> tuple[Tolerance, float | None]:
    """``[recommend]``'s tolerances in metric units, and the CLIP noise they were scaled by.

    ``clip_points`` and ``lpips_x_seed`` override the file's (``autotune validate --clip-tolerance``).
    """
    noise = clip_noise(baseline)
    limits: dict[str, float] = {}
    if "clip_score" in objectives:
        points = clip_points if clip_points is not None else recommend.clip_tolerance
        if points is None:  # in the baseline's noise units: unknown (nan, every bound undecided) until measurable
            points = recommend.clip_tolerance_sd * noise if noise is not None else math.nan
        limits["clip_score"] = points
    if "lpips" in objectives and seed_lpips is not None:
        limits["lpips"] = (lpips_x_seed if lpips_x_seed is not None else recommend.lpips_tolerance) * seed_lpips
    return Tolerance(limits, seed_lpips, collapse_of(recommend), recommend.broken_share), noise


def collapse_of(recommend: Any) -> Mapping[str, float]:
    """Each metric's collapse threshold in its tolerances, as ``[recommend]`` states them."""
    return MappingProxyType({"clip_score": recommend.clip_collapse, "lpips": recommend.lpips_collapse})
