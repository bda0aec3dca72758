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

import re
from dataclasses import dataclass

from autotune.space import schedulers

__all__ = ["FAMILIES", "PIPELINES", "Family", "compatible_schedulers", "detect"]


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
            ("flow_euler", "flow_heun"),
            ("flow_euler", 28, 7.0),
            ("flow_euler", 100, 7.0),
            cfg_inputs=("prompt_embeds", "pooled_prompt_embeds"),
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
PIPELINES = {
    "StableDiffusionPipeline": "sd",
    "StableDiffusionXLPipeline": "sdxl",
    "StableDiffusion3Pipeline": "sd3",
    "FluxPipeline": "flux",
}
_DISTILLED = re.compile(r"turbo|lcm|lightning|hyper|schnell", re.IGNORECASE)


def detect(pipeline_class: str, scheduler_class: str, model_id: str = "", hint: str = "auto") -> Family:
    """The family of a model from its pipeline and scheduler class (or ``hint`` when not "auto")."""
    if hint != "auto":
        natural = PIPELINES.get(pipeline_class)
        if natural is not None:
            fitting = (natural, "distilled_flow" if FAMILIES[natural].flow else "distilled")
            if hint not in fitting:
                raise ValueError(
                    f"family {hint!r} does not fit this model: its pipeline is {pipeline_class}, a {natural} model "
                    f"(expected auto, {' or '.join(fitting)})"
                )
        return FAMILIES[hint]
    if pipeline_class not in PIPELINES:
        known = ", ".join(PIPELINES)
        raise ValueError(f"pipeline {pipeline_class} is not supported (expected one of: {known})")
    base = FAMILIES[PIPELINES[pipeline_class]]
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
