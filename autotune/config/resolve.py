"""The one place a study file meets its model family: defaults filled, the space checked against
what the model can use, and the rule for which reference an image is compared with.

A :class:`ResolvedStudy` comes from the model itself (:func:`autotune.model.pipeline.resolve_config`,
reading ``model_index.json``) or, reading a study back without the model, from the family the
study stored.

Example:
    >>> cfg = resolve(load_config("studies/demo.toml"), FAMILIES["sd"], compatible)
    >>> cfg.baseline.steps, reference_setting(cfg).steps
    (30, 100)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from autotune.config.load import check_space
from autotune.config.study_file import SearchConfig, SettingConfig, StudyConfig
from autotune.config.tables import ConfigError
from autotune.space import schedulers
from autotune.space.caches import CACHES
from autotune.space.families import Family
from autotune.space.settings import Settings, takes_ays

__all__ = ["ResolvedSearch", "ResolvedSetting", "ResolvedStudy", "reference_setting", "resolve"]


@dataclass(frozen=True, kw_only=True)
class ResolvedSearch(SearchConfig):
    """The search space with the model family's defaults filled in."""

    steps: tuple[int, int]
    schedulers: tuple[str, ...]
    guidance: tuple[float, float]


@dataclass(frozen=True, kw_only=True)
class ResolvedSetting(SettingConfig):
    """A baseline or reference setting with every field set.

    A reference whose file says ``guidance = "trial"`` has ``follows_trial`` set and the
    baseline's guidance as its own (what class-wide references, such as the seed-to-seed
    LPIPS and the convergence check, render at).
    """

    scheduler: str
    steps: int
    guidance: float
    follows_trial: bool = False


@dataclass(frozen=True, kw_only=True)
class ResolvedStudy(StudyConfig):
    """A study file resolved against its model family (see :func:`resolve`): nothing left unset."""

    search: ResolvedSearch
    baseline: ResolvedSetting
    reference: ResolvedSetting
    family: Family
    # the model as described when this was resolved (:func:`autotune.model.pipeline.describe_model`): loading
    # reuses it, so a command reads the model's index, or builds a ``model.pipeline`` function's pipeline, once
    described: Any = dataclasses.field(default=None, compare=False, repr=False)


def _fill(setting: SettingConfig, default: tuple[str, int, float], guidance: float | None = None) -> ResolvedSetting:
    """Unset fields from the family's default; ``guidance = "trial"`` takes ``guidance`` (the baseline's)."""
    scheduler, steps, g = default
    follows = setting.guidance == "trial"
    value = guidance if follows else setting.guidance
    return ResolvedSetting(
        scheduler=setting.scheduler or scheduler,
        steps=setting.steps if setting.steps is not None else steps,
        guidance=float(value) if isinstance(value, int | float) else g,
        options=setting.options,
        follows_trial=follows,
    )


def resolve(cfg: StudyConfig, family: Family, compatible: list[str]) -> ResolvedStudy:
    """Fill the family's defaults and check the space against what the model can use: the one place
    where a study file meets its model family (from the model itself, or from a stored study).

    Raises :class:`ConfigError` naming the study file, e.g. an incompatible scheduler with the
    list of those the model can use.
    """
    try:
        return _resolve(cfg, family, compatible)
    except ConfigError as e:
        raise ConfigError(f"{cfg.path}: {e}") from None


def _compatible(where: str, name: str, family: Family, compatible: list[str]) -> None:
    if name not in compatible:
        raise ConfigError(
            f"{where}: {name} cannot be used with this {family.name} model (it can use: {', '.join(compatible)})"
        )


def _resolve(cfg: StudyConfig, family: Family, compatible: list[str]) -> ResolvedStudy:
    s = cfg.search
    names = compatible if s.schedulers == "all" else list(s.schedulers or family.schedulers)
    if s.schedulers is None:  # the family's defaults, less those this model cannot use
        names = [n for n in names if n in compatible] or compatible[:1]
    for n in names:
        _compatible("search.schedulers", n, family, compatible)
    baseline = _fill(cfg.baseline, family.baseline)
    reference = _fill(cfg.reference, family.reference, baseline.guidance)
    for where, setting in (("baseline", baseline), ("reference", reference)):
        _compatible(f"{where}.scheduler", setting.scheduler, family, compatible)
        if setting.options.get("sigmas") == "ays" and not takes_ays(setting.scheduler, family):
            raise ConfigError(
                f"{where}.options.sigmas: 'ays' needs Align-Your-Steps timesteps, which this {family.name} model "
                f"has none of for {setting.scheduler} (they exist for sd and sdxl, with samplers that take "
                "custom timesteps); expected default, karras, exponential or beta"
            )
    if not schedulers.get(reference.scheduler).deterministic:
        raise ConfigError(
            f"reference.scheduler: expected a deterministic scheduler, got {reference.scheduler} "
            "(it draws fresh noise each step and never converges to one image)"
        )
    steps = s.steps or family.steps
    guidance = s.guidance or family.guidance
    check_space(s, steps, guidance, baseline.steps, baseline.guidance)
    if s.guidance_cutoff is not None and not family.cfg_inputs:
        why = (
            "its true CFG is a second call diffusers' Flux pipeline makes on every step, which no callback stops"
            if family.true_cfg
            else "it has no classifier-free guidance to stop"
        )
        raise ConfigError(
            f"search.guidance_cutoff: a {family.name} model cannot stop guidance part-way ({why}; the cutoff "
            "exists for sd, sdxl and sd3); remove the key"
        )
    if (s.guidance_sigma_low or s.guidance_sigma_high) and not family.cfg:
        key = "guidance_sigma_low" if s.guidance_sigma_low else "guidance_sigma_high"
        raise ConfigError(
            f"search.{key}: a {family.name} model has no classifier-free guidance to limit to an interval of noise "
            "levels (its guidance, if any, is embedded in its one call); remove the key"
        )
    for name in s.cache:
        if family.name not in CACHES[name].families:
            fits = [n for n, c in CACHES.items() if family.name in c.families]
            raise ConfigError(
                f"search.cache: {name} works on {', '.join(CACHES[name].families)} models, not {family.name}; "
                f"expected {' or '.join(fits) if fits else 'no cache (none works on this family yet)'}"
            )
    if s.fitted_schedules and family.flow:
        raise ConfigError(
            f"search.fitted_schedules: a {family.name} model's pipeline takes a sigma schedule, not the list of "
            "timesteps a fitted schedule is (fitted schedules exist for sd and sdxl); remove the key"
        )
    if baseline.scheduler not in names:  # the baseline is always a point of the space
        names.append(baseline.scheduler)
    fields = {f.name: getattr(s, f.name) for f in dataclasses.fields(s)}
    search = ResolvedSearch(**{**fields, "schedulers": tuple(names), "steps": steps, "guidance": guidance})
    kept = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
    return ResolvedStudy(**{**kept, "search": search, "baseline": baseline, "reference": reference, "family": family})


def reference_setting(cfg: ResolvedStudy, guidance: float | None = None) -> Settings:
    """The reference an image rendered at ``guidance`` is compared with: the one rule that the
    evaluator, the convergence check and the report all follow.

    ``[reference]`` as resolved, at its own guidance; when it follows the trial (``guidance =
    "trial"``), at ``guidance``. ``None`` asks for the class-wide reference (seed-to-seed LPIPS,
    convergence check), which a trial-following reference renders at the baseline's guidance.
    """
    ref = cfg.reference
    g = guidance if ref.follows_trial and guidance is not None else ref.guidance
    return Settings.make(ref.scheduler, ref.steps, g, ref.options)
