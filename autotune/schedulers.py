"""The scheduler name table: one entry per sampler users know, mapped to diffusers.

Names are canonical snake case (``dpmpp_2m_karras``); AUTOMATIC1111's names ("DPM++ 2M
Karras", "Euler a") and diffusers class names ("EulerDiscreteScheduler") are accepted too.
A new sampler is one line in ``_TABLE``.

Example:
    >>> canonical("DPM++ 2M Karras")
    'dpmpp_2m_karras'
    >>> sched = build("dpmpp_2m_karras", pipe.scheduler.config)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

__all__ = ["SchedulerSpec", "build", "canonical", "get", "names"]


@dataclass(frozen=True)
class SchedulerSpec:
    """One sampler: its diffusers class, the config overrides that make it, and its cost."""

    name: str
    a1111: str
    class_name: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    deterministic: bool = True
    calls_per_step: int = 1


_KARRAS = {"use_karras_sigmas": True}
_SDE = {"algorithm_type": "sde-dpmsolver++"}
_TABLE = [
    SchedulerSpec("euler", "Euler", "EulerDiscreteScheduler"),
    SchedulerSpec("euler_a", "Euler a", "EulerAncestralDiscreteScheduler", deterministic=False),
    SchedulerSpec("heun", "Heun", "HeunDiscreteScheduler", calls_per_step=2),
    SchedulerSpec("lms", "LMS", "LMSDiscreteScheduler"),
    SchedulerSpec("lms_karras", "LMS Karras", "LMSDiscreteScheduler", _KARRAS),
    SchedulerSpec("ddim", "DDIM", "DDIMScheduler"),
    SchedulerSpec("pndm", "PNDM", "PNDMScheduler", {"skip_prk_steps": True}),
    SchedulerSpec("dpmpp_2m", "DPM++ 2M", "DPMSolverMultistepScheduler"),
    SchedulerSpec("dpmpp_2m_karras", "DPM++ 2M Karras", "DPMSolverMultistepScheduler", _KARRAS),
    SchedulerSpec("dpmpp_2m_sde", "DPM++ 2M SDE", "DPMSolverMultistepScheduler", _SDE, deterministic=False),
    SchedulerSpec(
        "dpmpp_2m_sde_karras",
        "DPM++ 2M SDE Karras",
        "DPMSolverMultistepScheduler",
        {**_SDE, **_KARRAS},
        deterministic=False,
    ),
    SchedulerSpec("unipc", "UniPC", "UniPCMultistepScheduler"),
    SchedulerSpec("deis", "DEIS", "DEISMultistepScheduler"),
    SchedulerSpec("dpm2", "DPM2", "KDPM2DiscreteScheduler", calls_per_step=2),
    SchedulerSpec("dpm2_a", "DPM2 a", "KDPM2AncestralDiscreteScheduler", deterministic=False, calls_per_step=2),
]
_BY_NAME = {s.name: s for s in _TABLE}
_ALIASES = {s.class_name.lower(): s.name for s in reversed(_TABLE)}  # class name -> its plain entry


def _normalise(name: str) -> str:
    return re.sub(r"[\s\-]+", "_", name.strip().lower().replace("++", "pp"))


def names() -> list[str]:
    """Canonical names, in table order."""
    return [s.name for s in _TABLE]


def canonical(name: str) -> str:
    """Canonical name for a canonical, AUTOMATIC1111 or diffusers class name; KeyError if unknown."""
    key = _normalise(name)
    if key in _BY_NAME:
        return key
    if key in _ALIASES:
        return _ALIASES[key]
    raise KeyError(name)


def get(name: str) -> SchedulerSpec:
    """The table entry for any accepted spelling of a name."""
    return _BY_NAME[canonical(name)]


def build(name: str, base_config: Any) -> Any:
    """A new scheduler: the entry's class from the pipeline's own config plus the entry's overrides.

    Always pass the config the pipeline was loaded with, not the current scheduler's: the
    overrides of an earlier trial (Karras sigmas, say) must not leak into the next one.
    """
    import diffusers

    spec = get(name)
    cls = getattr(diffusers, spec.class_name)
    return cls.from_config(base_config, **spec.kwargs)
