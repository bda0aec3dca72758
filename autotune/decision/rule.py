"""The recommendation rule: a cheaper setting replaces the baseline only when, image by image, it is
not worse by more than the tolerance on a one-sided bound (:mod:`autotune.decision.bounds`), on its
search images and again on seeds the search never saw, each look at the images paid for
(:mod:`autotune.decision.looks`). Pure math on stored numbers: no torch, no I/O.

With a class's :class:`Schedule` (its panel and the order its confirmations began), a candidate is
judged where it stands in the looks: on its search images at the level of its last search look (its
broken images only fail it there: too few to pass), and on its confirmation images at the level the k-th
confirmation of the class may spend, its broken images pooled over every image it has been judged on.
Without one (``validate``, ``export --check``: one look at held-out images), every shared image at 95 %; on
a panel too small to show ``broken_share`` where none collapsed does not hold a pass back, and says so.

Example:
    >>> base = Candidate(0, {(0, 0): {"clip_score": 30.0}, (1, 0): {"clip_score": 31.0}}, seconds=(1.0,))
    >>> fast = Candidate(1, {(0, 0): {"clip_score": 29.9}, (1, 0): {"clip_score": 30.8}}, seconds=(0.2,))
    >>> decide([base, fast], base, Tolerance({"clip_score": 1.0})).chosen.number  # not confirmed: the baseline
    0
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from autotune.config.objectives import OBJECTIVES
from autotune.decision.bounds import BROKEN, Bound, Images, Tolerance, broken_bound, paired_bound
from autotune.decision.evidence import Candidate
from autotune.decision.looks import ALPHA, FUTILITY, clean_images_needed, confirmation_alpha
from autotune.decision.panel import Panel, Unit

__all__ = [
    "Recommendation",
    "Schedule",
    "collapsed_images",
    "collapsed_text",
    "decide",
    "eligible",
    "excess",
    "margin",
    "overall",
    "ranked",
    "speedup",
    "timed_together",
    "unconfirmed",
    "verdicts",
]


@dataclass(frozen=True)
class Schedule:
    """The looks a class's candidates are judged at: its panel, the trials whose confirmations began, in that
    order, and how many may (``slots``: the k-th spends :func:`autotune.decision.looks.confirmation_alpha`)."""

    panel: Panel
    order: tuple[int, ...] = ()
    slots: int = 3

    def confirmation_alpha(self, number: int) -> float:
        """The error ``number``'s confirmation may spend (one not begun: the next slot's; none left: 0)."""
        k = self.order.index(number) + 1 if number in self.order else len(self.order) + 1
        return confirmation_alpha(k, self.slots)


def _only(images: Images, units: Collection[Unit]) -> dict[Unit, Mapping[str, float]]:
    keep = set(units)
    return {u: v for u, v in images.items() if u in keep}


def _shared(a: Images, b: Images) -> set[Unit]:
    return {u for u in a if u in b}


def _judge(
    mine: Images,
    theirs: Images,
    tol: Tolerance,
    stochastic: bool,
    *,
    units: Collection[Unit] | None = None,
    alpha: float = ALPHA,
    futility: float = ALPHA,
    broken: tuple[Images, Images, Collection[Unit] | None, bool] | None = None,
) -> list[Bound]:
    """Every judged metric's bound and the broken images' (over ``broken``'s images, units and gate where given)."""
    out, constant = [], []
    for metric, t in tol.limits.items():
        kw = {"units": units, "alpha": alpha, "futility": futility, "unsure": tol.unsure.get(metric, 0.0)}
        if OBJECTIVES[metric].reference and stochastic:  # never converges to the reference: held to another seed's
            constant.append(metric)
            b = paired_bound(mine, float(tol.seed_lpips or 0.0), metric, t, **kw)  # type: ignore[arg-type]
            b = b and replace(b, against="a stochastic sampler: held to (1 + tolerance) x the seed-to-seed distance")
        else:
            b = paired_bound(mine, theirs, metric, t, tol.cap(metric), **kw)  # type: ignore[arg-type]
        if b is not None:
            out.append(b)
    pm, pt, pu, gate = broken if broken is not None else (mine, theirs, units, True)
    if out and (b := broken_bound(pm, pt, tol, constant, units=pu, alpha=alpha, gate=gate)) is not None:
        out.append(b)
    return out


def _one_look(bounds: list[Bound], tol: Tolerance) -> list[Bound]:
    """One look at a fixed panel (``validate``, ``export --check``): a panel too small to show ``broken_share``,
    where none collapsed, does not hold a pass back on its broken images, and its bound says so."""
    needed = clean_images_needed(ALPHA, tol.broken_share)
    return [
        replace(b, gate=False, why=f"{b.images} images cannot show it: {needed} without a collapse can")
        if b.metric == BROKEN and b.images < needed and b.collapsed[0] == 0
        else b
        for b in bounds
    ]


_KEPT: dict[tuple[Any, ...], tuple[tuple[Candidate, Candidate, Tolerance], list[Bound]]] = {}


def verdicts(
    cand: Candidate, base: Candidate, tol: Tolerance, *, confirm: bool = False, looks: Schedule | None = None
) -> list[Bound]:
    """The candidate's bound on every judged metric and on its broken images, on its search images or its
    confirmation images: where it stands in ``looks`` (None: one look at every shared image, at 95 %).

    Candidates are immutable (new images make a new one): the bounds of the same objects are kept, not
    recomputed, while a study's loop asks for them again and again."""
    key = (id(cand), id(base), id(tol), confirm, looks)
    kept = _KEPT.get(key)
    if kept is not None and kept[0][0] is cand and kept[0][1] is base and kept[0][2] is tol:
        return list(kept[1])
    out = _verdicts(cand, base, tol, confirm, looks)
    if len(_KEPT) > 4096:
        _KEPT.clear()
    _KEPT[key] = ((cand, base, tol), out)
    return list(out)


def _verdicts(cand: Candidate, base: Candidate, tol: Tolerance, confirm: bool, looks: Schedule | None) -> list[Bound]:
    stochastic = not cand.deterministic and base.deterministic
    if looks is None:
        mine, theirs = (cand.confirm, base.confirm) if confirm else (cand.images, base.images)
        return _one_look(_judge(mine, theirs, tol, stochastic), tol)
    search = looks.panel.search_look(_shared(cand.images, base.images))
    if not confirm:
        seen = _only(cand.images, search.seen)
        return _judge(seen, base.images, tol, stochastic, units=search.units, alpha=search.alpha, futility=FUTILITY,
                      broken=(seen, base.images, search.units, False))  # fmt: skip
    look = looks.panel.confirm_look(_shared(cand.confirm, base.confirm), looks.confirmation_alpha(cand.number))
    fresh = _only(cand.confirm, look.seen)
    pooled = {**_only(cand.images, search.seen), **fresh}
    every = {**base.images, **base.confirm}
    return _judge(fresh, base.confirm, tol, stochastic, units=look.units, alpha=look.alpha, futility=FUTILITY,
                  broken=(pooled, every, {*search.seen, *look.units}, True))  # fmt: skip


def collapsed_images(cand: Candidate, base: Candidate, tol: Tolerance) -> dict[str, dict[str, float]]:
    """The candidate's collapsed images against the baseline's, on the search and the confirmation images."""
    out = {}
    for stage, confirm in (("search", False), ("confirmation", True)):
        b = next((x for x in verdicts(cand, base, tol, confirm=confirm) if x.metric == BROKEN), None)
        if b is not None:
            mine, theirs = b.collapsed
            out[stage] = {"images": b.images, "recommended": mine, "baseline": theirs, "share_bound": b.worst,
                          "allowed": b.tolerance}  # fmt: skip
    return out


def collapsed_text(stages: Mapping[str, Mapping[str, float]]) -> str:
    """``k/n (baseline j)`` of :func:`collapsed_images`' stages together ("-": none judged)."""
    n, k, j = (sum(int(x[key]) for x in stages.values()) for key in ("images", "recommended", "baseline"))
    return f"{k}/{n} (baseline {j})" if n else "-"


def speedup(cand: Candidate, base: Candidate) -> tuple[float, float, float] | None:
    """Median speed-up over the baseline and its range over the timed calls: (median, low, high)."""
    if not cand.seconds or not base.seconds:
        return None
    ours, theirs = cand.seconds, base.seconds
    return statistics.median(theirs) / statistics.median(ours), min(theirs) / max(ours), max(theirs) / min(ours)


def unconfirmed(cand: Candidate, base: Candidate, tol: Tolerance, looks: Schedule | None = None) -> str:
    """Why a candidate rendered on fresh seeds is not recommendable on them ("": it passed there, or has none)."""
    verdict = overall(verdicts(cand, base, tol, confirm=True, looks=looks)) if cand.confirm else "pass"
    return "" if verdict == "pass" else f"{verdict} on its {len(cand.confirm)} fresh images: not confirmed"


def overall(bounds: Sequence[Bound]) -> str:
    """``fail`` if any bound fails, ``pass`` if every one passes (a bound that does not gate may be undecided),
    else ``undecided`` (no bound: undecided)."""
    v = {b.verdict for b in bounds if b.gate or b.verdict == "fail"}
    return "fail" if "fail" in v else "pass" if v == {"pass"} else "undecided"


@dataclass(frozen=True)
class Recommendation:
    chosen: Candidate
    baseline: Candidate
    met_tolerance: bool  # False: no cheaper setting qualified, the baseline is kept
    reason: str
    confirmed: bool  # the chosen setting passed on the confirmation seeds (the baseline: trivially)
    stages: tuple[dict[str, object], ...] = ()  # every candidate considered, cheapest first

    @property
    def speedup(self) -> float | None:
        s = speedup(self.chosen, self.baseline)
        return s[0] if s else None

    @property
    def speedup_range(self) -> tuple[float, float] | None:
        s = speedup(self.chosen, self.baseline)
        return (s[1], s[2]) if s else None


def timed_together(rec: Recommendation, timed: Mapping[str, Any] | None) -> Recommendation:
    """``rec`` with its setting's seconds and the baseline's as the study timed them in turn once the
    decision settled (:meth:`autotune.study.decide.ClassRun._time_together`: the study record's
    ``timed_together``), where that pair was timed."""
    t = timed or {}
    if t.get("trials") != [rec.baseline.number, rec.chosen.number]:
        return rec
    base, mine = (tuple(float(x) for x in s) for s in t["seconds"])
    return replace(rec, chosen=replace(rec.chosen, seconds=mine), baseline=replace(rec.baseline, seconds=base))


def eligible(c: Candidate, base: Candidate, stochastic: bool) -> str | None:
    """Why ``c`` cannot replace the baseline whatever its images (None: it can)."""
    if c.number == base.number:
        return "the baseline"
    if not c.deterministic and not stochastic:
        return "stochastic sampler (recommend.stochastic = false)"
    s = speedup(c, base)
    if s is None:
        return "not timed"
    if s[1] <= 1.0:
        return f"not cheaper on every timed call (speed-up {s[1]:.2f}x-{s[2]:.2f}x)"
    return None


def ranked(candidates: Sequence[Candidate], baseline: Candidate, stochastic: bool) -> list[Candidate]:
    """The candidates that may replace the baseline, cheapest first (ties: the earlier trial)."""
    ok = [c for c in candidates if eligible(c, baseline, stochastic) is None]
    return sorted(ok, key=lambda c: (c.rank_cost, c.number))


def excess(bounds: Sequence[Bound]) -> float:
    """How many tolerances worse than the baseline a candidate's mean is, on its worst metric (inf: unknown);
    the collapsed share is left out: the walk reads this as a mean error that falls as a power of the steps."""
    worse = []
    for b in bounds:
        if b.metric != BROKEN and b.tolerance > 0 and not math.isnan(b.tolerance):
            worse.append(-b.sign * b.mean / b.tolerance)
    return max(worse) if worse else math.inf


def margin(bounds: Sequence[Bound]) -> float:
    """A candidate's closeness to passing: its worst metric's margin (-inf without a bound)."""
    values = [b.margin for b in bounds if not math.isnan(b.margin)]
    return min(values) if values else -math.inf


def decide(
    candidates: Sequence[Candidate],
    baseline: Candidate,
    tol: Tolerance,
    *,
    stochastic: bool = False,
    looks: Schedule | None = None,
) -> Recommendation:
    """The cheapest candidate that passes on its search images and again on its confirmation images, each
    where it stands in ``looks`` (None: one look at each).

    Candidates are visited cheapest first, each with its bounds (the ``stages``); one that passed the
    search but not (or not yet) the confirmation is passed over: the winner's curse. Without such a
    candidate the baseline is kept, and the reason says why.
    """
    stages: list[dict[str, object]] = []
    passed: list[Candidate] = []
    for c in ranked(candidates, baseline, stochastic):
        bounds = verdicts(c, baseline, tol, looks=looks)
        verdict = overall(bounds)
        stage: dict[str, object] = {"trial": c.number, "setting": c.label, "search": verdict}
        stage["search_bounds"] = [b.describe() for b in bounds]
        if verdict == "pass":
            passed.append(c)
            if c.confirm:
                cb = verdicts(c, baseline, tol, confirm=True, looks=looks)
                stage["confirmation"] = overall(cb) if cb else "not rendered"
                stage["confirmation_bounds"] = [b.describe() for b in cb]
        stages.append(stage)
        if stage.get("confirmation") == "pass":
            dropped = len(passed) - 1
            why = f"; {dropped} cheaper passed the search but not the confirmation" if dropped else ""
            reason = f"cheapest setting within tolerance on the search and on {len(c.confirm)} fresh images{why}"
            return Recommendation(c, baseline, True, reason, True, tuple(stages))
    pending = [c for c in passed if not c.confirm]
    finalists = len(passed) - len(pending)
    if finalists:  # the pending ones wait for a finalist slot (`finalists`) or for a longer study
        why = f"no finalist of {finalists} passed again on fresh seeds"
        why += f"; {len(pending)} more passed the search, not confirmed" if pending else ""
    elif pending:
        why = f"{len(pending)} passed the search and await confirmation on fresh seeds"
    else:
        why = "no cheaper setting passed"
    return Recommendation(baseline, baseline, False, f"{why}; keeping the baseline", True, tuple(stages))
