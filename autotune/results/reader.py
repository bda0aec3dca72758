"""What a finished (or running) study says, read back from storage: per class its trials, Pareto
front and recommendation. Renders nothing and imports neither torch nor Optuna: it reads Optuna's
tables with SQLAlchemy Core (:mod:`autotune.store.optuna_api` keeps their shape), so ``autotune
recommend`` and the report read a study on a machine without the model, in a second on 10,000 trials.

Example:
    >>> outcomes = recommend(load_config("studies/demo.toml"))
    >>> outcomes["portrait"].recommendation.chosen.number
    >>> outcomes.cfg.baseline                  # the study file as resolved when the study ran
"""

from __future__ import annotations

import enum
import functools
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from sqlalchemy import create_engine, inspect, select

from autotune.config import ConfigError, StudyConfig
from autotune.config.objectives import higher
from autotune.config.resolve import ResolvedStudy
from autotune.decision.bounds import Tolerance
from autotune.decision.evidence import Evidence, distinct, interrupted
from autotune.decision.panel import Panel
from autotune.decision.pareto import pareto_front
from autotune.decision.rule import Recommendation, Schedule, decide, timed_together
from autotune.decision.tolerance import tolerance
from autotune.records import StudyRecord, study_record, trial_record
from autotune.space.families import Family
from autotune.space.settings import Settings
from autotune.store import optuna_api as db
from autotune.store.storage import sqlite_path
from autotune.store.versions import find_version, study_name

__all__ = ["ClassOutcome", "Outcomes", "State", "StoredTrial", "front_of", "read_trials", "recommend", "settings_of"]


class State(enum.Enum):
    """A trial's state, named as Optuna names it (``TrialState``)."""

    RUNNING = 0
    COMPLETE = 1
    PRUNED = 2
    FAIL = 3
    WAITING = 4


@dataclass(frozen=True)
class StoredTrial:
    """A trial as stored: what ``FrozenTrial`` holds, read without Optuna."""

    number: int
    state: State
    params: dict[str, Any]
    values: list[float] | None
    user_attrs: dict[str, Any]
    system_attrs: dict[str, Any]
    datetime_start: datetime | None
    datetime_complete: datetime | None
    trial_id: int


def settings_of(t: Any) -> Settings:
    return Settings.of_trial(t)


def front_of(trials: Iterable[Any], objectives: tuple[str, ...]) -> list[int]:
    """Indices of the distinct rendered settings on the Pareto front: the one front every output shows."""
    return pareto_front([dict(zip(objectives, t.values, strict=True)) for t in trials], higher(objectives))


@dataclass(frozen=True)
class ClassOutcome:
    """What a prompt class's study says: its distinct rendered trials, front and recommendation."""

    name: str
    study_name: str
    attrs: dict[str, Any]  # the study's user attributes
    trials: list[StoredTrial]  # completed, one per distinct setting (reused duplicates left out)
    front: list[int]  # indices into ``trials``
    recommendation: Recommendation | None
    seed_lpips: float | None
    n_completed: int  # completed trials, repeats of a setting included
    n_failed: int
    family: Family
    evidence: Evidence
    storage: str  # the storage URL it was read from
    tolerance: Tolerance | None = None  # in metric units, from the study file's noise units
    spread: dict[str, float] = field(default_factory=dict)  # the baseline's seed-to-seed SD of each quality metric
    margin: tuple[dict[str, Any], ...] = ()  # the recommendation's neighbours on its own images
    baseline_failed: Any = None  # no baseline completed: its last failed trial (None: none failed)

    @functools.cached_property
    def stored(self) -> StudyRecord:
        """The study's record (its attributes, typed; read once)."""
        return study_record(self.attrs)

    def no_baseline(self) -> str:
        """Why the class has no recommendation yet, and what to do, in one clause."""
        t = self.baseline_failed
        if t is None:
            return "the baseline trial has not completed yet: nothing to compare against"
        why = trial_record(t).fail_reason or "interrupted"
        if interrupted(t):  # the ledger's rule: no verdict on the setting, so every run renders it again
            return f"the baseline failed ({why}), not for its setting: the next run renders it again"
        return f"the baseline failed ({why}): change [baseline] or fix what failed, then run again"

    @property
    def decision_state(self) -> str:
        """``settled`` (the decision finished), ``stopped: <why>``, ``deciding`` (a run of it is under way)
        or ``interrupted`` (its run was killed mid-decision)."""
        from autotune.process import alive

        d = self.stored.decision or {"state": "settled"}  # studies from before the state was kept
        if d.get("state") == "settled":
            return "settled"
        if d.get("stopped"):
            return f"stopped: {d['stopped']}"
        return "deciding" if d.get("by") and alive(str(d["by"])) else "interrupted"

    def load_study(self) -> Any:
        """The class's Optuna study (loads Optuna): for the dashboard's notes and Optuna's own analyses."""
        import optuna

        from autotune.store.storage import open_storage, quiet_optuna

        with quiet_optuna():
            return optuna.load_study(study_name=self.study_name, storage=open_storage(self.storage))


class Outcomes(dict[str, ClassOutcome]):
    """Every class's :class:`ClassOutcome` by name, and ``cfg``: the study file resolved as its study ran."""

    def __init__(self, cfg: ResolvedStudy, items: Iterable[tuple[str, ClassOutcome]] = ()) -> None:
        super().__init__(items)
        self.cfg = cfg


class _Tables:
    """Optuna's tables of one storage, read with SQLAlchemy Core."""

    def __init__(self, url: str) -> None:
        from sqlalchemy.exc import ArgumentError, DatabaseError, OperationalError

        try:
            self.engine = create_engine(url)
            with self.engine.connect() as conn:
                found = inspect(conn).has_table(db.STUDIES.name)
                rows = conn.execute(select(db.STUDIES.c.study_name, db.STUDIES.c.study_id)).all() if found else []
            self.ids: dict[str, int] = {name: int(i) for name, i in rows}
        except (ArgumentError, DatabaseError, OperationalError, ImportError, ValueError) as e:
            msg = str(getattr(e, "orig", None) or e).strip().splitlines()[0]
            raise ConfigError(f"storage {url!r}: cannot open it as a study database ({msg})") from None

    def attrs(self, name: str) -> dict[str, Any]:
        a = db.STUDY_USER_ATTRS
        with self.engine.connect() as conn:
            rows = conn.execute(select(a.c.key, a.c.value_json).where(a.c.study_id == self.ids[name]))
            return {k: json.loads(v) for k, v in rows}


def read_trials(engine: Any, study_id: int) -> list[StoredTrial]:
    """Every trial of the study, with its parameters, values and attributes, in number order.

    What ``study.get_trials()`` returns, read with SQLAlchemy Core: Optuna's ORM loading took 6 s of
    ``autotune recommend``'s 7.8 s on 10,000 trials with ~20 attributes each, this takes well under one.
    """
    t, p, v = db.TRIALS, db.TRIAL_PARAMS, db.TRIAL_VALUES
    ids = select(t.c.trial_id).where(t.c.study_id == study_id).scalar_subquery()
    rows: dict[int, dict[str, Any]] = {}
    dists: dict[str, Any] = {}
    with engine.connect() as conn:
        for tid, number, state, start, end in conn.execute(
            select(t.c.trial_id, t.c.number, t.c.state, t.c.datetime_start, t.c.datetime_complete)
            .where(t.c.study_id == study_id)
            .order_by(t.c.number)
        ):
            rows[tid] = {"number": number, "state": State[state], "start": start, "end": end, "values": {}}
            rows[tid].update(params={}, user={}, system={})
        for tid, name, value, dist in conn.execute(
            select(p.c.trial_id, p.c.param_name, p.c.param_value, p.c.distribution_json).where(p.c.trial_id.in_(ids))
        ):
            if dist not in dists:  # a few distinct distributions, parsed once each
                dists[dist] = json.loads(dist)
            rows[tid]["params"][name] = db.external_param(value, dists[dist])
        for tid, objective, value, kind in conn.execute(
            select(v.c.trial_id, v.c.objective, v.c.value, v.c.value_type).where(v.c.trial_id.in_(ids))
        ):
            rows[tid]["values"][objective] = db.stored_value(value, kind)
        for table, where in ((db.TRIAL_USER_ATTRS, "user"), (db.TRIAL_SYSTEM_ATTRS, "system")):
            for tid, key, value in conn.execute(
                select(table.c.trial_id, table.c.key, table.c.value_json).where(table.c.trial_id.in_(ids))
            ):
                rows[tid][where][key] = json.loads(value)
    return [
        StoredTrial(
            r["number"],
            r["state"],
            r["params"],
            [r["values"][i] for i in sorted(r["values"])] if r["values"] else None,
            r["user"],
            r["system"],
            r["start"],
            r["end"],
            tid,
        )
        for tid, r in rows.items()
    ]


def outcome(
    cfg: ResolvedStudy, class_name: str, name: str, attrs: Mapping[str, Any], trials: list[Any], storage: str
) -> ClassOutcome:
    """A class's outcome from its stored trials and study attributes (the rule applied; nothing rendered)."""
    objectives, r = cfg.metrics.objectives, cfg.recommend
    stored = study_record(attrs)
    evidence = Evidence.of(trials, stored, objectives, len(cfg.classes[class_name]), cfg.search.seeds, r.confirm_seeds)
    done = [t for t in trials if distinct(t)]
    seed_lpips = stored.seed_lpips
    base = evidence.baseline
    rec, tol = None, None
    noise: dict[str, float] = {}
    margin: tuple[dict[str, Any], ...] = ()
    if base is not None:
        tol, noise = tolerance(r, objectives, base, seed_lpips)
        panel = Panel.of(len(cfg.classes[class_name]), cfg.search, r)
        looks = Schedule(panel, tuple(evidence.confirmed), r.finalists)
        rec = decide(evidence.candidates, base, tol, stochastic=r.stochastic, looks=looks)
        rec = timed_together(rec, stored.timed_together)
        if rec.chosen.number != base.number:
            margin = _margin(cfg, stored, done, evidence, tol, rec.chosen.number, looks)
    return ClassOutcome(
        class_name,
        name,
        dict(attrs),
        done,
        front_of(done, objectives),
        rec,
        seed_lpips,
        sum(t.state.name == "COMPLETE" for t in trials),
        sum(t.state.name == "FAIL" for t in trials),
        cfg.family,
        evidence,
        storage,
        tol,
        noise,
        margin,
        None if base is not None else next(
            (t for t in reversed(trials) if t.state.name == "FAIL" and trial_record(t).baseline), None
        ),
    )  # fmt: skip


def _margin(
    cfg: ResolvedStudy,
    stored: StudyRecord,
    done: list[Any],
    ev: Evidence,
    tol: Tolerance,
    chosen: int,
    looks: Schedule,
) -> tuple[dict[str, Any], ...]:
    """How the recommendation's neighbours (one step fewer, the adjacent guidance values) fare on the
    images the recommendation was judged on: a pick one step above a collapse says so."""
    from autotune.decision.agenda import neighbours
    from autotune.decision.rule import overall, unconfirmed, verdicts
    from autotune.space.guidance import interval_label

    base = ev.baseline
    assert base is not None
    s, search = settings_of(next(t for t in done if t.number == chosen)), cfg.search
    by_key = {trial_record(t).setting_key: t.number for t in done}
    units = set(ev.by_number[chosen].images)
    out: list[dict[str, Any]] = []
    for other in neighbours(s, search):
        change = (
            "one step fewer"
            if other.steps != s.steps
            else f"CFG {other.guidance:g}"
            if other.guidance != s.guidance
            else f"guidance cutoff {other.cutoff:g}"
            if other.cutoff != s.cutoff
            else f"guidance {interval_label(other.interval)}"
            if other.interval != s.interval
            else f"cache {other.cache[1]:g}"
        )
        number = by_key.get(other.key(stored.scheduler_base or {}))
        if number is None:
            out.append({"change": change, "setting": other.label(), "verdict": "not rendered"})
            continue
        c = ev.by_number[number]
        shared = {u: v for u, v in c.images.items() if u in units}
        bounds = verdicts(replace(c, images=shared), base, tol, looks=looks)
        v = overall(bounds)
        verdict = v if set(shared) == units else f"{v} ({len(shared)} of {len(units)} images)"
        if v == "pass" and (fresh := unconfirmed(c, base, tol, looks)):  # why it is not the recommendation
            verdict += f"; {fresh}"
        elif v == "pass" and not c.confirm:  # a pass on the search's images alone promises nothing yet
            verdict += "; never confirmed on fresh images"
        out.append(
            {"change": change, "setting": other.label(), "trial": number, "verdict": verdict,
             "bounds": [b.describe() for b in bounds]}
        )  # fmt: skip
    return tuple(out)


def recommend(cfg: StudyConfig, *, storage: str | None = None, version: int | None = None) -> Outcomes:
    """Read every class's study from storage and apply the recommendation rule (renders nothing).

    The file is resolved with the model family its study stored, so reading a study needs neither the
    model nor a network; the version read is the newest whose fingerprint matches the file, unless
    ``version`` names it (with ``cfg`` resolved: what a study that just ran reads back).
    """
    url = storage or cfg.default_storage
    if url.startswith("sqlite:///") and not sqlite_path(url).exists():
        raise ConfigError(f"storage {url!r}: no study database yet; {cfg.run_first}")
    tables = _Tables(url)
    if version is not None and isinstance(cfg, ResolvedStudy):
        resolved = cfg
    else:
        version, resolved = find_version(cfg, tables.ids, tables.attrs)
    out = Outcomes(resolved)
    for c in cfg.classes:
        name = study_name(cfg, c, version)
        if name not in tables.ids:
            raise ConfigError(f"classes.{c}: no study {name!r} in {url}; {cfg.run_first}")
        out[c] = outcome(resolved, c, name, tables.attrs(name), read_trials(tables.engine, tables.ids[name]), url)
    return out
