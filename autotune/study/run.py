"""The run loop: open every class's study, recover what dead workers left, run trials in turn.

Example:
    >>> outcomes = run_study(load_config("studies/demo.toml"), n_trials=10)
    >>> outcomes["portrait"].recommendation.speedup
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import random
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from autotune.config import ConfigError, StudyConfig
from autotune.config.objectives import OBJECTIVES
from autotune.config.resolve import ResolvedStudy
from autotune.decision.evidence import reused
from autotune.files import WriteFailed, check_writable, write_failure
from autotune.model.evaluate import Evaluator
from autotune.process import Interrupted, deferred, heard, received, signals_kept, why, worker_id
from autotune.records import SCHEMA, put_study, study_record, trial_record
from autotune.results.reader import Outcomes, recommend
from autotune.space.settings import Settings, searched_params
from autotune.store.artifacts import check as check_artifacts
from autotune.store.artifacts import is_bucket, open_store
from autotune.store.optuna_api import reset_connections
from autotune.store.storage import check_not_emptied, nothing_left_on_refusal, open_storage, quiet_optuna, study_attrs
from autotune.store.versions import find_version, fingerprint, study_name
from autotune.study import ledger
from autotune.study.decide import ClassRun, check_reach
from autotune.study.progress import Progress
from autotune.study.sampling import class_seed, make_sampler
from autotune.study.trials import TrialRunner

__all__ = ["StudyAborted", "open_class_study", "run_study"]

_MAX_CONSECUTIVE_FAILURES = 10  # fresh failures in a row (not repeats of a known-bad setting)
_GRACE = 60.0  # seconds a helper has after SIGTERM (a render's step, marking its trial), then it is killed


class StudyAborted(RuntimeError):
    """Every recent trial failed: stop instead of burning the night on the same error."""


def open_class_study(
    cfg: ResolvedStudy,
    class_name: str,
    storage: optuna.storages.BaseStorage,
    version: int = 1,
    measured: dict[str, str | None] | None = None,
    created: list[str] | None = None,
) -> optuna.Study:
    """Load the class's study, creating it first when it does not exist.

    Creation is atomic (the study name is unique in the storage): only the process that
    created the study sets its attributes and enqueues the baseline, so workers starting
    together never enqueue it twice.
    """
    name = study_name(cfg, class_name, version)
    sampler = make_sampler(cfg.search.sampler, class_seed(cfg.search.seed, class_name))
    directions = [optuna.study.StudyDirection[OBJECTIVES[m].direction.upper()] for m in cfg.metrics.objectives]
    try:
        study = optuna.create_study(study_name=name, storage=storage, directions=directions, sampler=sampler)
    except optuna.exceptions.DuplicatedStudyError:
        return optuna.load_study(study_name=name, storage=storage, sampler=sampler)
    if created is not None:  # this run's: deleted again if the run is refused before its first trial
        created.append(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(list(cfg.metrics.objectives))
    fp = fingerprint(cfg, class_name, measured)
    put_study(study, schema=SCHEMA, fingerprint=fp, prompts=list(cfg.classes[class_name]))
    base = Settings.of(cfg.baseline)  # the baseline is the first trial of every class
    searched = searched_params(base.scheduler, cfg.search, cfg.family)
    ledger.enqueue(study, base.params(searched), baseline=True)
    return study


def _prepare(study: optuna.Study, class_name: str, evaluator: Evaluator, deadline: float) -> None:
    """Recover dead workers' trials; store the class's router embedding, the model's scheduler config
    and the seed-to-seed LPIPS (its renders start before ``deadline`` or not at all)."""
    stored = study_record(study.user_attrs)
    if stored.exhausted:  # the space may have grown since: look again
        put_study(study, exhausted=False)
    from autotune.weights.clip import class_embedding

    ledger.recover(study)
    prompts = evaluator.cfg.classes[class_name]
    put_study(study, router=class_embedding(evaluator.text_encoder(), prompts))
    if stored.scheduler_base is None:  # the model's own: what a complete handoff config starts from
        put_study(study, scheduler_base=dict(evaluator.scheduler_config))
    if evaluator.lpips is not None and stored.seed_lpips is None:  # on the prompts every trial renders
        first = prompts[: evaluator.cfg.search.first_prompts(len(prompts))]
        put_study(study, seed_lpips=evaluator.seed_lpips(first, lambda: _in_time(deadline)))


def run_study(
    cfg: StudyConfig,
    *,
    storage: str | None = None,
    n_trials: int | None = None,
    timeout: float | None = None,
    device: str | None = None,
    progress: bool = True,
    check_reference: bool = True,
    new_version: bool = False,
    workers: int = 1,
    decide: bool = True,
    started: Callable[[Outcomes], None] | None = None,
) -> Outcomes:
    """Run (or resume) every class's study, deciding while searching, until every class is settled
    (``n_trials`` settings rendered and the decision finished) or ``timeout`` seconds have passed
    since the call, loading the model included; the work under way then finishes and nothing more starts.

    ``n_trials`` counts the study's rendered settings, not this run's: a resumed study runs on
    to the total. Classes take turns one unit of work at a time (:class:`autotune.study.decide.ClassRun`),
    so a timeout leaves every class with a comparable share. Before the first trial, the reference
    setting must converge (see :func:`autotune.model.references.convergence`) unless ``check_reference``
    is False.

    ``workers`` > 1 starts that many processes in all on this machine (one per GPU when
    ``device`` is CUDA and there are several), sharing the storage; they render trials and return when done.
    Safe to run in several processes against one storage (see :mod:`autotune.study.ledger`).
    Raises :class:`ConfigError` when the study file changed in a way that makes the stored
    trials incomparable, unless ``new_version`` starts ``NAME.vN.CLASS`` beside them.
    Without ``decide`` (helper workers) it renders trials only.
    """
    deadline = now() + timeout if timeout is not None else math.inf
    url = storage or cfg.default_storage
    if url.startswith("sqlite:///"):
        cfg.directory.mkdir(parents=True, exist_ok=True)
    created: list[str] = []
    with quiet_optuna(), nothing_left_on_refusal(url, created):
        check_not_emptied(url, cfg.output_dir / "recommendations.json")
        rdb = open_storage(url, workers=True)  # a bad storage URL: refused before the model is looked at
        from autotune.model.pipeline import resolve_config, runtime
        from autotune.model.sources import weights_digest

        rt = runtime(cfg, device)  # a CUDA device that is not there: refused, and the new database removed
        resolved = cfg if isinstance(cfg, ResolvedStudy) else resolve_config(cfg)  # the model described once
        if decide:
            check_reach(resolved)
        measured = {**rt, "weights": weights_digest(cfg.model)}
        names = optuna.get_all_study_names(rdb)
        version, resolved = find_version(  # a study stored before a change of the panel goes on as it ran
            cfg, names, lambda n: study_attrs(rdb, n), resolved, new_version=new_version, measured=measured
        )
        check_writable(cfg.output_dir)
        if cfg.report.images:  # before the model loads: the images go where the study's went, and can
            for c in cfg.classes:  # (a bucket the study or this run names; a moved project's folder may differ)
                name = study_name(cfg, c, version)
                recorded = study_record(study_attrs(rdb, name)).artifacts if name in names else None
                bucket = is_bucket(str(recorded)) or is_bucket(cfg.artifacts)
                if recorded is not None and recorded != cfg.artifacts and bucket:
                    raise ConfigError(
                        f"--artifacts: study {name} keeps its trial images in {recorded}; this run would write "
                        f"them to {cfg.artifacts}: pass --artifacts {recorded} (or set [storage] artifacts)"
                    )
            check_artifacts(cfg.artifacts, f"{cfg.path}: storage.artifacts")
        target = n_trials or cfg.search.n_trials
        studies = {c: open_class_study(resolved, c, rdb, version, measured, created) for c in cfg.classes}
        artifacts = open_store(cfg.artifacts) if cfg.report.images else None
        runs: dict[str, Any] = {}
        try:  # from here on a stop withdraws what this run queued (a baseline, at first) and says why
            for study in studies.values():
                if artifacts is not None and study_record(study.user_attrs).artifacts is None:
                    put_study(study, artifacts=cfg.artifacts)
                if decide:  # deciding, by this process: `autotune recommend` tells a live run from a killed one
                    put_study(study, decision={"state": "deciding", "by": worker_id()})
            if started is not None:
                started(recommend(resolved, storage=url, version=version))
            _in_time(deadline)  # start-up counts against the deadline: each render below starts within it
            tell = functools.partial(print, file=sys.stderr) if progress else lambda _: None
            tell(f"autotune: start-up: loading {cfg.model.id} and the metrics' models ({rt['device']}, {rt['dtype']})")
            evaluator = Evaluator(resolved, url, device)
            if check_reference and "lpips" in cfg.metrics.objectives:
                _in_time(deadline)
                tell("autotune: start-up: checking that the reference setting converges")
                evaluator.check_reference()
            for c, study in studies.items():
                tell(f"autotune: start-up: {c}: recovering stopped trials, measuring the seed-to-seed LPIPS")
                _prepare(study, c, evaluator, deadline)
                seed = class_seed(cfg.search.seed, c)
                seeded = None if seed is None else random.Random(seed)  # fresh draws too
                objective = TrialRunner(resolved, study, c, evaluator, target, artifacts, rng=seeded)
                runs[c] = ClassRun(resolved, study, c, evaluator, objective) if decide else _TrialsOnly(objective)
            _loop(cfg, runs, deadline, evaluator.pipeline.device, url, workers, progress)
        except _TimeUp:
            pass
        except KeyboardInterrupt as e:
            with deferred():
                reset_connections(rdb, e)  # the signal may have landed inside a commit
                try:
                    _stopped(studies, runs, why(e), decide)
                except Exception as unrecorded:  # the stop stays the exit; the next run recovers it
                    if (reason := write_failure(unrecorded)) is None:
                        raise
                    print(f"autotune: warning: the stop could not be recorded ({reason})", file=sys.stderr)
            raise
        except StudyAborted as e:  # the outputs say it, as for a signal: "stopped: 10 trials in a row failed; ..."
            with deferred():
                _stopped(studies, runs, str(e), decide)
            raise
        except Exception as e:  # a full disk, a database gone: stop, keeping what is stored, saying where
            reason = write_failure(e)
            if reason is None:
                raise
            where = getattr(e, "filename", None) or "the study's storage"  # an output file, or the database
            failed = e if isinstance(e, WriteFailed) else WriteFailed(f"{where} could not be written ({reason})")
            with deferred(), contextlib.suppress(Exception):  # where the storage still takes it
                reset_connections(rdb, e)
                _stopped(studies, runs, f"could not write ({reason})", decide)
            raise failed from None
        _stopped(studies, runs, "the time limit", decide)
        return recommend(resolved, storage=url, version=version)


class _TimeUp(Exception):
    """The deadline passed before the next render of the start-up began."""


def _in_time(deadline: float) -> None:
    if now() >= deadline:
        raise _TimeUp


def _stopped(studies: dict[str, optuna.Study], runs: dict[str, Any], why: str, decide: bool) -> None:
    """Classes whose decision is not settled say why it stopped (a kill leaves no reason); the trials this
    process queued and nobody began are withdrawn (the next run queues them again)."""
    for c, study in studies.items():
        if ledger.dead_sibling(study):  # a helper that had to be killed (see _join): its trial is retried
            ledger.recover(study)
        ledger.withdraw(study, why)
        if decide and not (c in runs and runs[c].settled):
            put_study(study, decision={"state": "deciding", "stopped": why})


class _TrialsOnly:
    """A helper worker's share of a class: trials up to the study's ``target`` rendered settings, no decision."""

    def __init__(self, objective: TrialRunner) -> None:
        self.objective, self.study = objective, objective.study
        self.settled = False
        self.last: FrozenTrial | None = None

    def step(self) -> bool:
        trials = self.study.get_trials(deepcopy=False)
        if ledger.claimed(trials) >= self.objective.target or study_record(self.study.user_attrs).exhausted:
            self.settled = True
            return False
        self.last = self.objective.run_one()
        return True


class _Failures:
    """Consecutive fresh trial failures: ten in a row stop the run instead of burning the night."""

    def __init__(self) -> None:
        self.n = 0

    def count(self, t: FrozenTrial | None) -> None:
        if t is None:
            return
        if t.state != TrialState.FAIL:
            self.n = 0
        elif not reused(t):
            self.n += 1
        if self.n >= _MAX_CONSECUTIVE_FAILURES:
            raise StudyAborted(
                f"{self.n} trials in a row failed; the last: {trial_record(t).fail_reason or 'unknown reason'}"
            )


def _loop(
    cfg: StudyConfig, runs: dict[str, Any], deadline: float, device: str, url: str, workers: int, progress: bool
) -> None:
    """Classes take turns, one unit of work at a time, until each is settled or the deadline passes.

    ``runs`` are :class:`autotune.study.decide.ClassRun` (deciding while searching) or, in a helper
    worker, :class:`_TrialsOnly`: both have ``step()``, ``settled``, ``study`` and ``last`` (the trial
    the step rendered, if any).
    """
    import torch

    threads = torch.get_num_threads()
    target = next(iter(runs.values())).objective.target
    helpers = _spawn_workers(cfg, url, target, deadline - now() if deadline < math.inf else None, device, workers - 1)
    bar = Progress(cfg, runs, target, deadline, progress, clock=lambda: now())  # now() as tests step it
    for c, run in runs.items():
        run.objective.in_time = lambda: now() < deadline  # a fit, a race, a confirmation look between chunks
        if isinstance(run, ClassRun):
            run.announce = functools.partial(bar.now_doing, c)  # type: ignore[method-assign]
    failures = _Failures()
    stopped = False
    signals = received()
    try:  # what a library made of a stop on its way up (a storage error after its cursor was cut) is the stop
        with signals_kept():
            while now() < deadline and (active := [c for c, r in runs.items() if not r.settled]):
                for c in active:
                    heard(signals)  # a stop that something swallowed on its way up still stops the run
                    if ledger.dead_sibling(runs[c].study):  # a worker of this machine died mid-trial
                        ledger.recover(runs[c].study)
                    if not runs[c].step():  # settled: the bar shows its final pick (timed in turn)
                        bar.update()
                        continue
                    last, runs[c].last = runs[c].last, None
                    failures.count(last)
                    bar.update(_failure_line(c, last) if last is not None else None)
                    if now() >= deadline:
                        break
    except KeyboardInterrupt as e:  # Ctrl-C reached the helpers too (one process group); other signals did not
        stopped = isinstance(e, Interrupted) and e.signum != signal.SIGINT
        raise
    finally:
        with contextlib.suppress(OSError):  # a hung-up terminal: no bar to close
            bar.close()
        _join(helpers, stopped)
        torch.set_num_threads(threads)


def now() -> float:
    """The clock the deadline is kept by (tests step it instead of waiting)."""
    return time.monotonic()


def _failure_line(class_name: str, t: FrozenTrial) -> str | None:
    """One line for a trial that failed on its own (not a repeat of a failed setting), else None."""
    if t.state != TrialState.FAIL or reused(t):
        return None
    r = trial_record(t)
    setting = r.setting or "setting not drawn"
    return f"autotune: {class_name} trial {t.number} ({setting}) failed: {r.fail_reason or 'unknown'}"


def _spawn_workers(
    cfg: StudyConfig, url: str, target: int, timeout: float | None, device: str, n: int
) -> list[subprocess.Popen[bytes]]:
    """``n`` more worker processes (:mod:`autotune.study.worker`) on this storage; GPUs dealt out round robin.

    On the CPU every process, this one included until the run ends, gets its share of the cores:
    N processes with all-core thread pools thrash (4 on 2 cores ran 3x slower).
    """
    import torch

    gpus = torch.cuda.device_count() if device.startswith("cuda") else 0
    env = dict(os.environ)
    if n and device == "cpu":
        threads = max(1, (os.cpu_count() or 1) // (n + 1))
        env["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)
    procs = []
    for i in range(1, n + 1):
        dev = f"cuda:{i % gpus}" if gpus > 1 else device
        cmd = [sys.executable, "-m", "autotune.study.worker", str(cfg.path), url, str(target), dev, str(timeout or 0),
               str(os.getpid())]  # fmt: skip
        procs.append(subprocess.Popen(cmd, env=env))
    return procs


def _join(procs: list[subprocess.Popen[bytes]], stopped: bool = False) -> None:
    """Wait for the helpers; SIGTERM first (``_GRACE``) when this process was ``stopped`` or is stopped meanwhile."""
    for p in procs:
        try:
            if stopped:
                _terminate(p)
            code = p.wait()
        except KeyboardInterrupt:
            _terminate(p)
            raise
        if code not in (0, 130, 143, -signal.SIGTERM, -signal.SIGINT):  # a signal before its handlers: as sent
            print(f"autotune: warning: worker process {p.pid} exited with code {code}", file=sys.stderr)


def _terminate(p: subprocess.Popen[bytes]) -> None:
    p.terminate()
    try:
        p.wait(_GRACE)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
        print(f"autotune: warning: worker {p.pid} still going {_GRACE:g} s after SIGTERM: killed", file=sys.stderr)
