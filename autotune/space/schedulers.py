"""The scheduler table: one row per sampler with its diffusers class and flags, its cost, and its
AUTOMATIC1111 and ComfyUI names.

Names are canonical snake case (``dpmpp_2m_karras``); labels, AUTOMATIC1111's names ("DPM++ 2M
Karras", "Euler a") and diffusers class names ("EulerDiscreteScheduler") are accepted too.
A new sampler is one line in ``_TABLE``; a new conditional parameter one entry in
:data:`autotune.space.variants.VARIANTS`.
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
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from autotune.space import variants

__all__ = [
    "SchedulerSpec",
    "aliases",
    "build",
    "canonical",
    "complete",
    "get",
    "in_tool",
    "names",
    "overrides",
    "unknown",
    "variants_of",
]


@dataclass(frozen=True)
class SchedulerSpec:
    """One sampler: its diffusers class and the config overrides that make it, its cost, and its name
    in each tool (``a1111``: AUTOMATIC1111's sampler, ``comfyui``: the KSampler's ``sampler_name``; None
    where the tool has none; a sigma schedule the entry fixes is the tool's schedule type)."""

    name: str
    label: str
    class_name: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    a1111: str | None = None
    comfyui: str | None = None
    deterministic: bool = True
    calls_per_step: int = 1
    flow: bool = False  # for flow-matching models (SD3, Flux) instead of noise-prediction ones
    requires: str | None = None  # an extra Python package the class needs

    @property
    def available(self) -> bool:
        return self.requires is None or importlib.util.find_spec(self.requires) is not None


_KARRAS = {"use_karras_sigmas": True}
_FLOW = {"use_flow_sigmas": True, "prediction_type": "flow_prediction"}
_SDE = {"algorithm_type": "sde-dpmsolver++"}
_SDE3 = {**_SDE, "solver_order": 3}
_S = SchedulerSpec
_TABLE = [
    _S("euler", "Euler", "EulerDiscreteScheduler", {}, "Euler", "euler"),
    _S("euler_a", "Euler a", "EulerAncestralDiscreteScheduler", {}, "Euler a", "euler_ancestral", deterministic=False),
    _S("heun", "Heun", "HeunDiscreteScheduler", {}, "Heun", "heun", calls_per_step=2),
    _S("lms", "LMS", "LMSDiscreteScheduler", {}, "LMS", "lms"),
    _S("lms_karras", "LMS Karras", "LMSDiscreteScheduler", _KARRAS, "LMS", "lms"),
    _S("ddim", "DDIM", "DDIMScheduler", {}, "DDIM", "ddim"),
    _S("ddpm", "DDPM", "DDPMScheduler", {}, "DDPM", "ddpm", deterministic=False),
    _S("pndm", "PNDM", "PNDMScheduler", {"skip_prk_steps": True}, "PLMS", None),
    _S("dpmpp_2m", "DPM++ 2M", "DPMSolverMultistepScheduler", {}, "DPM++ 2M", "dpmpp_2m"),
    _S("dpmpp_2m_karras", "DPM++ 2M Karras", "DPMSolverMultistepScheduler", _KARRAS, "DPM++ 2M", "dpmpp_2m"),
    _S("dpmpp_2m_sde", "DPM++ 2M SDE", "DPMSolverMultistepScheduler", _SDE, "DPM++ 2M SDE", "dpmpp_2m_sde", False),
    _S(
        "dpmpp_2m_sde_karras",
        "DPM++ 2M SDE Karras",
        "DPMSolverMultistepScheduler",
        {**_SDE, **_KARRAS},
        "DPM++ 2M SDE",
        "dpmpp_2m_sde",
        False,
    ),
    _S("dpmpp_2s", "DPM++ 2S", "DPMSolverSinglestepScheduler"),
    _S("dpmpp_2s_a", "DPM++ 2S a", "DPMSolverSinglestepScheduler", _SDE, "DPM++ 2S a", "dpmpp_2s_ancestral", False),
    _S(
        "dpmpp_2s_a_karras",
        "DPM++ 2S a Karras",
        "DPMSolverSinglestepScheduler",
        {**_SDE, **_KARRAS},
        "DPM++ 2S a",
        "dpmpp_2s_ancestral",
        False,
    ),
    _S("dpmpp_3m_sde", "DPM++ 3M SDE", "DPMSolverMultistepScheduler", _SDE3, "DPM++ 3M SDE", "dpmpp_3m_sde", False),
    _S(
        "dpmpp_3m_sde_karras",
        "DPM++ 3M SDE Karras",
        "DPMSolverMultistepScheduler",
        {**_SDE3, **_KARRAS},
        "DPM++ 3M SDE",
        "dpmpp_3m_sde",
        False,
    ),
    _S(
        "dpmpp_3m_sde_exponential",
        "DPM++ 3M SDE Exponential",
        "DPMSolverMultistepScheduler",
        {**_SDE3, "use_exponential_sigmas": True},
        "DPM++ 3M SDE",
        "dpmpp_3m_sde",
        False,
    ),
    _S("dpmpp_sde", "DPM++ SDE", "DPMSolverSDEScheduler", {}, "DPM++ SDE", "dpmpp_sde", False, 2, requires="torchsde"),
    _S(
        "dpmpp_sde_karras",
        "DPM++ SDE Karras",
        "DPMSolverSDEScheduler",
        _KARRAS,
        "DPM++ SDE",
        "dpmpp_sde",
        False,
        2,
        requires="torchsde",
    ),
    _S("dpm2", "DPM2", "KDPM2DiscreteScheduler", {}, "DPM2", "dpm_2", calls_per_step=2),
    _S("dpm2_karras", "DPM2 Karras", "KDPM2DiscreteScheduler", _KARRAS, "DPM2", "dpm_2", calls_per_step=2),
    _S("dpm2_a", "DPM2 a", "KDPM2AncestralDiscreteScheduler", {}, "DPM2 a", "dpm_2_ancestral", False, 2),
    _S(
        "dpm2_a_karras",
        "DPM2 a Karras",
        "KDPM2AncestralDiscreteScheduler",
        _KARRAS,
        "DPM2 a",
        "dpm_2_ancestral",
        False,
        2,
    ),
    _S("unipc", "UniPC", "UniPCMultistepScheduler", {}, "UniPC", "uni_pc"),
    _S("deis", "DEIS", "DEISMultistepScheduler", {}, None, "deis"),
    _S("lcm", "LCM", "LCMScheduler", {}, "LCM", "lcm", deterministic=False),
    _S("tcd", "TCD", "TCDScheduler", deterministic=False),
    _S("flow_euler", "Euler (flow)", "FlowMatchEulerDiscreteScheduler", {}, None, "euler", flow=True),
    _S("flow_heun", "Heun (flow)", "FlowMatchHeunDiscreteScheduler", {}, None, "heun", calls_per_step=2, flow=True),
    # diffusers' multistep solvers on flow sigmas (their flow_shift is the model's shift: :func:`from_base`)
    _S("flow_dpmpp_2m", "DPM++ 2M (flow)", "DPMSolverMultistepScheduler", _FLOW, None, "dpmpp_2m", flow=True),
    _S("flow_unipc", "UniPC (flow)", "UniPCMultistepScheduler", _FLOW, None, "uni_pc", flow=True),
]
_BY_NAME = {s.name: s for s in _TABLE}
_ALIASES = {s.class_name.lower(): s.name for s in reversed(_TABLE)}  # class name -> its plain entry
_ALIASES["plms"] = "pndm"  # A1111's PLMS is diffusers' PNDM without its Runge-Kutta warm-up steps
# A1111 samplers diffusers has no scheduler for: named in the error instead of "unknown"
NO_EQUIVALENT = ("DPM fast", "DPM adaptive", "Restart", "DDIM CFG++", "Euler CFG++", "UniPC BH2")


def _normalise(name: str) -> str:
    return re.sub(r"[\s\-]+", "_", name.strip().lower().replace("++", "pp").replace("(", "").replace(")", ""))


def names() -> list[str]:
    """Canonical names, in table order."""
    return [s.name for s in _TABLE]


@functools.cache
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
    spellings = {_normalise(s.label): s.label if a1111_style else s.name for s in reversed(_TABLE)}
    near = difflib.get_close_matches(key, list(spellings), n=1, cutoff=0.75)
    if near:
        return f"unknown scheduler {name!r} (did you mean {spellings[near[0]]!r}?)"
    return f"unknown scheduler {name!r} (expected one of: {', '.join(names())})"


def get(name: str) -> SchedulerSpec:
    """The table entry for any accepted spelling of a name."""
    return _BY_NAME[canonical(name)]


def karras_twin(name: str) -> SchedulerSpec | None:
    """The table's entry that is ``name`` with Karras sigmas (``dpmpp_2m`` -> ``dpmpp_2m_karras``), if any:
    a setting of ``name`` with ``sigmas = "karras"`` is that entry, and is named as it."""
    spec, twin = get(name), _BY_NAME.get(f"{name}_karras")
    if twin is None or twin.class_name != spec.class_name or twin.kwargs != {**spec.kwargs, **_KARRAS}:
        return None
    return twin


def aliases(name: str) -> list[str]:
    """Other accepted spellings: the label (A1111's older sampler names) and, for a plain entry, the class name."""
    spec = get(name)
    out = [spec.label]
    if _ALIASES.get(spec.class_name.lower()) == spec.name:
        out.append(spec.class_name)
    return out


@functools.cache
def _init_params(class_name: str) -> frozenset[str]:
    import diffusers

    return frozenset(inspect.signature(getattr(diffusers, class_name).__init__).parameters)


def variants_of(name: str) -> list[variants.Variant]:
    """The conditional parameters this sampler takes: its class has them and its entry leaves them free."""
    spec = get(name)
    params = _init_params(spec.class_name)
    if spec.kwargs.get("use_flow_sigmas"):
        return []  # their sigmas are the flow schedule; no other sigmas or spacing combines with it
    out = []
    for v in variants.VARIANTS.values():
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
            out.update(variants.VARIANTS[key].to_kwargs(value))
    return out


def from_base(name: str, base_config: Mapping[str, Any]) -> dict[str, Any]:
    """What an entry takes from the model's own scheduler config under another key: a multistep solver on
    flow sigmas shifts them by ``flow_shift``, the FlowMatch schedulers' ``shift``."""
    if get(name).kwargs.get("use_flow_sigmas") and "shift" in base_config:
        return {"flow_shift": base_config["shift"]}
    return {}


_DYNAMIC_SHIFT = ("base_shift", "max_shift", "base_image_seq_len", "max_image_seq_len")  # the shift at each size


def _touched() -> frozenset[str]:
    """Every config key an entry or a variant value can set, or take from the model's (:func:`from_base`), and
    a dynamic shift's line (handed over whole: ComfyUI's export sets it in a node)."""
    keys = {k for spec in _TABLE for k in spec.kwargs} | {"flow_shift", *_DYNAMIC_SHIFT}
    keys |= {k for v in variants.VARIANTS.values() for c in v.choices[1:] for k in v.to_kwargs(c)}
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
    built = cls.from_config(base_config, **{**from_base(name, base_config), **overrides})
    return {k: built.config[k] for k in sorted(_touched() & _init_params(cls.__name__))}


def build(name: str, base_config: Any, options: Mapping[str, Any] | None = None) -> Any:
    """A new scheduler: the entry's class from the pipeline's own config plus the overrides.

    Always pass the config the pipeline was loaded with, not the current scheduler's: the
    overrides of an earlier trial (Karras sigmas, say) must not leak into the next one.
    """
    import diffusers

    cls = getattr(diffusers, get(name).class_name)
    return cls.from_config(base_config, **{**from_base(name, base_config), **overrides(name, options)})


def signature(
    name: str, base_config: Any, options: Mapping[str, Any] | None = None, probes: tuple[int, ...] = (5, 12)
) -> str:
    """What a sampler steps through: its class, its config but the keys that only shape the schedule,
    and its timesteps and sigmas at a few step counts. Equal for settings that render the same images
    under different names: Karras sigmas make the timestep spacing moot, for one."""
    shaping = {k for n in ("sigmas", "timestep_spacing") for c in variants.VARIANTS[n].choices[1:]
               for k in variants.VARIANTS[n].to_kwargs(c)}  # fmt: skip
    built = build(name, base_config, options)
    out: list[Any] = [
        type(built).__name__,
        sorted((k, repr(v)) for k, v in built.config.items() if k not in shaping and not k.startswith("_")),
    ]
    for steps in probes:
        built.set_timesteps(steps)
        for values in (built.timesteps, getattr(built, "sigmas", None)):
            out.append(None if values is None else [round(float(v), 4) for v in values])
    return repr(out)


def in_tool(name: str, options: Mapping[str, Any], tool: str) -> tuple[str | None, str | None, list[str]]:
    """A setting's sampler and schedule in ``tool`` ("a1111" or "comfyui"), and what it cannot express.

    The one translation both ``recommendations.json`` and ``autotune export`` use.
    """
    from autotune.space.tools import TOOLS

    spec, row = get(name), TOOLS[tool]
    chosen = {k: v for k, v in options.items() if v != "default"}
    if (fixed := variants.entry_sigmas(spec.kwargs)) is not None:
        chosen["sigmas"] = fixed
    sampler = row.sampler(spec)
    missing = [] if sampler is not None else [f"the sampler {spec.name}"]
    schedule = row.schedule("sigmas", "default")
    for key, value in chosen.items():
        if key == "timestep_spacing" and "sigmas" in chosen:
            continue  # the sigmas decide the schedule; the spacing only sets where they are sampled
        mapped = row.schedule(key, value)
        if mapped is None:
            missing.append(f"{key}={value}")
        else:
            schedule = mapped
    if spec.class_name == "DDIMScheduler" and tool == "comfyui" and "timestep_spacing" not in chosen:
        schedule = "ddim_uniform"
    return sampler, schedule, missing
