"""The objectives a study can have: one line each, the one place a metric's direction is declared.

Everything else derives from this table: Optuna's study directions, the decision rule's "worse"
side, the figures' arrows, the evaluator's metric models (``metric`` names the implementation in
:mod:`autotune.model.metrics`, imported only when a study renders). A new quality metric is a file
there and a line here.

Example:
    >>> [OBJECTIVES[m].direction for m in ("clip_score", "seconds")]
    ['maximize', 'minimize']
    >>> OBJECTIVES["lpips"].label
    'LPIPS to reference ↓'
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["OBJECTIVES", "Objective", "quality", "summarise"]


@dataclass(frozen=True)
class Objective:
    name: str
    higher_is_better: bool
    aggregate: str  # "mean" or "median" over a trial's per-image values
    title: str  # what an axis or a column says, without the arrow
    metric: str | None = None  # "module:Class" of a quality metric; None: the cost (timed, not scored)
    reference: bool = False  # scored against the reference image (a stochastic sampler never converges to it)

    @property
    def direction(self) -> str:
        return "maximize" if self.higher_is_better else "minimize"

    @property
    def label(self) -> str:
        return f"{self.title} {'↑' if self.higher_is_better else '↓'}"

    @property
    def quality(self) -> bool:
        """Judged image by image against the baseline (the cost is what the rule minimises instead)."""
        return self.metric is not None


OBJECTIVES = {
    o.name: o
    for o in (
        Objective("clip_score", True, "mean", "CLIP score", "autotune.model.metrics.clip_score:ClipScore"),
        Objective("lpips", False, "mean", "LPIPS to reference", "autotune.model.metrics.lpips_distance:Lpips", True),
        Objective("seconds", False, "median", "seconds per image"),
    )
}


def quality(objectives: Sequence[str]) -> list[str]:
    """The quality metrics among a study's objectives, in its order."""
    return [m for m in objectives if OBJECTIVES[m].quality]


def summarise(name: str, values: Sequence[float]) -> float:
    """A trial's value of objective ``name`` from its per-image values (mean or median, as declared)."""
    return statistics.median(values) if OBJECTIVES[name].aggregate == "median" else statistics.fmean(values)
