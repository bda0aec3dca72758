"""Model families: how to detect one, its default search space and reference, how it encodes prompts,
and the one place where a study file is resolved against its family (:func:`resolve`).

The family is read from the model's ``model_index.json`` (pipeline class, scheduler class) before
any weights load, so a study file that names a scheduler the model cannot use is refused at once.

Example:
    >>> fam = FAMILIES["sdxl"]
    >>> fam.baseline
    ('dpmpp_2m_karras', 30, 7.0)
    >>> compatible_schedulers(fam, "EulerDiscreteScheduler")[:3]
    ['euler', 'euler_a', 'heun']
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

from autotune import schedulers
from autotune.config import ConfigError, SearchConfig, SettingConfig, StudyConfig

__all__ = [
    "FAMILIES",
    "Family",
    "ResolvedSearch",
    "ResolvedSetting",
    "ResolvedStudy",
    "ays_timesteps",
    "compatible_schedulers",
    "detect",
    "encode_prompt",
    "resolve",
]


@dataclass(frozen=True)
class Family:
    name: str
    flow: bool  # flow matching (SD3, Flux): FlowMatch schedulers, ``shift``
    steps: tuple[int, int]
    guidance: tuple[float, float]
    schedulers: tuple[str, ...]
    baseline: tuple[str, int, float]
    reference: tuple[str, int, float]
    ays: str | None = None  # key prefix in diffusers' AysSchedules, where the family has one
    guidance_param: str = "guidance_scale"  # the pipeline's name for it (Flux: embedded guidance)


_SD_SCHEDULERS = ("euler", "dpmpp_2m", "dpmpp_2m_karras", "unipc", "ddim")
FAMILIES = {
    f.name: f
    for f in (
        Family(
            "sd",
            False,
            (4, 40),
            (1.0, 9.0),
            _SD_SCHEDULERS,
            ("dpmpp_2m_karras", 30, 7.5),
            ("dpmpp_2m_karras", 100, 7.5),
            ays="StableDiffusion",
        ),
        Family(
            "sdxl",
            False,
            (4, 40),
            (1.0, 9.0),
            _SD_SCHEDULERS,
            ("dpmpp_2m_karras", 30, 7.0),
            ("dpmpp_2m_karras", 100, 7.0),
            ays="StableDiffusionXL",
        ),
        Family(
            "sd3",
            True,
            (4, 40),
            (1.0, 9.0),
            ("flow_euler", "flow_heun"),
            ("flow_euler", 28, 7.0),
            ("flow_euler", 100, 7.0),
        ),
        Family("flux", True, (4, 40), (1.0, 6.0), ("flow_euler",), ("flow_euler", 28, 3.5), ("flow_euler", 100, 3.5)),
        # distilled few-step models (SD/SDXL Turbo, LCM, Lightning, Hyper-SD): 1-8 steps, little or no guidance;
        # their "reference" is their own best few-step render, not a 100-step one
        Family(
            "distilled",
            False,
            (1, 8),
            (0.0, 1.0),
            ("euler", "euler_a", "lcm", "ddim"),
            ("euler", 4, 0.0),
            ("euler", 8, 0.0),
        ),
        Family(
            "distilled_flow", True, (1, 8), (0.0, 1.0), ("flow_euler",), ("flow_euler", 4, 0.0), ("flow_euler", 8, 0.0)
        ),
    )
}
_PIPELINES = {
    "StableDiffusionPipeline": "sd",
    "StableDiffusionXLPipeline": "sdxl",
    "StableDiffusion3Pipeline": "sd3",
    "FluxPipeline": "flux",
}
_DISTILLED = re.compile(r"turbo|lcm|lightning|hyper|schnell", re.IGNORECASE)


def detect(pipeline_class: str, scheduler_class: str, model_id: str = "", hint: str = "auto") -> Family:
    """The family of a model from its pipeline and scheduler class (or ``hint`` when not "auto")."""
    if hint != "auto":
        natural = _PIPELINES.get(pipeline_class)
        if natural is not None:
            fitting = (natural, "distilled_flow" if FAMILIES[natural].flow else "distilled")
            if hint not in fitting:
                raise ValueError(
                    f"family {hint!r} does not fit this model: its pipeline is {pipeline_class}, a {natural} model "
                    f"(expected auto, {' or '.join(fitting)})"
                )
        return FAMILIES[hint]
    if pipeline_class not in _PIPELINES:
        known = ", ".join(_PIPELINES)
        raise ValueError(f"pipeline {pipeline_class} is not supported (expected one of: {known})")
    base = FAMILIES[_PIPELINES[pipeline_class]]
    if scheduler_class in ("LCMScheduler", "TCDScheduler") or _DISTILLED.search(model_id):
        return FAMILIES["distilled_flow" if base.flow else "distilled"]
    return base


def compatible_schedulers(family: Family, scheduler_class: str) -> list[str]:
    """Table names this model can use: its scheduler's ``compatibles`` (or the flow samplers for flow models)."""
    import diffusers

    if family.flow:
        return [n for n in schedulers.names() if schedulers.get(n).flow and schedulers.get(n).available]
    compat = {c.__name__ for c in getattr(diffusers, scheduler_class)._get_compatibles()} | {scheduler_class}
    return [
        n
        for n in schedulers.names()
        if schedulers.get(n).class_name in compat and not schedulers.get(n).flow and schedulers.get(n).available
    ]


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


def encode_prompt(
    pipe: Any, prompt: str, device: str, negative: str | None = None, clip_skip: int | None = None
) -> dict[str, Any]:
    """One prompt's embeddings as the call kwargs the pipeline takes (negative: the empty prompt unless given)."""
    kind = _PIPELINES.get(type(pipe).__name__, "sd")
    if kind == "sd":
        pos, neg = pipe.encode_prompt(prompt, device, 1, True, negative_prompt=negative, clip_skip=clip_skip)
        return {"prompt_embeds": pos, "negative_prompt_embeds": neg}
    if kind == "flux":
        pos, pooled, _ = pipe.encode_prompt(prompt, None, device=device)
        return {"prompt_embeds": pos, "pooled_prompt_embeds": pooled}
    if kind == "sdxl":
        out = pipe.encode_prompt(
            prompt,
            device=device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=True,
            negative_prompt=negative,
            clip_skip=clip_skip,
        )
    else:  # sd3
        out = pipe.encode_prompt(
            prompt,
            None,
            None,
            device=device,
            do_classifier_free_guidance=True,
            negative_prompt=negative,
            clip_skip=clip_skip,
        )
    keys = ("prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds")
    return dict(zip(keys, out, strict=True))


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
    if not schedulers.get(reference.scheduler).deterministic:
        raise ConfigError(
            f"reference.scheduler: expected a deterministic scheduler, got {reference.scheduler} "
            "(it draws fresh noise each step and never converges to one image)"
        )
    steps = s.steps or family.steps
    guidance = s.guidance or family.guidance
    if (steps[1] - steps[0]) % s.steps_step:
        raise ConfigError(f"search.steps_step: expected a divisor of {steps[1]} - {steps[0]}, got {s.steps_step}")
    if not steps[0] <= baseline.steps <= steps[1] or (baseline.steps - steps[0]) % s.steps_step:
        raise ConfigError(
            f"baseline.steps: expected a value inside search.steps {list(steps)} in steps of {s.steps_step}, "
            f"got {baseline.steps}"
        )
    on_grid = (baseline.guidance - guidance[0]) / s.guidance_step
    if not guidance[0] <= baseline.guidance <= guidance[1] or abs(on_grid - round(on_grid)) > 1e-6:
        raise ConfigError(
            f"baseline.guidance: expected a value inside search.guidance {list(guidance)} in steps of "
            f"{s.guidance_step:g}, got {baseline.guidance:g}"
        )
    if baseline.scheduler not in names:  # the baseline is always a point of the space
        names.append(baseline.scheduler)
    fields = {f.name: getattr(s, f.name) for f in dataclasses.fields(s)}
    search = ResolvedSearch(**{**fields, "schedulers": tuple(names), "steps": steps, "guidance": guidance})
    kept = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
    return ResolvedStudy(**{**kept, "search": search, "baseline": baseline, "reference": reference, "family": family})
