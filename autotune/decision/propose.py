"""The next setting the decision wants rendered: the cheapest plausible one it has not tried. Pure.

A *line* is a sampler with its variant values at one guidance scale; along a line, the steps. For a
deterministic sampler on a line, quality is close to monotone in steps, so a line that failed at some
steps is not tried below them, and the cheapest steps that hold are found by walking the line up from
its cheapest rung. Lines are walked together, rung by rung (cheapest first): at each rung the lines
most likely to pass are tried first (ranked by how close each came on the rungs below, sharing what
a sampler's other lines showed), a beam of them (a fifth of the lines, at most a fifth of the settings the
walk may propose: ``budget``), so that a rung where nothing holds costs a few renders, not one per line.
The lines start at the baseline's guidance; once a line holds somewhere,
its neighbouring guidance values join (a different guidance solves a different ODE: it holds or not
on its own). A rung where the first lines tried fall far short (4 tolerances or more) is left after
three; and the walk jumps the rungs no line is expected to hold at: a sampler's error to the converged
image falls as a power of its steps, so from a line ``excess`` tolerances short at ``s`` steps the next
rung worth a render is ``s * excess ** (1 / 3)`` (the third power: the most a multistep solver gains), and
a line is not tried below that rung from its own failures either (:func:`floor`): a sampler's many variant
lines, most far off, would otherwise each be tried again a rung higher because one of them came close.
Where quality is flat in steps just beyond the tolerance that jump is one rung, and a beam at every rung
would spend the night below the answer: each rung in a row where every line's mean stayed beyond the
tolerance doubles the stride (1, 2, 4, ... rungs up; one that came inside resets it), and a line that
then holds is searched down by halves between its last failure and its pass.

Example:
    >>> p = Proposer(lines, steps=(2, 30), steps_step=1, cost=cost_of)
    >>> p.propose(tried, best_cost=0.41)
    Settings(scheduler='dpmpp_2m', steps=3, guidance=5.0, options=(('timestep_spacing', 'trailing'),))
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from autotune.space import schedulers
from autotune.space.families import Family
from autotune.space.settings import Settings, variant_choices

__all__ = ["Line", "Proposer", "Tried", "lines_of"]

# variant values that converge in few steps (diffusers' docs; a fitted schedule starts from the best spacing)
_FEW_STEPS = ("fitted", "trailing", "karras", "exponential")


@dataclass(frozen=True)
class Line:
    scheduler: str
    options: tuple[tuple[str, Any], ...]
    guidance: float

    def at(self, steps: int) -> Settings:
        return Settings(self.scheduler, steps, self.guidance, self.options)

    def with_guidance(self, guidance: float) -> Line:
        return Line(self.scheduler, self.options, round(guidance, 6))


@dataclass(frozen=True)
class Tried:
    """What rendering a setting showed: ``pass``, ``fail``, ``undecided`` or ``error`` (the trial
    failed); its margin (how close its bound is to the tolerance, in tolerances; < 0 outside) and its
    excess (how many tolerances worse than the baseline its mean is, on its worst metric)."""

    verdict: str
    margin: float = -math.inf
    excess: float = math.inf


def lines_of(
    names: Sequence[str],
    wanted: tuple[str, ...] | str,
    family: Family,
    guidance: float,
    key: Callable[[Settings], str],
    stochastic: bool = False,
    fitted: bool = False,
) -> list[Line]:
    """Every sampler and combination of its searched variant values at ``guidance``, one line per
    distinct setting (``key``: what makes two render the same; of two, the one with fewer variant values
    set), deterministic samplers only unless ``stochastic``, the class's own schedule too where
    ``fitted``, interleaved across samplers so that a beam is diverse; within a sampler the variants known
    to hold at few steps first (a fitted schedule, trailing spacing, Karras or exponential sigmas), a
    prior the walk replaces with what it measures."""
    per_sampler: list[list[Line]] = []
    seen: set[str] = set()
    for name in names:
        if not stochastic and not schedulers.get(name).deterministic:
            continue
        choices = variant_choices(name, wanted, family, fitted)
        found = []
        combos = sorted(itertools.product(*choices.values()), key=lambda values: sum(v != "default" for v in values))
        for values in combos:
            line = Line(
                name, Settings.make(name, 1, guidance, dict(zip(choices, values, strict=True))).options, guidance
            )
            k = key(line.at(10))
            if k not in seen:
                seen.add(k)
                found.append(line)
        per_sampler.append(sorted(found, key=lambda line: -sum(v in _FEW_STEPS for _, v in line.options)))
    return [line for group in itertools.zip_longest(*per_sampler) for line in group if line is not None]


class Proposer:
    """Walks the lines rung by rung; see the module's docstring."""

    def __init__(
        self,
        lines: Sequence[Line],
        steps: tuple[int, int],
        steps_step: int,
        cost: Callable[[Settings], float],
        *,
        key: Callable[[Settings], str],
        guidance: tuple[float, float] = (0.0, math.inf),
        guidance_step: float = 0.5,
        beam: int | None = None,
        budget: float = math.inf,
    ) -> None:
        self.lines, self.cost, self.key = list(lines), cost, key
        self.rungs = list(range(steps[0], steps[1] + 1, steps_step))
        self.guidance, self.guidance_step = guidance, guidance_step
        wide = max(4, math.ceil(len(self.lines) / 5))  # a fifth of the lines, and of the settings it may propose
        cap = int(budget // 5) if math.isfinite(budget) else wide
        self.beam = beam if beam is not None else max(3, min(wide, cap))
        self._keys = functools.cache(lambda line: [(s, key(line.at(s))) for s in self.rungs])  # a line's rungs

    def _neighbour_lines(self, passing: Sequence[Line]) -> list[Line]:
        """Guidance one, two and four steps either side of every line that held somewhere, inside the space."""
        out: list[Line] = []
        known = set(self.lines)
        for line in passing:
            for k in (-1, 1, -2, 2, -4, 4):
                g = line.guidance + k * self.guidance_step
                other = line.with_guidance(g)
                if self.guidance[0] - 1e-9 <= g <= self.guidance[1] + 1e-9 and other not in known:
                    known.add(other)
                    out.append(other)
        return out

    def _results(self, lines: Sequence[Line], tried: Mapping[str, Tried]) -> dict[Line, dict[int, Tried]]:
        found = {line: {s: tried.get(k) for s, k in self._keys(line)} for line in lines}
        return {line: {s: t for s, t in rs.items() if t is not None} for line, rs in found.items()}

    def propose(self, tried: Mapping[str, Tried], best_cost: float) -> Settings | None:
        """The cheapest plausible untried setting cheaper than ``best_cost``, or None: first the steps
        halfway down a line that holds (bisection between its last failure and its cheapest pass), then
        the rung walk of every line, then of the guidance neighbours of the lines that hold (from the rung
        above their lines' last failure)."""
        results = self._results(self.lines, tried)
        passing = [line for line, rs in results.items() if any(r.verdict == "pass" for r in rs.values())]
        halfway = []
        for line in passing:
            rs = results[line]
            top = min(s for s, r in rs.items() if r.verdict == "pass")
            low = max(floor({s: r for s, r in rs.items() if s < top}), self.rungs[0]) - 1
            between = [s for s in self.rungs if low < s < top and s not in rs]
            if between:
                mid = between[(len(between) - 1) // 2]
                if self.cost(line.at(mid)) < best_cost:
                    halfway.append(line.at(mid))
        if halfway:
            return min(halfway, key=lambda s: (self.cost(s), s.steps))
        found = self._walk(self.lines, tried, best_cost)
        if found is not None or not passing:
            return found
        return self._walk(
            self._neighbour_lines(passing), tried, best_cost, min(self._above(results[ln]) for ln in passing)
        )

    def _above(self, rs: Mapping[int, Tried]) -> int:
        """Where a line's guidance neighbours start: its last failure if it came close (within a tolerance of
        passing), else the rung above it (another guidance does not rescue a setting far off)."""
        fails = [(s, r) for s, r in rs.items() if r.verdict == "fail"]
        if not fails:
            return self.rungs[0]
        s, r = max(fails, key=lambda x: x[0])
        return s if r.margin > -1 else s + 1

    def _walk(
        self, lines: Sequence[Line], tried: Mapping[str, Tried], best_cost: float, start: int = 0
    ) -> Settings | None:
        results = self._results(lines, tried)
        worth = max(self.rungs[0], start)  # the lowest rung some line may still hold at
        left = 0  # rungs in a row where every line tried stayed beyond the tolerance by its mean
        for s in self.rungs:
            here = [line for line in lines if self.cost(line.at(s)) < best_cost]
            if not here:
                continue
            if any(results[line].get(s, Tried("")).verdict == "pass" for line in here):
                return None  # something holds at this rung: its confirmation comes first, nothing cheaper is left
            done = [results[line][s] for line in here if s in results[line]]
            if s < worth and not done:
                continue  # no line is expected to hold this low
            open_ = [line for line in here if s not in results[line] and not self._ruled_out(results[line], s)]
            far = len(done) >= 3 and all(math.isfinite(r.excess) and r.excess >= 4 for r in done)
            if len(done) >= self.beam or far or not open_:
                decided = [r.excess for r in done if r.verdict != "error" and math.isfinite(r.excess)]
                if decided:  # the next rung worth a render, from the closest line at this one
                    worth = max(worth, reach(s, min(decided)))
                left = left + 1 if decided and min(decided) >= 1 else 0  # every line's mean beyond the tolerance
                if left:  # the stride doubles with each such rung in a row: 1, 2, 4, ... rungs up
                    worth = max(worth, s + 2 ** (left - 1))
                continue
            return self._best(open_, s, results)
        return None

    @staticmethod
    def _ruled_out(results: Mapping[int, Tried], s: int) -> bool:
        """Below the line's floor (:func:`floor`), or errored at these steps."""
        return s < floor(results) or any(r.verdict == "error" and t == s for t, r in results.items())

    def _promise(self, line: Line, s: int, results: Mapping[Line, Mapping[int, Tried]]) -> float:
        """How close the line came below ``s`` (its best margin there), else its sampler's other lines' best,
        else the median line's (an untried line is taken for an average one)."""

        def best(rs: Mapping[int, Tried]) -> float | None:
            found = [r.margin for t, r in rs.items() if t < s and r.verdict != "error"]
            return max(found) if found else None

        if (own := best(results[line])) is not None:
            return own
        kin = [b for ln, rs in results.items() if ln.scheduler == line.scheduler and (b := best(rs)) is not None]
        if kin:
            return max(kin)
        every = sorted(b for rs in results.values() if (b := best(rs)) is not None)
        return every[len(every) // 2] if every else 0.0

    def _best(self, open_: Sequence[Line], s: int, results: Mapping[Line, Mapping[int, Tried]]) -> Settings:
        best = max(open_, key=lambda line: (self._promise(line, s, results), -open_.index(line)))
        return best.at(s)


def floor(results: Mapping[int, Tried]) -> int:
    """The fewest steps a line may hold at, from its failures (0: none): above every rung it failed at (quality
    is near monotone in steps), and as far above as each failure's :func:`reach`: a line far off at 4 steps is not
    tried at 6 because another line came close there. A failure with its means inside the tolerance (too many
    broken images: ``excess`` below 1, or below 0 where the means are better than the baseline's) only rules out
    its own steps and below."""
    return max((reach(t, r.excess) for t, r in results.items() if r.verdict == "fail"), default=0)


def reach(steps: int, excess: float) -> int:
    """The fewest steps a line ``excess`` tolerances short at ``steps`` could hold at: above ``steps``, and at least
    ``steps * excess ** (1 / 3)`` (its error falls at most as the third power of the steps); a line short by 1 or
    less (or not at all by its means, or by an unknown amount) reaches the next step."""
    if not math.isfinite(excess):
        return steps + 1
    return max(steps + 1, math.ceil(steps * max(1.0, excess) ** (1 / 3)))
