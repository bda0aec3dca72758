"""The other tools a recommendation is pasted into, one row each: AUTOMATIC1111 and ComfyUI.

A row says where the tool's names live (its column in the scheduler table and in
:data:`autotune.space.variants.TOOL_SCHEDULES`), what it offers for a guidance cutoff, the function
that exports a recommendation for it, and how ``autotune export --check`` renders as it does (its
k-diffusion samplers, the schedules it tries, the quirks of its schedule and its timesteps). Export,
``recommendations.json`` and the parity check all read the row; a new tool is a row here, a column
in the scheduler table and an exporter.

Example:
    >>> TOOLS["comfyui"].parity_samplers["dpmpp_2m"]
    'dpmpp_2m'
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from autotune.space.variants import TOOL_SCHEDULES

__all__ = ["TOOLS", "Tool"]


@dataclass(frozen=True)
class Tool:
    name: str  # its --format name, and the attribute of a SchedulerSpec that holds its sampler name
    title: str
    column: int  # its column in TOOL_SCHEDULES
    cutoff_note: str  # what it offers instead of stopping guidance after a share of the steps
    flow_note: str  # why a flow-matching model's setting is not exported (what the tool's export covers)
    cache_note: str  # what it offers for a feature cache on the denoiser (autotune.space.caches)
    interval_note: str  # what it offers for guidance on a range of noise levels only (autotune.space.guidance)
    exporter: str  # "module:function" turning a ClassRecommendation into the tool's settings
    parity_samplers: Mapping[str, str]  # its deterministic sampler name -> k-diffusion's sample_<name>
    parity_schedules: tuple[str, ...]  # the schedules the check can render, in the order it tries them as a change
    automatic: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))  # "Automatic" per sampler
    automatic_default: str = "Uniform"
    discard_penultimate: frozenset[str] = frozenset()  # samplers it drops the next-to-last sigma of
    quantized: bool = False  # its model is called at the nearest whole training timestep
    noise_sqrt1p: bool = False  # scales the first noise by sqrt(1 + sigma^2) on a full schedule (else by sigma)

    def sampler(self, spec: Any) -> str | None:
        """The tool's name for a scheduler-table entry (None: it has none)."""
        return getattr(spec, self.name)

    def schedule(self, key: str, value: Any) -> str | None:
        """The tool's schedule for a variant's value (None: it has none)."""
        return TOOL_SCHEDULES.get((key, value), (None, None))[self.column]


TOOLS = {
    t.name: t
    for t in (
        Tool(
            "a1111", "AUTOMATIC1111", 0,
            "nearest: 'Negative Guidance minimum sigma', which skips the unconditional pass below a sigma "
            "(not after a share of the steps) and, unless its 'all steps' option is on, on every other step only",
            "Forge runs Flux and SD3 (Euler, Simple) with its own shift, and its settings have none to set",
            "no core setting caches a denoiser's features (third-party extensions do, not checked here); not exported",
            "nearest: 'Negative Guidance minimum sigma' skips the unconditional pass below a sigma (the interval's "
            "low end, on every other step unless its 'all steps' option is on), and 'Ignore negative prompt during "
            "early sampling' for a share of the first steps (not above a sigma); neither set here",
            "autotune.serving.export:a1111",
            MappingProxyType({"Euler": "euler", "Heun": "heun", "LMS": "lms", "DPM2": "dpm_2", "DPM++ 2M": "dpmpp_2m"}),
            ("Karras", "Exponential", "SGM Uniform", "Uniform", "Beta"),
            automatic=MappingProxyType({"DPM++ 2M": "Karras"}),  # A1111 1.9+
            discard_penultimate=frozenset({"DPM2"}),
        ),
        Tool(
            "comfyui", "ComfyUI", 1,
            "no core node stops guidance after a share of the steps",
            "ComfyUI's export covers Euler (flow) on Flux's own sigmas, shifted by its ModelSamplingFlux node; its "
            "other samplers and schedules, and SD3's ModelSamplingSD3, were not matched to diffusers' on a flow model",
            "its core EasyCache and LazyCache nodes skip steps on a rule of their own (a change threshold between "
            "start and end percents), not this cache's; custom nodes do this one (Comfy-WaveSpeed's 'Apply First "
            "Block Cache', DeepCache nodes), not checked against diffusers' or DeepCache's here; not exported",
            "autotune knows no core node that limits guidance to a range of noise levels; not exported",
            "autotune.serving.export:comfyui",
            MappingProxyType({"euler": "euler", "heun": "heun", "lms": "lms", "dpm_2": "dpm_2",
                              "dpmpp_2m": "dpmpp_2m", "ddim": "euler"}),  # its ddim is its Euler
            ("karras", "exponential", "sgm_uniform", "normal", "beta", "ddim_uniform"),
            quantized=True,
            noise_sqrt1p=True,
        ),
    )
}  # fmt: skip
