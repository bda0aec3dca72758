"""From recommendation to production: read ``recommendations.json`` and apply one to a pipeline.

Example:
    >>> recs = autotune.load_recommendations("studies/demo/recommendations.json")
    >>> kwargs = autotune.apply(pipe, recs["portrait"])     # swaps pipe.scheduler
    >>> image = pipe(prompt, **kwargs).images[0]

``recs["default"]`` is the study's baseline: what to serve a prompt that fits no class.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autotune.config import ConfigError

__all__ = ["ClassRecommendation", "Recommendations", "apply", "load_recommendations"]

DEFAULT_CLASS = "default"


@dataclass(frozen=True)
class ClassRecommendation:
    """One class's recommended setting, as ``recommendations.json`` states it."""

    name: str
    setting: str  # human label: "DPM++ 2M [sigmas=karras], 12 steps, CFG 6.5"
    scheduler: str  # autotune's table name
    options: dict[str, Any]
    steps: int
    guidance: float
    scheduler_class: str
    scheduler_config: dict[str, Any]  # the overrides on top of the pipeline's own scheduler config
    call_kwargs: dict[str, Any]
    family: str
    speedup: float | None = None


def _from_summary(name: str, d: Mapping[str, Any], family: str, speedup: float | None) -> ClassRecommendation:
    x = d["diffusers"]
    return ClassRecommendation(
        name=name,
        setting=d["setting"],
        scheduler=d["scheduler"],
        options=dict(d.get("options", {})),
        steps=int(d["steps"]),
        guidance=float(d["guidance"]),
        scheduler_class=x["scheduler_class"],
        scheduler_config=dict(x["scheduler_config"]),
        call_kwargs=dict(x["call_kwargs"]),
        family=family,
        speedup=speedup,
    )


@dataclass(frozen=True)
class Recommendations(Mapping[str, ClassRecommendation]):
    """Every class's recommendation, plus ``"default"`` (the baseline) and the router's data."""

    study: str
    model: dict[str, Any]
    classes: dict[str, ClassRecommendation]
    router: dict[str, Any] = field(default_factory=dict)
    seed_lpips: dict[str, float | None] = field(default_factory=dict)  # per class: LPIPS between two seeds
    path: Path | None = None

    def __getitem__(self, name: str) -> ClassRecommendation:
        if name in self.classes:
            return self.classes[name]
        raise KeyError(f"no recommendation for class {name!r} (expected one of: {', '.join(self.classes)})")

    def __iter__(self) -> Iterator[str]:
        return iter(self.classes)

    def __len__(self) -> int:
        return len(self.classes)


def load_recommendations(path: str | Path) -> Recommendations:
    """Read ``recommendations.json`` (or find it from the study file ``studies/NAME.toml``).

    Raises :class:`~autotune.config.ConfigError` naming the file and what is wrong with it.
    """
    path = Path(path)
    if path.suffix == ".toml":
        from autotune.config import load_config

        path = load_config(path).output_dir / "recommendations.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file; run `autotune study` to write it") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: cannot read it as recommendations JSON ({e})") from None
    try:
        family = data["model"]["family"]
        classes = {
            c: _from_summary(c, d, family, d.get("speedup"))
            for c, d in data["classes"].items()
            if d.get("trial") is not None
        }
        if "default" in data:
            classes.setdefault(DEFAULT_CLASS, _from_summary(DEFAULT_CLASS, data["default"], family, 1.0))
        seed_lpips = {c: d.get("seed_lpips") for c, d in data["classes"].items()}
        return Recommendations(data["study"], data["model"], classes, data.get("router", {}), seed_lpips, path)
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"{path}: not an autotune recommendations file (missing or bad {e})") from None


def _family_of(pipe: Any) -> str:
    from autotune.families import detect

    base = getattr(pipe, "_autotune_base_scheduler", None) or (type(pipe.scheduler).__name__, None)
    name_or_path = str(getattr(pipe.config, "_name_or_path", "") or "")
    try:
        return detect(type(pipe).__name__, base[0], name_or_path).name
    except ValueError as e:
        raise ValueError(f"cannot apply a recommendation: {e}") from None


def apply(pipe: Any, rec: ClassRecommendation) -> dict[str, Any]:
    """Swap ``pipe.scheduler`` to the recommended one and return the kwargs for ``pipe(...)``.

    The new scheduler is ``Cls.from_config(<the pipeline's original scheduler config>,
    **rec.scheduler_config)``: the original config is kept on the pipeline the first time, so
    applying one recommendation after another never carries an earlier one's overrides along.

    Raises:
        ValueError: the recommendation was made for another model family, or the pipeline's
            scheduler cannot be swapped for the recommended one.
    """
    import diffusers

    from autotune import schedulers
    from autotune.families import FAMILIES, compatible_schedulers

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
    return json.loads(json.dumps(rec.call_kwargs))  # a fresh copy the caller may change
