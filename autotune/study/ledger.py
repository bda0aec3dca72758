"""The trial ledger: which trials render, which step back, which were interrupted and are retried.

Any number of workers share one study. A trial counts towards ``n_trials`` from the moment it
starts rendering. Workers agree on one claim order, the trials' start time and then their
storage id (every worker reads the same values), so when several start at once exactly the
first ``n_trials`` render; a trial numbered early (enqueued long ago) but started late is late.

Example:
    >>> claimed(study.get_trials(deepcopy=False))
    12
"""

from __future__ import annotations

import datetime
from collections import Counter
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from autotune.decision.evidence import interrupted, is_baseline, reused
from autotune.process import alive, worker_id
from autotune.records import attributes, trial_record
from autotune.store.optuna_api import fail_trial, queued_params, trial_id

__all__ = [
    "MAX_INTERRUPTIONS",
    "claimed",
    "dead_sibling",
    "enqueue",
    "interrupted",
    "is_baseline",
    "recover",
    "rendering",
    "rendering_now",
    "rough_cut",
    "same_setting",
    "surplus",
    "withdraw",
]

MAX_INTERRUPTIONS = 2  # a setting whose trial was killed this often is not retried again
_LATEST = datetime.datetime.max


def rough_cut(t: FrozenTrial) -> bool:
    """Pruned by rough-first after rendering its first seed."""
    return t.state == TrialState.PRUNED and trial_record(t).rough_dominated_by is not None


def rendering(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """Trials that render their setting: completed, running, or cut by rough-first after the first seed
    (those that reused a stored setting's metrics render nothing)."""
    states = (TrialState.COMPLETE, TrialState.RUNNING)
    return [t for t in trials if (t.state in states or rough_cut(t)) and not reused(t)]


def claimed(trials: Sequence[FrozenTrial]) -> int:
    """Settings rendered or being rendered (on any worker): what counts towards ``n_trials``."""
    return len(rendering(trials))


def _claim_order(t: FrozenTrial) -> tuple[datetime.datetime, int]:
    return (t.datetime_start or _LATEST, trial_id(t))


def surplus(trials: Sequence[FrozenTrial], me: FrozenTrial, target: int) -> bool:
    """Whether ``me`` (running) comes after the study's ``target`` trials: the trials that finished
    rendering, and those rendering now that claimed before it, are already ``target``. The baseline never
    is (a retry of one that failed, say): every other trial is compared with it."""
    if is_baseline(me):
        return False
    before = [
        t
        for t in rendering(trials)
        if trial_id(t) != trial_id(me) and (t.state != TrialState.RUNNING or _claim_order(t) < _claim_order(me))
    ]
    return len(before) >= target


def same_setting(trials: Sequence[FrozenTrial], key: str, number: int) -> FrozenTrial | None:
    """An earlier finished trial of the same setting (completed, cut by rough-first, or failed with a reason)."""
    for t in trials:
        r = trial_record(t)
        if t.number == number or r.setting_key != key or reused(t):
            continue
        if r.interrupted or r.infrastructure:  # no verdict on the setting
            continue
        if t.state == TrialState.COMPLETE or (t.state == TrialState.FAIL and r.fail_reason is not None):
            return t
        if rough_cut(t):
            return t
    return None


def rendering_now(trials: Sequence[FrozenTrial], key: str, number: int) -> FrozenTrial | None:
    """Another running trial that drew the same setting (on any worker), if any.

    Each trial writes its setting before it reads the others', so of two that drew one setting at
    the same moment at least one sees the other; the one that sees it steps back. Both may step
    back (neither renders the setting now; a later trial may draw it again), but never both render.
    """
    for t in trials:
        if (
            t.number != number
            and t.state == TrialState.RUNNING
            and trial_record(t).setting_key == key
            and not reused(t)
        ):
            return t
    return None


def enqueue(study: optuna.Study, params: dict[str, Any], **attrs: Any) -> None:
    """Queue a trial of ``params``, marked as this process's (see :func:`withdraw`)."""
    study.enqueue_trial(params, user_attrs=attributes(**attrs, enqueued_by=worker_id()), skip_if_exists=False)


def withdraw(study: optuna.Study, why: str) -> None:
    """Fail the trials this process queued and no worker began: a stopped run leaves none WAITING.
    :func:`recover` queues them again, and a withdrawal is no interruption of their setting."""
    me = worker_id()
    for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        if trial_record(t).enqueued_by == me:
            fail_trial(study, t, withdrawn=True, interrupted=True, fail_reason=f"withdrawn: {why} before it began")


def _intended(t: FrozenTrial) -> dict[str, Any]:
    """The setting a trial drew, or was enqueued with when it died before drawing it (the baseline, say)."""
    return t.params or queued_params(t)


def _params_key(t: FrozenTrial) -> str:
    return repr(sorted(_intended(t).items()))


def dead_sibling(study: optuna.Study) -> bool:
    """Whether a trial is RUNNING for a worker of this machine that is gone (killed -9, out of memory):
    :func:`recover` fails it and queues it again, without waiting for the next run."""
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    return any((w := trial_record(t).worker) and not alive(w) for t in running)


def recover(study: optuna.Study) -> int:
    """Fail the trials whose worker died on this machine; enqueue each interrupted trial once more.

    A setting interrupted ``MAX_INTERRUPTIONS`` times (one that kills its worker, say) is not retried
    again, except the baseline while none has completed: without it nothing is decided, so each run
    renders it again. Returns the number of trials enqueued.
    """
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial_record(t).worker
        if worker and not alive(worker):
            fail_trial(study, t, interrupted=True, fail_reason=f"interrupted: its worker {worker} is gone")
    trials = study.get_trials(deepcopy=False)
    retried = {trial_record(t).retry_of for t in trials}
    times = Counter(_params_key(t) for t in trials if interrupted(t) and not trial_record(t).withdrawn)
    enqueued = 0
    lacking = not any(is_baseline(t) and t.state in (TrialState.COMPLETE, TrialState.WAITING, TrialState.RUNNING)
                      for t in trials)  # fmt: skip
    for t in trials:
        params = _intended(t)
        again = times[_params_key(t)] < MAX_INTERRUPTIONS or (lacking and is_baseline(t))
        if interrupted(t) and params and t.number not in retried and again:
            r = trial_record(t)
            kept = {k: True for k, on in (("baseline", r.baseline), ("proposed", r.proposed)) if on}
            enqueue(study, params, retry_of=t.number, **kept)
            enqueued += 1
            lacking = lacking and not is_baseline(t)  # one baseline queued is enough
    return enqueued
