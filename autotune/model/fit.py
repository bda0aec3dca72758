"""A class's own step schedule (``sigmas = "fitted"``): a sampler's timesteps at one step count, fitted to
the study's reference (its many-step teacher) on the class's prompts.

The fit starts from the sampler's best named spacing (leading, linspace or trailing) on the fit images
and moves one timestep at a time (by 128, then 64, 32, 16 and 8 training steps, keeping the list
strictly decreasing) while the mean distance of the sampler's images to the reference's falls: a
coordinate descent on the student's own trajectory, as Optimal Stepsize (OSS) propagates the student
rather than summing one-jump errors against the teacher. It renders the fit images ``MAX_RENDERS``
times at most, never ends worse than the spacing it started from on them, and keeps that spacing
when the fitted list is not also closer on check prompts it was not fitted to.

Example:
    >>> timesteps, info = fit_timesteps(p, Settings.make("dpmpp_2m", 6, 5.0, {"sigmas": "fitted"}),
    ...                                 prompts, [0, 1], refs, lpips, 32, 32)
    >>> timesteps, info["start"], info["renders"]
    ([999, 801, 601, 393, 225, 65], 'trailing', 40)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from autotune.model.pipeline import Pipeline
from autotune.model.render import generate
from autotune.space import schedulers
from autotune.space.settings import Settings

__all__ = ["FIT_PROMPTS", "FIT_SHARE", "MAX_RENDERS", "MOVES", "fit_timesteps", "spacing"]

MOVES = (128, 64, 32, 16, 8)  # in training timesteps, coarse to fine
MAX_RENDERS = 24  # renders of the fit images per schedule, the starting spacings included
FIT_PROMPTS = 2  # the class's first prompts, with each search seed: the fit images
FIT_SHARE = 0.3  # every fit of a class study together costs at most this share of its search's denoiser calls
SPACINGS = ("leading", "linspace", "trailing")


def spacing(p: Pipeline, settings: Settings, name: str) -> list[int]:
    """The sampler's timesteps at ``settings.steps`` under the named ``timestep_spacing``."""
    options = {k: v for k, v in settings.options if k != "sigmas"} | {"timestep_spacing": name}
    scheduler = schedulers.build(settings.scheduler, p.base_scheduler_config, options)
    scheduler.set_timesteps(settings.steps)
    return [int(t) for t in scheduler.timesteps]


def fit_timesteps(
    p: Pipeline,
    settings: Settings,
    prompts: Sequence[str],
    seeds: Sequence[int],
    references: Any,
    distance: Callable[[Any, Any], Any],
    height: int,
    width: int,
    batch_size: int | str = "auto",
    max_renders: int = MAX_RENDERS,
    check: tuple[Sequence[str], Any] | None = None,
    in_time: Callable[[], bool] = lambda: True,
) -> tuple[list[int], dict[str, Any]]:
    """The fitted timesteps for ``settings`` (a ``sigmas = "fitted"`` setting) and what the fit did:
    the spacing it started from, its distance and the fitted one's (mean over the fit images, against
    ``references``, prompt-major as :func:`generate` renders), the renders and images it spent.

    ``check``: other prompts and their references (same seeds) the fitted list must also be closer on
    than the spacing it started from, else the fit keeps that spacing (a fit to four images can chase
    their noise: probed here, one moved DPM++ 2M's first step off the top and was 7x worse elsewhere).

    ``in_time``: looked at before each move's render; once False, the descent stops where it is (still never
    worse than its start on the fit images) and ``info["stopped"]`` says so: the run's deadline passed.
    """
    top = int(p.base_scheduler_config.get("num_train_timesteps", 1000)) - 1
    renders = images = 0

    def score(timesteps: Sequence[int], on: Sequence[str] = prompts, refs: Any = references) -> float:
        nonlocal renders, images
        renders, images = renders + 1, images + len(on) * len(seeds)
        trial = dataclasses.replace(settings, timesteps=tuple(timesteps))
        out = generate(p, trial, on, seeds, height, width, batch_size).images
        return float(distance(out, refs).mean())

    starts: dict[tuple[int, ...], str] = {}
    for name in SPACINGS:  # two spacings may name one list
        starts.setdefault(tuple(spacing(p, settings, name)), name)
    scored = {ts: score(ts) for ts in starts}
    first = min(scored, key=scored.__getitem__)
    best, value = list(first), scored[first]
    stopped = False
    for move in MOVES:
        improved = True
        while improved and renders < max_renders and not stopped:
            improved = False
            for i in range(len(best)):
                for step in (move, -move):
                    stopped = stopped or not in_time()
                    if renders >= max_renders or stopped:
                        break
                    candidate = list(best)
                    candidate[i] += step
                    high = top if i == 0 else candidate[i - 1] - 1
                    low = 0 if i == len(best) - 1 else candidate[i + 1] + 1
                    if not low <= candidate[i] <= high:
                        continue
                    v = score(candidate)
                    if v < value:
                        best, value, improved = candidate, v, True
    held = None
    if check is not None and tuple(best) != first:
        held = score(best, *check) < score(first, *check)
        if not held:
            best, value = list(first), scored[first]
    info = {
        "start": starts[first],
        "start_distance": scored[first],
        "distance": value,
        "held_on_check": held,  # None: no check (or nothing moved)
        "renders": renders,
        "images": images,
        "calls": images * settings.steps,  # denoiser calls per image x images: the fit's cost
        "guidance": settings.guidance,
        **({"stopped": "the time limit"} if stopped else {}),
    }
    return best, info
