"""``autotune export``: a study's recommendations for the tools people serve with.

``diffusers``: Python that applies each class's scheduler (the complete config, so any class may
follow any other). ``a1111``: AUTOMATIC1111's sampler, schedule type, steps and CFG scale, as its
settings and as an infotext line. ``comfyui``: the KSampler's ``sampler_name``, ``scheduler``,
``steps`` and ``cfg`` (on Flux, with the ModelSamplingFlux node that shifts its sigmas, and FluxGuidance
where guidance is embedded). Where the tool has no equivalent of a setting, the export says so instead
of naming something close: those images would not be the ones the study measured.

Example:
    >>> print(export(load_recommendations("studies/demo.toml"), "comfyui"))
    {"round": {"sampler_name": "euler", "scheduler": "exponential", "steps": 8, "cfg": 3.5}, ...}
"""

from __future__ import annotations

import importlib
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from autotune.config.prompts import RESERVED_CALL as SEARCHED_CALL
from autotune.results.recommendations_file import DEFAULT_CLASS, ClassRecommendation, Recommendations
from autotune.space import caches, schedulers
from autotune.space.guidance import interval_json, interval_label
from autotune.space.tools import TOOLS

__all__ = ["FORMATS", "a1111", "comfyui", "export", "in_tools", "inexpressible", "model_sampling", "parity_of"]

FORMATS = ("diffusers", *TOOLS)


FLUX = ("flux", "flux_cfg")  # the families ComfyUI's Flux nodes serve
FLUX_TOKENS = (256, 4096)  # the image tokens ComfyUI's ModelSamplingFlux interpolates its shift between, as Flux's
UNET_ONLY = "the check covers SD 1.x/2.x pipelines (it wraps their UNet as k-diffusion wraps it)"
CARRIED = ("negative_prompt", "clip_skip")  # the fixed call arguments both tools' exports carry


def fixed_arguments(rec: ClassRecommendation) -> dict[str, Any]:
    """The call arguments the class's images were rendered with besides the setting (``[call]``, its
    negative prompt)."""
    return {k: v for k, v in rec.call_kwargs.items() if k not in SEARCHED_CALL}


def model_sampling(rec: ClassRecommendation, model: Mapping[str, Any]) -> dict[str, Any] | None:
    """ComfyUI's node that shifts a Flux model's sigmas as the study's renders were shifted: ModelSamplingFlux.
    Its shift at the image's size is ``base_shift`` + (``max_shift`` - ``base_shift``) x (tokens - 256) / (4096
    - 256), tokens width x height / 256 (Flux's 8x VAE and 2x2 patches), as diffusers' Flux pipeline computes
    ``mu``; a fixed shift s (dynamic shifting off) is both ends at ln(s). None: the setting is not Euler (flow)
    on Flux's own sigmas, or its dynamic shift spans other token counts than Flux's."""
    config = rec.scheduler_config
    if rec.family not in FLUX or rec.scheduler != "flow_euler" or set(rec.options) - {"shift"}:
        return None
    size = {"width": model.get("width"), "height": model.get("height")}
    if "shift" in rec.options or not config.get("use_dynamic_shifting"):
        mu = math.log(float(rec.options.get("shift", config.get("shift", 1.0))))
        if mu < 0:  # the node takes no shift below 1
            return None
        return {"node": "ModelSamplingFlux", "max_shift": mu, "base_shift": mu, **size}
    if (config.get("base_image_seq_len"), config.get("max_image_seq_len")) != FLUX_TOKENS:
        return None
    return {"node": "ModelSamplingFlux", "max_shift": config["max_shift"], "base_shift": config["base_shift"], **size}


def _missing(rec: ClassRecommendation, tool: str) -> tuple[str | None, str | None, list[str]]:
    sampler, schedule, missing = schedulers.in_tool(rec.scheduler, rec.options, tool)
    if rec.guidance_cutoff < 1:
        missing.append(f"guidance on the first {rec.guidance_cutoff:g} of the steps only ({TOOLS[tool].cutoff_note})")
    if rec.cache:
        missing.append(f"{caches.label(rec.cache)} on the denoiser ({TOOLS[tool].cache_note})")
    if rec.guidance_interval:
        missing.append(f"guidance {interval_label(rec.guidance_interval)} only ({TOOLS[tool].interval_note})")
    if schedulers.get(rec.scheduler).flow:
        if tool == "comfyui" and model_sampling(rec, {}) is not None:  # its shift: a node beside the KSampler
            schedule, missing = "simple", [m for m in missing if not m.startswith("shift=")]
        else:
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
        elif rec.family != "sd":
            out[c] = {"parity": "not checked", "why": UNET_ONLY}
        else:
            why = data.get("why") or "run `autotune export STUDY.toml --check` (needs pip install 'autotune[parity]')"
            out[c] = {"parity": "not checked", "why": why}
    return out


def a1111(rec: ClassRecommendation, model: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """AUTOMATIC1111's settings for ``rec`` and its infotext line; ``no_equivalent`` lists what it cannot set.
    (``model``, the study's model entry, as every exporter takes it: none of A1111's settings reads it.)"""
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


def comfyui(rec: ClassRecommendation, model: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The KSampler inputs for ``rec`` (``negative_prompt``: the text of the CLIPTextEncode on its negative
    input; ``stop_at_clip_layer``: a CLIPSetLastLayer before both); ``no_equivalent`` lists what ComfyUI cannot set.
    A Flux model's: ``model_sampling``, the node on the model before the KSampler (``model``: the study's
    ``width`` and ``height``); guidance-distilled Flux takes its guidance in a FluxGuidance node, cfg 1."""
    sampler, schedule, missing = _missing(rec, "comfyui")
    out: dict[str, Any] = {"sampler_name": sampler, "scheduler": schedule, "steps": rec.steps, "cfg": rec.guidance}
    if (node := model_sampling(rec, model or {})) is not None:
        out["model_sampling"] = node
        if rec.family == "flux":  # guidance embedded: an input of the model's one call, not CFG's second one
            out |= {"cfg": 1.0, "flux_guidance": rec.guidance}
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


_SET_INTERVAL = [
    "",
    "",
    "def set_interval(pipe, interval, flow, passes_sigma, true_cfg):",
    '    """Guidance only for sigma in (low, high] (None: every sigma; a None high: no upper end), as autotune',
    "    rendered it: a call outside is made unguided (a CFG batch's conditional half, its prediction twice;",
    '    true CFG\'s negative-prompt call skipped, its prediction the prompt\'s)."""',
    "    denoiser = pipe.unet if getattr(pipe, 'unet', None) is not None else pipe.transformer",
    "    if getattr(denoiser.__dict__.get('forward'), 'autotune_interval', False):",
    "        del denoiser.forward",
    "    if interval is None:",
    "        return",
    "    low, high = interval[0], math.inf if interval[1] is None else interval[1]",
    "    inner, last = denoiser.forward, [None, None]",
    "",
    "    def sigma(t):",
    "        t = float(t.flatten()[0]) if hasattr(t, 'flatten') else float(t)",
    "        table = getattr(pipe.scheduler, 'alphas_cumprod', None)",
    "        if table is None or flow:",
    "            return t if passes_sigma else t / float(pipe.scheduler.config.num_train_timesteps)",
    "        ac = np.asarray(table, dtype=np.float64)",
    "        return float(np.interp(t, np.arange(len(ac)), np.sqrt((1 - ac) / ac)))",
    "",
    "    def halve(x, n):",
    "        if hasattr(x, 'shape') and x.ndim and x.shape[0] == n:",
    "            return x[n // 2 :]",
    "        if isinstance(x, dict):",
    "            return {k: halve(v, n) for k, v in x.items()}",
    "        return type(x)(halve(v, n) for v in x) if isinstance(x, (tuple, list)) else x",
    "",
    "    def forward(*args, **kwargs):",
    "        t = kwargs.get('timestep', args[1] if len(args) > 1 else None)",
    "        guided = low < sigma(t) <= high",
    "        if true_cfg:",
    "            step = getattr(pipe, '_current_timestep', None)",
    "            if not guided and step is not None and step is last[0]:",
    "                return last[1]",
    "            last[:] = [step, inner(*args, **kwargs)]",
    "            return last[1]",
    "        if guided or not getattr(pipe, 'do_classifier_free_guidance', False):",
    "            return inner(*args, **kwargs)",
    "        n = int(kwargs.get('sample', kwargs.get('hidden_states', args[0] if args else None)).shape[0])",
    "        out = inner(*halve(args, n), **halve(kwargs, n))",
    "        if isinstance(out, tuple):",
    "            return tuple(torch.cat([o, o]) if isinstance(o, torch.Tensor) else o for o in out)",
    "        out.sample = torch.cat([out.sample, out.sample])",
    "        return out",
    "",
    "    forward.autotune_interval = True",
    "    denoiser.forward = forward",
]


_SET_CACHE = [
    "",
    "",
    "def set_cache(pipe, cache):",
    '    """Turn the last class\'s feature cache off (or one left on), then this class\'s on (None: none)."""',
    "    helper = getattr(pipe, '_deepcache', None)",
    "    if helper is not None:",
    "        helper.disable()",
    "        pipe._deepcache = None",
    "    denoiser = pipe.unet if getattr(pipe, 'unet', None) is not None else pipe.transformer",
    "    if getattr(denoiser, 'is_cache_enabled', False):",
    "        denoiser.disable_cache()",
    "    if cache is None:",
    "        return",
    "    if cache['config_class'] == 'DeepCacheSDHelper':  # pip install DeepCache",
    "        from DeepCache import DeepCacheSDHelper",
    "",
    "        pipe._deepcache = DeepCacheSDHelper(pipe=pipe)",
    "        pipe._deepcache.set_params(**cache['config'])",
    "        pipe._deepcache.enable()",
    "    else:",
    "        denoiser.enable_cache(getattr(diffusers.hooks, cache['config_class'])(**cache['config']))",
]


def _diffusers(recs: Recommendations) -> str:
    from autotune.space.families import FAMILIES

    cut = any(rec.guidance_cutoff < 1 for rec in recs.values())
    cached = any(rec.cache for rec in recs.values())
    banded = any(rec.guidance_interval for rec in recs.values())
    family = FAMILIES[next(iter(recs.values())).family]
    lines = [
        f"# autotune recommendations for study {recs.study!r} (model {recs.model.get('id')!r}).",
        "# Any class may follow any other: each scheduler config is complete, nothing of the last one is kept.",
        *(["import math", "", "import numpy as np", "import torch"] if banded else []),
        "import diffusers",
        *(["import diffusers.hooks"] if cached else []),
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
            *([f"        'cache': {caches.as_config(rec.cache)!r},"] if cached else []),
            *([f"        'guidance_interval': {interval_json(rec.guidance_interval)!r},"] if banded else []),
            "    },",
        ]
    lines += ["}", *(_STOP_GUIDANCE if cut else []), *(_SET_CACHE if cached else [])]
    lines += _SET_INTERVAL if banded else []
    lines += [
        "",
        "",
        "def apply(pipe, name):",
        '    """Swap pipe.scheduler to the class\'s; returns the kwargs for pipe(prompt, **kwargs)."""',
        "    s = SETTINGS[name]",
        "    cls = getattr(diffusers, s['scheduler_class'])",
        "    pipe.scheduler = cls.from_config(pipe.scheduler.config, **s['scheduler_config'])",
    ]
    where = f"{family.flow}, {family.sigmas}, {family.true_cfg}"  # the model's noise levels, its kind of CFG
    if banded:
        lines.append(f"    set_interval(pipe, None, {where})  # off before a cache wraps the denoiser")
    if cached:
        lines.append("    set_cache(pipe, s['cache'])  # each class renders with its own cache or none")
    if banded:
        lines.append(f"    set_interval(pipe, s['guidance_interval'], {where})")
    if cut:
        inputs = list(family.cfg_inputs)
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
    data = {
        name: {"setting": rec.setting, **convert(rec, recs.model), **checked.get(name, {})}
        for name, rec in recs.items()
    }
    return json.dumps(data, indent=2) + "\n"
