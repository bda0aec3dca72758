"""Each private Optuna API autotune relies on (autotune.store.optuna_api) still is what autotune assumes:
these fail when an Optuna release changes one, before a study or a reader does."""

from __future__ import annotations

import json
import math
import sqlite3
import sys
from pathlib import Path

import optuna
import pytest

from autotune.store import optuna_api


def test_the_tables_the_reader_reads_have_the_columns_optuna_writes() -> None:
    from optuna.storages._rdb import models

    for ours in (
        optuna_api.STUDIES,
        optuna_api.STUDY_USER_ATTRS,
        optuna_api.TRIALS,
        optuna_api.TRIAL_PARAMS,
        optuna_api.TRIAL_VALUES,
        optuna_api.TRIAL_USER_ATTRS,
        optuna_api.TRIAL_SYSTEM_ATTRS,
    ):
        theirs = models.BaseModel.metadata.tables[ours.name]
        assert {c.name for c in ours.columns} <= {c.name for c in theirs.columns}, ours.name
    from autotune.results.reader import State

    # a trial's state is stored by its name, which the reader maps to its own enum of the same names
    assert set(models.BaseModel.metadata.tables["trials"].c.state.type.enums) == {s.name for s in State}


def test_values_and_parameters_read_back_as_optuna_reads_them(tmp_path: Path) -> None:
    from sqlalchemy import create_engine, select

    url = f"sqlite:///{tmp_path / 'api.db'}"
    study = optuna.create_study(storage=url, directions=["maximize", "minimize"])
    params = {"scheduler": "euler", "steps": 12, "guidance": 4.5}
    dists = {
        "scheduler": optuna.distributions.CategoricalDistribution(["ddim", "euler"]),
        "steps": optuna.distributions.IntDistribution(2, 30),
        "guidance": optuna.distributions.FloatDistribution(1.0, 9.0, step=0.5),
    }
    study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, values=[math.inf, -math.inf]))
    engine = create_engine(url)
    p, v = optuna_api.TRIAL_PARAMS, optuna_api.TRIAL_VALUES
    with engine.connect() as conn:
        got = {
            n: optuna_api.external_param(x, json.loads(d))
            for n, x, d in conn.execute(select(p.c.param_name, p.c.param_value, p.c.distribution_json))
        }
        values = [
            optuna_api.stored_value(x, k)
            for x, k in conn.execute(select(v.c.value, v.c.value_type).order_by(v.c.objective))
        ]
    assert got == params and isinstance(got["steps"], int)
    assert values == [math.inf, -math.inf]


def test_artifact_files_are_read_from_the_system_attributes_as_optuna_lists_them(tmp_path: Path) -> None:
    from optuna.artifacts import FileSystemArtifactStore, get_all_artifact_meta, upload_artifact

    url = f"sqlite:///{tmp_path / 'art.db'}"
    study = optuna.create_study(storage=url)
    trial = study.ask()
    store = FileSystemArtifactStore(str(tmp_path / "artifacts"))
    (tmp_path / "artifacts").mkdir()
    for name in ("prompt0_seed0.png", "prompt1_seed0.png"):
        (tmp_path / name).write_bytes(b"png")
        upload_artifact(artifact_store=store, file_path=str(tmp_path / name), study_or_trial=trial)
    study.tell(trial, 1.0)
    frozen = study.trials[0]
    metas = get_all_artifact_meta(frozen, storage=study._storage)
    assert optuna_api.artifact_files(frozen.system_attrs) == {m.filename: m.artifact_id for m in metas}
    assert len(metas) == 2


def test_an_enqueued_trials_parameters_are_read_before_it_draws_them() -> None:
    study = optuna.create_study()
    study.enqueue_trial({"steps": 12, "scheduler": "euler"})
    (waiting,) = study.get_trials(deepcopy=False)
    assert waiting.params == {} and optuna_api.queued_params(waiting) == {"steps": 12, "scheduler": "euler"}
    trial = study.ask()
    trial.suggest_int("steps", 2, 30)
    study.tell(trial, 1.0)
    assert optuna_api.queued_params(study.trials[0]) == {"steps": 12, "scheduler": "euler"}
    study.tell(study.ask(), 2.0)
    assert optuna_api.queued_params(study.trials[1]) == {}  # drawn by the sampler: none


def test_the_heartbeat_runs_around_a_trial_and_stale_trials_fail(tmp_path: Path) -> None:
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'hb.db'}", heartbeat_interval=1, grace_period=1)
    study = optuna.create_study(storage=storage)
    alive = study.ask()
    with optuna_api.heartbeat(study, alive):
        beats = storage._get_stale_trial_ids(study._study_id)  # the beating trial is not stale
    assert alive._trial_id not in beats
    study.ask()  # a trial whose worker died: no heartbeat after this
    with sqlite3.connect(tmp_path / "hb.db") as db:  # its last beat an hour ago, rather than waiting out the grace
        db.execute("UPDATE trial_heartbeats SET heartbeat = datetime('now', '-1 hour')")
    optuna_api.fail_stale_trials(study)
    states = [t.state for t in study.get_trials(deepcopy=False)]
    assert optuna.trial.TrialState.FAIL in states


def test_a_stop_signal_as_the_heartbeat_starts_leaves_no_heartbeat_beating(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A signal raised between the heartbeat thread's start and the trial's block left the thread (not a
    daemon) beating, and the interpreter's exit waited on it forever (CI: a SIGHUP, 300 s hung). The signal
    now waits while the thread starts; raised after, the thread is stopped first."""
    import threading

    from optuna.storages._heartbeat import HeartbeatThread

    from autotune import process

    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'hb.db'}", heartbeat_interval=60)
    study = optuna.create_study(storage=storage)
    start = HeartbeatThread.start

    def landing(self: HeartbeatThread) -> None:  # SIGHUP arriving as the thread has just started
        start(self)
        process._handler(1, sys._getframe())

    monkeypatch.setattr(HeartbeatThread, "start", landing)
    before = set(threading.enumerate())
    with pytest.raises(process.Interrupted), optuna_api.heartbeat(study, study.ask()):
        pytest.fail("the block ran although the signal came first")
    assert set(threading.enumerate()) == before  # no heartbeat left beating


def test_hypervolume_is_optunas_exact_volume() -> None:
    assert optuna_api.hypervolume([[0.0, 0.5], [0.5, 0.0], [0.6, 0.6]], [1.0, 1.0]) == pytest.approx(0.75)
    assert optuna_api.hypervolume([[2.0, 2.0]], [1.0, 1.0]) == 0.0


def test_a_note_saved_on_a_finished_trial_is_the_one_optuna_dashboard_reads() -> None:
    from optuna_dashboard import get_note, save_note

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    handle = optuna_api.TrialHandle.of(study, study.trials[1]._trial_id)
    save_note(handle, "Euler, 10 steps" * 300)  # longer than one system attribute holds
    assert get_note(handle) == "Euler, 10 steps" * 300
    assert get_note(optuna_api.TrialHandle.of(study, study.trials[0]._trial_id)) == ""  # the other trial's is its own


def test_connections_reset_after_a_signal_mid_commit_leave_the_storage_working(tmp_path: Path) -> None:
    """A KeyboardInterrupt inside a commit (a signal landing there): without the reset the next write is
    Optuna's StorageInternalError (seen once in the suite under load); with it, the write lands."""
    from sqlalchemy import event

    for reset in (False, True):
        url = f"sqlite:///{tmp_path / f'{reset}.sqlite'}"
        storage = optuna.storages.RDBStorage(url)
        study = optuna.create_study(storage=storage)
        trial = study.ask()
        fired: list[int] = []

        def interrupt(conn, fired=fired):  # type: ignore[no-untyped-def]
            if not fired:
                fired.append(1)
                raise KeyboardInterrupt

        event.listen(storage.engine, "commit", interrupt)
        with pytest.raises(KeyboardInterrupt):
            study._storage.set_trial_user_attr(trial._trial_id, "a", 1)
        if not reset:
            with pytest.raises(optuna.exceptions.StorageInternalError):
                study._storage.set_trial_user_attr(trial._trial_id, "interrupted", True)
            continue
        optuna_api.reset_connections(study._storage)
        study._storage.set_trial_user_attr(trial._trial_id, "interrupted", True)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        again = optuna.load_study(study_name=study.study_name, storage=url).trials[0]
        assert again.user_attrs["interrupted"] is True and again.state.name == "FAIL"


def test_a_stop_while_sqlite_steps_a_statement_leaves_no_lock_once_connections_are_reset(tmp_path: Path) -> None:
    """A signal that lands while a worker's SELECT is under way (every transaction takes the write lock
    first): the cursor, held by the interrupted frames, keeps the connection's lock even after SQLAlchemy
    closes it, and the stop's own writes waited 60 s and failed, "database is locked" (seen in CI). Reset
    with the stop, the lock is gone at once."""
    from sqlalchemy import event

    from autotune.store.storage import open_storage

    for release in (False, True):
        path = tmp_path / f"{release}.sqlite"
        storage = open_storage(f"sqlite:///{path}", workers=True)
        study = optuna.create_study(storage=storage)
        fired: list[str] = []

        def interrupt(conn, cursor, statement, *_, fired=fired):  # type: ignore[no-untyped-def]
            if not fired and statement.lstrip().upper().startswith("SELECT"):
                fired.append(statement)
                raise KeyboardInterrupt

        event.listen(storage.engine, "after_cursor_execute", interrupt)
        try:
            study.set_user_attr("k", 1)
        except KeyboardInterrupt as e:
            optuna_api.reset_connections(storage, e if release else None)
            other = sqlite3.connect(path, timeout=0, isolation_level=None)
            try:
                if not release:
                    with pytest.raises(sqlite3.OperationalError, match="locked"):
                        other.execute("BEGIN IMMEDIATE")
                    continue
                other.execute("BEGIN IMMEDIATE")  # the write lock, without waiting
                other.execute("ROLLBACK")
            finally:
                other.close()
        assert fired, "no SELECT was interrupted"
        study.set_user_attr("k", 2)
        assert optuna.load_study(study_name=study.study_name, storage=f"sqlite:///{path}").user_attrs["k"] == 2
