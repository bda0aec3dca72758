"""Render and time: a setting for prompts x seeds (quality renders, batched), and the serving call
production pays for (timed after a warm-up of its shape).

Example:
    >>> r = generate(p, Settings.make("euler", 20, 7.5), ["a cat"], seeds=[0, 1])
    >>> r.images.shape, r.model_calls
    (torch.Size([2, 3, 64, 64]), 20)
    >>> time_serving(p, Settings.make("euler", 20, 7.5), "a cat", 0, 64, 64, repeats=3)
    [0.21, 0.2, 0.21]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from autotune.model.encode import encode_prompt
from autotune.model.pipeline import Pipeline
from autotune.model.timing import DeviceTimer
from autotune.noise import noise_seed
from autotune.space import caches, schedulers
from autotune.space.guidance import guidance_on, interval_on
from autotune.space.settings import Settings

__all__ = ["Render", "RenderError", "free_memory", "generate", "render_pairs", "seeded", "time_serving"]


class RenderError(RuntimeError):
    """A render that produced no usable image (NaN or black output)."""


@dataclass(frozen=True)
class Render:
    images: torch.Tensor  # (N, 3, H, W) float in [0, 1], on the CPU, quantised to 8 bits
    seconds: list[float]  # device seconds per image (denoising + VAE decode)
    model_calls: float  # denoiser calls per image (a call a cache cut short: the share it ran; the images' mean)
    guided_calls: float | None = None  # of those, the ones with guidance on (a doubled batch)


def _embeddings(p: Pipeline, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
    """The prompts' embeddings (with their negative prompt and clip skip) as call kwargs, computed once
    per prompt (not timed)."""
    length = p.calls.call.get("max_sequence_length")
    keys = [(q, p.calls.negative(q), p.calls.call.get("clip_skip")) for q in prompts]
    for key in dict.fromkeys(keys):
        if key not in p.embeds:
            with torch.no_grad():
                p.embeds[key] = encode_prompt(p.pipe, key[0], p.device, key[1], key[2], length)
    return {k: torch.cat([p.embeds[key][k] for key in keys]) for k in p.embeds[keys[0]]}


def seeded(p: Pipeline, prompts: Sequence[str], seeds: Sequence[int]) -> list[torch.Generator]:
    """One generator per image, seeded with its own noise seed (:func:`noise_seed` of its prompt and
    seed), on the device that draws its noise (MPS: the CPU)."""
    device = "cpu" if p.device == "mps" else p.device
    return [torch.Generator(device).manual_seed(noise_seed(q, s)) for q, s in zip(prompts, seeds, strict=True)]


def _call(
    p: Pipeline,
    settings: Settings,
    prompts: Sequence[str],
    seeds: Sequence[int],
    height: int,
    width: int,
    encode: bool = False,
) -> torch.Tensor:
    """One pipeline call; the prompts' embeddings are cached unless ``encode`` (the call encodes them, as
    production's does). Every image has its own generator and, for DPM++ SDE, its own Brownian tree
    seeded from its noise seed: an image depends on its prompt and seed alone, not on its batch or the
    process's RNG."""
    generators = seeded(p, prompts, seeds)
    if hasattr(p.pipe.scheduler, "noise_sampler_seed"):
        p.pipe.scheduler.noise_sampler_seed = [g.initial_seed() for g in generators]
        p.pipe.scheduler.noise_sampler = None
    text: dict[str, Any] = {"prompt": list(prompts)}
    if encode and (p.family.true_cfg or any(p.calls.negative(q) for q in prompts)):
        text["negative_prompt"] = [p.calls.negative(q) or "" for q in prompts]
    out = p.pipe(
        **(text if encode else _embeddings(p, prompts)),
        **p.calls.call,
        **settings.pipeline_kwargs(p.family),
        generator=generators,
        height=height,
        width=width,
        output_type="pt",
    )
    return out.images


def _out_of_memory(e: BaseException) -> bool:
    text = str(e)
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in text or "not enough memory" in text


def free_memory() -> None:
    """Give the allocator's cached blocks back after an out-of-memory error or a failed trial."""
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def generate(
    p: Pipeline,
    settings: Settings,
    prompts: Sequence[str],
    seeds: Sequence[int],
    height: int = 64,
    width: int = 64,
    batch_size: int | str = "auto",
) -> Render:
    """Render every prompt with every seed (prompt-major order) and time each batch on the device.

    Each image has its own seeded generator, so an image does not depend on its batch (but for the
    float noise of another batch size: at most 2/255 a pixel). ``batch_size = "auto"`` starts at 16
    images and halves on out-of-memory, for the rest of the process; a fixed size that does not fit raises.
    """
    return render_pairs(p, settings, [(q, s) for q in prompts for s in seeds], height, width, batch_size)


def render_pairs(
    p: Pipeline,
    settings: Settings,
    jobs: Sequence[tuple[str, int]],
    height: int = 64,
    width: int = 64,
    batch_size: int | str = "auto",
) -> Render:
    """Render (prompt, seed) pairs in batches, as :func:`generate` renders its grid of them; with a cache on,
    one image a call (a cache decides to reuse a step on the whole batch: an image would depend on its batch)."""
    p.pipe.scheduler = schedulers.build(settings.scheduler, p.base_scheduler_config, dict(settings.options))
    with caches.enabled(p.pipe, settings.cache), interval_on(p.pipe, settings.interval, p.family):
        return _render_pairs(p, settings, jobs, height, width, 1 if settings.cache else batch_size)


def _render_pairs(
    p: Pipeline, settings: Settings, jobs: Sequence[tuple[str, int]], height: int, width: int, batch_size: int | str
) -> Render:
    if not p.warm:  # first call in the process: compile/allocate outside the timed region
        _call(
            p,
            settings.warm_up(),
            [jobs[0][0]],
            [jobs[0][1]],
            height,
            width,
        )
        p.warm = True
    images, seconds = [], []
    calls: float = 0
    guided: float = 0
    i = 0
    while i < len(jobs):
        size = p.auto_batch if batch_size == "auto" else int(batch_size)
        batch = jobs[i : i + size]
        p.forward_passes = p.guided_passes = 0
        try:
            with DeviceTimer(p.device) as timer:
                out = _call(p, settings, [j[0] for j in batch], [j[1] for j in batch], height, width)
        except (torch.OutOfMemoryError, RuntimeError) as e:
            if batch_size != "auto" or len(batch) == 1 or not _out_of_memory(e):
                raise
            p.auto_batch = (len(batch) + 1) // 2
            free_memory()
            continue
        i += len(batch)
        calls, guided = calls + p.forward_passes * len(batch), guided + p.guided_passes * len(batch)
        images.append(out.float().cpu())
        seconds += [timer.seconds / len(batch)] * len(batch)
    result = torch.cat(images)
    if not torch.isfinite(result).all():
        raise RenderError('NaN in the rendered image (fp16 overflow? try dtype = "float32" or "bfloat16")')
    if (result.flatten(1).amax(1) == 0).any():
        raise RenderError("black image (all zeros)")
    calls, guided = calls / len(jobs), guided / len(jobs)  # per image: a cache's share differs image to image
    if calls == int(calls) and guided == int(guided):
        calls, guided = int(calls), int(guided)
    return Render((result * 255).round() / 255, seconds, calls, guided)


def time_serving(
    p: Pipeline,
    settings: Settings,
    prompt: str,
    seed: int,
    height: int,
    width: int,
    batch_size: int = 1,
    repeats: int = 3,
) -> list[float]:
    """Seconds per image of ``repeats`` production calls: ``batch_size`` images of ``prompt``, the
    prompt encoded inside the call. The first call of a shape (batch, size, guidance on or off) in
    the process is an untimed 2-step warm-up, so allocations and kernel choice are not billed."""
    p.pipe.scheduler = schedulers.build(settings.scheduler, p.base_scheduler_config, dict(settings.options))
    prompts, seeds = [prompt] * batch_size, [seed + i for i in range(batch_size)]
    shape = (batch_size, height, width, guidance_on(settings.guidance))
    if shape not in p.warmed:
        _call(p, settings.warm_up(), prompts, seeds, height, width, encode=True)
        p.warmed.add(shape)
    out = []
    # as production turns them on: once, before its calls
    with caches.enabled(p.pipe, settings.cache), interval_on(p.pipe, settings.interval, p.family):
        for _ in range(repeats):
            with DeviceTimer(p.device) as timer:
                _call(p, settings, prompts, seeds, height, width, encode=True)
            out.append(timer.seconds / batch_size)
    return out
