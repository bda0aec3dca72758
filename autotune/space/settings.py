"""The search space: a :class:`Settings` point, how an Optuna trial suggests one, and the one
Align-Your-Steps rule (which samplers may take its timesteps, and the timesteps themselves).

A sampler's conditional parameters ("variants": sigma schedule, timestep spacing, solver
order, ...) are suggested only when that sampler is chosen, under names prefixed by it
(``dpmpp_2m.sigmas``), so each keeps one distribution for the whole study.

Example:
    >>> settings = suggest(trial, cfg.search, FAMILIES["sd"])
    >>> settings
    Settings(scheduler='dpmpp_2m', steps=12, guidance=6.5, options=(('sigmas', 'karras'),))
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Protocol

from autotune.space import schedulers
from autotune.space.families import Family

__all__ = ["SearchSpace", "Setting", "Settings", "ays_timesteps", "suggest", "takes_ays", "variant_choices"]


class Setting(Protocol):
    """A baseline or reference setting as a study file states it, resolved (every field set)."""

    @property
    def scheduler(self) -> str: ...
    @property
    def steps(self) -> int: ...
    @property
    def guidance(self) -> float: ...
    @property
    def options(self) -> Mapping[str, Any]: ...


class SearchSpace(Protocol):
    """The ``[search]`` ranges, resolved against the model family."""

    @property
    def schedulers(self) -> tuple[str, ...]: ...
    @property
    def steps(self) -> tuple[int, int]: ...
    @property
    def steps_step(self) -> int: ...
    @property
    def guidance(self) -> tuple[float, float]: ...
    @property
    def guidance_step(self) -> float: ...
    @property
    def variants(self) -> tuple[str, ...] | str: ...


@dataclass(frozen=True)
class Settings:
    """One inference setting: sampler name (canonical), steps, guidance, and the sampler's variant values."""

    scheduler: str
    steps: int
    guidance: float
    options: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def make(cls, scheduler: str, steps: int, guidance: float, options: Mapping[str, Any] | None = None) -> Settings:
        """A setting; variant values of "default" (the model's own config) are left out."""
        chosen = sorted((k, v) for k, v in (options or {}).items() if v != "default")
        return cls(scheduler, int(steps), float(guidance), tuple(chosen))

    @classmethod
    def of(cls, setting: Setting) -> Settings:
        return cls.make(setting.scheduler, setting.steps, setting.guidance, setting.options)

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> Settings:
        """Inverse of :meth:`params`."""
        name = params["scheduler"]
        prefix = f"{name}."
        options = {k.removeprefix(prefix): v for k, v in params.items() if k.startswith(prefix)}
        return cls.make(name, params["steps"], params["guidance"], options)

    def params(self, searched: Mapping[str, Any] = MappingProxyType({})) -> dict[str, Any]:
        """The trial parameters that produce this setting (for ``study.enqueue_trial``).

        ``searched`` names the variants the study searches for this scheduler: those this
        setting leaves at the model's config are pinned to "default".
        """
        variants = {k: "default" for k in searched} | dict(self.options)
        return {
            "scheduler": self.scheduler,
            "steps": self.steps,
            "guidance": self.guidance,
            **{f"{self.scheduler}.{k}": v for k, v in variants.items()},
        }

    @property
    def ays(self) -> bool:
        return dict(self.options).get("sigmas") == "ays"

    def scheduler_overrides(self) -> dict[str, Any]:
        """The diffusers config overrides of this setting (Align-Your-Steps keeps the default sigmas
        and passes its timesteps in the call)."""
        return schedulers.overrides(self.scheduler, dict(self.options))

    def call_kwargs(self, family: Family) -> dict[str, Any]:
        """The pipeline call arguments: steps, guidance under the family's name, AYS timesteps."""
        kwargs: dict[str, Any] = {"num_inference_steps": self.steps, family.guidance_param: self.guidance}
        if self.ays:
            kwargs["timesteps"] = ays_timesteps(family, self.steps)
        return kwargs

    def key(self, base: Mapping[str, Any] = MappingProxyType({})) -> str:
        """What makes two settings render the same images: class, resolved config, steps, guidance.

        ``base`` is the model's own scheduler config: an override equal to its value (``timestep_spacing
        = "leading"`` on a leading model) is the model's default, the same setting as ``"default"``.
        """
        spec = schedulers.get(self.scheduler)
        conf = sorted((k, v) for k, v in self.scheduler_overrides().items() if k not in base or base[k] != v)
        return repr((spec.class_name, conf, self.ays, self.steps, round(self.guidance, 6)))

    def scheduler_label(self) -> str:
        """The scheduler and its variant values: ``DPM++ 2M [sigmas=karras]``."""
        opts = ", ".join(f"{k}={v}" for k, v in self.options)
        return schedulers.get(self.scheduler).label + (f" [{opts}]" if opts else "")

    def label(self) -> str:
        """A short human name: ``DPM++ 2M [sigmas=karras], 12 steps, CFG 6.5``."""
        return f"{self.scheduler_label()}, {self.steps} steps, CFG {self.guidance:g}"


@functools.cache
def _takes_timesteps(class_name: str) -> bool:
    import diffusers

    return "timesteps" in inspect.signature(getattr(diffusers, class_name).set_timesteps).parameters


def takes_ays(scheduler: str, family: Family | None) -> bool:
    """Align-Your-Steps applies: the family has published timesteps and the sampler takes custom ones."""
    return family is not None and family.ays is not None and _takes_timesteps(schedulers.get(scheduler).class_name)


def ays_timesteps(family: Family, steps: int) -> list[int]:
    """Align-Your-Steps timesteps (Sabour et al. 2024) for the family, log-linearly resampled to ``steps``."""
    import numpy as np
    from diffusers.schedulers import AysSchedules

    base = np.array(AysSchedules[f"{family.ays}Timesteps"], dtype=float)
    if steps == len(base):
        return [int(t) for t in base]
    xs = np.linspace(0, 1, len(base))
    out = np.exp(np.interp(np.linspace(0, 1, steps), xs, np.log(base + 1))) - 1
    ts = np.round(out).astype(int)
    for i in range(1, len(ts)):  # strictly decreasing
        ts[i] = min(ts[i], ts[i - 1] - 1)
    return [int(t) for t in np.maximum(ts, 0)]


def variant_choices(scheduler: str, wanted: tuple[str, ...] | str, family: Family | None) -> dict[str, tuple[Any, ...]]:
    """The variant parameters searched for ``scheduler`` and their values ("ays" where it applies)."""
    out = {}
    for v in schedulers.variants_of(scheduler):
        if wanted != "all" and v.name not in wanted:
            continue
        out[v.name] = (*v.choices, "ays") if v.name == "sigmas" and takes_ays(scheduler, family) else v.choices
    return out


def suggest(trial: Any, space: SearchSpace, family: Family | None = None) -> Settings:
    """Ask an Optuna trial for a setting inside ``space`` (variants only where the sampler takes them)."""
    name = trial.suggest_categorical("scheduler", list(space.schedulers))
    options = {
        k: trial.suggest_categorical(f"{name}.{k}", list(choices))
        for k, choices in variant_choices(name, space.variants, family).items()
    }
    return Settings.make(
        name,
        trial.suggest_int("steps", *space.steps, step=space.steps_step),
        trial.suggest_float("guidance", *space.guidance, step=space.guidance_step),
        options,
    )
