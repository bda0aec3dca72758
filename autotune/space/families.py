"""Model families: how to detect one from its pipeline and scheduler classes, its default search space,
baseline and reference, and which schedulers it can use. Imports nothing of the study file: the file
meets its family in :mod:`autotune.config.resolve`.

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

import functools
import inspect
import re
from dataclasses import dataclass

from autotune.space import schedulers

__all__ = ["FAMILIES", "PIPELINES", "Family", "compatible_schedulers", "detect", "guidance_embedded"]


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
    # the call's classifier-free-guidance inputs (unconditional half first), halved when guidance stops
    # part-way (diffusers' SD, SDXL and SD3 CFG cutoff callbacks); empty: no guidance to cut
    cfg_inputs: tuple[str, ...] = ()
    # its pipeline hands the scheduler a sigma schedule (Flux's): a sampler must take one, or be on flow sigmas
    sigmas: bool = False

    @property
    def cfg(self) -> bool:
        """Classifier-free guidance: each guided step evaluates the model twice, with the prompt and
        without, batched (``cfg_inputs``: SD, SDXL, SD3) or in two calls (``true_cfg_scale``: Flux
        trained without guidance distillation); Flux's embedded guidance costs nothing extra."""
        return bool(self.cfg_inputs) or self.true_cfg

    @property
    def true_cfg(self) -> bool:
        """Guided in a second call per step, which diffusers' Flux pipeline makes only when it is given a
        negative prompt: its calls carry one (the empty prompt unless the study sets its own)."""
        return self.guidance_param == "true_cfg_scale"


_SD_SCHEDULERS = ("euler", "dpmpp_2m", "dpmpp_2m_karras", "unipc", "ddim")
_FLUX_SCHEDULERS = ("flow_euler", "flow_dpmpp_2m", "flow_unipc")  # Heun (flow) takes no sigma schedule
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
            cfg_inputs=("prompt_embeds",),
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
            cfg_inputs=("prompt_embeds", "add_text_embeds", "add_time_ids"),
        ),
        Family(
            "sd3",
            True,
            (4, 40),
            (1.0, 9.0),
            ("flow_euler", "flow_heun", "flow_dpmpp_2m", "flow_unipc"),
            ("flow_euler", 28, 7.0),
            ("flow_euler", 100, 7.0),
            cfg_inputs=("prompt_embeds", "pooled_prompt_embeds"),
        ),
        Family(
            "flux",
            True,
            (4, 40),
            (1.0, 6.0),
            _FLUX_SCHEDULERS,
            ("flow_euler", 28, 3.5),
            ("flow_euler", 100, 3.5),
            sigmas=True,
        ),
        # Flux's layout without guidance distillation (its transformer has no guidance embedding): true CFG
        Family(
            "flux_cfg",
            True,
            (4, 40),
            (1.0, 8.0),
            _FLUX_SCHEDULERS,
            ("flow_euler", 28, 4.0),
            ("flow_euler", 100, 4.0),
            guidance_param="true_cfg_scale",
            sigmas=True,
        ),
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
PIPELINES = {
    "StableDiffusionPipeline": "sd",
    "StableDiffusionXLPipeline": "sdxl",
    "StableDiffusion3Pipeline": "sd3",
    "FluxPipeline": "flux",
}
_DISTILLED = re.compile(r"turbo|lcm|lightning|hyper|schnell", re.IGNORECASE)


def detect(
    pipeline_class: str, scheduler_class: str, model_id: str = "", hint: str = "auto", embedded: bool = True
) -> Family:
    """The family of a model from its pipeline and scheduler class (or ``hint`` when not "auto");
    ``embedded``: whether its transformer embeds guidance (``guidance_embeds``: Flux dev), else a Flux
    layout guides with true CFG."""
    if hint != "auto":
        natural = PIPELINES.get(pipeline_class)
        if natural is not None:
            fitting = (natural, *(("flux_cfg",) if natural == "flux" else ()))
            fitting += ("distilled_flow" if FAMILIES[natural].flow else "distilled",)
            if hint not in fitting:
                raise ValueError(
                    f"family {hint!r} does not fit this model: its pipeline is {pipeline_class}, a {natural} model "
                    f"(expected auto, {', '.join(fitting[:-1])} or {fitting[-1]})"
                )
        return FAMILIES[hint]
    if pipeline_class not in PIPELINES:
        known = ", ".join(PIPELINES)
        raise ValueError(f"pipeline {pipeline_class} is not supported (expected one of: {known})")
    base = FAMILIES[PIPELINES[pipeline_class]]
    if scheduler_class in ("LCMScheduler", "TCDScheduler") or _DISTILLED.search(model_id):
        return FAMILIES["distilled_flow" if base.flow else "distilled"]
    return FAMILIES["flux_cfg"] if base.name == "flux" and not embedded else base


def guidance_embedded(pipe: object) -> bool:
    """Whether a loaded pipeline's transformer embeds guidance (``guidance_embeds``: Flux dev); True for
    every pipeline without one, whose guidance is then whatever its family says."""
    config = getattr(getattr(pipe, "transformer", None), "config", None) or {}
    return bool(config.get("guidance_embeds", True))


@functools.cache
def _takes_sigmas(class_name: str) -> bool:
    import diffusers

    return "sigmas" in inspect.signature(getattr(diffusers, class_name).set_timesteps).parameters


def compatible_schedulers(family: Family, scheduler_class: str) -> list[str]:
    """Table names this model can use: its scheduler's ``compatibles`` (or the flow samplers for flow models)."""
    import diffusers

    if family.flow:
        return [
            n
            for n in schedulers.names()
            if schedulers.get(n).flow
            and schedulers.get(n).available
            and (
                not family.sigmas
                or _takes_sigmas(schedulers.get(n).class_name)
                or schedulers.get(n).kwargs.get("use_flow_sigmas")
            )
        ]
    compat = {c.__name__ for c in getattr(diffusers, scheduler_class)._get_compatibles()} | {scheduler_class}
    return [
        n
        for n in schedulers.names()
        if schedulers.get(n).class_name in compat and not schedulers.get(n).flow and schedulers.get(n).available
    ]
