"""From recommendation to production: apply one class's recommended setting to a pipeline.

Example:
    >>> recs = autotune.load_recommendations("studies/demo/recommendations.json")
    >>> kwargs = autotune.apply(pipe, recs["portrait"])     # swaps pipe.scheduler
    >>> image = pipe(prompt, **kwargs).images[0]

``recs["default"]`` is the study's baseline: what to serve a prompt that fits no class.
"""

from __future__ import annotations

import json
from typing import Any

from autotune.results.recommendations_file import ClassRecommendation

__all__ = ["apply"]


def _family_of(pipe: Any) -> str:
    from autotune.space.families import detect, guidance_embedded

    base = getattr(pipe, "_autotune_base_scheduler", None) or (type(pipe.scheduler).__name__, None)
    name_or_path = str(getattr(pipe.config, "_name_or_path", "") or "")
    try:
        return detect(type(pipe).__name__, base[0], name_or_path, embedded=guidance_embedded(pipe)).name
    except ValueError as e:
        raise ValueError(f"cannot apply a recommendation: {e}") from None


def apply(pipe: Any, rec: ClassRecommendation) -> dict[str, Any]:
    """Swap ``pipe.scheduler`` to the recommended one and return the kwargs for ``pipe(prompt, ...)``:
    the setting's, the fixed arguments the study rendered the class with (its negative prompt,
    ``[call]``'s), and the callback that stops guidance part-way where the setting has a cutoff. The
    recommended feature cache and guidance interval are set on the pipeline's denoiser, and a cache or
    interval an earlier recommendation (or the user) set is removed first: the study validated the setting
    with its own or none.

    The new scheduler is ``Cls.from_config(<the pipeline's original scheduler config>,
    **rec.scheduler_config)``: the original config is kept on the pipeline the first time, so
    applying one recommendation after another never carries an earlier one's overrides along.

    Raises:
        TypeError: ``rec`` is not a :class:`ClassRecommendation` (a dict read from the JSON, say).
        ValueError: the recommendation was made for another model family, or the pipeline's
            scheduler cannot be swapped for the recommended one.
    """
    import diffusers

    from autotune.space import caches, schedulers
    from autotune.space.families import FAMILIES, compatible_schedulers
    from autotune.space.guidance import cutoff_kwargs, set_interval

    if not isinstance(rec, ClassRecommendation):
        raise TypeError(
            f"apply(pipe, rec): expected one class's recommendation, recs[NAME] of "
            f"autotune.load_recommendations(...), got {type(rec).__name__}"
        )
    family = _family_of(pipe)
    if family != rec.family:
        raise ValueError(
            f"cannot apply {rec.name!r}: it was made for a {rec.family} model, this pipeline "
            f"({type(pipe).__name__}) is a {family} model"
        )
    if getattr(pipe, "_autotune_base_scheduler", None) is None:
        pipe._autotune_base_scheduler = (type(pipe.scheduler).__name__, dict(pipe.scheduler.config))
    base_class, base_config = pipe._autotune_base_scheduler
    usable = compatible_schedulers(FAMILIES[family], base_class)
    if rec.scheduler not in usable or schedulers.get(rec.scheduler).class_name != rec.scheduler_class:
        raise ValueError(
            f"cannot apply {rec.name!r}: this pipeline's {base_class} cannot be swapped for "
            f"{rec.scheduler_class} ({rec.scheduler}); it can use: {', '.join(usable)}"
        )
    cls = getattr(diffusers, rec.scheduler_class)
    pipe.scheduler = cls.from_config(base_config, **rec.scheduler_config)
    set_interval(pipe, (), FAMILIES[family])  # off before a cache wraps the denoiser: then this class's own
    caches.turn_off(pipe)
    caches.turn_on(pipe, rec.cache)
    set_interval(pipe, rec.guidance_interval, FAMILIES[family])
    kwargs = json.loads(json.dumps(rec.call_kwargs))  # a fresh copy the caller may change
    return kwargs | cutoff_kwargs(rec.guidance_cutoff, FAMILIES[family])
