"""What the decision renders next for a class, given everything rendered so far: confirm, race, or
nothing (then a new setting is rendered). Pure: the study loop carries the action out.

At every moment the current recommendation is :func:`autotune.decision.rule.decide`'s (the cheapest
candidate confirmed on fresh seeds, else the baseline). Of the candidates cheaper than it, cheapest
first:

1. **go on with a confirmation** whose bound is undecided: the class's other prompts on the same fresh
   seeds, a chunk at a time, until it decides (its panel at most: slots are few, ``race_budget`` is the
   search's).
2. **race** one whose search bound is undecided and that is cheaper than any candidate waiting for
   confirmation: render it on the next chunk of the search panel (more prompts first, then more
   seeds), within ``race_budget`` images per class. It may fail after any chunk; it passes only at the
   panel's looks (:mod:`autotune.decision.looks`).
3. **confirm** one that passed on its search images and would become the recommendation: render it on
   the confirmation panel (fresh seeds, the prompts the search reaches last). A class confirms at most
   ``finalists`` candidates, each spending a share of the error, so a confirmation is spent where it
   counts: the first at once (a recommendation early, should the night end), each later one only once
   the search has nothing cheaper left to try (``frontier``). Finalists are diverse: one that differs
   from a candidate that failed confirmation only in guidance or in one variant waits until no other
   passing candidate is left. The class's last slot, while the baseline stands, goes to the cheapest
   candidate with room on its search images (``LAST_SLOT_ROOM``), else the one whose saving times its
   share of that room is the most: the cheapest of many passes is the likeliest to be the search's luck,
   and the surest of them may save next to nothing.
4. the **margin** of the recommendation: its neighbours (one step fewer, the adjacent guidance values)
   on the same images as the recommendation, so the output can say how close it sits to a collapse.

Example:
    >>> next_action(evidence, tol, panel, settings, recommend_cfg, race_spent=40)
    Action(kind='race', number=12, units=((4, 0), (4, 1), ...))

The loop renders the baseline on an action's units first wherever it lacks them: candidate and
baseline are always compared on the same images.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from autotune.decision.bounds import BROKEN, Bound, Tolerance
from autotune.decision.evidence import Candidate, Evidence
from autotune.decision.panel import Panel, Unit
from autotune.decision.rule import Schedule, decide, overall, ranked, verdicts
from autotune.space.guidance import INTERVAL, UNBOUNDED, interval_choices
from autotune.space.settings import SearchSpace, Settings

__all__ = ["Action", "near", "neighbours", "next_action"]


@dataclass(frozen=True)
class Action:
    kind: str  # "confirm" or "race"
    number: int  # the trial whose setting renders
    units: tuple[Unit, ...]  # (prompt index, seed) to render


def near(a: Settings, b: Settings) -> bool:
    """Two settings that differ only in guidance, its cutoff or interval, their cache or one variant value
    (same sampler and steps)."""
    if a.scheduler != b.scheduler or a.steps != b.steps:
        return False
    oa, ob = dict(a.options), dict(b.options)
    differing = {k for k in oa.keys() | ob.keys() if oa.get(k) != ob.get(k)}
    changed = (a.guidance != b.guidance) + (a.cutoff != b.cutoff) + (a.cache != b.cache) + (a.interval != b.interval)
    return len(differing) + changed <= 1


def neighbours(s: Settings, space: SearchSpace) -> list[Settings]:
    """One step fewer, the adjacent guidance values at the same steps and, where the space searches a
    guidance cutoff, guidance stopped one cutoff step sooner, where it searches a guidance interval, each
    end moved one value inward, and a cache's next values up and down (those inside the space)."""

    def moved(**change: Any) -> Settings:
        was: dict[str, Any] = {"steps": s.steps, "guidance": s.guidance, "options": dict(s.options), "cutoff": s.cutoff}
        was |= {"timesteps": s.timesteps, "cache": s.cache, "interval": s.interval}
        return Settings.make(s.scheduler, **(was | change))

    out = []
    if s.steps - space.steps_step >= space.steps[0]:  # a fitted list is the steps': the study fits the fewer
        out.append(moved(steps=s.steps - space.steps_step, timesteps=()))
    for g in (s.guidance - space.guidance_step, s.guidance + space.guidance_step):
        if space.guidance[0] - 1e-9 <= g <= space.guidance[1] + 1e-9:
            out.append(moved(guidance=round(g, 6), timesteps=()))
    if s.cache and s.cache[0] in getattr(space, "cache", ()):
        low, high, step = space.cache_range(s.cache[0])
        for v in (s.cache[1] + step, s.cache[1] - step):
            if low - 1e-9 <= v <= high + 1e-9:
                out.append(moved(cache=(s.cache[0], round(v, 6))))
    cut, step = getattr(space, "guidance_cutoff", None), getattr(space, "guidance_cutoff_step", 0.1)
    sooner = moved(cutoff=round(s.cutoff - step, 6))
    if cut and s.cutoff - step >= cut[0] - 1e-9 and sooner != s:  # a cutoff that still guides every step is none
        out.append(sooner)
    ends = list(s.interval or UNBOUNDED)
    for name, choices in interval_choices(space).items():
        at = INTERVAL.index(name)
        inward = [v for v in choices if (v > ends[at] if at == 0 else v < ends[at])]
        if inward:
            band = list(ends)
            band[at] = min(inward) if at == 0 else max(inward)
            if band[0] < band[1] and (narrower := moved(interval=tuple(band))) != s:
                out.append(narrower)
    return out


LAST_SLOT_ROOM = 0.5  # tolerances inside on the search: what the last slot asks of a candidate (see _confirmable)


def _room(bounds: Sequence[Bound]) -> float:
    """How far inside the tolerance a candidate sits on its search images, in tolerances, on its worst count:
    a metric's worse-side bound; the collapsed share's mean (its bound cannot pass on the search's few
    images, see :func:`autotune.decision.bounds.broken_bound`)."""
    values = [1 - b.mean / b.tolerance if b.metric == BROKEN else b.margin for b in bounds]
    return min((v for v in values if not math.isnan(v)), default=-math.inf)


def _confirmable(
    passing: Sequence[Candidate],
    tried: Sequence[Candidate],
    settings: Mapping[int, Settings],
    room: Mapping[int, float] | None = None,
    base_cost: float = math.nan,
) -> Candidate | None:
    """The cheapest passing candidate not near one that failed confirmation, else the cheapest.

    With ``room`` (each one's margin on the search, in tolerances: the class's last slot, while it keeps
    the baseline): the one of most saving to expect, its saving over the baseline's cost (``base_cost``) x
    its room as a share of ``LAST_SLOT_ROOM`` (1 beyond it): the cheapest with that room, else the one with
    the best trade of room for saving. The cheapest pass of many is the likeliest to be the search's luck,
    and a last slot spent on luck keeps the baseline where a setting that truly holds was found; one spent on
    the surest setting at 27 of 30 steps keeps it too, in all but name."""
    diverse = [c for c in passing if not any(near(settings[c.number], settings[f.number]) for f in tried)]
    pool = diverse or list(passing)
    if not pool or room is None:
        return pool[0] if pool else None

    def expected(c: Candidate) -> float:
        saving = 1 - c.rank_cost / base_cost if base_cost > 0 else 1.0
        return min(1.0, room[c.number] / LAST_SLOT_ROOM) * saving

    best = max(pool, key=lambda c: (expected(c), -pool.index(c)))
    return best if expected(best) > 0 else max(pool, key=lambda c: room[c.number])


def next_action(
    evidence: Evidence,
    tol: Tolerance,
    panel: Panel,
    settings: Mapping[int, Settings],
    recommend: Any,
    *,
    race_spent: int,
    margin_of: Sequence[int] = (),
    frontier: Callable[[Candidate], bool] = lambda c: True,
) -> Action | None:
    """The next render the decision needs (see the module's docstring), or None: render a new setting."""
    base = evidence.baseline
    if base is None:
        return None
    looks = Schedule(panel, tuple(evidence.confirmed), recommend.finalists)
    rec = decide(evidence.candidates, base, tol, stochastic=recommend.stochastic, looks=looks).chosen
    cheaper = [c for c in ranked(evidence.candidates, base, recommend.stochastic) if c.rank_cost < rec.rank_cost]
    verdict = {c.number: overall(verdicts(c, base, tol, looks=looks)) for c in cheaper}
    fresh = {c.number: overall(verdicts(c, base, tol, confirm=True, looks=looks)) for c in cheaper if c.confirm}
    racing = race_spent < recommend.race_budget
    more = {n: panel.next_confirm_chunk(c.confirm) for c in cheaper if fresh.get(n := c.number) == "undecided"}
    pending = [c for c in cheaper if verdict[c.number] == "pass" and more.get(c.number)]
    failed = [c for c in cheaper if c.number in fresh and fresh[c.number] != "pass" and c not in pending]
    passing = [c for c in cheaper if verdict[c.number] == "pass" and not c.confirm]
    slots = recommend.finalists - len(evidence.confirmed)  # confirmation slots left
    last = slots == 1 and rec.number == base.number
    room = {c.number: _room(verdicts(c, base, tol, looks=looks)) for c in passing} if last else None
    pick = _confirmable(passing, failed, settings, room, base.rank_cost) if slots > 0 else None
    if pick is not None and not frontier(pick):
        pick = None  # a slot is spent where the search found the cheapest, not on the first pass it meets
    if pending and (pick is None or pending[0].rank_cost <= pick.rank_cost):
        return Action("confirm", pending[0].number, more[pending[0].number] or ())  # its panel, at most: no budget
    undecided = [
        (c, chunk) for c in cheaper if verdict[c.number] == "undecided" and (chunk := panel.next_chunk(c.images))
    ]
    if racing and undecided and (pick is None or undecided[0][0].rank_cost < pick.rank_cost):
        return Action("race", undecided[0][0].number, undecided[0][1])  # a cheaper one first: slots are few
    if pick is not None:
        return Action("confirm", pick.number, panel.confirm_units)
    if racing:
        for n in margin_of:  # the recommendation's neighbours, on the recommendation's own images
            have = evidence.by_number[n].images
            if units := tuple(u for u in rec.images if u not in have):
                return Action("race", n, units)
    return None
