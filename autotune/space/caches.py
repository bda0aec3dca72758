"""Feature caching as a searched axis: the caches a setting may turn on, how the render turns one on and off
on the denoiser, the code that does the same in a user's program, and their names.

Three caches: on a Flux transformer, diffusers' own First Block Cache
(``transformer.enable_cache(FirstBlockCacheConfig(threshold=...))``: a step reuses the blocks after the
first while the first block's output changed little) and TaylorSeer's Lite variant
(``TaylorSeerCacheConfig(cache_interval=..., use_lite_mode=True)``: after the first 3 steps, every
``cache_interval``-th step runs the blocks and the steps between skip them and extrapolate the output from
the last ones by a Taylor series); on a UNet (SD, SDXL), the DeepCache package's
``DeepCacheSDHelper`` (every ``cache_interval``-th step runs the whole UNet, the steps between reuse its
deep features and run the shallow branch only; diffusers ships no cache for UNets).

A setting's cache is a ``(name, value)`` pair (``("first_block", 0.2)``), or ``()`` for none. Its trial
parameters are ``cache`` (the name, or ``"off"``) and, where one is on, ``cache.<name>`` (its one
parameter), so each keeps one distribution for the whole study.

Example:
    >>> with enabled(pipe, ("first_block", 0.2)):
    ...     images = pipe(prompt, num_inference_steps=12).images
    >>> code(("deepcache", 3))
    'helper = DeepCacheSDHelper(pipe=pipe); helper.set_params(cache_interval=3, cache_branch_id=0); helper.enable()'
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "CACHE",
    "CACHES",
    "OFF",
    "Cache",
    "CacheSpec",
    "as_config",
    "code",
    "denoiser",
    "describe",
    "enabled",
    "label",
    "normal",
    "param_name",
    "turn_off",
    "turn_on",
]

CACHE = "cache"  # the trial parameter: the cache's name, or OFF
OFF = "off"

Cache = tuple[Any, ...]  # () or (name, value of its one parameter)


@dataclass(frozen=True)
class CacheSpec:
    """One cache: the families it works on, the class that turns it on (a config of ``diffusers.hooks``,
    or DeepCache's helper) with its fixed arguments, its one searched parameter with the range searched
    by default and the value that caches nothing."""

    name: str
    title: str
    families: tuple[str, ...]  # the model families whose denoiser it works on
    unet: bool  # a UNet's cache (else a transformer's)
    config_class: str
    param: str
    low: float
    high: float
    step: float
    none: float  # the value that caches nothing (a setting with it has no cache)
    fixed: dict[str, Any] = field(default_factory=dict)  # the class's other arguments, as autotune sets them

    @property
    def integer(self) -> bool:
        return float(self.step).is_integer() and float(self.low).is_integer()


CACHES = {
    "first_block": CacheSpec(
        "first_block",
        "First Block Cache",
        ("flux", "flux_cfg", "distilled_flow"),  # diffusers' CacheMixin: not SD3's transformer
        False,
        "FirstBlockCacheConfig",
        "threshold",
        0.05,
        0.5,
        0.05,
        0,
    ),
    "taylorseer": CacheSpec(  # its Lite variant: on a reused step the blocks skip, the output is extrapolated
        "taylorseer",
        "TaylorSeer",
        ("flux", "flux_cfg", "distilled_flow"),
        False,
        "TaylorSeerCacheConfig",
        "cache_interval",
        2,
        5,
        1,
        1,
        {"disable_cache_before_step": 3, "max_order": 1, "use_lite_mode": True},
    ),
    "deepcache": CacheSpec(
        "deepcache",
        "DeepCache",
        ("sd", "sdxl", "distilled"),
        True,
        "DeepCacheSDHelper",
        "cache_interval",
        2,
        5,
        1,
        1,
        {"cache_branch_id": 0},
    ),
}


def param_name(name: str) -> str:
    """The trial parameter of a cache's one value: ``cache.first_block``."""
    return f"{CACHE}.{name}"


def normal(cache: Any) -> Cache:
    """A cache as a setting holds it: its value as the cache takes it (an interval a whole number), and
    ``()`` for none or for a value that caches nothing (a threshold of 0, an interval of 1)."""
    if not cache:
        return ()
    spec = CACHES[str(cache[0])]
    v = round(float(cache[1])) if spec.integer else round(float(cache[1]), 6)
    return () if v <= spec.none else (spec.name, v)


def as_config(cache: Cache) -> dict[str, Any] | None:
    """The cache as data: the class that turns it on and its arguments (None: none)."""
    if not cache:
        return None
    spec = CACHES[cache[0]]
    return {"config_class": spec.config_class, "config": {spec.param: cache[1], **spec.fixed}}


def describe(cache: Cache) -> dict[str, Any] | None:
    """The cache as a recommendation states it: its name, parameter and value, and the code that turns it
    on (None: none)."""
    if not cache:
        return None
    return {"name": cache[0], "param": CACHES[cache[0]].param, "value": cache[1], "code": code(cache)}


def code(cache: Cache) -> str:
    """What turns ``cache`` on in a user's program (its class imported from ``diffusers.hooks`` or
    ``DeepCache``; DeepCache's helper is then ``.enable()``d)."""
    spec, args = CACHES[cache[0]], ", ".join(f"{k}={v!r}" for k, v in as_config(cache)["config"].items())  # type: ignore[index]
    if spec.unet:
        return f"helper = DeepCacheSDHelper(pipe=pipe); helper.set_params({args}); helper.enable()"
    return f"pipe.transformer.enable_cache({spec.config_class}({args}))"


def label(cache: Cache) -> str:
    """``First Block Cache 0.2``, ``DeepCache 3`` (empty for none)."""
    return f"{CACHES[cache[0]].title} {cache[1]:g}" if cache else ""


def denoiser(pipe: Any) -> Any:
    """The pipeline's denoiser (a UNet or a transformer)."""
    return pipe.unet if getattr(pipe, "unet", None) is not None else pipe.transformer


def turn_on(pipe: Any, cache: Cache) -> None:
    """Turn ``cache`` on on the pipeline's denoiser, with fresh state (none: nothing)."""
    if not cache:
        return
    spec, config = CACHES[cache[0]], as_config(cache)["config"]  # type: ignore[index]
    if spec.unet:
        from DeepCache import DeepCacheSDHelper

        helper = DeepCacheSDHelper(pipe=pipe)
        helper.set_params(**config)
        helper.enable()
        pipe._autotune_deepcache = helper
        return
    import diffusers.hooks

    model = denoiser(pipe)
    if not hasattr(model, "enable_cache"):
        raise ValueError(f"{label(cache)}: {type(model).__name__} takes no diffusers cache (a transformer does)")
    model.enable_cache(getattr(diffusers.hooks, spec.config_class)(**config))


def turn_off(pipe: Any) -> None:
    """Turn off the cache on the pipeline's denoiser, autotune's or one the user turned on (none: nothing)."""
    helper = getattr(pipe, "_autotune_deepcache", None)
    if helper is not None:
        helper.disable()
        pipe._autotune_deepcache = None
    model = denoiser(pipe)
    if getattr(model, "is_cache_enabled", False):
        model.disable_cache()


@contextlib.contextmanager
def enabled(pipe: Any, cache: Cache) -> Iterator[None]:
    """``cache`` on the pipeline's denoiser for the calls inside, with fresh state, and off after (none:
    the denoiser as it is)."""
    if not cache:
        yield
        return
    turn_on(pipe, cache)
    try:
        yield
    finally:
        turn_off(pipe)
