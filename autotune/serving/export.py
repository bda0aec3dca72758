"""``autotune export``: a study's recommendations for the tools people serve with.

``diffusers``: Python that applies each class's scheduler (the complete config, so any class may
follow any other). ``a1111``: AUTOMATIC1111's sampler, schedule type, steps and CFG scale, as its
settings and as an infotext line. ``comfyui``: the KSampler's ``sampler_name``, ``scheduler``,
``steps`` and ``cfg``. Where the tool has no equivalent of a setting, the export says so instead
of naming something close: those images would not be the ones the study measured.

Example:
    >>> print(export(load_recommendations("studies/demo.toml"), "comfyui"))
    {"round": {"sampler_name": "euler", "scheduler": "exponential", "steps": 8, "cfg": 3.5}, ...}
"""

from __future__ import annotations

import json
from typing import Any

from autotune.serving import ClassRecommendation, Recommendations

__all__ = ["FORMATS", "a1111", "comfyui", "export"]

FORMATS = ("diffusers", "a1111", "comfyui")

# autotune's sampler -> (A1111 sampler, ComfyUI sampler_name); None: the tool has none
_SAMPLERS: dict[str, tuple[str | None, str | None]] = {
    "euler": ("Euler", "euler"),
    "euler_a": ("Euler a", "euler_ancestral"),
    "heun": ("Heun", "heun"),
    "lms": ("LMS", "lms"),
    "ddim": ("DDIM", "ddim"),
    "ddpm": ("DDPM", "ddpm"),
    "pndm": ("PLMS", None),
    "dpmpp_2m": ("DPM++ 2M", "dpmpp_2m"),
    "dpmpp_2m_sde": ("DPM++ 2M SDE", "dpmpp_2m_sde"),
    "dpmpp_2s": (None, None),
    "dpmpp_2s_a": ("DPM++ 2S a", "dpmpp_2s_ancestral"),
    "dpmpp_3m_sde": ("DPM++ 3M SDE", "dpmpp_3m_sde"),
    "dpmpp_sde": ("DPM++ SDE", "dpmpp_sde"),
    "dpm2": ("DPM2", "dpm_2"),
    "dpm2_a": ("DPM2 a", "dpm_2_ancestral"),
    "unipc": ("UniPC", "uni_pc"),
    "deis": (None, "deis"),
    "lcm": ("LCM", "lcm"),
    "tcd": (None, None),
    "flow_euler": (None, "euler"),
    "flow_heun": (None, "heun"),
}
# a table entry with its sigmas fixed -> its plain entry and the sigmas
_FIXED = {"_karras": "karras", "_exponential": "exponential"}
# sigmas / spacing -> (A1111 schedule type, ComfyUI scheduler)
_SCHEDULES = {
    ("sigmas", "default"): ("Automatic", "normal"),
    ("sigmas", "karras"): ("Karras", "karras"),
    ("sigmas", "exponential"): ("Exponential", "exponential"),
    ("sigmas", "beta"): ("Beta", "beta"),
    ("sigmas", "ays"): ("Align Your Steps", None),
    ("timestep_spacing", "trailing"): ("SGM Uniform", "sgm_uniform"),
    ("timestep_spacing", "linspace"): ("Uniform", "normal"),
    ("timestep_spacing", "leading"): (None, None),
}


def _parts(rec: ClassRecommendation) -> tuple[str, dict[str, Any]]:
    """The plain sampler and every option, the sigmas a table entry fixes included."""
    name, options = rec.scheduler, {k: v for k, v in rec.options.items() if v != "default"}
    for suffix, sigmas in _FIXED.items():
        if name.endswith(suffix):
            name, options = name.removesuffix(suffix), {**options, "sigmas": sigmas}
    return name, options


def _translate(rec: ClassRecommendation, tool: int) -> tuple[str | None, str | None, list[str]]:
    """(sampler, schedule, what has no equivalent) in A1111 (``tool`` 0) or ComfyUI (1)."""
    name, options = _parts(rec)
    missing = []
    sampler = _SAMPLERS.get(name, (None, None))[tool]
    if sampler is None:
        missing.append(f"the sampler {rec.scheduler}")
    schedule = _SCHEDULES[("sigmas", "default")][tool]
    for key, value in options.items():
        if key == "timestep_spacing" and "sigmas" in options:
            continue  # the sigmas decide the schedule; the spacing only sets where they are sampled
        mapped = _SCHEDULES.get((key, value), (None, None))[tool]
        if mapped is None:
            missing.append(f"{key}={value}")
        else:
            schedule = mapped
    if name == "ddim" and tool == 1 and "timestep_spacing" not in options:
        schedule = "ddim_uniform"
    return sampler, schedule, missing


def a1111(rec: ClassRecommendation) -> dict[str, Any]:
    """AUTOMATIC1111's settings for ``rec`` and its infotext line; ``no_equivalent`` lists what it cannot set."""
    sampler, schedule, missing = _translate(rec, 0)
    out: dict[str, Any] = {"sampler": sampler, "schedule_type": schedule, "steps": rec.steps, "cfg_scale": rec.guidance}
    if missing:
        out["no_equivalent"] = missing
    else:
        out["infotext"] = (
            f"Steps: {rec.steps}, Sampler: {sampler}, Schedule type: {schedule}, CFG scale: {rec.guidance:g}"
        )
    return out


def comfyui(rec: ClassRecommendation) -> dict[str, Any]:
    """The KSampler inputs for ``rec``; ``no_equivalent`` lists what ComfyUI cannot set."""
    sampler, schedule, missing = _translate(rec, 1)
    out: dict[str, Any] = {"sampler_name": sampler, "scheduler": schedule, "steps": rec.steps, "cfg": rec.guidance}
    if missing:
        out["no_equivalent"] = missing
    return out


def _diffusers(recs: Recommendations) -> str:
    lines = [
        f"# autotune recommendations for study {recs.study!r} (model {recs.model.get('id')!r}).",
        "# Any class may follow any other: each scheduler config is complete, nothing of the last one is kept.",
        "import diffusers",
        "",
        "SETTINGS = {",
    ]
    for name, rec in recs.items():
        lines += [
            f"    {name!r}: {{  # {rec.setting}",
            f"        'scheduler_class': {rec.scheduler_class!r},",
            f"        'scheduler_config': {rec.scheduler_config!r},",
            f"        'call_kwargs': {rec.call_kwargs!r},",
            "    },",
        ]
    lines += [
        "}",
        "",
        "",
        "def apply(pipe, name):",
        '    """Swap pipe.scheduler to the class\'s; returns the kwargs for pipe(prompt, **kwargs)."""',
        "    s = SETTINGS[name]",
        "    cls = getattr(diffusers, s['scheduler_class'])",
        "    pipe.scheduler = cls.from_config(pipe.scheduler.config, **s['scheduler_config'])",
        "    return dict(s['call_kwargs'])",
    ]
    return "\n".join(lines) + "\n"


def export(recs: Recommendations, fmt: str) -> str:
    """Every class's recommendation (and ``default``, the baseline) in ``fmt``, as text to save."""
    if fmt == "diffusers":
        return _diffusers(recs)
    convert = a1111 if fmt == "a1111" else comfyui
    data = {name: {"setting": rec.setting, **convert(rec)} for name, rec in recs.items()}
    return json.dumps(data, indent=2) + "\n"
