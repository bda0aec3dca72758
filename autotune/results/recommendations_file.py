"""``recommendations.json``: one schema, written by :func:`recommendations_data` and read by
:func:`load_recommendations` (serving, the router, exports, validation), so writer and readers never
disagree on a key. Light to import: serving code loads it without Optuna, torch or SQLAlchemy.

Example:
    >>> data = recommendations_data(outcomes.cfg, outcomes)       # the study side
    >>> recs = load_recommendations("studies/demo/recommendations.json")   # serving
    >>> recs["round"].scheduler_class
    'EulerDiscreteScheduler'
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autotune.config import ConfigError
from autotune.config.objectives import OBJECTIVES, cost_of, quality
from autotune.records import trial_record
from autotune.results.notes import call_ratio, fleet, prompts_note, random_weights_warning, timing_check
from autotune.space import caches
from autotune.space.guidance import Interval, interval_from_json, interval_json
from autotune.space.tools import TOOLS

if TYPE_CHECKING:
    from autotune.config.resolve import ResolvedStudy
    from autotune.results.reader import ClassOutcome
    from autotune.space.families import Family

__all__ = [
    "DEFAULT_CLASS",
    "RULE_TEXT",
    "ClassRecommendation",
    "Recommendations",
    "load_recommendations",
    "recommendations_data",
    "router_data",
    "trial_summary",
]

DEFAULT_CLASS = "default"  # the baseline, for prompts that fit no class
THRESHOLD_MARGIN = 0.9  # the router's default threshold: this share of the least typical study prompt's similarity
RULE_TEXT = (
    "A cheaper setting replaces the baseline when the one-sided 95 % bounds of its per-image differences to the "
    "baseline (same prompt, same noise; t over prompt means) are within tolerance on every metric and on its share "
    "of collapsed images, on the search (and racing) images, then on the confirmation images alone; cheaper "
    "means faster on every timed serving call; of those, the cheapest by fitted cost."
)


@dataclass(frozen=True)
class ClassRecommendation:
    """One class's recommended setting, as ``recommendations.json`` states it."""

    name: str
    setting: str  # human label: "DPM++ 2M [sigmas=exponential], 12 steps, CFG 6.5"
    scheduler: str  # autotune's table name
    options: dict[str, Any]
    steps: int
    guidance: float
    scheduler_class: str
    scheduler_config: dict[str, Any]  # complete: any class may follow any other
    call_kwargs: dict[str, Any]
    family: str
    speedup: float | None = None
    guidance_cutoff: float = 1.0  # the share of steps with guidance (1: every step)
    cache: tuple[Any, ...] = ()  # a feature cache on the denoiser, (name, value); () none (autotune.space.caches)
    guidance_interval: Interval = ()  # guidance only for sigma in (low, high]; () every sigma (autotune.space.guidance)

    def settings(self) -> Any:
        """The setting to render it with (:class:`autotune.space.settings.Settings`), a fitted schedule's
        list included (AYS's is recomputed the same)."""
        from autotune.space.settings import Settings

        own = self.call_kwargs.get("timesteps", ())
        return Settings.make(
            self.scheduler, self.steps, self.guidance, self.options, self.guidance_cutoff, own, self.cache,
            self.guidance_interval,
        )  # fmt: skip


@dataclass(frozen=True)
class Recommendations(Mapping[str, ClassRecommendation]):
    """Every class's recommendation, plus ``"default"`` (the baseline) and the router's data."""

    study: str
    model: dict[str, Any]
    classes: dict[str, ClassRecommendation]
    router: dict[str, Any] = field(default_factory=dict)
    seed_lpips: dict[str, float | None] = field(default_factory=dict)  # per class: LPIPS between two seeds
    tolerances: dict[str, dict[str, Any]] = field(default_factory=dict)  # per class, in metric units
    path: Path | None = None
    unrecommended: dict[str, str] = field(default_factory=dict)  # class -> its decision's state (no baseline yet)

    def nothing(self) -> str | None:
        """Why there is nothing to use (no class has a recommendation and no ``default``), else None."""
        if self.classes:
            return None
        said = "; ".join(f"classes.{c}: {state}" for c, state in self.unrecommended.items()) or "no class"
        return f"{self.path}: nothing recommended yet ({said}); run `autotune study` until a baseline completes"

    def __getitem__(self, name: str) -> ClassRecommendation:
        if name in self.classes:
            return self.classes[name]
        raise KeyError(f"no recommendation for class {name!r} (expected one of: {', '.join(self.classes)})")

    def __iter__(self) -> Iterator[str]:
        return iter(self.classes)

    def __len__(self) -> int:
        return len(self.classes)


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
        guidance_cutoff=float(d.get("guidance_cutoff", 1.0)),
        cache=caches.normal((d["cache"]["name"], d["cache"]["value"])) if d.get("cache") else (),
        guidance_interval=interval_from_json(d.get("guidance_interval")),
    )


_JSON_KIND = {"list": "an array", "str": "a string", "int": "a number", "float": "a number", "bool": "a boolean"}


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
    shapes: list[tuple[str, Any]] = [("the file", data)]
    if isinstance(data, dict):
        shapes += [("model", data.get("model")), ("classes", data.get("classes"))]
        shapes += [(f"classes.{c}", d) for c, d in data["classes"].items()] if isinstance(shapes[-1][1], dict) else []
    for where, value in shapes:
        if not isinstance(value, dict):
            got = "nothing" if value is None else _JSON_KIND.get(type(value).__name__, type(value).__name__)
            raise ConfigError(f"{path}: not an autotune recommendations file ({where}: expected an object, got {got})")
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
        tolerances = {c: dict(d.get("tolerance") or {}) for c, d in data["classes"].items()}
        unrecommended = {
            c: str((d.get("decision") or {}).get("state", "not decided"))
            for c, d in data["classes"].items()
            if c not in classes
        }
        return Recommendations(
            data["study"], data["model"], classes, data.get("router", {}), seed_lpips, tolerances, path, unrecommended
        )
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"{path}: not an autotune recommendations file (missing or bad {e})") from None


def trial_summary(
    t: Any,
    objectives: tuple[str, ...],
    family: Family,
    base: Mapping[str, Any] | None = None,
    call: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A trial as plain JSON-able data: setting, its names in other tools, the diffusers recipe, metrics.

    With ``base``, the model's own scheduler config, the recipe's ``scheduler_config`` is complete
    (:func:`autotune.space.schedulers.complete`); without, it lists the overrides only. ``call``: the
    fixed call arguments its images were rendered with (the class's negative prompt, ``[call]``), which
    the recipe's ``call_kwargs`` carry beside the setting's own, so that the recipe renders those images.
    """
    from autotune.decision.cost import evaluations
    from autotune.space import schedulers
    from autotune.space.settings import Settings

    s = Settings.of_trial(t)
    overrides = s.scheduler_overrides()
    spec = schedulers.get(s.scheduler)
    r = trial_record(t)
    spread = {m: r.values.get(m) for m in objectives}
    return {
        "trial": t.number,
        "setting": s.label(),
        "scheduler": s.scheduler,
        **{f"{tool}_name": schedulers.in_tool(s.scheduler, dict(s.options), tool)[0] for tool in TOOLS},
        "options": dict(s.options),
        "steps": s.steps,
        "guidance": s.guidance,
        "guidance_cutoff": s.cutoff,
        "cache": caches.describe(s.cache),
        "guidance_interval": interval_json(s.interval),
        "deterministic": spec.deterministic,
        "diffusers": {
            "scheduler_class": spec.class_name,
            "scheduler_config": overrides if base is None else schedulers.complete(s.scheduler, base, overrides),
            "call_kwargs": {
                **({"negative_prompt": ""} if family.true_cfg else {}),
                **(call or {}),
                **s.call_kwargs(family),
            },
            "guidance_cutoff": s.cutoff,  # 1: every step; below: guidance stops after this share of the steps
            # the class that turns the cache on (a config of diffusers.hooks, DeepCacheSDHelper), its arguments
            "cache": caches.as_config(s.cache),
            # guidance only for sigma in (low, high] (null: every sigma; a null high: no upper end), see autotune.apply
            "guidance_interval": interval_json(s.interval),
        },
        "metrics": dict(zip(objectives, t.values, strict=True)),
        "metrics_std": {m: statistics.pstdev(v) if v else None for m, v in spread.items()},
        "model_calls": r.model_calls,
        "model_evaluations": evaluations(r.model_calls, r.guided_calls, s),
    }


def _seconds_fit(o: ClassOutcome) -> dict[str, Any] | None:
    fit = o.evidence.fit
    if fit is None:
        return None
    return {
        "formula": "seconds per image = a + b * calls + c * calls * (share of the calls with guidance on)",
        "a": fit.a,
        "b": fit.b,
        "c": fit.c,
        "outlier_trials": o.evidence.outliers(),
    }


def _class_data(cfg: ResolvedStudy, o: ClassOutcome) -> dict[str, Any]:
    from autotune.decision.rule import collapsed_images

    objectives = cfg.metrics.objectives
    base = {
        "trials_completed": o.n_completed,
        "settings_rendered": len(o.trials),
        "trials_failed": o.n_failed,
        "pareto_front_size": len(o.front),
        "seed_lpips": o.seed_lpips,
        "seconds_fit": _seconds_fit(o),
    }
    rec = o.recommendation
    if rec is None:  # the decision's state says why not (the time limit, a signal, a run under way)
        return {**base, "recommended": None, "reason": o.no_baseline(), "decision": {"state": o.decision_state}}
    by_number = {t.number: t for t in o.trials}
    base_config = o.stored.scheduler_base
    call = cfg.call_for(o.name)
    chosen = trial_summary(by_number[rec.chosen.number], objectives, o.family, base_config, call)
    baseline = trial_summary(by_number[rec.baseline.number], objectives, o.family, base_config, call)
    chosen["seconds_fitted"], baseline["seconds_fitted"] = rec.chosen.cost, rec.baseline.cost
    if (cost := cost_of(objectives)) is not None:  # the seconds the speed-up reads (timed in turn at the end)
        for summary, c in ((chosen, rec.chosen), (baseline, rec.baseline)):
            if c.seconds:
                summary["metrics"][cost] = statistics.median(c.seconds)
    tol = o.tolerance
    assert tol is not None
    r = cfg.recommend
    ratio = call_ratio(chosen["model_evaluations"], baseline["model_evaluations"])
    timing = timing_check(
        rec.speedup if rec.met_tolerance else None,  # a kept baseline is 1x: no timing to doubt
        rec.speedup_range,
        ratio,
        f"autotune validate {cfg.path}",
    )
    return {
        **chosen,
        "speedup": None if timing else rec.speedup,  # the headline: None where the timing cannot support it
        "speedup_timed": rec.speedup,
        "speedup_range": rec.speedup_range,
        "model_call_ratio": ratio,
        "timing": timing,
        "met_tolerance": rec.met_tolerance,
        "confirmed": rec.confirmed,
        "reason": rec.reason,
        "baseline": baseline,
        "tolerance": {  # in metric units (None: not known yet, e.g. the baseline's spread unmeasured)
            **{m: t if math.isfinite(t) else None for m, t in tol.limits.items()},
            "seed_sd": dict(o.spread),  # the baseline's seed-to-seed standard deviation of each metric
            "collapse": {m: tol.cap(m) for m in tol.limits if math.isfinite(tol.cap(m))},
        },
        "collapsed": collapsed_images(rec.chosen, rec.baseline, tol),
        "decision": {
            "state": o.decision_state,
            "prompts": prompts_note(len(cfg.classes[o.name]), rec.chosen.images, rec.chosen.confirm),
            "confirm_seeds": list(r.confirm_seeds),
            "race_images": o.stored.race_images,
            "race_budget": r.race_budget,
            "candidates": list(rec.stages),
        },
        "margin": list(o.margin),
        **base,
    }


def recommendations_data(cfg: ResolvedStudy, outcomes: Mapping[str, ClassOutcome]) -> dict[str, Any]:
    """The content of ``recommendations.json``: one recommended setting per class, with evidence.

    Besides the classes: ``default``, the baseline, for prompts that fit no class, and ``router``,
    the class centroids of the study's CLIP text embeddings (see :mod:`autotune.serving.router`).
    """
    classes = {c: _class_data(cfg, o) for c, o in outcomes.items()}
    data: dict[str, Any] = {
        "study": cfg.name,
        "model": {
            "id": cfg.model.id,
            "family": cfg.family.name,
            "height": cfg.model.height,
            "width": cfg.model.width,
            **cfg.model.additions(),
        },
        "objectives": list(cfg.metrics.objectives),
        "rule": {
            "name": cfg.recommend.rule,
            "tolerances": {m: _stated(cfg, m) for m in quality(cfg.metrics.objectives)},
            "stochastic": cfg.recommend.stochastic,
            "text": RULE_TEXT,
        },
        "serving": dataclasses.asdict(cfg.serving),
        "classes": classes,
    }
    if (saved := fleet(cfg.traffic, classes)) is not None:
        data["fleet"] = saved
    if warning := random_weights_warning(cfg):
        data["random_weights"] = warning
    if (first := next((c for c, d in classes.items() if "baseline" in d), None)) is not None:
        data["default"] = _unclassed(classes[first]["baseline"], cfg.call_for(first), cfg.call_for(None))
    embedded = {c: r for c, o in outcomes.items() if (r := o.stored.router) is not None}
    if embedded:
        from autotune.weights.clip import clip_source

        clip = clip_source(cfg.metrics.clip_model, cfg.metrics.clip_pretrained, str(cfg.directory))
        data["router"] = router_data(embedded, clip)  # local weights as absolute paths: serving runs elsewhere
    return data


def _unclassed(baseline: dict[str, Any], own: Mapping[str, Any], call: Mapping[str, Any]) -> dict[str, Any]:
    """A class's baseline as served to prompts of no class: ``[call]``'s arguments instead of the class's."""
    kwargs = {k: v for k, v in baseline["diffusers"]["call_kwargs"].items() if k not in own}
    return {**baseline, "diffusers": {**baseline["diffusers"], "call_kwargs": {**call, **kwargs}}}


def _stated(cfg: ResolvedStudy, metric: str) -> dict[str, Any]:
    """A quality metric's row as the study states it: direction, tolerance in its unit, collapse threshold."""
    row = OBJECTIVES[metric]
    value, unit, collapse = row.stated(cfg.recommend)
    return {"higher_is_better": row.higher_is_better, "tolerance": value, "unit": unit, "collapse": collapse,
            "custom": row.custom}  # fmt: skip


def router_data(classes: Mapping[str, Mapping[str, Any]], clip: tuple[str, str | None]) -> dict[str, Any]:
    """What ``recommendations.json`` stores for the router: encoder, threshold and centroids.

    The default threshold is ``THRESHOLD_MARGIN`` x the lowest similarity of any study prompt to its own
    class: a prompt less like every class than that goes to ``default``.
    """
    lowest = min((e["lowest"] for e in classes.values()), default=0.0)
    return {
        "clip_model": clip[0],
        "clip_pretrained": clip[1],
        "threshold": round(lowest * THRESHOLD_MARGIN, 6),
        "centroids": {c: list(e["centroid"]) for c, e in classes.items()},
    }
