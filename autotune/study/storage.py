"""Where a study lives: Optuna's RDB storage, the schema-race retry, the trial-image artifact store,
and the reference-image table beside Optuna's.

Storage is Optuna's RDB storage (SQLite beside the study file by default, PostgreSQL for shared
studies); reference images live in ``autotune_references`` in the same database, keyed by content
(:func:`reference_key`), so every worker and every reader (the report) finds the same image; trial
images are Optuna artifacts (:mod:`autotune.study.artifacts`: a folder or a bucket). Optuna loads on
first use: the reference table and the results reader need only SQLAlchemy.

Example:
    >>> rdb = open_storage("sqlite:///studies/demo.db")
    >>> ReferenceTable("sqlite:///studies/demo.db").find(reference_key(...))
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Column, Integer, LargeBinary, MetaData, String, Table, Text, create_engine, select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from autotune.config import ConfigError
from autotune.decision.panel import noise_seed
from autotune.process import deferred
from autotune.space.settings import Settings

if TYPE_CHECKING:
    import optuna

__all__ = [
    "ReferenceTable",
    "generator_kind",
    "image_name",
    "model_identity",
    "nothing_left_on_refusal",
    "open_storage",
    "quiet_optuna",
    "reference_key",
    "retry_schema_race",
    "sqlite_path",
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


def sqlite_path(url: str) -> Path:
    return Path(url.removeprefix("sqlite:///"))


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


def image_name(prompt_index: int, seed: int) -> str:
    """Artifact file name of one trial image; the prompt's text is in the study's ``prompts`` attribute."""
    return f"prompt{prompt_index}_seed{seed}.png"


_META = MetaData()
_REFERENCES = Table(
    "autotune_references",
    _META,
    Column("key", String(64), primary_key=True),
    Column("model", Text, nullable=False),
    Column("prompt", Text, nullable=False),
    Column("seed", Integer, nullable=False),
    Column("setting", Text, nullable=False),
    Column("png", LargeBinary, nullable=False),
)


def model_identity(model_id: str, adds: Mapping[str, Any], call: Mapping[str, Any], negative: str | None) -> str:
    """The model and what production adds to one prompt's call (VAE, LoRAs, ``[call]``, its negative prompt)."""
    extra = {k: v for k, v in {**adds, "call": dict(call), "negative_prompt": negative}.items() if v}
    return model_id if not extra else f"{model_id} {json.dumps(extra, sort_keys=True)}"


def generator_kind(device: str) -> str:
    """Where a seed's noise is drawn: the device kind (MPS draws on the CPU)."""
    kind = device.split(":")[0]
    return "cpu" if kind == "mps" else kind


def reference_key(
    identity: str, prompt: str, seed: int, height: int, width: int, settings: Settings, dtype: str, generator: str
) -> str:
    """Content key of a reference image: sha256 of everything that determines its pixels, its own noise
    (the generator seed of image ``seed`` of ``prompt``) and the device kind that noise is drawn on
    included (a seed draws other noise on CUDA than on the CPU)."""
    data = [identity, prompt, {"noise": noise_seed(prompt, seed)}, height, width, settings.params(), dtype]
    if generator != "cpu":  # keys of CPU references stay as they were before the generator was keyed
        data.append(generator)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


class ReferenceTable:
    """Reference images as PNG rows in the study's own database (SQLite or PostgreSQL); nothing is pickled."""

    def __init__(self, url: str, engine: Any | None = None) -> None:
        self.engine = engine or create_engine(url)
        retry_schema_race(lambda: _META.create_all(self.engine, checkfirst=True))

    def get(self, keys: Sequence[str]) -> dict[str, bytes]:
        """The stored PNGs of those ``keys`` that are stored."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(_REFERENCES.c.key, _REFERENCES.c.png).where(_REFERENCES.c.key.in_(keys)))
            return {k: bytes(png) for k, png in rows}

    def find(self, key: str) -> bytes | None:
        return self.get([key]).get(key)

    def put(self, key: str, model_id: str, prompt: str, seed: int, settings: Settings, png: bytes) -> None:
        row = {"key": key, "model": model_id, "prompt": prompt, "seed": noise_seed(prompt, seed)}
        row["setting"] = json.dumps(settings.params())
        try:
            with self.engine.begin() as conn:
                conn.execute(_REFERENCES.insert().values(**row, png=png))
        except IntegrityError:
            pass  # another worker stored the same reference first: the images are the same


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
