"""Image-quality and cost metrics: one file each, registered here by one line.

Each metric states ``higher_is_better``, so study directions are derived, never typed twice,
and how a trial's per-image values are summarised (``mean`` or ``median``).

Example:
    >>> [m.direction for m in (METRICS["clip_score"], METRICS["seconds"])]
    ['maximize', 'minimize']
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["METRICS", "MetricInfo", "summarise"]


@dataclass(frozen=True)
class MetricInfo:
    name: str
    higher_is_better: bool
    aggregate: str  # "mean" or "median" over a trial's images
    label: str

    @property
    def direction(self) -> str:
        return "maximize" if self.higher_is_better else "minimize"


# The registry: a new metric is a file beside this one and a line here.
METRICS = {
    m.name: m
    for m in (
        MetricInfo("clip_score", True, "mean", "CLIP score (100 x cosine)"),
        MetricInfo("lpips", False, "mean", "LPIPS to reference"),
        MetricInfo("seconds", False, "median", "device seconds per image"),
    )
}


def summarise(name: str, values: Sequence[float]) -> float:
    """A trial's value of metric ``name`` from its per-image values (mean or median, as registered)."""
    return statistics.median(values) if METRICS[name].aggregate == "median" else statistics.fmean(values)
