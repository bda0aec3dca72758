"""Which images the decision renders, in which order: a class's panel of (prompt, seed) units, and the
noise each of them draws.

Each image its own noise: the seed of a unit numbers a prompt's images (``search.seeds``, the racing and
confirmation seeds); the image's initial noise comes from a generator seeded with :func:`noise_seed` of
its prompt's text and that number. No two prompts share a noise (a noise shared by every prompt is a
factor of its own: a bound over prompts then speaks for those few noises), an image keeps its noise
when prompts are reordered or added, and every setting of a class draws the same noise for it, so
candidate and baseline stay paired image by image.

The bound is over prompts (production sends new prompts of a class), so the panel adds prompts
before seeds: every trial renders the first chunk (``prompts_per_trial`` prompts x the search seeds);
racing a candidate renders the next chunk (the next prompts x the search seeds), and once every prompt
is in, the racing seeds, a chunk of prompts at a time. Candidate and baseline are compared on the
units both have. Confirmation renders a panel of its own, on seeds the search never uses and on the
prompts the search reaches last (those a search that stops early has not seen).

Example:
    >>> p = Panel(n_prompts=6, search_seeds=(0, 1), race_seeds=(2, 3), per_chunk=4)
    >>> p.chunks[0]
    ((0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1), (3, 0), (3, 1))
    >>> p.chunks[1]
    ((4, 0), (4, 1), (5, 0), (5, 1))
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Collection, Sequence
from dataclasses import dataclass

__all__ = ["NOISE", "Panel", "Unit", "noise_seed"]

Unit = tuple[int, int]  # (prompt index, seed)
NOISE = "per image"  # the fingerprint's word for this panel (studies before it shared one noise per seed)


def noise_seed(prompt: str, seed: int) -> int:
    """The generator seed of image ``seed`` of ``prompt``: its own noise, from the prompt's text and the
    number (31 bits, a seed every tool takes: diffusers, AUTOMATIC1111, ComfyUI).

    >>> noise_seed("a red letter A", 0) != noise_seed("a red letter B", 0)
    True
    """
    digest = hashlib.sha256(f"{seed}\n{prompt}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


@dataclass(frozen=True)
class Panel:
    n_prompts: int
    search_seeds: tuple[int, ...]
    race_seeds: tuple[int, ...] = ()
    per_chunk: int = 4  # prompts per chunk (the first chunk is what every trial renders)
    confirm_seeds: tuple[int, ...] = ()
    confirm_prompts: int = 8

    @property
    def first_prompts(self) -> int:
        """How many prompts (the first ones) a trial renders."""
        return min(self.per_chunk, self.n_prompts)

    @property
    def chunks(self) -> list[tuple[Unit, ...]]:
        """The search panel: prompts first (every search seed), then each racing seed, a chunk of prompts at a time."""
        out = []
        for p in range(0, self.n_prompts, self.per_chunk):
            prompts = range(p, min(p + self.per_chunk, self.n_prompts))
            out.append(tuple((q, s) for q in prompts for s in self.search_seeds))
        for s in self.race_seeds:
            for p in range(0, self.n_prompts, self.per_chunk):
                out.append(tuple((q, s) for q in range(p, min(p + self.per_chunk, self.n_prompts))))
        return out

    def next_chunk(self, have: Collection[Unit]) -> tuple[Unit, ...] | None:
        """The first chunk of the search panel not all in ``have`` (only its missing units), or None."""
        return _first_missing(self.chunks, have)

    @property
    def confirm_units(self) -> tuple[Unit, ...]:
        """The confirmation panel: fresh seeds x the last ``confirm_prompts`` prompts (all of a small class)."""
        return self.confirm_chunks[0] if self.confirm_seeds else ()

    @property
    def confirm_chunks(self) -> list[tuple[Unit, ...]]:
        """The confirmation panel, then the rest of the class's prompts on the same fresh seeds, a chunk of
        prompts at a time (the prompts the search reaches last first): where a confirmation is undecided."""
        edges = [self.n_prompts, self.n_prompts - min(self.confirm_prompts, self.n_prompts)]
        while edges[-1] > 0:
            edges.append(max(edges[-1] - self.per_chunk, 0))
        return [tuple((q, s) for q in range(b, a) for s in self.confirm_seeds) for a, b in itertools.pairwise(edges)]

    def next_confirm_chunk(self, have: Collection[Unit]) -> tuple[Unit, ...] | None:
        """The first chunk of the confirmation panel not all in ``have`` (only its missing units), or None."""
        return _first_missing(self.confirm_chunks, have)

    def prompts_of(self, units: Sequence[Unit]) -> list[int]:
        return sorted({p for p, _ in units})


def _first_missing(chunks: Sequence[tuple[Unit, ...]], have: Collection[Unit]) -> tuple[Unit, ...] | None:
    """The units of the first chunk not all in ``have``, or None."""
    for chunk in chunks:
        missing = tuple(u for u in chunk if u not in have)
        if missing:
            return missing
    return None
