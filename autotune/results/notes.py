"""The sentences the outputs carry beside their figures: what a bound speaks for, a speed-up that breaks
physics, random weights, the tolerances as the study file states them. Light to import (no torch).

Example:
    >>> timing_check(3.1, (2.9, 3.3), call_ratio(10, 20), "autotune validate s.toml")[:72]
    'timing unreliable (timed 3.10x faster with 2x fewer model calls: the ma'
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from autotune.config.resolve import ResolvedStudy

__all__ = [
    "call_ratio",
    "fleet",
    "fleet_text",
    "prompts_note",
    "random_weights_warning",
    "speedup_text",
    "timing_check",
    "tolerance_text",
]


def call_ratio(evaluations: float | None, base_evaluations: float | None) -> float | None:
    """How many times fewer model evaluations a setting makes than the baseline (a denoiser call with
    guidance on counts twice: :func:`autotune.decision.cost.evaluations`), or None where a count is unknown."""
    return base_evaluations / evaluations if evaluations and base_evaluations else None


SPREAD = 1.5  # the widest range (high / low over the timed calls) a speed-up is reported from


def timing_check(speedup: float | None, low_high: tuple[float, float] | None, call_ratio: float | None,
                 retime: str = "autotune validate STUDY.toml") -> str | None:  # fmt: skip
    """None, or why a timed speed-up cannot be reported as it stands (then its compute ratio leads):

    - it is faster than its share of the model's evaluations allows, by more than 10 % (a call's fixed
      cost only makes a cheaper setting less fast): noise inflated the baseline's seconds or cut its own;
    - or its range over the timed calls (the baseline's slowest over the setting's fastest, against the
      other way round) spans more than ``SPREAD`` x: another job on the machine slowed some calls, and a
      median of three calls on each side cannot say by how much. A quiet CPU spans 1.1-1.2x.
    """
    if speedup is None:
        return None
    if call_ratio is not None and speedup > call_ratio * 1.1:
        why = f"timed {speedup:.2f}x faster with {call_ratio:.2g}x fewer model calls"
    elif low_high is not None and low_high[1] > low_high[0] * SPREAD:
        why = f"timed {speedup:.2f}x, {low_high[0]:.2f}-{low_high[1]:.2f}x over the timed calls"
    else:
        return None
    return f"timing unreliable ({why}: the machine was busy); re-time alone: `{retime}`"


def speedup_text(d: Mapping[str, Any]) -> str:
    """The headline of a class in ``recommendations.json`` (or ``validation.json``: the same keys): the timed
    speed-up and its range, or the compute ratio where :func:`timing_check` found the timing unreliable."""
    ratio, timing, low_high = d.get("model_call_ratio"), d.get("timing"), d.get("speedup_range")
    calls = f"{ratio:.2g}x fewer model calls" if ratio else ""
    if timing or not d.get("speedup"):
        return f"{calls}; timing unreliable" if timing and calls else calls
    lo_hi = f" ({low_high[0]:.2f}-{low_high[1]:.2f})" if low_high else ""
    return f"{d['speedup']:.2f}x{lo_hi}" + (f", {calls}" if calls else "")


def prompts_note(total: int, images: Iterable[tuple[int, int]], confirm: Iterable[tuple[int, int]] = ()) -> str:
    """What the bounds speak for (new prompts of the class of ``total``) and how the class's size limits them:
    a pick's ``images`` and ``confirm`` images, as (prompt index, seed) units (a candidate's own)."""
    from autotune.decision.bounds import t95

    used, confirmed = len({p for p, _ in images}), {p for p, _ in confirm}
    nos = ", ".join(str(p + 1) for p in sorted(confirmed))
    fresh = f"; confirmed on {len(confirmed)} prompts (nos. {nos} of the class's) x fresh seeds" if nos else ""
    if total == 1:  # no spread between prompts: the bound is over the one prompt's images (its noises)
        return (
            f"the class has one prompt: the bound is over its images (new noise, the same prompt){fresh}, so it "
            "speaks for that prompt, not for new prompts of the class; give the class 8 or more prompts"
        )
    if total < 8:
        now, eight = t95(total - 1) / total**0.5, t95(7) / 8**0.5
        return (
            f"the bound is over the class's {total} prompts (t = {t95(total - 1):.2f} on {total - 1} degrees of "
            f"freedom){fresh}: with 8 prompts it would be about {1 - eight / now:.0%} tighter, and cheaper "
            "settings could qualify"
        )
    if used < total:
        return (
            f"the search's bound is over {used} of the class's {total} prompts (racing adds prompts where a "
            f"decision is close){fresh}"
        )
    return f"the bound is over all {total} of the class's prompts{fresh}"


def random_weights_warning(cfg: ResolvedStudy) -> str | None:
    """One sentence naming what in the study has random weights (the offline tiny models, a random
    LPIPS backbone), or None.

    Their figures measure a real sampling ODE and real metric code paths, not image quality:
    every place a user reads numbers (table, JSON, report, dashboard note) says so. The shipped
    micro models and their CLIPs are trained, so they are not named.
    """
    parts = []
    if cfg.model.id.startswith("tiny"):
        parts.append(f"the model ({cfg.model.id})")
    if cfg.metrics.clip_model == "tiny" and "clip_score" in cfg.metrics.objectives:
        parts.append("the CLIP model (tiny)")
    if cfg.metrics.lpips_backbone == "random" and "lpips" in cfg.metrics.objectives:
        parts.append(f"the LPIPS backbone ({cfg.metrics.lpips_net})")
    if not parts:
        return None
    what = "any image is" if len(parts) > 1 or "LPIPS" not in parts[0] else "two images look alike to a person"
    return f"Random weights: {', '.join(parts)}. Their figures show how autotune works, not how {what}."


def tolerance_text(cfg: Any) -> str:
    """The study's tolerances in the units it states them in, one per judged metric."""
    from autotune.config.objectives import OBJECTIVES, quality

    return ", ".join(OBJECTIVES[m].describe(cfg.recommend) for m in quality(cfg.metrics.objectives))


def fleet(traffic: dict[str, float], classes: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """What the study saves the fleet: each class's speed-up weighted by its traffic share, the share no
    class has served the baseline (speed-up 1). The fleet's time is the sum of each share over its
    speed-up, so its speed-up is the weighted harmonic mean; the range takes each class's low and high
    speed-up alike. A class that keeps its baseline counts 1; None without traffic shares."""
    if not traffic:
        return None
    shares = {**traffic, "default": max(0.0, 1.0 - sum(traffic.values()))}
    each: dict[str, tuple[float, float, float]] = {"default": (1.0, 1.0, 1.0)}
    for c in traffic:
        d = classes.get(c, {})
        if "trial" not in d or d.get("speedup") is None:
            why = f"classes.{c}: " + ("timing unreliable" if d.get("timing") else "no recommendation yet")
            return {"speedup": None, "range": None, "shares": shares, "why": why}
        kept = d["trial"] == d["baseline"]["trial"]
        lo, hi = d.get("speedup_range") or (d["speedup"], d["speedup"])
        each[c] = (1.0, 1.0, 1.0) if kept else (d["speedup"], lo, hi)
    mean, lo, hi = (1.0 / sum(shares[c] / v[i] for c, v in each.items()) for i in range(3))
    return {"speedup": mean, "range": [lo, hi], "shares": shares,
            "per_class": {c: v[0] for c, v in each.items()}}  # fmt: skip


def fleet_text(f: dict[str, Any] | None) -> str | None:
    """One line for the table and the report: the fleet's speed-up, its range, the shares it weighs."""
    if f is None:
        return None
    shares = ", ".join(
        f"{c} {s:.0%}" + (f" at {f['per_class'][c]:.2f}x" if f.get("per_class") and c != "default" else "")
        for c, s in f["shares"].items() if c != "default"
    )  # fmt: skip
    rest = f"; no class {f['shares']['default']:.0%} (the baseline)" if f["shares"]["default"] > 0 else ""
    if f["speedup"] is None:
        return f"fleet: not known yet ({f['why']}); traffic {shares}{rest}"
    lo, hi = f["range"]
    return (f"fleet: {f['speedup']:.2f}x ({lo:.2f}-{hi:.2f}x) on the traffic shares {shares}{rest} "
            "(the fleet's time: the sum of each share over its speed-up)")  # fmt: skip
