"""Where a study lives: Optuna's RDB storage, the schema-race retry, and deleting what a refused
start created.

Storage is Optuna's RDB storage (SQLite beside the study file by default, PostgreSQL for shared
studies); reference images live beside it (:mod:`autotune.store.reference_table`); trial images are
Optuna artifacts (:mod:`autotune.store.artifacts`: a folder or a bucket). Optuna loads on first use:
the results reader needs only SQLAlchemy.

Example:
    >>> rdb = open_storage("sqlite:///studies/demo.db")
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy.exc import SQLAlchemyError

from autotune.config import ConfigError
from autotune.process import deferred

if TYPE_CHECKING:
    import optuna

__all__ = [
    "check_not_emptied",
    "nothing_left_on_refusal",
    "open_storage",
    "quiet_optuna",
    "retry_schema_race",
    "sqlite_path",
    "study_attrs",
]

T = TypeVar("T")


def retry_schema_race(create: Callable[[], T], attempts: int = 6) -> T:
    """Run ``create`` (which may create tables), again when a worker starting at the same moment
    created them first (PostgreSQL: a duplicate key or an existing relation; SQLite: a UNIQUE constraint)."""
    for attempt in range(attempts):
        try:
            return create()
        except SQLAlchemyError as e:
            text = str(getattr(e, "orig", e))
            if attempt == attempts - 1 or not any(
                s in text for s in ("duplicate key", "UNIQUE constraint", "already exists")
            ):
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


def open_storage(url: str, *, workers: bool = False) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage for ``url``; a bad URL or a file that is no database is a ConfigError.

    ``workers``: this process runs trials beside others. On SQLite every transaction then starts
    with ``BEGIN IMMEDIATE`` (SQLAlchemy's pysqlite recipe): Python's driver runs a SELECT outside
    any transaction, so two workers popping the same waiting trial both read it WAITING and both
    took it (seen: 3 of 15 four-worker starts); taking the write lock first makes the pop atomic.
    """
    import optuna
    from sqlalchemy.exc import ArgumentError, DatabaseError, OperationalError

    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"timeout": 60}

    def create() -> optuna.storages.RDBStorage:
        with warnings.catch_warnings():  # heartbeats are "experimental" since Optuna 2.9
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(url, engine_kwargs=kwargs, heartbeat_interval=60, grace_period=180)

    try:
        storage = retry_schema_race(create)
    except (ArgumentError, DatabaseError, OperationalError, ImportError, ValueError) as e:
        msg = str(getattr(e, "orig", None) or e).strip().splitlines()[0]
        raise ConfigError(f"storage {url!r}: cannot open it as a study database ({msg})") from None
    if workers and url.startswith("sqlite"):
        _immediate_transactions(storage.engine)
    return storage


def _immediate_transactions(engine: Any) -> None:
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _no_driver_transactions(dbapi_connection: Any, _: Any) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy's BEGIN below, not the driver's lazy one

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections opened before the listeners are not reused


def study_attrs(rdb: Any, name: str) -> dict[str, Any]:
    """A stored study's user attributes, by name (its record: :func:`autotune.records.study_record`)."""
    return rdb.get_study_user_attrs(rdb.get_study_id_from_name(name))


def sqlite_path(url: str) -> Path:
    return Path(url.removeprefix("sqlite:///"))


def check_not_emptied(url: str, results: Path) -> None:
    """A SQLite database of zero bytes beside an earlier run's ``results`` lost its trials (a copy cut short,
    a disk that filled): refused, rather than starting afresh and writing over the results that remain."""
    path = sqlite_path(url) if url.startswith("sqlite:///") else None
    if path is not None and path.is_file() and path.stat().st_size == 0 and results.is_file():
        raise ConfigError(
            f"{path}: the study database is empty (0 bytes), yet {results} holds an earlier run's results: "
            "restore the database (a backup), or delete both to start the study afresh"
        )


@contextlib.contextmanager
def quiet_optuna() -> Iterator[None]:
    """Optuna's INFO lines (study created, trial finished) off inside, the caller's level restored after:
    a failed trial gets autotune's one line instead."""
    import optuna

    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(level)


@contextlib.contextmanager
def nothing_left_on_refusal(url: str, created: list[str]) -> Iterator[None]:
    """A run refused or interrupted before its first trial began (weights that cannot load, a reference that
    does not converge, a signal while its studies are being created) deletes the studies it created in
    which nothing began, and the SQLite database it created, so the next try starts as clean as this one
    did. (A run stopped once its studies are open withdraws its queued trials first: those studies keep
    the state that says why.)"""
    path = Path(url.removeprefix("sqlite:///")) if url.startswith("sqlite:///") else None
    new = path is not None and not path.exists()
    try:
        yield
    except (ConfigError, KeyboardInterrupt):
        with deferred():
            if created:
                _delete_unbegun(url, created)
            if new and path is not None and path.exists():
                with contextlib.closing(sqlite3.connect(path)) as db:
                    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
                    empty = "studies" not in tables or db.execute("SELECT COUNT(*) FROM studies").fetchone()[0] == 0
                if empty:
                    for extra in ("", "-wal", "-shm", "-journal"):
                        Path(f"{path}{extra}").unlink(missing_ok=True)
        raise


def _delete_unbegun(url: str, names: list[str]) -> None:
    """Delete the studies of ``names`` in which no trial began (their baselines still queued)."""
    from optuna.trial import TrialState

    rdb = open_storage(url)
    for name in names:
        study_id = rdb.get_study_id_from_name(name)
        if all(t.state == TrialState.WAITING for t in rdb.get_all_trials(study_id, deepcopy=False)):
            rdb.delete_study(study_id)
