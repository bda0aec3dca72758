"""What a finished (or running) study says, read back from storage: per class its trials, Pareto
front and recommendation. Renders nothing and imports no torch: ``autotune recommend`` and the
report read a study on a machine without the model.

Example:
    >>> outcomes = recommend(load_config("studies/demo.toml"))
    >>> outcomes["portrait"].recommendation.chosen.values
    >>> outcomes.cfg.baseline                  # the study file as resolved when the study ran
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from autotune import schedulers
from autotune.config import ConfigError, StudyConfig
from autotune.decision import Candidate, Recommendation, Tolerance, decide, images_of
from autotune.families import Family, ResolvedStudy
from autotune.metrics import METRICS
from autotune.pareto import SecondsFit, fit_seconds, pareto_front
from autotune.space import Settings
from autotune.storage import open_storage, quiet_optuna, sqlite_path
from autotune.study.ledger import is_baseline
from autotune.study.versions import find_version, study_name

__all__ = [
    "ClassOutcome",
    "Outcomes",
    "candidates",
    "cost_fit",
    "recommend",
    "settings_of",
    "tolerance",
    "trial_summary",
]


@dataclass(frozen=True)
class ClassOutcome:
    """What a prompt class's study says: its completed trials, front and recommendation."""

    name: str
    study: optuna.Study
    trials: list[FrozenTrial]  # completed, one per distinct setting (reused duplicates left out)
    front: list[int]  # indices into ``trials``
    recommendation: Recommendation | None
    seed_lpips: float | None
    n_completed: int  # completed trials, repeats of a setting included
    n_failed: int
    family: Family
    seconds_fit: SecondsFit | None = None  # seconds per image against denoiser calls (what ranks candidates)
    seconds_outliers: tuple[int, ...] = ()  # trial numbers whose timing is far off that line
    tolerance: Tolerance | None = None  # in metric units, from the study file's noise units
    clip_noise: float | None = None  # the baseline's seed-to-seed standard deviation of CLIP score


class Outcomes(dict[str, ClassOutcome]):
    """Every class's :class:`ClassOutcome` by name, and ``cfg``: the study file resolved as its study ran."""

    def __init__(self, cfg: ResolvedStudy, items: Iterable[tuple[str, ClassOutcome]] = ()) -> None:
        super().__init__(items)
        self.cfg = cfg


def settings_of(t: FrozenTrial) -> Settings:
    return Settings.from_params(t.params)


def _calls_guided(t: FrozenTrial) -> tuple[float, bool]:
    return float(t.user_attrs["model_calls"]), float(t.params["guidance"]) > 1.0


def cost_fit(trials: Sequence[FrozenTrial], objectives: tuple[str, ...]) -> SecondsFit | None:
    if "seconds" not in objectives:
        return None
    timed = [t for t in trials if t.user_attrs.get("model_calls") and t.values is not None]
    i = objectives.index("seconds")
    calls, guided = zip(*(_calls_guided(t) for t in timed), strict=True) if timed else ((), ())
    return fit_seconds(calls, guided, [t.values[i] for t in timed])


def _extra_images(attrs: dict[str, Any], number: int) -> dict[tuple[int, int], dict[str, float]]:
    """Images the decision stage rendered for trial ``number`` (racing and confirmation seeds)."""
    out: dict[tuple[int, int], dict[str, float]] = {}
    for seed, per_metric in attrs.get(f"renders.{number}", {}).items():
        for m, per_prompt in per_metric.items():
            for p, x in enumerate(per_prompt):
                out.setdefault((p, int(seed)), {})[m] = x
    return out


def candidates(
    cfg: ResolvedStudy, class_name: str, study: optuna.Study, trials: Sequence[FrozenTrial], fit: SecondsFit | None
) -> list[Candidate]:
    """The trials as the rule sees them: images on the search, racing and confirmation seeds, timings, cost."""
    quality = [m for m in cfg.metrics.objectives if m != "seconds"]
    n_prompts, confirm = len(cfg.classes[class_name]), set(cfg.recommend.confirm_seeds)
    attrs = study.user_attrs  # one read: each access is a storage query
    out = []
    for t in trials:
        images = images_of({m: t.user_attrs.get(f"{m}_values", []) for m in quality}, n_prompts, cfg.search.seeds)
        extra = _extra_images(attrs, t.number)
        images.update({k: v for k, v in extra.items() if k[1] not in confirm})
        cost = fit(*_calls_guided(t)) if fit is not None and t.user_attrs.get("model_calls") else None
        out.append(
            Candidate(
                t.number,
                images,
                {k: v for k, v in extra.items() if k[1] in confirm},
                tuple(t.user_attrs.get("seconds_values", ())),
                cost,
                schedulers.get(t.params["scheduler"]).deterministic,
                t.user_attrs.get("setting", settings_of(t).label()),
            )
        )
    return out


def tolerance(cfg: ResolvedStudy, baseline: Candidate, seed_lpips: float | None) -> tuple[Tolerance, float | None]:
    """The study file's tolerances in metric units, and the CLIP noise they were scaled by: the
    baseline's within-prompt standard deviation of CLIP score over seeds (pooled over prompts)."""
    r, objectives = cfg.recommend, cfg.metrics.objectives
    noise = None
    by_prompt: dict[int, list[float]] = {}
    for (p, _), v in {**baseline.images, **baseline.confirm}.items():
        if "clip_score" in v:
            by_prompt.setdefault(p, []).append(v["clip_score"])
    groups = [g for g in by_prompt.values() if len(g) > 1]
    if groups:
        dof = sum(len(g) - 1 for g in groups)
        noise = (sum(statistics.variance(g) * (len(g) - 1) for g in groups) / dof) ** 0.5
    clip = None
    if "clip_score" in objectives:
        clip = r.clip_tolerance if r.clip_tolerance is not None else r.clip_tolerance_sd * (noise or 0.0)
    lpips = r.lpips_tolerance * seed_lpips if "lpips" in objectives and seed_lpips is not None else None
    return Tolerance(clip, lpips, seed_lpips), noise


def _read_trials(storage: RDBStorage, study_id: int) -> list[FrozenTrial]:
    """Every trial of the study, with its parameters, values and attributes.

    What ``study.get_trials()`` returns, read with SQLAlchemy Core from the tables Optuna's
    migrations maintain: Optuna's ORM loading took 6 s of ``autotune recommend``'s 7.8 s on
    10,000 trials with ~20 attributes each, this takes well under one.
    """
    from optuna.distributions import json_to_distribution
    from optuna.storages._rdb import models
    from sqlalchemy import select

    t, p = models.TrialModel.__table__, models.TrialParamModel.__table__
    v, u = models.TrialValueModel.__table__, models.TrialUserAttributeModel.__table__
    sa = models.TrialSystemAttributeModel.__table__
    ids = select(t.c.trial_id).where(t.c.study_id == study_id).scalar_subquery()
    rows: dict[int, dict[str, Any]] = {}
    dists: dict[str, Any] = {}
    with storage.engine.connect() as conn:
        for tid, number, state, start, end in conn.execute(
            select(t.c.trial_id, t.c.number, t.c.state, t.c.datetime_start, t.c.datetime_complete)
            .where(t.c.study_id == study_id)
            .order_by(t.c.number)
        ):
            rows[tid] = {"number": number, "state": state, "start": start, "end": end, "values": {}}
            rows[tid].update(params={}, distributions={}, user={}, system={})
        for tid, name, value, dist in conn.execute(
            select(p.c.trial_id, p.c.param_name, p.c.param_value, p.c.distribution_json).where(p.c.trial_id.in_(ids))
        ):
            if dist not in dists:  # a few distinct distributions, parsed once each
                dists[dist] = json_to_distribution(dist)
            rows[tid]["params"][name] = dists[dist].to_external_repr(value)
            rows[tid]["distributions"][name] = dists[dist]
        for tid, objective, value, kind in conn.execute(
            select(v.c.trial_id, v.c.objective, v.c.value, v.c.value_type).where(v.c.trial_id.in_(ids))
        ):
            rows[tid]["values"][objective] = models.TrialValueModel.stored_repr_to_value(value, kind)
        for table, where in ((u, "user"), (sa, "system")):
            for tid, key, value in conn.execute(
                select(table.c.trial_id, table.c.key, table.c.value_json).where(table.c.trial_id.in_(ids))
            ):
                rows[tid][where][key] = json.loads(value)
    return [
        FrozenTrial(
            number=r["number"],
            state=r["state"],
            value=None,
            values=[r["values"][i] for i in sorted(r["values"])] if r["values"] else None,
            datetime_start=r["start"],
            datetime_complete=r["end"],
            params=r["params"],
            distributions=r["distributions"],
            user_attrs=r["user"],
            system_attrs=r["system"],
            intermediate_values={},
            trial_id=tid,
        )
        for tid, r in rows.items()
    ]


def _outcome(cfg: ResolvedStudy, class_name: str, study: optuna.Study, storage: RDBStorage) -> ClassOutcome:
    objectives = cfg.metrics.objectives
    all_trials = _read_trials(storage, study._study_id)
    trials = [t for t in all_trials if t.state == TrialState.COMPLETE and "reused_from" not in t.user_attrs]
    fit = cost_fit(trials, objectives)
    cands = candidates(cfg, class_name, study, trials, fit)
    higher = {m: METRICS[m].higher_is_better for m in objectives}
    front = pareto_front([dict(zip(objectives, t.values, strict=True)) for t in trials], higher)
    seed_lpips = study.user_attrs.get("seed_lpips")
    base = next((c for c, t in zip(cands, trials, strict=True) if is_baseline(t)), None)
    rec, tol, noise = None, None, None
    if base is not None:
        tol, noise = tolerance(cfg, base, seed_lpips)
        r = cfg.recommend
        rec = decide(cands, base, tol, top=r.finalists, stochastic=r.stochastic)
    n_failed = sum(t.state == TrialState.FAIL for t in all_trials)
    n_completed = sum(t.state == TrialState.COMPLETE for t in all_trials)
    outliers: tuple[int, ...] = ()
    if fit is not None:
        i = objectives.index("seconds")
        outliers = tuple(
            t.number for t in trials if t.user_attrs.get("model_calls") and fit.outlier(*_calls_guided(t), t.values[i])
        )
    return ClassOutcome(
        class_name, study, trials, front, rec, seed_lpips, n_completed, n_failed, cfg.family, fit, outliers, tol, noise
    )


def recommend(cfg: StudyConfig, *, storage: str | None = None) -> Outcomes:
    """Read every class's study from storage and apply the recommendation rule (renders nothing).

    The file is resolved with the model family its study stored (unless ``cfg`` is resolved already),
    so reading a study needs neither the model nor a network.
    """
    url = storage or cfg.default_storage
    if url.startswith("sqlite:///") and not sqlite_path(url).exists():
        raise ConfigError(f"storage {url!r}: no study database yet; run `autotune study {cfg.path}` first")
    with quiet_optuna():
        rdb = open_storage(url)
        version, resolved = find_version(cfg, rdb, cfg if isinstance(cfg, ResolvedStudy) else None)
        out = Outcomes(resolved)
        for c in cfg.classes:
            name = study_name(cfg, c, version)
            try:
                study = optuna.load_study(study_name=name, storage=rdb)
            except KeyError:
                raise ConfigError(
                    f"classes.{c}: no study {name!r} in {url}; run `autotune study {cfg.path}` first"
                ) from None
            out[c] = _outcome(resolved, c, study, rdb)
    return out


def trial_summary(
    t: FrozenTrial, objectives: tuple[str, ...], family: Family, base: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """A trial as plain JSON-able data: setting, diffusers recipe, metrics and their spread.

    With ``base``, the model's own scheduler config, the recipe's ``scheduler_config`` is complete
    (:func:`autotune.schedulers.complete`); without, it lists the overrides only.
    """
    s = settings_of(t)
    overrides = s.scheduler_overrides()
    spec = schedulers.get(s.scheduler)
    assert t.values is not None
    spread = {m: t.user_attrs.get(f"{m}_values") for m in objectives}
    return {
        "trial": t.number,
        "setting": s.label(),
        "scheduler": s.scheduler,
        "a1111_name": spec.a1111,
        "options": dict(s.options),
        "steps": s.steps,
        "guidance": s.guidance,
        "deterministic": spec.deterministic,
        "diffusers": {
            "scheduler_class": spec.class_name,
            "scheduler_config": overrides if base is None else schedulers.complete(s.scheduler, base, overrides),
            "call_kwargs": s.call_kwargs(family),
        },
        "metrics": dict(zip(objectives, t.values, strict=True)),
        "metrics_std": {m: statistics.pstdev(v) if v else None for m, v in spread.items()},
        "model_calls": t.user_attrs.get("model_calls"),
    }
