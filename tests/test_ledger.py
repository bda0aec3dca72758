"""The trial ledger shared by workers: who renders, who steps back, and one setting rendered once."""

from __future__ import annotations

import datetime
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState

from autotune.config import load_config
from autotune.config.resolve import resolve
from autotune.model.evaluate import Evaluation
from autotune.space.families import FAMILIES, Family
from autotune.space.schedulers import names
from autotune.space.settings import Settings, variant_choices
from autotune.study import ledger
from autotune.study.run import open_class_study
from autotune.study.trials import TrialRunner

T0 = datetime.datetime(2026, 11, 26, 22, 0, 0)


def _trial(
    number: int, state: TrialState, start_s: float | None, trial_id: int | None = None, **attrs: Any
) -> FrozenTrial:
    start = T0 + datetime.timedelta(seconds=start_s)
    return FrozenTrial(
        number=number,
        state=state,
        value=None,
        values=[1.0] if state == TrialState.COMPLETE else None,
        datetime_start=start,
        datetime_complete=None,
        params={},
        distributions={},
        user_attrs=attrs,
        system_attrs={},
        intermediate_values={},
        trial_id=number if trial_id is None else trial_id,
    )


def test_a_trial_numbered_early_but_started_late_steps_back() -> None:
    # n_trials = 3; two rendered; trial 5 (a fresh setting) started rendering first, then trial 2
    # (a retry enqueued long ago, so numbered lower) was picked up: only one of them may render
    trials = [
        _trial(0, TrialState.COMPLETE, 0),
        _trial(1, TrialState.COMPLETE, 1),
        _trial(5, TrialState.RUNNING, 10),
        _trial(2, TrialState.RUNNING, 20),
    ]
    assert ledger.surplus(trials, trials[3], target=3)  # by trial number it would have rendered a 4th
    assert not ledger.surplus(trials, trials[2], target=3)


def test_trials_starting_at_the_same_moment_agree_on_who_renders() -> None:
    trials = [_trial(0, TrialState.COMPLETE, 0)] + [
        _trial(n, TrialState.RUNNING, 5, trial_id=10 - n) for n in (1, 2, 3)
    ]
    stepping_back = [t.number for t in trials[1:] if ledger.surplus(trials, t, target=2)]
    assert stepping_back == [1, 2]  # same start: the lowest storage id (trial 3's) claims first


def test_reused_and_surplus_trials_do_not_count() -> None:
    trials = [
        _trial(0, TrialState.COMPLETE, 0),
        _trial(1, TrialState.COMPLETE, 1, reused_from=0),
        _trial(2, TrialState.PRUNED, 2, surplus=True),
        _trial(3, TrialState.PRUNED, 3, rough_dominated_by=0),  # rendered its first seed: counts
        _trial(4, TrialState.RUNNING, 4),
    ]
    assert ledger.claimed(trials) == 3


def test_two_trials_drawing_one_setting_see_each_other() -> None:
    a = _trial(7, TrialState.RUNNING, 1, setting_key="k")
    b = _trial(8, TrialState.RUNNING, 2, setting_key="k")
    done = _trial(3, TrialState.COMPLETE, 0, setting_key="other")
    assert ledger.rendering_now([done, a, b], "k", 7) is b and ledger.rendering_now([done, a, b], "k", 8) is a
    assert ledger.rendering_now([done, a], "k", 7) is None


class _CountingScorer:
    """Stands in for the renderer; counts what it is asked to render."""

    def __init__(self) -> None:
        self.rendered: list[Settings] = []

    @property
    def family(self) -> Family:
        return FAMILIES["sd"]

    @property
    def scheduler_config(self) -> dict[str, str]:
        return {"timestep_spacing": "leading"}  # as SD 1.5's (and the tiny model's) config says

    def evaluate(self, settings: Settings, prompts: Sequence[str], seeds: Sequence[int]) -> Evaluation:
        self.rendered.append(settings)
        n = len(prompts) * len(seeds)
        return Evaluation({"clip_score": [20.0] * n, "lpips": [0.1] * n, "seconds": [0.5] * n}, settings.steps)


def test_a_setting_another_worker_is_rendering_is_left_to_it(study_file: Callable[..., Path], storage: Any) -> None:
    cfg = resolve(load_config(study_file(n_trials=5)), FAMILIES["sd"], names())
    study = open_class_study(cfg, "portrait", storage)
    scorer = _CountingScorer()
    objective = TrialRunner(cfg, study, "portrait", scorer, target=5)
    assert objective.run_one().state == TrialState.COMPLETE  # the baseline
    other = study.ask()  # another worker, mid-render of the setting enqueued next
    setting = Settings.make("euler", 6, 3.0)
    study.enqueue_trial(setting.params(variant_choices("euler", cfg.search.variants, cfg.family)))  # variants pinned
    other.set_user_attr("setting_key", setting.key(scorer.scheduler_config))
    stepped_back = objective.run_one()
    assert stepped_back.state == TrialState.PRUNED
    assert stepped_back.user_attrs["same_setting_running"] == other.number
    assert [s.key() for s in scorer.rendered] == [Settings.of(cfg.baseline).key()]  # not rendered here
    fresh = study.get_trials(states=(TrialState.WAITING,))  # the next trial tries a setting not tried yet
    assert len(fresh) == 1 and fresh[0].user_attrs["fresh_after"] == stepped_back.number
    assert ledger.claimed(study.get_trials()) == 2  # the baseline and the other worker's


def test_a_variant_equal_to_the_models_default_is_the_default_setting_reused_not_rendered(
    study_file: Callable[..., Path], storage: Any
) -> None:
    cfg = resolve(load_config(study_file(n_trials=5)), FAMILIES["sd"], names())
    study = open_class_study(cfg, "portrait", storage)
    scorer = _CountingScorer()
    objective = TrialRunner(cfg, study, "portrait", scorer, target=5)
    objective.run_one()  # the baseline
    searched = variant_choices("dpmpp_2m_karras", cfg.search.variants, cfg.family)
    for spacing in ("default", "leading", "trailing"):
        study.enqueue_trial(Settings.make("dpmpp_2m_karras", 6, 3.0, {"timestep_spacing": spacing}).params(searched))
    default, leading, trailing = (objective.run_one() for _ in range(3))
    assert default.state == TrialState.COMPLETE and "reused_from" not in default.user_attrs
    assert leading.user_attrs["reused_from"] == default.number  # "leading" is this model's default
    assert leading.user_attrs["setting_key"] == default.user_attrs["setting_key"]
    assert "reused_from" not in trailing.user_attrs  # a different setting, rendered
    spacings = [dict(s.options).get("timestep_spacing", "default") for s in scorer.rendered[1:]]
    assert spacings == ["default", "trailing"]


def _pop(url: str, name: str, barrier: Any, queue: Any) -> None:
    from autotune.store.storage import open_storage

    study = optuna.load_study(study_name=name, storage=open_storage(url, workers=True))
    barrier.wait()
    queue.put(study.ask()._trial_id)


@pytest.mark.slow
def test_workers_starting_together_never_take_the_same_waiting_trial(shared_url: str) -> None:
    """Optuna pops an enqueued trial with a read, then a write; on SQLite, without autotune's
    immediate transactions, two workers both took it in 3 of 15 four-worker starts."""
    import multiprocessing

    from autotune.store.storage import open_storage

    ctx = multiprocessing.get_context("fork")  # each child opens its own storage, as a worker does
    for i in range(20):
        url, name = shared_url, f"race{i}"
        optuna.create_study(study_name=name, storage=open_storage(url)).enqueue_trial({"x": 1})
        barrier, queue = ctx.Barrier(4), ctx.Queue()
        procs = [ctx.Process(target=_pop, args=(url, name, barrier, queue)) for _ in range(4)]
        for p in procs:
            p.start()
        taken = [queue.get(timeout=60) for _ in procs]
        for p in procs:
            p.join()
        assert len(set(taken)) == 4, taken
