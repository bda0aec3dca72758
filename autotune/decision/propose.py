"""The next setting the decision wants rendered: the cheapest plausible one it has not tried. Pure.

A *line* is a sampler with its variant values at one guidance scale; along a line, the steps. For a
deterministic sampler on a line, quality is close to monotone in steps, so a line that failed at some
steps is not tried below them, and the cheapest steps that hold are found by walking the line up from
its cheapest rung. Lines are walked together, rung by rung (cheapest first): at each rung the lines
most likely to pass are tried first (ranked by how close each came on the rungs below, sharing what
a sampler's other lines showed), a beam of them, so that a rung where nothing holds costs a few
renders, not one per line. The lines start at the baseline's guidance; once a line holds somewhere,
its neighbouring guidance values join (a different guidance solves a different ODE: it holds or not
on its own).

Example:
    >>> p = Proposer(lines, steps=(2, 30), steps_step=1, cost=cost_of)
    >>> p.propose(tried, best_cost=0.41)
    Settings(scheduler='dpmpp_2m', steps=3, guidance=5.0, options=(('timestep_spacing', 'trailing'),))
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from autotune.space import schedulers
from autotune.space.families import Family
from autotune.space.settings import Settings, variant_choices

__all__ = ["Line", "Proposer", "Tried", "lines_of"]

_FEW_STEPS = ("trailing", "karras", "exponential")  # variant values that converge in few steps (diffusers' docs)


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
    failed), and its margin (how close to the tolerance, in tolerances; < 0 outside)."""

    verdict: str
    margin: float = -math.inf


def lines_of(
    names: Sequence[str],
    wanted: tuple[str, ...] | str,
    family: Family,
    guidance: float,
    key: Callable[[Settings], str],
    stochastic: bool = False,
) -> list[Line]:
    """Every sampler and combination of its searched variant values at ``guidance``, one line per
    distinct setting (``key``: what makes two render the same), deterministic samplers only unless
    ``stochastic``, interleaved across samplers so that a beam is diverse; within a sampler the
    variants known to hold at few steps first (trailing spacing, Karras or exponential sigmas), a prior
    the walk replaces with what it measures."""
    per_sampler: list[list[Line]] = []
    seen: set[str] = set()
    for name in names:
        if not stochastic and not schedulers.get(name).deterministic:
            continue
        choices = variant_choices(name, wanted, family)
        found = []
        for values in itertools.product(*choices.values()):
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
    ) -> None:
        self.lines, self.cost, self.key = list(lines), cost, key
        self.rungs = list(range(steps[0], steps[1] + 1, steps_step))
        self.guidance, self.guidance_step = guidance, guidance_step
        self.beam = beam if beam is not None else max(4, math.ceil(len(self.lines) / 5))

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

    def propose(self, tried: Mapping[str, Tried], best_cost: float) -> Settings | None:
        """The cheapest plausible untried setting cheaper than ``best_cost``, or None."""

        def held(line: Line) -> bool:
            return any(getattr(tried.get(self.key(line.at(s))), "verdict", "") == "pass" for s in self.rungs)

        passing = [line for line in self.lines if held(line)]
        for group in (self.lines, self._neighbour_lines(passing)):
            found = self._walk(group, tried, best_cost)
            if found is not None:
                return found
        return None

    def _walk(self, lines: Sequence[Line], tried: Mapping[str, Tried], best_cost: float) -> Settings | None:
        results: dict[Line, dict[int, Tried]] = {line: {} for line in lines}
        for line in lines:
            for s in self.rungs:
                t = tried.get(self.key(line.at(s)))
                if t is not None:
                    results[line][s] = t
        for s in self.rungs:
            here = [line for line in lines if self.cost(line.at(s)) < best_cost]
            if not here:
                continue
            if any(results[line].get(s, Tried("")).verdict == "pass" for line in here):
                return None  # something holds at this rung: its confirmation comes first, nothing cheaper is left
            done = [line for line in here if s in results[line]]
            open_ = [line for line in here if s not in results[line] and not self._ruled_out(results[line], s)]
            if len(done) >= self.beam or not open_:
                continue  # the rung's best lines did not hold: on to the next rung
            return self._best(open_, s, results)
        return None

    @staticmethod
    def _ruled_out(results: Mapping[int, Tried], s: int) -> bool:
        """Failed at these steps or more (quality is near monotone in steps), or errored at these steps."""
        return any((r.verdict == "fail" and t >= s) or (r.verdict == "error" and t == s) for t, r in results.items())

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
