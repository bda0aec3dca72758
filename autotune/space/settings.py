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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Protocol

from autotune.records import trial_record
from autotune.space import caches, schedulers
from autotune.space.families import Family
from autotune.space.guidance import (
    INTERVAL,
    UNBOUNDED,
    Interval,
    cutoff_kwargs,
    guidance_on,
    guided_steps,
    interval_choices,
    interval_label,
    interval_of,
    normal_interval,
)

__all__ = [
    "CUTOFF",
    "SearchSpace",
    "Setting",
    "Settings",
    "ays_timesteps",
    "resample",
    "searched_params",
    "suggest",
    "takes_ays",
    "takes_timesteps",
    "variant_choices",
]

CUTOFF = "guidance_cutoff"  # the trial parameter: the share of steps that run with guidance


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
    @property
    def guidance_cutoff(self) -> tuple[float, float] | None: ...
    @property
    def guidance_cutoff_step(self) -> float: ...
    @property
    def cache(self) -> tuple[str, ...]: ...
    @property
    def guidance_sigma_low(self) -> tuple[float, ...] | None: ...  # the interval's low ends searched
    @property
    def guidance_sigma_high(self) -> tuple[float, ...] | None: ...
    def cache_range(self, name: str) -> tuple[float, float, float]: ...


@dataclass(frozen=True)
class Settings:
    """One inference setting: sampler name (canonical), steps, guidance, the sampler's variant values, and
    the share of the steps that run with guidance (1: all; below, guidance stops after the first ones)."""

    scheduler: str
    steps: int
    guidance: float
    options: tuple[tuple[str, Any], ...] = ()
    cutoff: float = 1.0
    timesteps: tuple[int, ...] = ()  # ``sigmas = "fitted"``: the class's own schedule (see autotune.model.fit)
    cache: caches.Cache = ()  # a feature cache on the denoiser: (name, value), see autotune.space.caches
    interval: Interval = ()  # guidance only for sigma in (low, high] (see autotune.space.guidance); (): every sigma

    @classmethod
    def make(
        cls,
        scheduler: str,
        steps: int,
        guidance: float,
        options: Mapping[str, Any] | None = None,
        cutoff: float = 1.0,
        timesteps: Sequence[int] = (),
        cache: Sequence[Any] = (),
        interval: Sequence[float] = (),
    ) -> Settings:
        """A setting; variant values of "default" (the model's own config) are left out, a cutoff that
        cuts nothing (guidance 1 or below, or a cutoff that still guides every step) is none,
        ``timesteps`` are kept only for a fitted schedule (which takes no ``timestep_spacing``), a
        cache that caches nothing (threshold 0, interval 1) is none, and with DeepCache guidance runs on
        every step (its cached deep features are the guided batch's; a cutoff halves the batch). A guidance
        interval that spans every sigma is none, and so is one without guidance or with a cache on (a cache's
        state is kept per batch and per call: an interval changes both)."""
        chosen = sorted((k, v) for k, v in (options or {}).items() if v != "default")
        if dict(chosen).get("sigmas") == "fitted":  # its own timesteps: a spacing would place none of them
            chosen = [(k, v) for k, v in chosen if k != "timestep_spacing"]
        n = int(steps) * schedulers.get(scheduler).calls_per_step
        cut = round(float(cutoff), 6)
        if not guidance_on(guidance) or guided_steps(n, cut) >= n:  # guidance on every step: no cutoff at all
            cut = 1.0
        own = tuple(int(t) for t in timesteps) if dict(chosen).get("sigmas") == "fitted" else ()
        kept = caches.normal(cache)
        if kept and caches.CACHES[kept[0]].unet:  # DeepCache keeps the guided batch's features: no halving it
            cut = 1.0
        band = normal_interval(interval) if guidance_on(guidance) and not kept else ()
        return cls(scheduler, int(steps), float(guidance), tuple(chosen), cut, own, kept, band)

    @classmethod
    def of(cls, setting: Setting) -> Settings:
        return cls.make(setting.scheduler, setting.steps, setting.guidance, setting.options)

    @classmethod
    def from_params(cls, params: Mapping[str, Any], timesteps: Sequence[int] = ()) -> Settings:
        """Inverse of :meth:`params` (a fitted schedule's list lives beside the parameters: ``timesteps``)."""
        name = params["scheduler"]
        prefix = f"{name}."
        options = {k.removeprefix(prefix): v for k, v in params.items() if k.startswith(prefix)}
        cut = float(params.get(CUTOFF, 1.0))
        kind = params.get(caches.CACHE, caches.OFF)
        cache = () if kind == caches.OFF else (kind, params[caches.param_name(kind)])
        band = interval_of(params)
        return cls.make(name, params["steps"], params["guidance"], options, cut, timesteps, cache, band)

    @classmethod
    def of_trial(cls, t: Any) -> Settings:
        """A trial's setting, with the fitted schedule it rendered (its ``timesteps`` attribute), if any."""
        return cls.from_params(t.params, trial_record(t).timesteps or ())

    def params(self, searched: Mapping[str, Any] = MappingProxyType({})) -> dict[str, Any]:
        """The trial parameters that produce this setting (for ``study.enqueue_trial``).

        ``searched`` (:func:`searched_params`) names what the study searches besides scheduler, steps and
        guidance: the variants this setting leaves at the model's config are pinned to "default", and
        the guidance cutoff to 1 where it has none, the cache to "off".
        """
        variants = {k: "default" for k in searched if k not in (CUTOFF, caches.CACHE, *INTERVAL)} | dict(self.options)
        out = {
            "scheduler": self.scheduler,
            "steps": self.steps,
            "guidance": self.guidance,
            **{f"{self.scheduler}.{k}": v for k, v in variants.items()},
        }
        if self.cutoff < 1 or CUTOFF in searched:
            out[CUTOFF] = self.cutoff
        if self.cache or caches.CACHE in searched:
            out[caches.CACHE] = self.cache[0] if self.cache else caches.OFF
        if self.cache:
            out[caches.param_name(self.cache[0])] = self.cache[1]
        for name, value, every in zip(INTERVAL, self.interval or UNBOUNDED, UNBOUNDED, strict=True):
            if value != every or name in searched:
                out[name] = value
        return out

    @property
    def ays(self) -> bool:
        return dict(self.options).get("sigmas") == "ays"

    @property
    def fitted(self) -> bool:
        """The class's own schedule (``sigmas = "fitted"``), fitted by the study against its reference."""
        return dict(self.options).get("sigmas") == "fitted"

    def scheduler_overrides(self) -> dict[str, Any]:
        """The diffusers config overrides of this setting (Align-Your-Steps keeps the default sigmas
        and passes its timesteps in the call)."""
        return schedulers.overrides(self.scheduler, dict(self.options))

    def call_kwargs(self, family: Family) -> dict[str, Any]:
        """The pipeline call arguments as plain data: steps, guidance under the family's name, AYS timesteps
        (the guidance cutoff's callback is :func:`cutoff_kwargs`; :meth:`pipeline_kwargs` has both)."""
        kwargs: dict[str, Any] = {"num_inference_steps": self.steps, family.guidance_param: self.guidance}
        if self.ays:
            kwargs["timesteps"] = ays_timesteps(family, self.steps)
        if self.fitted:
            if len(self.timesteps) != self.steps:
                raise ValueError(f"{self.label()}: no fitted schedule of {self.steps} timesteps to render with")
            kwargs["timesteps"] = list(self.timesteps)
        return kwargs

    def warm_up(self) -> Settings:
        """The untimed 2-step call that warms a call's shape up: same sampler, variants and guidance (a
        fitted schedule's list has its own length: the warm-up keeps the sampler's default sigmas)."""
        options = tuple(o for o in self.options if o != ("sigmas", "fitted"))
        return Settings(self.scheduler, 2, self.guidance, options, cache=self.cache)

    def pipeline_kwargs(self, family: Family) -> dict[str, Any]:
        """Every call argument this setting sets, the guidance cutoff's callback included."""
        return self.call_kwargs(family) | cutoff_kwargs(self.cutoff, family)

    def key(self, base: Mapping[str, Any] = MappingProxyType({})) -> str:
        """What makes two settings render the same images: class, resolved config, steps, guidance.

        ``base`` is the model's own scheduler config: an override equal to its value (``timestep_spacing
        = "leading"`` on a leading model) is the model's default, the same setting as ``"default"``.
        """
        spec = schedulers.get(self.scheduler)
        conf = sorted((k, v) for k, v in self.scheduler_overrides().items() if k not in base or base[k] != v)
        key: tuple[Any, ...] = (
            spec.class_name,
            conf,
            "fitted" if self.fitted else self.ays,
            self.steps,
            round(self.guidance, 6),
        )
        key = key if self.cutoff >= 1 else (*key, self.cutoff)
        key = key if not self.cache else (*key, self.cache)
        return repr(key if not self.interval else (*key, ("interval", *self.interval)))

    def scheduler_label(self) -> str:
        """The scheduler and its variant values: ``DPM++ 2M [sigmas=exponential]`` (a fitted schedule with its
        timesteps once fitted: ``DPM++ 2M [sigmas=fitted: 801 593 337 209]``); with Karras sigmas, the
        table's Karras entry: ``DPM++ 2M Karras [timestep_spacing=trailing]``, as the baseline is named."""
        fitted = f": {' '.join(map(str, self.timesteps))}" if self.timesteps else ""
        spec, options = schedulers.get(self.scheduler), self.options
        if ("sigmas", "karras") in options and (twin := schedulers.karras_twin(self.scheduler)) is not None:
            spec, options = twin, tuple(o for o in options if o[0] != "sigmas")  # one name for one sampler
        opts = ", ".join(f"{k}={v}{fitted if k == 'sigmas' else ''}" for k, v in options)
        return spec.label + (f" [{opts}]" if opts else "")

    def label(self) -> str:
        """A short human name: ``DPM++ 2M [sigmas=exponential], 12 steps, CFG 6.5`` (``, CFG 6.5 on 7 of 12
        steps`` where guidance stops part-way)."""
        text = f"{self.scheduler_label()}, {self.steps} steps, CFG {self.guidance:g}"
        if self.cutoff < 1:
            n = self.calls
            text += f" on {guided_steps(n, self.cutoff)} of {n} steps (cutoff {self.cutoff:g})"
        text += f" {interval_label(self.interval)}" if self.interval else ""
        return text + (f", {caches.label(self.cache)}" if self.cache else "")

    @property
    def calls(self) -> int:
        """Denoiser calls per image (steps x the sampler's calls per step), guidance or not (a cache's saving
        is known once rendered: :attr:`autotune.model.render.Render.model_calls`)."""
        return self.steps * schedulers.get(self.scheduler).calls_per_step

    def guided_share(self, family: Family | None = None) -> float:
        """The share of the model evaluations that run with guidance (0 without guidance), as the render
        counts them; for a setting not rendered yet, from its steps (and ``family``: see :func:`guidance_on`); a
        guidance interval's share is known once rendered (which calls fall inside depends on the schedule):
        until then, every call's."""
        if not guidance_on(self.guidance, family):
            return 0.0
        return guided_steps(self.calls, self.cutoff) / self.calls


@functools.cache
def _takes_timesteps(class_name: str) -> bool:
    import diffusers

    return "timesteps" in inspect.signature(getattr(diffusers, class_name).set_timesteps).parameters


def takes_timesteps(scheduler: str) -> bool:
    """A sampler that renders a custom list of timesteps (``pipe(timesteps=...)``) and whose entry fixes no
    sigma schedule (diffusers refuses timesteps with Karras, exponential or beta sigmas)."""
    from autotune.space import variants

    spec = schedulers.get(scheduler)
    return variants.entry_sigmas(spec.kwargs) is None and _takes_timesteps(spec.class_name)


def takes_ays(scheduler: str, family: Family | None) -> bool:
    """Align-Your-Steps applies: the family has published timesteps and the sampler takes custom ones."""
    return family is not None and family.ays is not None and _takes_timesteps(schedulers.get(scheduler).class_name)


def ays_timesteps(family: Family, steps: int) -> list[int]:
    """Align-Your-Steps timesteps (Sabour et al. 2024) for the family, log-linearly resampled to ``steps``."""
    from diffusers.schedulers import AysSchedules

    return resample(list(AysSchedules[f"{family.ays}Timesteps"]), steps)  # type: ignore[call-overload]


def resample(timesteps: Sequence[float], steps: int) -> list[int]:
    """A list of timesteps log-linearly resampled to ``steps`` of them (strictly decreasing integers)."""
    import numpy as np

    base = np.array(timesteps, dtype=float)
    if steps == len(base):
        return [int(t) for t in base]
    xs = np.linspace(0, 1, len(base))
    out = np.exp(np.interp(np.linspace(0, 1, steps), xs, np.log(base + 1))) - 1
    ts = np.round(out).astype(int)
    for i in range(1, len(ts)):  # strictly decreasing
        ts[i] = min(ts[i], ts[i - 1] - 1)
    return [int(t) for t in np.maximum(ts, 0)]


def variant_choices(
    scheduler: str, wanted: tuple[str, ...] | str, family: Family | None, fitted: bool = False
) -> dict[str, tuple[Any, ...]]:
    """The variant parameters searched for ``scheduler`` and their values ("ays" where it applies; with
    ``fitted``, "fitted", the class's own schedule, where the sampler takes custom timesteps)."""
    out = {}
    for v in schedulers.variants_of(scheduler):
        if wanted != "all" and v.name not in wanted:
            continue
        out[v.name] = v.choices
        if v.name == "sigmas":
            fits = fitted and takes_timesteps(scheduler) and schedulers.get(scheduler).deterministic
            own = ("fitted",) if fits else ()
            out[v.name] = (*v.choices, *(("ays",) if takes_ays(scheduler, family) else ()), *own)
    return out


def _fits(space: SearchSpace) -> bool:
    return bool(getattr(space, "fitted_schedules", False))


def searched_params(scheduler: str, space: SearchSpace, family: Family | None) -> dict[str, Any]:
    """What the study searches for ``scheduler`` besides its name, steps and guidance: its variants
    (:func:`variant_choices`) and, where ``space`` has a range for them, the guidance cutoff, the guidance
    interval's ends and the caches."""
    out: dict[str, Any] = dict(variant_choices(scheduler, space.variants, family, _fits(space)))
    if getattr(space, "guidance_cutoff", None):
        out[CUTOFF] = space.guidance_cutoff
    if getattr(space, "cache", ()):
        out[caches.CACHE] = (caches.OFF, *space.cache)
    return out | interval_choices(space)


def suggest(trial: Any, space: SearchSpace, family: Family | None = None) -> Settings:
    """Ask an Optuna trial for a setting inside ``space`` (variants only where the sampler takes them)."""
    name = trial.suggest_categorical("scheduler", list(space.schedulers))
    options = {
        k: trial.suggest_categorical(f"{name}.{k}", list(choices))
        for k, choices in variant_choices(name, space.variants, family, _fits(space)).items()
    }
    cut = getattr(space, "guidance_cutoff", None)
    steps = trial.suggest_int("steps", *space.steps, step=space.steps_step)
    guidance = trial.suggest_float("guidance", *space.guidance, step=space.guidance_step)
    cutoff = trial.suggest_float(CUTOFF, *cut, step=space.guidance_cutoff_step) if cut else 1.0
    cache: tuple[Any, ...] = ()
    if getattr(space, "cache", ()):
        kind = trial.suggest_categorical(caches.CACHE, [caches.OFF, *space.cache])
        if kind != caches.OFF:
            low, high, step = space.cache_range(kind)
            param = caches.param_name(kind)
            if caches.CACHES[kind].integer:
                cache = (kind, trial.suggest_int(param, int(low), int(high), step=int(step)))
            else:
                cache = (kind, trial.suggest_float(param, low, high, step=step))
    ends = {k: trial.suggest_categorical(k, list(choices)) for k, choices in interval_choices(space).items()}
    return Settings.make(name, steps, guidance, options, cutoff, (), cache, interval_of(ends))
