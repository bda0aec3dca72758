"""The scheduler name table and its conditional parameters ("variants").

Names are canonical snake case (``dpmpp_2m_karras``); AUTOMATIC1111's names ("DPM++ 2M
Karras", "Euler a") and diffusers class names ("EulerDiscreteScheduler") are accepted too.
A new sampler is one line in ``_TABLE``; a new conditional parameter one entry in ``VARIANTS``.
Which variants a sampler takes is read from its class's ``__init__``: a parameter is searched
only where the class has it and the entry does not fix it.

Example:
    >>> canonical("DPM++ 2M Karras")
    'dpmpp_2m_karras'
    >>> overrides("dpmpp_2m", {"sigmas": "karras", "timestep_spacing": "trailing"})["use_karras_sigmas"]
    True
    >>> sched = build("dpmpp_2m", pipe.scheduler.config, {"sigmas": "karras"})
"""

from __future__ import annotations

import difflib
import functools
import importlib.util
import inspect
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "VARIANTS",
    "SchedulerSpec",
    "Variant",
    "build",
    "canonical",
    "complete",
    "get",
    "names",
    "overrides",
    "unknown",
    "variants_of",
]


@dataclass(frozen=True)
class SchedulerSpec:
    """One sampler: its diffusers class, the config overrides that make it, and its cost."""

    name: str
    a1111: str
    class_name: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    deterministic: bool = True
    calls_per_step: int = 1
    flow: bool = False  # for flow-matching models (SD3, Flux) instead of noise-prediction ones
    requires: str | None = None  # an extra Python package the class needs

    @property
    def available(self) -> bool:
        return self.requires is None or importlib.util.find_spec(self.requires) is not None


_KARRAS = {"use_karras_sigmas": True}
_SDE = {"algorithm_type": "sde-dpmsolver++"}
_SDE3 = {**_SDE, "solver_order": 3}
_TABLE = [
    SchedulerSpec("euler", "Euler", "EulerDiscreteScheduler"),
    SchedulerSpec("euler_a", "Euler a", "EulerAncestralDiscreteScheduler", deterministic=False),
    SchedulerSpec("heun", "Heun", "HeunDiscreteScheduler", calls_per_step=2),
    SchedulerSpec("lms", "LMS", "LMSDiscreteScheduler"),
    SchedulerSpec("lms_karras", "LMS Karras", "LMSDiscreteScheduler", _KARRAS),
    SchedulerSpec("ddim", "DDIM", "DDIMScheduler"),
    SchedulerSpec("ddpm", "DDPM", "DDPMScheduler", deterministic=False),
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
    SchedulerSpec("dpmpp_2s", "DPM++ 2S", "DPMSolverSinglestepScheduler"),
    SchedulerSpec("dpmpp_2s_a", "DPM++ 2S a", "DPMSolverSinglestepScheduler", _SDE, deterministic=False),
    SchedulerSpec(
        "dpmpp_2s_a_karras",
        "DPM++ 2S a Karras",
        "DPMSolverSinglestepScheduler",
        {**_SDE, **_KARRAS},
        deterministic=False,
    ),
    SchedulerSpec("dpmpp_3m_sde", "DPM++ 3M SDE", "DPMSolverMultistepScheduler", _SDE3, deterministic=False),
    SchedulerSpec(
        "dpmpp_3m_sde_karras",
        "DPM++ 3M SDE Karras",
        "DPMSolverMultistepScheduler",
        {**_SDE3, **_KARRAS},
        deterministic=False,
    ),
    SchedulerSpec(
        "dpmpp_3m_sde_exponential",
        "DPM++ 3M SDE Exponential",
        "DPMSolverMultistepScheduler",
        {**_SDE3, "use_exponential_sigmas": True},
        deterministic=False,
    ),
    SchedulerSpec(
        "dpmpp_sde", "DPM++ SDE", "DPMSolverSDEScheduler", deterministic=False, calls_per_step=2, requires="torchsde"
    ),
    SchedulerSpec(
        "dpmpp_sde_karras",
        "DPM++ SDE Karras",
        "DPMSolverSDEScheduler",
        _KARRAS,
        deterministic=False,
        calls_per_step=2,
        requires="torchsde",
    ),
    SchedulerSpec("dpm2", "DPM2", "KDPM2DiscreteScheduler", calls_per_step=2),
    SchedulerSpec("dpm2_karras", "DPM2 Karras", "KDPM2DiscreteScheduler", _KARRAS, calls_per_step=2),
    SchedulerSpec("dpm2_a", "DPM2 a", "KDPM2AncestralDiscreteScheduler", deterministic=False, calls_per_step=2),
    SchedulerSpec(
        "dpm2_a_karras",
        "DPM2 a Karras",
        "KDPM2AncestralDiscreteScheduler",
        _KARRAS,
        deterministic=False,
        calls_per_step=2,
    ),
    SchedulerSpec("unipc", "UniPC", "UniPCMultistepScheduler"),
    SchedulerSpec("deis", "DEIS", "DEISMultistepScheduler"),
    SchedulerSpec("lcm", "LCM", "LCMScheduler", deterministic=False),
    SchedulerSpec("tcd", "TCD", "TCDScheduler", deterministic=False),
    SchedulerSpec("flow_euler", "Euler (flow)", "FlowMatchEulerDiscreteScheduler", flow=True),
    SchedulerSpec("flow_heun", "Heun (flow)", "FlowMatchHeunDiscreteScheduler", calls_per_step=2, flow=True),
]
_BY_NAME = {s.name: s for s in _TABLE}
_ALIASES = {s.class_name.lower(): s.name for s in reversed(_TABLE)}  # class name -> its plain entry
_ALIASES["plms"] = "pndm"  # A1111's PLMS is diffusers' PNDM without its Runge-Kutta warm-up steps
# A1111 samplers diffusers has no scheduler for: named in the error instead of "unknown"
NO_EQUIVALENT = ("DPM fast", "DPM adaptive", "Restart", "DDIM CFG++", "Euler CFG++", "UniPC BH2")


@dataclass(frozen=True)
class Variant:
    """A conditional scheduler parameter: the ``__init__`` argument it needs, its values, its overrides."""

    name: str
    needs: str
    choices: tuple[Any, ...]
    to_kwargs: Callable[[Any], dict[str, Any]]
    classes: tuple[str, ...] = ()  # only these classes (empty: every class that has ``needs``)


def _sigmas(value: str) -> dict[str, Any]:
    return {f"use_{k}_sigmas": value == k for k in ("karras", "exponential", "beta")}


def _algorithm(value: str) -> dict[str, Any]:
    # diffusers refuses final_sigmas_type="zero" (its default) with the first-order "dpmsolver" form
    return {"algorithm_type": value, **({"final_sigmas_type": "sigma_min"} if value == "dpmsolver" else {})}


def _set(key: str) -> Callable[[Any], dict[str, Any]]:
    return lambda value: {key: value}


# Every variant's first choice is "default": keep what the model's own scheduler config says.
VARIANTS = {
    v.name: v
    for v in (
        Variant("sigmas", "use_karras_sigmas", ("default", "karras", "exponential", "beta"), _sigmas),
        Variant(
            "timestep_spacing",
            "timestep_spacing",
            ("default", "leading", "linspace", "trailing"),
            _set("timestep_spacing"),
        ),
        Variant(
            "algorithm_type",
            "algorithm_type",
            ("default", "dpmsolver++", "dpmsolver"),
            _algorithm,
            classes=("DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler"),
        ),
        Variant("solver_order", "solver_order", ("default", 1, 2, 3), _set("solver_order")),
        Variant("final_sigmas_type", "final_sigmas_type", ("default", "zero", "sigma_min"), _set("final_sigmas_type")),
        Variant("lower_order_final", "lower_order_final", ("default", True, False), _set("lower_order_final")),
        Variant("euler_at_final", "euler_at_final", ("default", False, True), _set("euler_at_final")),
        Variant("shift", "shift", ("default", 1.0, 3.0, 6.0), lambda v: {"shift": v, "use_dynamic_shifting": False}),
    )
}


def _normalise(name: str) -> str:
    return re.sub(r"[\s\-]+", "_", name.strip().lower().replace("++", "pp").replace("(", "").replace(")", ""))


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


def unknown(name: str) -> str:
    """Why ``name`` is refused, for an error message: no diffusers equivalent, a near miss, or the list.

    >>> unknown("DPM++ 2M Karas")
    "unknown scheduler 'DPM++ 2M Karas' (did you mean 'DPM++ 2M Karras'?)"
    """
    key = _normalise(name)
    if key in {_normalise(n) for n in NO_EQUIVALENT}:
        return f"{name!r} is an AUTOMATIC1111 sampler diffusers has no scheduler for"
    a1111_style = name != name.lower() or " " in name.strip() or "+" in name  # answer in the user's spelling
    spellings = {_normalise(s.a1111): s.a1111 if a1111_style else s.name for s in reversed(_TABLE)}
    near = difflib.get_close_matches(key, list(spellings), n=1, cutoff=0.75)
    if near:
        return f"unknown scheduler {name!r} (did you mean {spellings[near[0]]!r}?)"
    return f"unknown scheduler {name!r} (expected one of: {', '.join(names())})"


def get(name: str) -> SchedulerSpec:
    """The table entry for any accepted spelling of a name."""
    return _BY_NAME[canonical(name)]


def aliases(name: str) -> list[str]:
    """Other accepted spellings: the AUTOMATIC1111 name and, for a plain entry, the class name."""
    spec = get(name)
    out = [spec.a1111]
    if _ALIASES.get(spec.class_name.lower()) == spec.name:
        out.append(spec.class_name)
    return out


@functools.cache
def _init_params(class_name: str) -> frozenset[str]:
    import diffusers

    return frozenset(inspect.signature(getattr(diffusers, class_name).__init__).parameters)


def variants_of(name: str) -> list[Variant]:
    """The conditional parameters this sampler takes: its class has them and its entry leaves them free."""
    spec = get(name)
    params = _init_params(spec.class_name)
    out = []
    for v in VARIANTS.values():
        if v.needs not in params or (v.classes and spec.class_name not in v.classes):
            continue
        if set(v.to_kwargs(v.choices[1])) & set(spec.kwargs):
            continue  # fixed by the entry: dpmpp_2m_karras does not search its sigmas
        out.append(v)
    return out


def overrides(name: str, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The entry's config overrides plus those of the chosen variant values."""
    out = dict(get(name).kwargs)
    for key, value in (options or {}).items():
        if value != "default":
            out.update(VARIANTS[key].to_kwargs(value))
    return out


def _touched() -> frozenset[str]:
    """Every config key an entry or a variant value can set."""
    keys = {k for spec in _TABLE for k in spec.kwargs}
    keys |= {k for v in VARIANTS.values() for c in v.choices[1:] for k in v.to_kwargs(c)}
    return frozenset(keys)


def complete(name: str, base_config: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The config a recommendation hands over: every key autotune can set that the class takes, with
    the value it has in this setting (the model's own where the setting keeps its default).

    ``Cls.from_config(<any earlier scheduler's config>, **complete(...))`` then builds the same
    scheduler whatever was applied before: no flag of an earlier setting (exponential sigmas, a
    spacing) is kept, and mutually exclusive ones are spelled out.
    """
    import diffusers

    cls = getattr(diffusers, get(name).class_name)
    built = cls.from_config(base_config, **overrides)
    return {k: built.config[k] for k in sorted(_touched() & _init_params(cls.__name__))}


def build(name: str, base_config: Any, options: Mapping[str, Any] | None = None) -> Any:
    """A new scheduler: the entry's class from the pipeline's own config plus the overrides.

    Always pass the config the pipeline was loaded with, not the current scheduler's: the
    overrides of an earlier trial (Karras sigmas, say) must not leak into the next one.
    """
    import diffusers

    cls = getattr(diffusers, get(name).class_name)
    return cls.from_config(base_config, **overrides(name, options))
