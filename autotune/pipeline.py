"""Load a diffusion pipeline once, swap its scheduler per setting, render and time images.

Example:
    >>> p = load_pipeline(cfg.model)
    >>> r = generate(p, Settings("euler", 20, 7.5), ["a cat"], seeds=[0, 1])
    >>> r.images.shape, r.seconds, r.model_calls
    (torch.Size([2, 3, 64, 64]), [0.21, 0.21], 20)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from autotune import schedulers
from autotune.config import ConfigError, ModelConfig
from autotune.space import Settings
from autotune.timing import DeviceTimer

__all__ = ["Pipeline", "Render", "RenderError", "generate", "load_pipeline", "resolve_device"]

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_LOADED: dict[tuple[Any, ...], Pipeline] = {}


class RenderError(RuntimeError):
    """A render that produced no usable image (NaN or black output)."""


@dataclass
class Pipeline:
    """A loaded pipeline, the scheduler config it shipped with, and per-prompt embeddings."""

    pipe: Any
    model_id: str
    device: str
    dtype: torch.dtype
    base_scheduler_config: Any
    warm: bool = False
    calls: int = 0
    embeds: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    def _count(self, *_: Any) -> None:
        self.calls += 1


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


def _resolve_dtype(dtype: str, device: str) -> torch.dtype:
    if dtype == "auto":
        return torch.float16 if device.startswith("cuda") else torch.float32
    return _DTYPES[dtype]


def load_pipeline(model: ModelConfig, device: str | None = None) -> Pipeline:
    """Load (once per process) the pipeline named by ``model.id``: ``"tiny"``, a hub id or a folder.

    Weights load as safetensors only, with no remote code.
    """
    from diffusers import DiffusionPipeline
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    dev = resolve_device(device or model.device)
    dtype = _resolve_dtype(model.dtype, dev)
    key = (model.id, model.revision, dev, dtype)
    if key in _LOADED:
        return _LOADED[key]
    if model.id == "tiny":
        from autotune.tiny import tiny_pipeline_path

        source: str | Path = tiny_pipeline_path()
    else:
        source = model.id
        looks_local = model.id.startswith((".", "/", "~")) or model.id.count("/") > 1
        if looks_local and not Path(model.id).expanduser().is_dir():
            raise ConfigError(f"model.id: no model folder at {model.id!r}")
    try:
        pipe = DiffusionPipeline.from_pretrained(source, dtype=dtype, use_safetensors=True, revision=model.revision)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"model.id: cannot load {model.id!r}: {first}") from None
    pipe = pipe.to(dev)
    pipe.set_progress_bar_config(disable=True)
    loaded = Pipeline(pipe, model.id, dev, dtype, pipe.scheduler.config)
    _denoiser(pipe).register_forward_pre_hook(loaded._count)
    _LOADED[key] = loaded
    return loaded


def _denoiser(pipe: Any) -> torch.nn.Module:
    return pipe.unet if getattr(pipe, "unet", None) is not None else pipe.transformer


def _embeddings(p: Pipeline, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt and empty-negative embeddings, computed once per prompt (not timed)."""
    for prompt in dict.fromkeys(prompts):
        if prompt not in p.embeds:
            with torch.no_grad():
                pos, neg = p.pipe.encode_prompt(prompt, p.device, 1, True, negative_prompt="")
            p.embeds[prompt] = (pos, neg)
    return (torch.cat([p.embeds[q][0] for q in prompts]), torch.cat([p.embeds[q][1] for q in prompts]))


def _call(
    p: Pipeline, settings: Settings, prompts: Sequence[str], seeds: Sequence[int], height: int, width: int
) -> torch.Tensor:
    pos, neg = _embeddings(p, prompts)
    gen_device = "cpu" if p.device == "mps" else p.device
    generators = [torch.Generator(gen_device).manual_seed(s) for s in seeds]
    out = p.pipe(
        prompt_embeds=pos,
        negative_prompt_embeds=neg,
        num_inference_steps=settings.steps,
        guidance_scale=settings.guidance,
        generator=generators,
        height=height,
        width=width,
        output_type="pt",
    )
    return out.images


def generate(
    p: Pipeline,
    settings: Settings,
    prompts: Sequence[str],
    seeds: Sequence[int],
    height: int = 64,
    width: int = 64,
    batch_size: int = 8,
) -> Render:
    """Render every prompt with every seed (prompt-major order) and time each batch on the device.

    Each image has its own seeded generator, so an image does not depend on its batch.
    """
    p.pipe.scheduler = schedulers.build(settings.scheduler, p.base_scheduler_config)
    jobs = [(prompt, seed) for prompt in prompts for seed in seeds]
    if not p.warm:  # first call in the process: compile/allocate outside the timed region
        _call(p, Settings(settings.scheduler, 2, settings.guidance), [jobs[0][0]], [jobs[0][1]], height, width)
        p.warm = True
    images, seconds, calls = [], [], 0
    for i in range(0, len(jobs), batch_size):
        batch = jobs[i : i + batch_size]
        p.calls = 0
        with DeviceTimer(p.device) as timer:
            out = _call(p, settings, [j[0] for j in batch], [j[1] for j in batch], height, width)
        calls = p.calls
        images.append(out.float().cpu())
        seconds += [timer.seconds / len(batch)] * len(batch)
    result = torch.cat(images)
    if not torch.isfinite(result).all():
        raise RenderError('NaN in the rendered image (fp16 overflow? try dtype = "float32" or "bfloat16")')
    if (result.flatten(1).amax(1) == 0).any():
        raise RenderError("black image (all zeros)")
    return Render((result * 255).round() / 255, seconds, calls)
