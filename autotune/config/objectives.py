"""The objectives a study can have, one row each, and every rule that follows from a row.

A row says the metric's direction, whether it is the cost (timed, not scored), how a trial's per-image
values aggregate, its tolerance's unit and default (the baseline's seed-to-seed standard deviation,
the seed-to-seed distance, or absolute metric units), its collapse threshold, how it is shown, and
where its implementation lives (``module:Class``, imported only when a study renders). Optuna's
directions, the decision rule's "worse" side, the tolerances, the report's columns and figures'
arrows, ``validate``, the fingerprint and ``recommendations.json`` all read the row.

The built-in rows are below; a study file adds its own metric as one ``[metrics.custom.NAME]`` table
(:func:`custom_row`), registered when the file loads and judged like CLIP.

Example:
    >>> [OBJECTIVES[m].direction for m in ("clip_score", "seconds")]
    ['maximize', 'minimize']
    >>> OBJECTIVES["lpips"].label
    'LPIPS to reference ↓'
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

__all__ = [
    "COLLAPSE",
    "COST",
    "OBJECTIVES",
    "UNITS",
    "Objective",
    "cost_of",
    "higher",
    "quality",
    "register",
    "summarise",
]

COST = "seconds"  # the cost objective: what the rule minimises, timed as production calls the pipeline
UNITS = {  # a tolerance's unit -> what a number in it means
    "seed_sd": "x the baseline's seed-to-seed standard deviation",
    "seed_distance": "x the seed-to-seed distance (two noises of one prompt)",
    "absolute": "in the metric's own units",
}


COLLAPSE = 10.0  # the default: an image this many tolerances worse than the baseline's has collapsed


@dataclass(frozen=True)
class Objective:
    name: str
    higher_is_better: bool
    aggregate: str  # "mean" or "median" over a trial's per-image values
    title: str  # what an axis or a column says, without the arrow
    metric: str | None = None  # "module:Class" of a quality metric; None: the cost (timed, not scored)
    reference: bool = False  # scored against the reference image (a stochastic sampler never converges to it)
    unit: str = "absolute"  # its tolerance's unit, one of UNITS
    tolerance: float = 0.0  # how much worse than the baseline a setting may be, in `unit`
    collapse: float = COLLAPSE  # an image this many tolerances worse than the baseline's has collapsed
    digits: int = 4  # significant digits shown
    tolerance_key: str | None = None  # the [recommend] key that states `tolerance` (built-in rows)
    absolute_key: str | None = None  # the [recommend] key that states it in metric units instead
    collapse_key: str | None = None  # the [recommend] key that states `collapse`
    options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))  # a custom metric's arguments
    custom: bool = False  # declared in a study file ([metrics.custom.NAME]), not by autotune

    @property
    def direction(self) -> str:
        return "maximize" if self.higher_is_better else "minimize"

    @property
    def sign(self) -> int:
        """1 where higher is better, -1 where lower is: ``sign * (candidate - baseline) < 0`` is worse."""
        return 1 if self.higher_is_better else -1

    @property
    def label(self) -> str:
        return f"{self.title} {'↑' if self.higher_is_better else '↓'}"

    @property
    def cost(self) -> bool:
        return self.metric is None

    @property
    def quality(self) -> bool:
        """Judged image by image against the baseline (the cost is what the rule minimises instead)."""
        return self.metric is not None

    @property
    def column(self) -> str:
        """The table's column head."""
        return f"{self.aggregate} {self.name}" if self.cost else self.name

    def stated(self, recommend: Any) -> tuple[float | None, str, float]:
        """This study's tolerance (None: not stated), its unit and the collapse threshold, as
        ``[recommend]`` (built-in rows) or the metric's own table states them."""
        if self.absolute_key and getattr(recommend, self.absolute_key) is not None:
            value, unit = getattr(recommend, self.absolute_key), "absolute"
        else:
            value = getattr(recommend, self.tolerance_key) if self.tolerance_key else self.tolerance
            unit = self.unit
        return value, unit, getattr(recommend, self.collapse_key) if self.collapse_key else self.collapse

    def describe(self, recommend: Any) -> str:
        """The tolerance in words, e.g. ``clip_score 0.5 x the baseline's seed-to-seed standard deviation``."""
        value, unit, _ = self.stated(recommend)
        return f"{self.name} {value:g} {UNITS[unit]}" if unit != "absolute" else f"{self.name} {value:g} absolute"


BUILT_IN = MappingProxyType(
    {
        o.name: o
        for o in (
            Objective(
                "clip_score", True, "mean", "CLIP score", "autotune.model.metrics.clip_score:ClipScore",
                unit="seed_sd", tolerance_key="clip_tolerance_sd", absolute_key="clip_tolerance",
                collapse_key="clip_collapse",
            ),
            Objective(
                "lpips", False, "mean", "LPIPS to reference", "autotune.model.metrics.lpips_distance:Lpips", True,
                unit="seed_distance", tolerance_key="lpips_tolerance", collapse_key="lpips_collapse",
            ),
            Objective(COST, False, "median", "seconds per image"),
        )
    }
)  # fmt: skip
OBJECTIVES: dict[str, Objective] = dict(BUILT_IN)  # the built-in rows and the loaded study files' own


def register(row: Objective) -> None:
    """Add (or replace) a study file's own metric; a built-in name is refused by the caller's check."""
    assert row.name not in BUILT_IN, row.name
    OBJECTIVES[row.name] = row


def quality(objectives: Sequence[str]) -> list[str]:
    """The quality metrics among a study's objectives, in its order."""
    return [m for m in objectives if OBJECTIVES[m].quality]


def cost_of(objectives: Sequence[str]) -> str | None:
    """The cost objective among a study's objectives (None: the study does not time)."""
    return next((m for m in objectives if OBJECTIVES[m].cost), None)


def higher(objectives: Sequence[str]) -> dict[str, bool]:
    """Each objective's direction as the Pareto code takes it: higher is better?"""
    return {m: OBJECTIVES[m].higher_is_better for m in objectives}


def summarise(name: str, values: Sequence[float]) -> float:
    """A trial's value of objective ``name`` from its per-image values (mean or median, as declared)."""
    return statistics.median(values) if OBJECTIVES[name].aggregate == "median" else statistics.fmean(values)
