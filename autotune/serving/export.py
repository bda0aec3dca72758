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

import importlib
import json
from pathlib import Path
from typing import Any

from autotune.config.prompts import RESERVED_CALL as SEARCHED_CALL
from autotune.results.recommendations_file import DEFAULT_CLASS, ClassRecommendation, Recommendations
from autotune.space import schedulers
from autotune.space.tools import TOOLS

__all__ = ["FORMATS", "a1111", "comfyui", "export", "in_tools", "inexpressible", "parity_of"]

FORMATS = ("diffusers", *TOOLS)


CARRIED = ("negative_prompt", "clip_skip")  # the fixed call arguments both tools' exports carry


def fixed_arguments(rec: ClassRecommendation) -> dict[str, Any]:
    """The call arguments the class's images were rendered with besides the setting (``[call]``, its
    negative prompt)."""
    return {k: v for k, v in rec.call_kwargs.items() if k not in SEARCHED_CALL}


def _missing(rec: ClassRecommendation, tool: str) -> tuple[str | None, str | None, list[str]]:
    sampler, schedule, missing = schedulers.in_tool(rec.scheduler, rec.options, tool)
    if rec.guidance_cutoff < 1:
        missing.append(f"guidance on the first {rec.guidance_cutoff:g} of the steps only ({TOOLS[tool].cutoff_note})")
    if schedulers.get(rec.scheduler).flow:  # no reference sampler to check a flow model's schedule against
        missing.append(f"a flow-matching model's shifted sigma schedule ({TOOLS[tool].flow_note}; not exported)")
    missing += [
        f"call argument {k}={v!r} (no {TOOLS[tool].title} setting carries it)"
        for k, v in fixed_arguments(rec).items()
        if k not in CARRIED
    ]
    return sampler, schedule, missing


def _carried(rec: ClassRecommendation, clip_skip_key: str, sign: int) -> dict[str, Any]:
    """The negative prompt and clip skip as a tool takes them: its clip skip counts the last layer as 1
    (``sign`` -1: as -1), diffusers' as 0."""
    fixed = fixed_arguments(rec)
    out = {"negative_prompt": fixed["negative_prompt"]} if "negative_prompt" in fixed else {}
    if "clip_skip" in fixed:
        out[clip_skip_key] = sign * (fixed["clip_skip"] + 1)
    return out


def in_tools(rec: ClassRecommendation) -> dict[str, tuple[str | None, str | None, list[str]]]:
    """The setting's sampler and schedule in each tool, and what the tool cannot express of it."""
    return {tool: _missing(rec, tool) for tool in TOOLS}


def inexpressible(tool: str) -> str:
    return f"{tool} cannot express it (no_equivalent)"


def parity_of(recs: Recommendations, tool: str) -> dict[str, dict[str, Any]]:
    """Each class's verdict in ``tool`` from ``autotune export --check`` (``parity.json`` beside
    ``recommendations.json``, see :mod:`autotune.parity`), ``not checked`` where there is none for the
    recommendation as it stands; none for the baseline (what each tool's render is judged against)."""
    path = Path(recs.path).parent / "parity.json" if recs.path else None
    data = json.loads(path.read_text()) if path is not None and path.exists() else {"classes": {}}
    out: dict[str, dict[str, Any]] = {}
    for c, rec in recs.items():
        row = data["classes"].get(c, {})
        entry = row.get(tool, {}) if row.get("setting") == rec.setting else {}
        if c == DEFAULT_CLASS:
            continue
        if "parity" in entry:
            keep = ("parity", "why", "change", "delta_to_diffusers")
            out[c] = {k: v for k, v in entry.items() if k in keep}
        elif in_tools(rec)[tool][2]:
            out[c] = {"parity": "not checked", "why": inexpressible(tool)}
        else:
            why = data.get("why") or "run `autotune export STUDY.toml --check` (needs pip install 'autotune[parity]')"
            out[c] = {"parity": "not checked", "why": why}
    return out


def a1111(rec: ClassRecommendation) -> dict[str, Any]:
    """AUTOMATIC1111's settings for ``rec`` and its infotext line; ``no_equivalent`` lists what it cannot set."""
    sampler, schedule, missing = _missing(rec, "a1111")
    out: dict[str, Any] = {"sampler": sampler, "schedule_type": schedule, "steps": rec.steps, "cfg_scale": rec.guidance}
    out |= _carried(rec, "clip_skip", 1)  # A1111's "Clip skip: 2" is diffusers' clip_skip=1 (the penultimate layer)
    if missing:
        out["no_equivalent"] = missing
    else:  # PNG Info's format: the prompt's lines, "Negative prompt: ...", then the parameters
        skip = f", Clip skip: {out['clip_skip']}" if "clip_skip" in out else ""
        negative = f"Negative prompt: {out['negative_prompt']}\n" if "negative_prompt" in out else ""
        out["infotext"] = (
            f"{negative}Steps: {rec.steps}, Sampler: {sampler}, Schedule type: {schedule}, "
            f"CFG scale: {rec.guidance:g}{skip}"
        )
    return out


def comfyui(rec: ClassRecommendation) -> dict[str, Any]:
    """The KSampler inputs for ``rec`` (``negative_prompt``: the text of the CLIPTextEncode on its negative
    input; ``stop_at_clip_layer``: a CLIPSetLastLayer before both); ``no_equivalent`` lists what ComfyUI cannot set."""
    sampler, schedule, missing = _missing(rec, "comfyui")
    out: dict[str, Any] = {"sampler_name": sampler, "scheduler": schedule, "steps": rec.steps, "cfg": rec.guidance}
    out |= _carried(rec, "stop_at_clip_layer", -1)  # CLIPSetLastLayer: -2 is diffusers' clip_skip=1
    if missing:
        out["no_equivalent"] = missing
    return out


_STOP_GUIDANCE = [
    "",
    "",
    "def stop_guidance(cutoff, inputs):",
    '    """callback_on_step_end: guidance off after step int(N * cutoff), as diffusers\' SDCFGCutoffCallback,',
    '    keeping the conditional half of each guidance input (so that a batch of prompts works too)."""',
    "",
    "    def callback(pipe, step, timestep, kwargs):",
    "        if step == int(pipe.num_timesteps * cutoff):",
    "            pipe._guidance_scale = 0.0",
    "            for name in inputs:",
    "                kwargs[name] = kwargs[name].chunk(2)[1]",
    "        return kwargs",
    "",
    "    return callback",
]


def _diffusers(recs: Recommendations) -> str:
    from autotune.space.families import FAMILIES

    cut = any(rec.guidance_cutoff < 1 for rec in recs.values())
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
            *([f"        'guidance_cutoff': {rec.guidance_cutoff!r},"] if cut else []),
            "    },",
        ]
    lines += ["}", *(_STOP_GUIDANCE if cut else [])]
    lines += [
        "",
        "",
        "def apply(pipe, name):",
        '    """Swap pipe.scheduler to the class\'s; returns the kwargs for pipe(prompt, **kwargs)."""',
        "    s = SETTINGS[name]",
        "    cls = getattr(diffusers, s['scheduler_class'])",
        "    pipe.scheduler = cls.from_config(pipe.scheduler.config, **s['scheduler_config'])",
    ]
    if cut:
        inputs = list(FAMILIES[next(iter(recs.values())).family].cfg_inputs)
        lines += [
            "    kwargs = dict(s['call_kwargs'])",
            "    if s['guidance_cutoff'] < 1:",
            f"        kwargs['callback_on_step_end'] = stop_guidance(s['guidance_cutoff'], {inputs!r})",
            f"        kwargs['callback_on_step_end_tensor_inputs'] = {inputs!r}",
            "    return kwargs",
        ]
    else:
        lines.append("    return dict(s['call_kwargs'])")
    return "\n".join(lines) + "\n"


def export(recs: Recommendations, fmt: str) -> str:
    """Every class's recommendation (and ``default``, the baseline) in ``fmt``, as text to save."""
    if fmt == "diffusers":
        return _diffusers(recs)
    module, _, name = TOOLS[fmt].exporter.partition(":")
    convert, checked = getattr(importlib.import_module(module), name), parity_of(recs, fmt)
    data = {name: {"setting": rec.setting, **convert(rec), **checked.get(name, {})} for name, rec in recs.items()}
    return json.dumps(data, indent=2) + "\n"
