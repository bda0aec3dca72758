"""Feature caching as a searched axis: the caches a setting may turn on, how the render enables one on the
denoiser (diffusers' own hooks, ``transformer.enable_cache(config)``), the line that does the same in a
user's code, and how much of a denoiser call a cached step still computes.

A setting's cache is a ``(name, value)`` pair (``("first_block", 0.2)``: First Block Cache with threshold
0.2), or ``()`` for none. Its trial parameters are ``cache`` (the name, or ``"off"``) and, where one is on,
``cache.<name>`` (its one parameter), so each keeps one distribution for the whole study.

Example:
    >>> with enabled(pipe, ("first_block", 0.2)):
    ...     images = pipe(prompt, num_inference_steps=12).images
    >>> code(("first_block", 0.2))
    'pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=0.2))'
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

__all__ = [
    "CACHE",
    "CACHES",
    "OFF",
    "Cache",
    "CacheSpec",
    "as_config",
    "blocks",
    "code",
    "config",
    "denoiser",
    "enabled",
    "label",
    "param_name",
]

CACHE = "cache"  # the trial parameter: the cache's name, or OFF
OFF = "off"

Cache = tuple[Any, ...]  # () or (name, value of its one parameter)


@dataclass(frozen=True)
class CacheSpec:
    """One cache diffusers ships: its hook config class (in ``diffusers.hooks``), its one searched
    parameter with the range searched by default, and what a user reads."""

    name: str
    title: str
    config_class: str
    param: str
    low: float
    high: float
    step: float
    note: str  # what the parameter does, for the docs and the errors


CACHES = {
    "first_block": CacheSpec(
        "first_block",
        "First Block Cache",
        "FirstBlockCacheConfig",
        "threshold",
        0.05,
        0.5,
        0.05,
        "a step reuses the last full step's output of the blocks after the first while the first block's "
        "output residual changed by less than `threshold` (relative L1) since then; 0 never reuses",
    ),
}


def param_name(name: str) -> str:
    """The trial parameter of a cache's one value: ``cache.first_block``."""
    return f"{CACHE}.{name}"


def config(cache: Cache) -> Any:
    """The diffusers hook config that turns ``cache`` on (``FirstBlockCacheConfig(threshold=0.2)``)."""
    import diffusers.hooks

    spec = CACHES[cache[0]]
    return getattr(diffusers.hooks, spec.config_class)(**{spec.param: cache[1]})


def as_config(cache: Cache) -> dict[str, Any] | None:
    """The cache as data: its config class in ``diffusers.hooks`` and the class's arguments (None: none)."""
    if not cache:
        return None
    spec = CACHES[cache[0]]
    return {"config_class": spec.config_class, "config": {spec.param: cache[1]}}


def code(cache: Cache, denoiser: str = "transformer") -> str:
    """The line of a user's code that turns ``cache`` on (its config class imported from ``diffusers.hooks``)."""
    spec = CACHES[cache[0]]
    return f"pipe.{denoiser}.enable_cache({spec.config_class}({spec.param}={cache[1]:g}))"


def label(cache: Cache) -> str:
    """``First Block Cache 0.2`` (empty for none)."""
    return f"{CACHES[cache[0]].title} {cache[1]:g}" if cache else ""


def denoiser(pipe: Any) -> Any:
    """The pipeline's denoiser (a UNet or a transformer)."""
    return pipe.unet if getattr(pipe, "unet", None) is not None else pipe.transformer


def blocks(model: Any) -> tuple[list[tuple[Any, float]], float]:
    """How much of a denoiser call ran: each block of its block lists (``transformer_blocks``,
    ``single_transformer_blocks``) as its first submodule, which runs iff the block computes (a cache's
    hook skips the block's body, not the call to it), with its share of the denoiser's parameters; and the
    share outside the blocks, which every call runs. A UNet (no block lists a cache hooks): none, 1."""
    import torch

    if not hasattr(model, "enable_cache"):
        return [], 1.0
    total = sum(p.numel() for p in model.parameters())
    out = []
    for name, lst in model.named_children():
        if isinstance(lst, torch.nn.ModuleList) and name.endswith("blocks"):
            for block in lst:
                first = next(iter(block.children()))
                out.append((first, sum(p.numel() for p in block.parameters()) / total))
    return out, 1.0 - sum(w for _, w in out)


@contextlib.contextmanager
def enabled(pipe: Any, cache: Cache) -> Iterator[None]:
    """``cache`` on the pipeline's denoiser for the calls inside, with fresh state, and off after (none:
    the denoiser as it is). diffusers refuses a second cache on a denoiser that has one."""
    if not cache:
        yield
        return
    model = denoiser(pipe)
    if not hasattr(model, "enable_cache"):
        raise ValueError(f"{label(cache)}: {type(model).__name__} takes no diffusers cache (a transformer does)")
    model.enable_cache(config(cache))
    try:
        yield
    finally:
        model.disable_cache()
