"""Load a diffusion pipeline once, swap its scheduler per setting, render and time images.

Example:
    >>> p = load_pipeline(cfg.model)
    >>> r = generate(p, Settings("euler", 20, 7.5), ["a cat"], seeds=[0, 1])
    >>> r.images.shape, r.seconds, r.model_calls
    (torch.Size([2, 3, 64, 64]), [0.21, 0.21], 20)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from autotune import families, schedulers
from autotune.config import ConfigError, ModelConfig, StudyConfig
from autotune.families import Family, ResolvedStudy, resolve
from autotune.space import Settings
from autotune.timing import DeviceTimer

__all__ = [
    "Pipeline",
    "Render",
    "RenderError",
    "configure_calls",
    "describe_model",
    "generate",
    "load_pipeline",
    "resolve_config",
    "resolve_device",
    "runtime",
    "time_serving",
]

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_LOADED: dict[tuple[Any, ...], Pipeline] = {}


class RenderError(RuntimeError):
    """A render that produced no usable image (NaN or black output)."""


@dataclass
class Pipeline:
    """A loaded pipeline, the scheduler config it shipped with, and per-prompt embeddings."""

    pipe: Any
    model_id: str
    family: Family
    device: str
    dtype: torch.dtype
    base_scheduler_config: Any
    warm: bool = False
    warmed: set[tuple[Any, ...]] = field(default_factory=set)  # serving call shapes already warmed up
    calls: int = 0
    auto_batch: int = 16  # batch_size = "auto": the largest batch tried that fitted (halved on out-of-memory)
    embeds: dict[tuple[Any, ...], dict[str, torch.Tensor]] = field(default_factory=dict)
    adds: dict[str, Any] = field(default_factory=dict)  # what the study adds to the model: VAE, LoRAs, ...
    call: dict[str, Any] = field(default_factory=dict)  # [call] arguments of every call (negative prompt aside)
    negatives: dict[str, str | None] = field(default_factory=dict)  # prompt -> its class's negative prompt
    default_negative: str | None = None  # for prompts of no class (validation's held-out ones)

    def _count(self, *_: Any) -> None:
        self.calls += 1

    def negative(self, prompt: str) -> str | None:
        return self.negatives.get(prompt, self.default_negative)

    def identity(self, prompt: str) -> str:
        """The model as reference keys know it: its id, plus what production adds to this prompt's call."""
        extra = {**self.adds, "call": self.call, "negative_prompt": self.negative(prompt)}
        extra = {k: v for k, v in extra.items() if v}
        return self.model_id if not extra else f"{self.model_id} {json.dumps(extra, sort_keys=True)}"


def _check_call(cfg: StudyConfig, pipeline_class: Any) -> None:
    """Every ``[call]`` key is an argument of the pipeline's ``__call__``."""
    import inspect

    taken = inspect.signature(pipeline_class.__call__).parameters
    for key in cfg.call:
        if key not in taken:
            raise ConfigError(
                f"{cfg.path}: call.{key}: not an argument of {pipeline_class.__name__}.__call__ "
                f"(expected one of: {', '.join(k for k in taken if k not in ('self', 'kwargs'))})"
            )


def configure_calls(p: Pipeline, cfg: StudyConfig) -> None:
    """What production passes besides the searched arguments: ``[call]`` (checked against the pipeline's
    ``__call__``) and, for each class's prompts, the class's negative prompt."""
    _check_call(cfg, type(p.pipe))
    if "clip_skip" in cfg.call:  # diffusers 0.42 reads text_encoder.text_model, which transformers 5 flattened
        try:
            with torch.no_grad():
                families.encode_prompt(p.pipe, "a test", p.device, None, cfg.call["clip_skip"])
        except (AttributeError, IndexError) as e:
            raise ConfigError(
                f"{cfg.path}: call.clip_skip: {type(p.pipe).__name__} cannot apply it on this stack (its encode_prompt "
                f"fails: {e}); leave it out, or study on the diffusers/transformers pair production runs"
            ) from None
    p.call = {k: v for k, v in cfg.call.items() if k != "negative_prompt"}
    p.default_negative = cfg.call.get("negative_prompt")
    p.negatives = {q: cfg.call_for(c).get("negative_prompt") for c, prompts in cfg.classes.items() for q in prompts}


@dataclass(frozen=True)
class Render:
    images: torch.Tensor  # (N, 3, H, W) float in [0, 1], on the CPU, quantised to 8 bits
    seconds: list[float]  # device seconds per image (denoising + VAE decode)
    model_calls: int  # denoiser forward passes for one image


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"model.device: {device!r} asked for, but torch sees no CUDA device")
    return device


def runtime(cfg: StudyConfig, device: str | None = None) -> dict[str, str]:
    """The device kind and dtype a study renders with: trials on another are not comparable."""
    dev = resolve_device(device or cfg.model.device)
    return {"device": dev.split(":")[0], "dtype": str(_resolve_dtype(cfg.model.dtype, dev)).removeprefix("torch.")}


def _resolve_dtype(dtype: str, device: str) -> torch.dtype:
    if dtype == "auto":
        return torch.float16 if device.startswith("cuda") else torch.float32
    return _DTYPES[dtype]


def describe_model(model: ModelConfig) -> tuple[Family, list[str], dict[str, Any]]:
    """Family, usable scheduler names and ``model_index.json`` of a model, without loading weights
    (a ``model.pipeline`` function is called: its pipeline is what there is to describe)."""
    from autotune import sources

    device = model.device if model.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    index = sources.model_index(model, _resolve_dtype(model.dtype, device))  # the dtype a model function gets
    pipeline_class = index.get("_class_name", "")
    scheduler_class = (index.get("scheduler") or [None, "PNDMScheduler"])[1]
    try:
        family = families.detect(pipeline_class, scheduler_class, model.id, model.family)
    except ValueError as e:
        raise ConfigError(f"{'model.id' if model.family == 'auto' else 'model.family'}: {e}") from None
    return family, families.compatible_schedulers(family, scheduler_class), index


def resolve_config(cfg: StudyConfig) -> ResolvedStudy:
    """The study file resolved against its model (read from ``model_index.json``; no weights load)."""
    import diffusers

    try:
        family, compatible, index = describe_model(cfg.model)
    except ConfigError as e:
        raise ConfigError(f"{cfg.path}: {e}") from None
    if (cls := getattr(diffusers, index.get("_class_name", ""), None)) is not None:
        _check_call(cfg, cls)
    return resolve(cfg, family, compatible)


def load_pipeline(model: ModelConfig, device: str | None = None, safety_checker: bool = False) -> Pipeline:
    """Load (once per process) the pipeline named by ``model.id``: ``"micro"``, ``"tiny"``, a hub id or a folder.

    Weights load as safetensors only, with no remote code. A model's safety checker is left out
    unless ``safety_checker``: it costs time per image and blanks some, whatever the setting.
    """
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    from autotune import sources

    diffusers_logging.disable_progress_bar()
    diffusers_logging.set_verbosity_error()  # not the 77-token truncation notice at every call of a long prompt
    transformers_logging.disable_progress_bar()
    dev = resolve_device(device or model.device)
    dtype = _resolve_dtype(model.dtype, dev)
    key = (model, model.family, dev, dtype, safety_checker)
    if key in _LOADED:
        return _LOADED[key]
    family, _, index = describe_model(model)
    absent: dict[str, Any] = {k: None for k, v in index.items() if isinstance(v, list) and v[0] is None}  # SD3, no T5
    if "safety_checker" in index and not safety_checker:
        absent.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe = sources.build(model, dtype, absent).to(dev)
    pipe.set_progress_bar_config(disable=True)
    loaded = Pipeline(pipe, model.id, family, dev, dtype, pipe.scheduler.config)
    loaded.adds = model.additions()
    _denoiser(pipe).register_forward_pre_hook(loaded._count)
    _LOADED[key] = loaded
    return loaded


def _denoiser(pipe: Any) -> torch.nn.Module:
    return pipe.unet if getattr(pipe, "unet", None) is not None else pipe.transformer


def _embeddings(p: Pipeline, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
    """The prompts' embeddings (with their negative prompt and clip skip) as call kwargs, computed once
    per prompt (not timed)."""
    keys = [(q, p.negative(q), p.call.get("clip_skip")) for q in prompts]
    for key in dict.fromkeys(keys):
        if key not in p.embeds:
            with torch.no_grad():
                p.embeds[key] = families.encode_prompt(p.pipe, key[0], p.device, key[1], key[2])
    return {k: torch.cat([p.embeds[key][k] for key in keys]) for k in p.embeds[keys[0]]}


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
    seeded from its seed: an image depends on its seed alone, not on its batch or the process's RNG."""
    gen_device = "cpu" if p.device == "mps" else p.device
    generators = [torch.Generator(gen_device).manual_seed(s) for s in seeds]
    if hasattr(p.pipe.scheduler, "noise_sampler_seed"):
        p.pipe.scheduler.noise_sampler_seed = list(seeds)
        p.pipe.scheduler.noise_sampler = None
    text: dict[str, Any] = {"prompt": list(prompts)}
    if encode and any(p.negative(q) for q in prompts):
        text["negative_prompt"] = [p.negative(q) or "" for q in prompts]
    out = p.pipe(
        **(text if encode else _embeddings(p, prompts)),
        **p.call,
        **settings.call_kwargs(p.family),
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

    Each image has its own seeded generator, so an image does not depend on its batch.
    ``batch_size = "auto"`` starts at 16 images and halves on out-of-memory, for the rest of
    the process; a fixed size that does not fit raises.
    """
    p.pipe.scheduler = schedulers.build(settings.scheduler, p.base_scheduler_config, dict(settings.options))
    jobs = [(prompt, seed) for prompt in prompts for seed in seeds]
    if not p.warm:  # first call in the process: compile/allocate outside the timed region
        _call(
            p,
            Settings(settings.scheduler, 2, settings.guidance, settings.options),
            [jobs[0][0]],
            [jobs[0][1]],
            height,
            width,
        )
        p.warm = True
    images, seconds, calls = [], [], 0
    i = 0
    while i < len(jobs):
        size = p.auto_batch if batch_size == "auto" else int(batch_size)
        batch = jobs[i : i + size]
        p.calls = 0
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
        calls = p.calls
        images.append(out.float().cpu())
        seconds += [timer.seconds / len(batch)] * len(batch)
    result = torch.cat(images)
    if not torch.isfinite(result).all():
        raise RenderError('NaN in the rendered image (fp16 overflow? try dtype = "float32" or "bfloat16")')
    if (result.flatten(1).amax(1) == 0).any():
        raise RenderError("black image (all zeros)")
    return Render((result * 255).round() / 255, seconds, calls)


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
    shape = (batch_size, height, width, settings.guidance > 1)
    if shape not in p.warmed:
        warm = Settings(settings.scheduler, 2, settings.guidance, settings.options)
        _call(p, warm, prompts, seeds, height, width, encode=True)
        p.warmed.add(shape)
    out = []
    for _ in range(repeats):
        with DeviceTimer(p.device) as timer:
            _call(p, settings, prompts, seeds, height, width, encode=True)
        out.append(timer.seconds / batch_size)
    return out
