"""A model described without its weights, and loaded: the pipeline, its own scheduler config, and what
production passes to every call.

A :class:`Pipeline` belongs to whoever loaded it (an evaluator, the report's grid, a test fixture):
nothing is cached at module level, so no caller sees another's call arguments.

Example:
    >>> cfg = resolve_config(cfg)  # describes the model (cfg.described)
    >>> p = load_pipeline(cfg.model, described=cfg.described, calls=Calls.of(cfg))
"""

from __future__ import annotations

import dataclasses
import inspect
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch

from autotune.config import ConfigError, ConfigWarning, ModelConfig, StudyConfig
from autotune.config.resolve import ResolvedStudy, resolve
from autotune.model import sources
from autotune.model.compute import Meter
from autotune.space import caches, families, guidance
from autotune.space.families import Family
from autotune.store.reference_table import model_identity

__all__ = [
    "Calls",
    "ModelDescription",
    "Pipeline",
    "check_calls",
    "describe_model",
    "load_pipeline",
    "resolve_config",
    "resolve_device",
    "runtime",
]

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class Calls:
    """What production passes to every call besides the searched arguments: ``[call]`` and, per prompt,
    its class's negative prompt (``default_negative`` for prompts of no class)."""

    call: Mapping[str, Any] = field(default_factory=dict)  # without negative_prompt
    negatives: Mapping[str, str | None] = field(default_factory=dict)
    default_negative: str | None = None

    @classmethod
    def of(cls, cfg: StudyConfig, routed: Mapping[str, str] = MappingProxyType({})) -> Calls:
        """The study's calls; ``routed`` adds prompts of no study class (held-out ones) by their class."""
        classes = {q: c for c, prompts in cfg.classes.items() for q in prompts} | dict(routed)
        return cls(
            {k: v for k, v in cfg.call.items() if k != "negative_prompt"},
            {q: cfg.call_for(c).get("negative_prompt") for q, c in classes.items()},
            cfg.call.get("negative_prompt"),
        )

    def negative(self, prompt: str) -> str | None:
        return self.negatives.get(prompt, self.default_negative)


@dataclass
class Pipeline:
    """A loaded pipeline, the scheduler config it shipped with, its call arguments and per-prompt embeddings."""

    pipe: Any
    model_id: str
    family: Family
    device: str
    dtype: torch.dtype
    base_scheduler_config: Any
    adds: dict[str, Any] = field(default_factory=dict)  # what the study adds to the model: VAE, LoRAs, ...
    calls: Calls = field(default_factory=Calls)
    warm: bool = False
    warmed: set[tuple[Any, ...]] = field(default_factory=set)  # serving call shapes already warmed up
    forward_passes: float = 0  # denoiser calls; a call a cache cut short counts for the share it computed
    guided_passes: float = 0  # of those, the ones with classifier-free guidance on (a doubled batch)
    meter: Meter | None = None  # the share of each denoiser call that ran (a cache skips parts of it)
    _last_step: Any = None  # the timestep of the last denoiser call (true CFG calls twice per step)
    auto_batch: int = 16  # batch_size = "auto": the largest batch tried that fitted (halved on out-of-memory)
    embeds: dict[tuple[Any, ...], dict[str, torch.Tensor]] = field(default_factory=dict)

    def _count(self, *_: Any) -> None:
        """One denoiser call, counted once it returns, for the share of its compute that ran (1 but where a
        cache skipped parts: :class:`autotune.model.compute.Meter`): a call guided in the same batch counts
        as guided; true CFG's second call of a step (the negative prompt's, at the step's timestep again)
        counts as the first one's guidance; a call outside the setting's guidance interval counts unguided
        (:mod:`autotune.space.guidance`: its batch was halved, or true CFG's second call was not made)."""
        ran = self.meter.share() if self.meter is not None else 1.0
        share = 1 if ran > 0.9999 else ran
        interval = guidance.current(self.pipe)
        if interval is not None and interval.skipped:
            return
        step = getattr(self.pipe, "_current_timestep", None)
        if self.family.true_cfg and step is not None and step is self._last_step:
            self.guided_passes += share
            return
        self._last_step = step
        self.forward_passes += share
        unguided = interval is not None and interval.unguided
        self.guided_passes += share if getattr(self.pipe, "do_classifier_free_guidance", False) and not unguided else 0

    def identity(self, prompt: str) -> str:
        """The model as reference keys know it: its id, plus what production adds to this prompt's call."""
        return model_identity(self.model_id, self.adds, self.calls.call, self.calls.negative(prompt))


def _check_call(cfg: StudyConfig, pipeline_class: Any) -> None:
    """Every ``[call]`` key is an argument of the pipeline's ``__call__``."""
    taken = inspect.signature(pipeline_class.__call__).parameters
    for key in cfg.call:
        if key not in taken:
            raise ConfigError(
                f"{cfg.path}: call.{key}: not an argument of {pipeline_class.__name__}.__call__ "
                f"(expected one of: {', '.join(k for k in taken if k not in ('self', 'kwargs'))})"
            )


def check_calls(p: Pipeline, cfg: StudyConfig) -> None:
    """``[call]`` fits the loaded pipeline (its class may be a team's own), ``clip_skip`` included."""
    from autotune.model.encode import encode_prompt

    _check_call(cfg, type(p.pipe))
    _warn_long_prompts(p, cfg)
    if "clip_skip" in cfg.call:  # diffusers 0.42 reads text_encoder.text_model, which transformers 5 flattened
        try:
            with torch.no_grad():
                encode_prompt(p.pipe, "a test", p.device, None, cfg.call["clip_skip"])
        except (AttributeError, IndexError) as e:
            raise ConfigError(
                f"{cfg.path}: call.clip_skip: {type(p.pipe).__name__} cannot apply it on this stack (its encode_prompt "
                f"fails: {e}); leave it out, or study on the diffusers/transformers pair production runs"
            ) from None


def _warn_long_prompts(p: Pipeline, cfg: StudyConfig, most: int = 3) -> None:
    """Prompts longer than the text encoder reads: the pipeline cuts them (production too), so the study
    scores what is left; said once per class with their token counts."""
    tokenizer = getattr(p.pipe, "tokenizer", None)
    limit = getattr(tokenizer, "model_max_length", None)
    if tokenizer is None or not isinstance(limit, int) or limit > 100_000:  # no tokenizer, or no stated length
        return
    for c, prompts in cfg.classes.items():
        counts = [(i, len(tokenizer(q, verbose=False).input_ids)) for i, q in enumerate(prompts)]
        long = [(i, n) for i, n in counts if n > limit]
        if long:
            named = ", ".join(f"prompts[{i}] ({n} tokens)" for i, n in long[:most])
            more = f" and {len(long) - most} more" if len(long) > most else ""
            warnings.warn(
                f"classes.{c}: {named}{more} exceed the text encoder's {limit} tokens (start and end included); "
                "the pipeline cuts the rest, so the study scores, and production renders, only the first "
                f"{limit}: shorten them",
                ConfigWarning,
                stacklevel=2,
            )


def resolve_device(device: str, where: str = "model.device") -> str:
    """A study's device made concrete ("auto": CUDA when there is one); CUDA asked for without one is refused,
    naming ``where`` it was asked for (the study file's key, or ``--device``)."""
    dev = ModelConfig(device=device).resolved_device(torch.cuda.is_available())
    if dev.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f'{where}: {device!r} asked for, but torch sees no CUDA device (use "auto" or "cpu")')
    return dev


def _resolve_dtype(dtype: str, device: str) -> torch.dtype:
    if dtype == "auto":
        return torch.float16 if device.startswith("cuda") else torch.float32
    return _DTYPES[dtype]


def runtime(cfg: StudyConfig, device: str | None = None) -> dict[str, str]:
    """The device kind and dtype a study renders with: trials on another are not comparable."""
    dev = resolve_device(device or cfg.model.device, "--device" if device else f"{cfg.path}: model.device")
    return {"device": dev.split(":")[0], "dtype": str(_resolve_dtype(cfg.model.dtype, dev)).removeprefix("torch.")}


@dataclass(frozen=True)
class ModelDescription:
    """What a model is before its weights load: family, usable schedulers, ``model_index.json``, and the
    pipeline a ``model.pipeline`` function built to be described (None otherwise)."""

    family: Family
    compatible: list[str]
    index: dict[str, Any]
    built: Any = None


def describe_model(model: ModelConfig) -> ModelDescription:
    """Describe a model without loading weights (a ``model.pipeline`` function is called: its pipeline is
    what there is to describe, and is kept for loading)."""
    device = model.resolved_device(torch.cuda.is_available())
    index, built = sources.model_index(model, _resolve_dtype(model.dtype, device))  # the dtype a function gets
    pipeline_class = index.get("_class_name", "")
    scheduler_class = (index.get("scheduler") or [None, "PNDMScheduler"])[1]
    try:
        embedded = sources.guidance_embedded(model, index, built)
        family = families.detect(pipeline_class, scheduler_class, model.id, model.family, embedded)
    except ValueError as e:
        raise ConfigError(f"{'model.id' if model.family == 'auto' else 'model.family'}: {e}") from None
    return ModelDescription(family, families.compatible_schedulers(family, scheduler_class), index, built)


def resolve_config(cfg: StudyConfig, described: ModelDescription | None = None) -> ResolvedStudy:
    """The study file resolved against its model (read from ``model_index.json``; no weights load)."""
    import diffusers

    try:
        described = described or describe_model(cfg.model)
    except ConfigError as e:
        raise ConfigError(f"{cfg.path}: {e}") from None
    if (cls := getattr(diffusers, described.index.get("_class_name", ""), None)) is not None:
        _check_call(cfg, cls)
    return dataclasses.replace(resolve(cfg, described.family, described.compatible), described=described)


def load_pipeline(
    model: ModelConfig,
    device: str | None = None,
    safety_checker: bool = False,
    *,
    described: ModelDescription | None = None,
    calls: Calls | None = None,
) -> Pipeline:
    """Load the pipeline named by ``model.id``: ``"micro"``, ``"tiny"``, a hub id, a folder or a file.

    Weights load as safetensors only, with no remote code. A model's safety checker is left out
    unless ``safety_checker``: it costs time per image and blanks some, whatever the setting.
    """
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    diffusers_logging.set_verbosity_error()  # not the 77-token truncation notice at every call of a long prompt
    transformers_logging.disable_progress_bar()
    dev = resolve_device(device or model.device)
    dtype = _resolve_dtype(model.dtype, dev)
    described = described or describe_model(model)
    index = described.index
    absent: dict[str, Any] = {k: None for k, v in index.items() if isinstance(v, list) and v[0] is None}  # SD3, no T5
    if "safety_checker" in index and not safety_checker:
        absent.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe = sources.build(model, dtype, absent, index, described.built).to(dev)
    pipe.set_progress_bar_config(disable=True)
    loaded = Pipeline(pipe, model.id, described.family, dev, dtype, pipe.scheduler.config, model.additions())
    loaded.calls = calls or Calls()
    denoiser = caches.denoiser(pipe)
    loaded.meter = Meter(denoiser)
    denoiser.register_forward_hook(loaded._count)
    return loaded
