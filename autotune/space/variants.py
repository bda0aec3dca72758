"""A sampler's conditional parameters ("variants": sigma schedule, timestep spacing, solver order, ...),
the diffusers config overrides each value makes, and what AUTOMATIC1111 and ComfyUI call the schedules.

A new conditional parameter is one entry in ``VARIANTS``. Which samplers take it is read from their
classes (:func:`autotune.space.schedulers.variants_of`).

Example:
    >>> VARIANTS["sigmas"].to_kwargs("karras")["use_karras_sigmas"]
    True
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["TOOL_SCHEDULES", "VARIANTS", "Variant", "entry_sigmas"]


@dataclass(frozen=True)
class Variant:
    """A conditional scheduler parameter: the ``__init__`` argument it needs, its values, its overrides."""

    name: str
    needs: str
    choices: tuple[Any, ...]
    to_kwargs: Callable[[Any], dict[str, Any]]
    classes: tuple[str, ...] = ()  # only these classes (empty: every class that has ``needs``)


_SIGMAS = ("karras", "exponential", "beta")


def _sigmas(value: str) -> dict[str, Any]:
    return {f"use_{k}_sigmas": value == k for k in _SIGMAS}


def _algorithm(value: str) -> dict[str, Any]:
    # diffusers refuses final_sigmas_type="zero" (its default) with the first-order "dpmsolver" form
    return {"algorithm_type": value, **({"final_sigmas_type": "sigma_min"} if value == "dpmsolver" else {})}


def _set(key: str) -> Callable[[Any], dict[str, Any]]:
    return lambda value: {key: value}


# Every variant's first choice is "default": keep what the model's own scheduler config says.
VARIANTS = {
    v.name: v
    for v in (
        Variant("sigmas", "use_karras_sigmas", ("default", *_SIGMAS), _sigmas),
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

# (variant, value) -> (AUTOMATIC1111's "Schedule type", ComfyUI's KSampler "scheduler"); None: the tool has none
TOOL_SCHEDULES: dict[tuple[str, Any], tuple[str | None, str | None]] = {
    ("sigmas", "default"): ("Uniform", "normal"),  # A1111's "Automatic" is Karras for DPM++ 2M (1.9 and later)
    ("sigmas", "karras"): ("Karras", "karras"),
    ("sigmas", "exponential"): ("Exponential", "exponential"),
    ("sigmas", "beta"): ("Beta", "beta"),
    ("sigmas", "ays"): ("Align Your Steps", None),
    ("sigmas", "fitted"): (None, None),  # a list of the class's own: no named schedule is it
    ("timestep_spacing", "trailing"): ("SGM Uniform", "sgm_uniform"),
    ("timestep_spacing", "linspace"): ("Uniform", "normal"),
    ("timestep_spacing", "leading"): (None, None),
}


def entry_sigmas(kwargs: Mapping[str, Any]) -> str | None:
    """The sigma schedule a table entry fixes (``dpmpp_2m_karras``: karras), or None."""
    return next((k for k in _SIGMAS if kwargs.get(f"use_{k}_sigmas")), None)
