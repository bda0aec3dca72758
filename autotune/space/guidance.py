"""Which denoiser calls run with classifier-free guidance: on (``guidance > 1``), stopped after a share of the
steps (the cutoff, diffusers' own callback rule), or on a range of noise levels only (the interval).

The interval (Kynkaanniemi et al., NeurIPS 2024, "Applying guidance in a limited interval improves sample
and distribution quality"; on SDXL guidance only for sigma in (0.28, 5.42]) is stated in the model's noise
levels, so it carries across step counts and samplers: a denoiser call at noise level sigma runs guided iff
``low < sigma <= high``. Outside, the call is made as an unguided one: a batched-CFG model (SD, SDXL, SD3) runs
on the conditional half of its batch and the pipeline's guidance sees the same prediction twice (its
image is the unguided call's, bit for bit); a true-CFG model (Flux) skips the negative prompt's call.

Example:
    >>> with interval_on(pipe, (0.28, 5.42), FAMILIES["sdxl"]):
    ...     image = pipe(prompt, guidance_scale=7.0).images[0]
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from autotune.space.families import Family

__all__ = [
    "INTERVAL",
    "UNBOUNDED",
    "GuidanceCutoff",
    "Interval",
    "current",
    "cutoff_kwargs",
    "guidance_on",
    "guided_steps",
    "interval_choices",
    "interval_from_json",
    "interval_json",
    "interval_label",
    "interval_of",
    "interval_on",
    "normal_interval",
    "set_interval",
]

INTERVAL = ("guidance_sigma_low", "guidance_sigma_high")  # the trial parameters: sigma where guidance starts and stops
Interval = tuple[float, float] | tuple[()]  # (low, high]: guided noise levels; (): every one
UNBOUNDED = (0.0, math.inf)  # the ends that bound nothing: guidance at every noise level


def guidance_on(guidance: float, family: Family | None = None) -> bool:
    """Whether classifier-free guidance runs (a second, unconditional model call per step): diffusers'
    pipelines guide when ``guidance_scale > 1``, and so do the renders, the parity check and the cost; a
    family whose guidance is embedded in the one call (Flux dev) never (:attr:`Family.cfg`)."""
    return float(guidance) > 1.0 and (family is None or family.cfg)


def guided_steps(timesteps: int, cutoff: float) -> int:
    """Of ``timesteps`` denoising steps, how many run with guidance when it stops at ``cutoff``: diffusers'
    CFG cutoff callbacks turn it off after step ``int(timesteps * cutoff)`` (counting from 0)."""
    return timesteps if cutoff >= 1 else min(timesteps, int(timesteps * cutoff) + 1)


@dataclass(frozen=True)
class GuidanceCutoff:
    """A ``callback_on_step_end`` that stops classifier-free guidance part-way, on diffusers' own rule
    (``SDCFGCutoffCallback``, ``SDXLCFGCutoffCallback``, ``SD3CFGCutoffCallback``: after step ``int(N *
    cutoff)``), for a batch of any size: it keeps the conditional half of each guidance input, where
    diffusers' keeps the last row (one prompt's; a batched call then fails on a size mismatch)."""

    cutoff: float
    inputs: tuple[str, ...]

    @property
    def tensor_inputs(self) -> list[str]:
        return list(self.inputs)

    def __call__(self, pipe: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        if step == int(pipe.num_timesteps * self.cutoff):
            pipe._guidance_scale = 0.0
            for name in self.inputs:
                kwargs[name] = kwargs[name].chunk(2)[1]
        return kwargs


def cutoff_kwargs(cutoff: float, family: Family) -> dict[str, Any]:
    """The pipeline call arguments that stop guidance at ``cutoff`` (none where it runs on every step)."""
    if cutoff >= 1:
        return {}
    callback = GuidanceCutoff(cutoff, family.cfg_inputs)
    return {"callback_on_step_end": callback, "callback_on_step_end_tensor_inputs": callback.tensor_inputs}


def normal_interval(interval: Any) -> Interval:
    """``(low, high)`` as floats, or ``()`` where it guides at every noise level (low 0 or below, high
    infinite) or was given as none."""
    if not interval:
        return ()
    low, high = (float(v) for v in interval)
    return () if low <= 0 and math.isinf(high) else (round(low, 6), high if math.isinf(high) else round(high, 6))


def interval_choices(space: Any) -> dict[str, tuple[float, ...]]:
    """The values searched for each end of the interval that ``space`` states (``search.guidance_sigma_low``,
    ``search.guidance_sigma_high``), each with the end that bounds nothing: a low of 0, a high of infinity."""
    out = {}
    for name, every in zip(INTERVAL, UNBOUNDED, strict=True):
        if stated := getattr(space, name, None):
            out[name] = (every, *stated) if every == 0 else (*stated, every)
    return out


def interval_of(params: Any) -> tuple[float, float]:
    """The interval's ends in trial parameters (:data:`INTERVAL`), an end not among them bounding nothing."""
    low, high = (float(params.get(name, every)) for name, every in zip(INTERVAL, UNBOUNDED, strict=True))
    return low, high


def interval_json(interval: Interval) -> list[float | None] | None:
    """As ``recommendations.json`` states it: ``[low, high]``, ``null`` for an open high end (none: null)."""
    return [interval[0], None if math.isinf(interval[1]) else interval[1]] if interval else None


def interval_from_json(value: Any) -> Interval:
    """Inverse of :func:`interval_json`."""
    return normal_interval((value[0], math.inf if value[1] is None else value[1])) if value else ()


def interval_label(interval: Interval) -> str:
    """``for sigma in (0.28, 5.42]`` (empty for none), said after the guidance scale."""
    return f"for sigma in ({interval[0]:g}, {interval[1]:g}]" if interval else ""


def _sigma(pipe: Any, timestep: Any, family: Family) -> float:
    """The noise level of a denoiser call from its timestep argument: sigma = sqrt((1 - alphabar_t) / alphabar_t) on the
    scheduler's training table (interpolated: Karras-type schedules call at fractional timesteps); a
    flow-matching model's sigma is its timestep over the training timesteps (Flux's pipeline passes sigma itself)."""
    import numpy as np

    t = float(timestep.flatten()[0]) if hasattr(timestep, "flatten") else float(timestep)
    table = getattr(pipe.scheduler, "alphas_cumprod", None)
    if table is None or family.flow:
        return t if family.sigmas else t / float(pipe.scheduler.config.num_train_timesteps)
    ac = np.asarray(table, dtype=np.float64)
    return float(np.interp(t, np.arange(len(ac)), np.sqrt((1 - ac) / ac)))


def _halve(x: Any, n: int) -> Any:
    """The conditional half of every batched tensor in a call's arguments (nested dicts included)."""
    if hasattr(x, "shape") and x.ndim and x.shape[0] == n:
        return x[n // 2 :]
    if isinstance(x, dict):
        return {k: _halve(v, n) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return type(x)(_halve(v, n) for v in x)
    return x


def _twice(x: Any) -> Any:
    """A prediction made on half the batch, stacked twice: the pipeline's guidance then sees no difference."""
    import torch

    if isinstance(x, torch.Tensor):
        return torch.cat([x, x])
    if isinstance(x, tuple):
        return tuple(_twice(v) for v in x)
    if hasattr(x, "sample"):
        x.sample = torch.cat([x.sample, x.sample])
    return x


class _Interval:
    """The denoiser's ``forward``, wrapped: guided calls as they are, the others made unguided (see the
    module); ``unguided`` says whether the last call was, ``skipped`` whether it computed nothing."""

    def __init__(self, pipe: Any, model: Any, interval: Interval, family: Family) -> None:
        self.pipe, self.interval, self.family = pipe, interval, family
        self.inner = model.forward
        self.unguided = self.skipped = False
        self._last: tuple[Any, Any] = (None, None)  # true CFG: the step's first call and its output

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        timestep = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        low, high = self.interval or UNBOUNDED
        self.unguided = not low < _sigma(self.pipe, timestep, self.family) <= high
        self.skipped = False
        if self.family.true_cfg:  # two calls a step: the second (the negative prompt's) repeats the first's
            step = getattr(self.pipe, "_current_timestep", None)
            if self.unguided and step is not None and step is self._last[0]:
                self.skipped = True
                return self._last[1]
            out = self.inner(*args, **kwargs)
            self._last = (step, out)
            return out
        if not self.unguided or not getattr(self.pipe, "do_classifier_free_guidance", False):
            return self.inner(*args, **kwargs)
        sample: Any = args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))
        n = int(sample.shape[0])
        return _twice(self.inner(*_halve(args, n), **_halve(kwargs, n)))


def set_interval(pipe: Any, interval: Interval, family: Family) -> None:
    """Guidance on the pipeline's denoiser only inside ``interval`` from now on (none: on every call),
    replacing an interval set before."""
    from autotune.space.caches import denoiser

    model = denoiser(pipe)
    if isinstance(model.__dict__.get("forward"), _Interval):
        del model.forward
    if interval:
        model.forward = _Interval(pipe, model, interval, family)


def current(pipe: Any) -> Any:
    """The interval wrapper on the pipeline's denoiser (None: none), for the render's call count."""
    from autotune.space.caches import denoiser

    wrapper = denoiser(pipe).__dict__.get("forward")
    return wrapper if isinstance(wrapper, _Interval) else None


@contextlib.contextmanager
def interval_on(pipe: Any, interval: Interval, family: Family) -> Iterator[None]:
    """:func:`set_interval` for the calls inside, and none after."""
    set_interval(pipe, interval, family)
    try:
        yield
    finally:
        set_interval(pipe, (), family)
