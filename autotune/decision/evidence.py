"""The evidence the recommendation rule reads, built once per class and kept up to date: every distinct
rendered setting as a :class:`Candidate` (its images on the search, racing and confirmation seeds, its
timed serving calls, its fitted cost). Pure bookkeeping on stored numbers: no torch, no I/O.

A trial is anything with ``number``, ``state`` (its ``.name`` Optuna's), ``params``, ``values`` and
``user_attrs``: Optuna's ``FrozenTrial`` while a study runs, the fast reader's records afterwards.

Example:
    >>> ev = Evidence(("clip_score", "lpips", "seconds"), n_prompts=4, seeds=(0, 1), confirm_seeds=(1000, 1001))
    >>> ev.add_trial(trial)
    >>> ev.add_renders(trial.number, {"1000": {"clip_score": [78.1, 77.9, 78.3, 76.0]}})
    >>> ev.baseline.number
    0
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from autotune.config.objectives import cost_of, quality
from autotune.decision.bounds import Images
from autotune.decision.cost import SecondsFit, fit_seconds, guided_share
from autotune.records import StudyRecord, trial_record
from autotune.space.settings import Settings

__all__ = [
    "NOISE_SEED",
    "Candidate",
    "Evidence",
    "distinct",
    "images_of",
    "interrupted",
    "is_baseline",
    "reused",
    "unit_key",
]

NOISE_SEED = "noise_seed"  # stored beside an image's metrics: the generator seed it was rendered with


def is_baseline(t: Any) -> bool:
    return trial_record(t).baseline


def interrupted(t: Any) -> bool:
    """Failed without a verdict on its setting: killed, stopped by a signal, found stale by the heartbeat, or
    failed by the infrastructure (its images could not be stored): the next run renders it again."""
    if t.state.name != "FAIL":
        return False
    r = trial_record(t)
    return r.interrupted or r.infrastructure or r.fail_reason is None


def reused(t: Any) -> bool:
    """A trial that took an earlier trial's verdict on the same setting instead of rendering it."""
    return trial_record(t).reused_from is not None


def distinct(t: Any) -> bool:
    """A completed trial that rendered its setting (one that reused an earlier trial's metrics did not):
    the one definition of "a rendered setting" the rule, the front and the outputs count."""
    return bool(t.state.name == "COMPLETE" and not reused(t))


def unit_key(prompt: int, seed: int) -> str:
    return f"{prompt}:{seed}"


def images_of(
    values: Mapping[str, Sequence[float]], n_prompts: int, seeds: Sequence[int]
) -> dict[tuple[int, int], dict[str, float]]:
    """Prompt-major per-image lists over ``seeds`` as ``{(prompt index, seed): {metric: value}}``."""
    out: dict[tuple[int, int], dict[str, float]] = {}
    for m, v in values.items():
        for i, x in enumerate(v[: n_prompts * len(seeds)]):
            out.setdefault((i // len(seeds), seeds[i % len(seeds)]), {})[m] = x
    return out


@dataclass(frozen=True)
class Candidate:
    """A rendered setting as the rule sees it: its images on the search (and racing) seeds, on the
    confirmation seeds, and the seconds per image of each timed serving call."""

    number: int
    images: Images
    confirm: Images = field(default_factory=dict)
    seconds: tuple[float, ...] = ()
    cost: float | None = None  # what cheaper means (a fitted cost; default: the median of ``seconds``)
    deterministic: bool = True
    label: str = ""
    calls: float | None = None  # denoiser calls per image (what the cost line is fitted on)
    guided: float = 0.0  # share of the calls with classifier-free guidance on (a doubled batch)

    @property
    def rank_cost(self) -> float:
        return self.cost if self.cost is not None else statistics.median(self.seconds) if self.seconds else math.inf

    @property
    def seeds(self) -> set[int]:
        """Seeds it has images on, besides the confirmation seeds."""
        return {s for _, s in self.images}


class Evidence:
    """Every distinct rendered setting of one class, kept incrementally: :meth:`add_trial` when a trial
    completes, :meth:`add_renders` when the decision renders one on more seeds."""

    def __init__(
        self, objectives: Sequence[str], n_prompts: int, seeds: Sequence[int], confirm_seeds: Iterable[int]
    ) -> None:
        self.objectives, self.n_prompts = tuple(objectives), n_prompts
        self.seeds, self.confirm_seeds = tuple(seeds), set(confirm_seeds)
        self.quality = quality(self.objectives)
        self.by_number: dict[int, Candidate] = {}
        self.baseline_number: int | None = None
        self._timed: dict[int, tuple[float, float, float]] = {}  # number -> calls, guided, seconds (the cost line)
        self.fit: SecondsFit | None = None
        self.confirmed: list[int] = []  # trials whose confirmations began, in that order (the k-th spends alpha / 2^k)

    @classmethod
    def of(
        cls,
        trials: Iterable[Any],
        stored: StudyRecord,
        objectives: Sequence[str],
        n_prompts: int,
        seeds: Sequence[int],
        confirm_seeds: Iterable[int],
    ) -> Evidence:
        """The evidence of a stored class: its distinct trials and the decision's extra images (``renders``)."""
        ev = cls(objectives, n_prompts, seeds, confirm_seeds)
        ev.confirmed = [int(n) for n in stored.confirmations]
        for t in trials:
            if distinct(t):
                ev.add_trial(t, refit=False)
        for number in list(ev.by_number):
            ev.add_renders(number, stored.renders.get(number, {}))
        ev.refit()
        return ev

    @property
    def candidates(self) -> list[Candidate]:
        return list(self.by_number.values())

    @property
    def baseline(self) -> Candidate | None:
        return None if self.baseline_number is None else self.by_number.get(self.baseline_number)

    def add_trial(self, t: Any, *, deterministic: bool = True, refit: bool = True) -> Candidate:
        """A completed trial's images (search seeds) and timings; ``deterministic`` as its sampler is."""
        from autotune.space import schedulers

        r = trial_record(t)
        values = {m: r.values.get(m, []) for m in self.quality}
        calls = r.model_calls
        guided = guided_share(calls, r.guided_calls, Settings.of_trial(t))
        prompts = self.n_prompts if r.prompts_rendered is None else int(r.prompts_rendered)  # the first ones
        c = Candidate(
            t.number,
            images_of(values, prompts, self.seeds),
            seconds=tuple(r.values.get("seconds", ())),
            deterministic=deterministic and schedulers.get(t.params["scheduler"]).deterministic,
            label=r.setting,
            calls=float(calls) if calls else None,
            guided=guided,
        )
        self.by_number[t.number] = c
        if is_baseline(t):
            self.baseline_number = t.number
        if (cost := cost_of(self.objectives)) and calls and t.values is not None:
            self._timed[t.number] = (float(calls), guided, t.values[self.objectives.index(cost)])
        if refit:
            self.refit()
        return self.by_number[t.number]

    def add_renders(self, number: int, renders: Mapping[str, Mapping[str, Any]]) -> Candidate:
        """Images the decision rendered for trial ``number``: ``{"prompt:seed": {metric: value, "noise_seed":
        generator seed}}`` (studies from before prompts were raced: ``{seed: {metric: [value per prompt]}}``)."""
        c = self.by_number[number]
        images, confirm = dict(c.images), dict(c.confirm)
        for key, per_metric in renders.items():
            if ":" in key:  # "prompt:seed": {metric: value}
                prompt, _, seed = key.partition(":")
                items = [((int(prompt), int(seed)), {m: v for m, v in per_metric.items() if m != NOISE_SEED})]
            else:  # seed: {metric: [value per prompt]}, as studies stored it before prompts were raced
                n = len(next(iter(per_metric.values()), []))
                items = [((p, int(key)), {m: v[p] for m, v in per_metric.items()}) for p in range(n)]
            for unit, values in items:
                into = confirm if unit[1] in self.confirm_seeds else images
                into[unit] = {**into.get(unit, {}), **values}
        self.by_number[number] = replace(c, images=images, confirm=confirm)
        if confirm and number not in self.confirmed and number != self.baseline_number:
            self.confirmed.append(number)  # a confirmation began (a study from before the order was kept: by number)
        return self.by_number[number]

    def refit(self) -> None:
        """The cost line over every timed trial, and each candidate's cost on it."""
        if not self._timed:
            self.fit = None
            return
        calls, guided, seconds = zip(*self._timed.values(), strict=True)
        self.fit = fit_seconds(calls, guided, seconds)
        fit = self.fit
        for n, c in self.by_number.items():
            cost = fit(c.calls, c.guided) if fit is not None and c.calls else None
            self.by_number[n] = replace(c, cost=cost)

    def outliers(self) -> list[int]:
        """Trials whose timing is far off the cost line."""
        fit = self.fit
        return [] if fit is None else [n for n, (c, g, s) in self._timed.items() if fit.outlier(c, g, s)]
