"""Which images the decision renders, in which order: a class's panel of (prompt, seed) units, and the
noise each of them draws.

Each image its own noise: the seed of a unit numbers a prompt's images (``search.seeds``, the racing and
confirmation seeds); the image's initial noise comes from a generator seeded with
:func:`autotune.noise.noise_seed` of its prompt's text and that number.

The bound is over prompts (production sends new prompts of a class), so the panel adds prompts
before seeds: every trial renders the first chunk (``prompts_per_trial`` prompts x the search seeds);
racing a candidate renders the next chunk (the next prompts x the search seeds), and once every search
prompt is in, the racing seeds, a chunk of prompts at a time. Candidate and baseline are compared on the
units both have. Confirmation renders a panel of its own that the search never sees: ``confirm_prompts``
of the class's prompts (at most half the class), held out of the search, on the confirmation seeds.
New prompts and new noise, as production sends: a search that picked the setting whose errors fell on
easy prompts picked those prompts' luck, which fresh noise on the same prompts would repeat (a class of
one prompt confirms on fresh noise alone). Which prompts are held out is a draw seeded by
``holdout_seed`` among those a trial does not render (the first ``prompts_per_trial`` are the search's):
a class's list in any order (easy ones first, a theme at the end) confirms on prompts like the rest.

A candidate may *pass* only at the panel's looks, stated in advance and few (each spends a share of the
error: :mod:`autotune.decision.looks`): the search's after the trial's own chunk, after every prompt is
in, then each time the racing seeds have doubled the images a prompt has (and at the last); the
confirmation's once, on its whole panel. It may *fail* after any chunk (a futility stop
spends nothing). :meth:`Panel.search_look` and :meth:`Panel.confirm_look` say which images a candidate's
pass and fail are judged on, and at which level.

Example:
    >>> p = Panel(n_prompts=8, search_seeds=(0, 1), race_seeds=(2, 3), per_chunk=4, confirm_seeds=(9, 10),
    ...           confirm_prompts=2)
    >>> p.chunks[0]
    ((0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1), (3, 0), (3, 1))
    >>> p.chunks[1]
    ((4, 0), (4, 1), (5, 0), (5, 1))
    >>> p.search_sizes, p.confirm_units
    ((8, 12, 24), ((6, 9), (7, 9)))
    >>> Panel(8, (0, 1), per_chunk=4, confirm_seeds=(9, 10), confirm_prompts=2, holdout_seed=0).held_prompts
    (4, 7)
"""

from __future__ import annotations

import functools
import hashlib
import itertools
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from autotune.decision.looks import ALPHA, spend

__all__ = ["Look", "Panel", "Unit", "race_seeds"]

Unit = tuple[int, int]  # (prompt index, seed)


@dataclass(frozen=True)
class Look:
    """Where a candidate stands in a stage's look schedule: the images its pass is judged on (the panel's
    units up to its last look reached, at level ``alpha``) and those its fail is judged on (every complete
    chunk it has). ``index`` 0: no look reached yet (nothing can pass)."""

    units: tuple[Unit, ...]
    seen: tuple[Unit, ...]
    alpha: float
    index: int
    of: int

    def describe(self) -> str:
        return f"look {self.index} of {self.of}, one-sided {1 - self.alpha:.2%}"


def race_seeds(search_seeds: Sequence[int], confirm_seeds: Sequence[int], n: int) -> tuple[int, ...]:
    """Seeds racing adds once every prompt is in: the next after the search's, skipping the confirmation seeds."""
    used = {*search_seeds, *confirm_seeds}
    out: list[int] = []
    s = max(search_seeds) + 1
    while len(out) < n:
        if s not in used:
            out.append(s)
        s += 1
    return tuple(out)


@dataclass(frozen=True)
class Panel:
    n_prompts: int
    search_seeds: tuple[int, ...]
    race_seeds: tuple[int, ...] = ()
    per_chunk: int = 4  # prompts per chunk (the first chunk is what every trial renders)
    confirm_seeds: tuple[int, ...] = ()
    confirm_prompts: int = 8
    holdout_seed: int | None = None  # the draw of the held-out prompts (None: the last ones, as studies did before)

    @property
    def held_out(self) -> int:
        """How many prompts the search never renders, the confirmation's: ``confirm_prompts``, at most half
        the class and none of the first ``per_chunk``, which every trial renders (none in a class of one, or
        without confirmation seeds)."""
        most = min(self.n_prompts // 2, self.n_prompts - self.trials_own)
        return min(self.confirm_prompts, most) if self.confirm_seeds else 0

    @property
    def trials_own(self) -> int:
        """How many prompts every trial renders: the first ``per_chunk`` (all of a smaller class)."""
        return min(self.per_chunk, self.n_prompts)

    @functools.cached_property
    def held_prompts(self) -> tuple[int, ...]:
        """The held-out prompts (indices into the class): ``held_out`` of those after the first ``per_chunk``,
        drawn by ``holdout_seed`` (a hash of seed and index orders them: the same draw on every machine)."""
        rest = range(self.trials_own, self.n_prompts)
        if not self.held_out:
            return ()
        if self.holdout_seed is None:
            return tuple(rest[-self.held_out :])
        key = lambda q: hashlib.sha256(f"{self.holdout_seed}:{q}".encode()).digest()  # noqa: E731
        return tuple(sorted(sorted(rest, key=key)[: self.held_out]))

    @functools.cached_property
    def search_order(self) -> tuple[int, ...]:
        """The search's prompts, in the class's order (the first ``per_chunk`` are every trial's)."""
        held = set(self.held_prompts)
        return tuple(q for q in range(self.n_prompts) if q not in held)

    @property
    def search_prompts(self) -> int:
        return self.n_prompts - self.held_out

    @functools.cached_property
    def chunks(self) -> list[tuple[Unit, ...]]:
        """The search panel: prompts first (every search seed), then each racing seed, a chunk of prompts at a time."""
        order, k = self.search_order, self.per_chunk
        parts = [order[p : p + k] for p in range(0, len(order), k)]
        out = [tuple((q, s) for q in part for s in self.search_seeds) for part in parts]
        return out + [tuple((q, s) for q in part) for s in self.race_seeds for part in parts]

    def next_chunk(self, have: Collection[Unit]) -> tuple[Unit, ...] | None:
        """The first chunk of the search panel not all in ``have`` (only its missing units), or None."""
        return _first_missing(self.chunks, have)

    @functools.cached_property
    def confirm_units(self) -> tuple[Unit, ...]:
        """The confirmation's first chunk: its held-out prompts on the first half of its seeds."""
        return self.confirm_chunks[0] if self.confirm_seeds else ()

    @functools.cached_property
    def confirm_chunks(self) -> list[tuple[Unit, ...]]:
        """The confirmation panel, the held-out prompts (a class of one: its prompt) x the confirmation seeds,
        in two chunks of seeds: a confirmation may fail after the first."""
        prompts = self.held_prompts or range(self.n_prompts)
        half = max(len(self.confirm_seeds) // 2, 1)
        parts = [self.confirm_seeds[:half], self.confirm_seeds[half:]]
        return [tuple((q, s) for q in prompts for s in seeds) for seeds in parts if seeds]

    def next_confirm_chunk(self, have: Collection[Unit]) -> tuple[Unit, ...] | None:
        """The first chunk of the confirmation panel not all in ``have`` (only its missing units), or None."""
        return _first_missing(self.confirm_chunks, have)

    def prompts_of(self, units: Sequence[Unit]) -> list[int]:
        return sorted({p for p, _ in units})

    @classmethod
    def of(cls, n_prompts: int, search: Any, recommend: Any) -> Panel:
        """A class's panel from its ``[search]`` and ``[recommend]`` tables (``n_prompts``: the class's)."""
        r = recommend
        race = race_seeds(search.seeds, r.confirm_seeds, r.race_seeds)
        return cls(n_prompts, tuple(search.seeds), race, search.first_prompts(n_prompts), tuple(r.confirm_seeds),
                   r.confirm_prompts, r.holdout_seed)  # fmt: skip

    # the looks ----------------------------------------------------------------------------------------
    @functools.cached_property
    def _search_ends(self) -> tuple[int, ...]:
        """The search chunks after which a look is taken: the first, the last of the search seeds, then where
        the racing seeds have doubled the images a prompt has, and the last."""
        per = -(-self.search_prompts // self.per_chunk)  # chunks of one seed across every search prompt
        ends = {0, per - 1}
        seeds, total = len(self.search_seeds), len(self.search_seeds) + len(self.race_seeds)
        m = 2 * seeds
        while m < total:
            ends.add(per - 1 + (m - seeds) * per)
            m *= 2
        ends.add(per - 1 + (total - seeds) * per)
        return tuple(sorted(ends))

    @functools.cached_property
    def search_sizes(self) -> tuple[int, ...]:
        """Images a candidate has at each of the search's looks."""
        counts = list(itertools.accumulate(len(c) for c in self.chunks))
        return tuple(counts[e] for e in self._search_ends)

    @functools.cached_property
    def _confirm_ends(self) -> tuple[int, ...]:
        """The confirmation's one look: its whole panel (it may fail after any chunk)."""
        return (len(self.confirm_chunks) - 1,) if self.confirm_seeds else ()

    @functools.cached_property
    def confirm_sizes(self) -> tuple[int, ...]:
        counts = list(itertools.accumulate(len(c) for c in self.confirm_chunks))
        return tuple(counts[e] for e in self._confirm_ends)

    def search_look(self, have: Collection[Unit]) -> Look:
        """Where a candidate with the search images ``have`` stands in the search's looks (error ``ALPHA``)."""
        return _look(self.chunks, self._search_ends, spend(self.search_sizes, ALPHA), have)

    def confirm_look(self, have: Collection[Unit], alpha: float) -> Look:
        """Where a candidate with the confirmation images ``have`` stands in its confirmation's looks, the
        confirmation's error ``alpha`` (:func:`autotune.decision.looks.confirmation_alpha`)."""
        return _look(self.confirm_chunks, self._confirm_ends, spend(self.confirm_sizes, alpha), have)


def _look(
    chunks: Sequence[tuple[Unit, ...]], ends: Sequence[int], levels: Sequence[float], have: Collection[Unit]
) -> Look:
    """The complete chunks at the head of ``chunks`` that ``have`` holds, and the last look among them."""
    done = 0
    while done < len(chunks) and all(u in have for u in chunks[done]):
        done += 1
    reached = [j for j, e in enumerate(ends) if e < done]
    j = reached[-1] + 1 if reached else 0
    seen = tuple(u for c in chunks[:done] for u in c)
    units = tuple(u for c in chunks[: ends[j - 1] + 1] for u in c) if j else ()
    return Look(units, seen, levels[j - 1] if j else 0.0, j, len(ends))


def _first_missing(chunks: Sequence[tuple[Unit, ...]], have: Collection[Unit]) -> tuple[Unit, ...] | None:
    """The units of the first chunk not all in ``have``, or None."""
    for chunk in chunks:
        missing = tuple(u for u in chunk if u not in have)
        if missing:
            return missing
    return None
