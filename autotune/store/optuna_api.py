"""Every private Optuna API autotune relies on, in one place, each checked by a test that fails when
Optuna changes it (``tests/test_optuna_api.py``):

- the heartbeat that :meth:`optuna.Study.optimize` runs around a trial (ask/tell has none of its own);
- the RDB schema (Optuna's migrations keep it), read with SQLAlchemy Core by the fast reader
  (:mod:`autotune.results.reader`) without importing Optuna;
- the exact hypervolume (WFG) Optuna's own samplers use;
- where a trial's artifact metadata lives among its system attributes, and an enqueued trial's parameters;
- what optuna-dashboard's note functions read of a trial (:class:`TrialHandle`);
- the SQLAlchemy session and engine behind an RDB storage (:func:`reset_connections`).

Optuna is imported inside the functions that need it, never at module level.

Example:
    >>> with heartbeat(study, trial):
    ...     render()
    >>> rows = select(TRIALS.c.number).where(TRIALS.c.study_id == 1)
"""

from __future__ import annotations

import contextlib
import gc
import traceback
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Column, DateTime, Float, Integer, MetaData, String, Table, Text

__all__ = [
    "STUDIES",
    "STUDY_USER_ATTRS",
    "TRIALS",
    "TRIAL_PARAMS",
    "TRIAL_SYSTEM_ATTRS",
    "TRIAL_USER_ATTRS",
    "TRIAL_VALUES",
    "TrialHandle",
    "artifact_files",
    "external_param",
    "fail_stale_trials",
    "fail_trial",
    "heartbeat",
    "hypervolume",
    "queued_params",
    "reset_connections",
    "storage_of",
    "stored_value",
    "trial_id",
]

_META = MetaData()  # the columns autotune reads of Optuna 5's tables (optuna/storages/_rdb/models.py)
STUDIES = Table("studies", _META, Column("study_id", Integer), Column("study_name", String(512)))
STUDY_USER_ATTRS = Table(
    "study_user_attributes", _META, Column("study_id", Integer), Column("key", String(512)), Column("value_json", Text)
)
TRIALS = Table(
    "trials",
    _META,
    Column("trial_id", Integer),
    Column("number", Integer),
    Column("study_id", Integer),
    Column("state", String(8)),  # the TrialState's name: COMPLETE, FAIL, ...
    Column("datetime_start", DateTime),
    Column("datetime_complete", DateTime),
)
TRIAL_PARAMS = Table(
    "trial_params",
    _META,
    Column("trial_id", Integer),
    Column("param_name", String(512)),
    Column("param_value", Float),
    Column("distribution_json", Text),
)
TRIAL_VALUES = Table(
    "trial_values",
    _META,
    Column("trial_id", Integer),
    Column("objective", Integer),
    Column("value", Float),
    Column("value_type", String(7)),  # FINITE, INF_POS, INF_NEG
)
TRIAL_USER_ATTRS = Table(
    "trial_user_attributes", _META, Column("trial_id", Integer), Column("key", String(512)), Column("value_json", Text)
)
TRIAL_SYSTEM_ATTRS = Table(
    "trial_system_attributes",
    _META,
    Column("trial_id", Integer),
    Column("key", String(512)),
    Column("value_json", Text),
)


def stored_value(value: float | None, kind: str) -> float:
    """A trial value as Optuna stores it (``TrialValueModel.stored_repr_to_value``)."""
    if kind == "INF_POS":
        return float("inf")
    if kind == "INF_NEG":
        return float("-inf")
    return float(value) if value is not None else float("nan")


def external_param(internal: float, distribution: dict[str, Any]) -> Any:
    """A parameter's value from its stored float and distribution JSON (``to_external_repr``)."""
    name, attrs = distribution["name"], distribution["attributes"]
    if name == "CategoricalDistribution":
        return attrs["choices"][int(internal)]
    if name in ("IntDistribution", "IntUniformDistribution", "IntLogUniformDistribution"):
        return int(internal)
    return float(internal)


@contextlib.contextmanager
def heartbeat(study: Any, trial: Any) -> Iterator[None]:
    """The trial's heartbeat thread, as ``Study.optimize`` runs it around each trial. A stop signal waits
    while the thread starts and while it is stopped: raised between its start and the block, the thread
    (not a daemon) would beat on and hold the interpreter's exit forever (CI: a SIGHUP, 300 s hung)."""
    from optuna.storages._heartbeat import get_heartbeat_thread

    from autotune.process import deferred

    thread, started = get_heartbeat_thread(trial._trial_id, study._storage), False
    try:
        with deferred():
            thread.start()
            started = True
        yield
    finally:
        if started:
            with deferred():
                thread.join()


@dataclass(frozen=True)
class TrialHandle:
    """What optuna-dashboard's ``save_note`` and ``get_note`` read of a live ``optuna.Trial`` (its storage,
    its study, its id), for a finished trial: a note on a trial the study rendered hours ago."""

    storage: Any
    study: Any
    _trial_id: int

    @classmethod
    def of(cls, study: Any, trial_id: int) -> TrialHandle:
        return cls(study._storage, study, trial_id)


def reset_connections(storage: Any, after: BaseException | None = None) -> None:
    """After a signal landed inside a storage call: Optuna's session rolls back on ``Exception`` only, so
    a ``KeyboardInterrupt`` mid-commit can hand the next call a connection still inside a transaction
    (``StorageInternalError`` on the writes that record the stop). Drop the session and every pooled
    connection: the next call opens a fresh one, and the database rolls the broken transaction back.
    ``after``: the exception the signal raised; what its frames held (a cursor mid-statement) goes too."""
    backend = getattr(storage, "_backend", storage)  # Optuna's cache in front of an RDBStorage
    _release_frames(after)
    gc.collect()  # what the released frames held sits in reference cycles: the cursor goes only now (measured)
    if hasattr(backend, "scoped_session"):
        with contextlib.suppress(Exception):
            backend.scoped_session.remove()
        backend.engine.dispose()


def _release_frames(e: BaseException | None) -> None:
    """Drop the locals of the frames ``e`` (and what it interrupted) passed through: a signal that lands
    while SQLite steps a statement leaves that statement's cursor in the interrupted frame, and the
    connection, even closed, keeps its lock until the cursor goes (every other writer then waits,
    "database is locked"). Frames still running keep theirs."""
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        traceback.clear_frames(e.__traceback__)
        e = e.__cause__ or e.__context__


def fail_stale_trials(study: Any) -> None:
    """Fail trials whose heartbeat stopped (another host's dead worker), as ``Study.optimize`` does first."""
    import optuna
    from optuna.storages._heartbeat import is_heartbeat_enabled

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if is_heartbeat_enabled(study._storage):
            optuna.storages.fail_stale_trials(study)


def hypervolume(points: Sequence[Sequence[float]], reference: Sequence[float]) -> float:
    """Volume dominated by ``points`` (every objective minimised) and bounded by ``reference``.

    Points not better than the reference on every objective add nothing. Exact, by Optuna's WFG
    algorithm (about 50x faster than slicing objectives on a 150-point 3-D front).
    """
    import numpy as np
    from optuna._hypervolume import compute_hypervolume

    pts = [tuple(p) for p in points if all(x < r for x, r in zip(p, reference, strict=True))]
    if not pts:
        return 0.0
    return float(compute_hypervolume(np.array(pts, dtype=float), np.array(reference, dtype=float)))


def artifact_files(system_attrs: dict[str, Any]) -> dict[str, str]:
    """A trial's uploaded artifacts, file name -> artifact id, from its system attributes
    (what ``optuna.artifacts.get_all_artifact_meta`` reads, without a storage round trip)."""
    import json

    metas = (json.loads(v) for k, v in system_attrs.items() if k.startswith("artifacts:"))
    return {m["filename"]: m["artifact_id"] for m in metas}


def trial_id(trial: Any) -> int:
    """The storage's id of a trial (``optuna.Trial`` or ``FrozenTrial``): unique across the storage's studies."""
    return int(trial._trial_id)


def storage_of(study: Any) -> Any:
    """The storage a study object reads and writes through."""
    return study._storage


def fail_trial(study: Any, trial: Any, **fields: Any) -> None:
    """Fail another worker's trial (or one queued and never begun) with ``fields`` of its record
    (:class:`autotune.records.TrialRecord`): ``tell`` belongs to the trial's own worker."""
    from optuna.trial import TrialState

    from autotune.records import attributes

    storage = study._storage
    for key, value in attributes(**fields).items():
        storage.set_trial_user_attr(trial._trial_id, key, value)
    storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)


def queued_params(t: Any) -> dict[str, Any]:
    """The parameters a trial was enqueued with (``study.enqueue_trial``), before it drew them ({}: none)."""
    return dict(t.system_attrs.get("fixed_params") or {})
