"""The study's sampler, and random draws of settings not tried yet.

Example:
    >>> sampler = make_sampler("tpe", seed=0)
    >>> fresh_params(study.get_trials(), cfg.search, FAMILIES["sd"])
    {'scheduler': 'euler', 'steps': 17, 'guidance': 4.5}
"""

from __future__ import annotations

import random
import warnings
import zlib
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from autotune.records import trial_record
from autotune.space.families import Family
from autotune.space.settings import SearchSpace, Settings, searched_params, suggest
from autotune.store.optuna_api import queued_params

__all__ = ["RandomDraw", "class_seed", "fresh_params", "make_sampler"]


def class_seed(seed: int | None, class_name: str) -> int | None:
    """A class's own seed from ``[search] seed`` (None: unseeded), for its optimiser and its fresh draws."""
    return None if seed is None else zlib.crc32(f"{seed}:{class_name}".encode())


def make_sampler(name: str, seed: int | None = None) -> optuna.samplers.BaseSampler:
    """The study's sampler; ``tpe`` (the default) is multivariate TPE, the best measured by
    ``benchmarks/search.py`` (README, Performance); constant liar keeps parallel workers apart."""
    with warnings.catch_warnings():  # multivariate, group and constant_liar are "experimental" in Optuna 4
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if name == "tpe":
            return optuna.samplers.TPESampler(multivariate=True, group=True, constant_liar=True, seed=seed)
        if name == "tpe_independent":
            return optuna.samplers.TPESampler(constant_liar=True, seed=seed)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


class RandomDraw:
    """Stands in for a trial in :func:`~autotune.space.suggest`: every parameter uniformly at random on its grid."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        return self.rng.choice(list(choices))

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1) -> int:
        return low + step * self.rng.randint(0, (high - low) // step)

    def suggest_float(self, name: str, low: float, high: float, *, step: float) -> float:
        return round(low + step * self.rng.randint(0, int((high - low) / step + 1e-9)), 9)


def fresh_params(
    trials: Sequence[FrozenTrial],
    space: SearchSpace,
    family: Family,
    rng: random.Random | None = None,
    base: Mapping[str, Any] = MappingProxyType({}),
    draws: int = 1000,
) -> dict[str, Any] | None:
    """Parameters of a setting none of ``trials`` has tried or queued, drawn at random (None: found none);
    ``base``: the model's scheduler config, as for :meth:`Settings.key`."""
    tried = {trial_record(t).setting_key for t in trials}
    queued = (queued_params(t) for t in trials if t.state == TrialState.WAITING)
    tried |= {Settings.from_params(q).key(base) for q in queued if q and "scheduler" in q}
    rng = rng or random.Random()
    for _ in range(draws):
        settings = suggest(RandomDraw(rng), space, family)
        if settings.key(base) not in tried:
            return settings.params(searched_params(settings.scheduler, space, family))
    return None
