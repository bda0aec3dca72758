from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from autotune.config import load_config
from autotune.model import render as pipeline_module
from autotune.records import study_record
from autotune.store.versions import study_name
from autotune.study.run import run_study


def test_study_runs_baseline_first_and_records_per_trial_attributes(
    study_file: Callable[..., Path], seconds_by_evaluations: None
) -> None:
    # whether the 2-step candidate is cheaper on every timed call must not hang on timing noise (it did once)
    path = study_file(n_trials=3)
    text = path.read_text().replace("race_budget = 0", "race_budget = 8")
    path.write_text(text.replace("[search]\n", "[search]\nseed = 2\n"))
    cfg = load_config(path)
    run_study(cfg, n_trials=1, progress=False, decide=False)  # the baseline alone
    study = optuna.load_study(study_name=study_name(cfg, "portrait"), storage=cfg.default_storage)
    # a setting at 2 model calls against the baseline's 16, so one candidate surely is eligible and races
    study.enqueue_trial({"scheduler": "euler", "steps": 2, "guidance": 1.0})
    outcomes = run_study(cfg, progress=False)
    assert study.directions == [
        optuna.study.StudyDirection.MAXIMIZE,
        optuna.study.StudyDirection.MINIMIZE,
        optuna.study.StudyDirection.MINIMIZE,
    ]
    assert study.metric_names == ["clip_score", "lpips", "seconds"]
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(outcomes["portrait"].trials) == 3
    first = study.trials[0]
    # the baseline exactly as configured: variants pinned to the model's own config
    assert first.params == {
        "scheduler": "dpmpp_2m_karras",
        "steps": 8,
        "guidance": 7.5,
        "dpmpp_2m_karras.timestep_spacing": "default",
    }
    assert first.user_attrs["setting"] == "DPM++ 2M Karras, 8 steps, CFG 7.5"
    assert first.user_attrs["baseline"] is True
    for t in trials:
        attrs = t.user_attrs
        assert attrs["images"] == 1 and attrs["model_calls"] >= 1
        assert attrs["scheduler_class"] in ("EulerDiscreteScheduler", "DPMSolverMultistepScheduler", "DDIMScheduler")
        assert attrs["deterministic"] is True and isinstance(attrs["scheduler_config"], dict)
        for m in ("clip_score", "lpips"):
            assert len(attrs[f"{m}_values"]) == 1  # one prompt, one seed
        assert len(attrs["seconds_values"]) == 3  # serving.repeats timed calls; the value is their median
        assert t.values[0] == pytest.approx(attrs["clip_score_values"][0], abs=1e-6)
        assert t.values[2] == pytest.approx(sorted(attrs["seconds_values"])[1], abs=1e-6)
    assert study.user_attrs["seed_lpips"] > 0
    # deciding: one prompt, one search seed: no spread, so every bound is undecided until racing adds seeds 1
    # and 2 (the baseline's too); a candidate that passes is confirmed on fresh seeds, the baseline's first
    renders = study_record(study.user_attrs).renders  # each trial's extra images, its chunks together
    assert 0 < study.user_attrs["race_images"] <= 8 and {"0:1", "0:2"} & set(renders[0])
    rec = outcomes["portrait"].recommendation
    assert rec is not None and rec.confirmed and outcomes["portrait"].spread["clip_score"] > 0
    assert outcomes["portrait"].decision_state == "settled"
    if rec.chosen.number != 0:
        assert max(rec.chosen.seconds) < min(rec.baseline.seconds)
        for n in (0, rec.chosen.number):
            assert {"0:1000", "0:1001"} <= set(renders[n])
        margin = outcomes["portrait"].margin  # its neighbours, judged on its own images
        assert margin and all(m["change"] == "one step fewer" or m["change"].startswith("CFG ") for m in margin)
        assert all(m["verdict"].split()[0] in ("pass", "fail", "undecided", "not") for m in margin)
        by_number = outcomes["portrait"].evidence.by_number  # a pass never confirmed says so
        unconfirmed = [m for m in margin if m["verdict"].startswith("pass") and not by_number[m["trial"]].confirm]
        assert all(m["verdict"].endswith("; never confirmed on fresh images") for m in unconfirmed)


@pytest.mark.slow
def test_resume_adds_trials_to_the_same_database(study_file: Callable[..., Path]) -> None:
    cfg = load_config(study_file(n_trials=4))
    run_study(cfg, n_trials=2, progress=False)
    db = Path(cfg.default_storage.removeprefix("sqlite:///"))
    assert db.exists()
    outcomes = run_study(cfg, progress=False)  # on to the file's total of 4
    study = outcomes["portrait"].load_study()
    assert len(outcomes["portrait"].trials) == 4
    assert sum(bool(t.user_attrs.get("baseline")) for t in study.trials) == 1
    total = len(study.trials)
    run_study(cfg, progress=False)  # already at its total: adds nothing
    assert len(study.trials) == total


@pytest.mark.slow
def test_a_seeded_study_draws_the_same_settings_again(
    study_file: Callable[..., Path], seconds_by_evaluations: None
) -> None:
    drawn = []
    for name in ("first", "second"):
        path = study_file(name=name, n_trials=4)
        path.write_text(path.read_text().replace("[search]\n", "[search]\nseed = 11\nfront_share = 1.0\n"))
        study = run_study(load_config(path), progress=False)["portrait"].load_study()
        later = [t for t in study.trials if not t.user_attrs.get("baseline")]
        assert not any(t.user_attrs.get("proposed") for t in later)  # front_share = 1: the optimiser's alone
        drawn.append([t.params for t in later])
    assert len(drawn[0]) == 3 and drawn[0] == drawn[1]  # [search] seed seeds the optimiser (TPE) per class


@pytest.mark.slow
def test_repeated_setting_reuses_stored_metrics(study_file: Callable[..., Path]) -> None:
    cfg = load_config(study_file(n_trials=2))
    outcomes = run_study(cfg, progress=False)
    study = outcomes["portrait"].load_study()
    study.enqueue_trial(study.trials[1].params)
    run_study(cfg, n_trials=3, progress=False)
    again, fresh = study.trials[2], study.trials[3]
    assert again.user_attrs["reused_from"] == 1
    assert again.values == study.trials[1].values
    # the repeat rendered nothing and does not count; the trial after it tries a setting not tried yet
    assert fresh.user_attrs["fresh_after"] == 2 and "reused_from" not in fresh.user_attrs
    assert fresh.user_attrs["setting_key"] not in {t.user_attrs["setting_key"] for t in study.trials[:3]}
    out = run_study(cfg, n_trials=3, progress=False)["portrait"]
    assert len(out.trials) == 3 and out.n_completed == 4  # n_trials counts rendered settings


@pytest.mark.slow
def test_rough_first_renders_the_other_seeds_only_for_settings_not_clearly_dominated(
    study_file: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from autotune.study import trials as study_module

    two = '[classes.portrait]\nprompts = ["a studio portrait of an old fisherman", "a red apple"]\n'
    plain = study_file(name="plain", n_trials=2, classes=two)
    plain.write_text(plain.read_text().replace("seeds = [0]", "seeds = [0, 1]"))
    rough = study_file(name="rough", n_trials=4, classes=two)
    rough.write_text(rough.read_text().replace("seeds = [0]", "seeds = [0, 1]\nrough_first = true"))
    renders = []
    real_generate = pipeline_module.generate

    def counting(p, settings, prompts, seeds, *args, **kwargs):  # type: ignore[no-untyped-def]
        renders.append((settings.key(p.base_scheduler_config), tuple(seeds)))  # as the study keys it
        return real_generate(p, settings, prompts, seeds, *args, **kwargs)

    monkeypatch.setattr(pipeline_module, "generate", counting)
    real_cut = study_module.clearly_dominated
    cut_key: list[str] = []

    def cut_fourth(rough_values, rendered, higher, margin=0.05):  # type: ignore[no-untyped-def]
        if len(rendered) == 3:  # the fourth setting is judged dominated by the first rendered one
            cut_key.append(renders[-1][0])
            return 0
        return real_cut(rough_values, rendered, higher, margin)

    monkeypatch.setattr(study_module, "clearly_dominated", cut_fourth)
    plain_study = run_study(load_config(plain), progress=False)["portrait"].load_study()
    out = run_study(load_config(rough), progress=False)["portrait"]
    trials = out.load_study().trials
    # merged back in prompt-major order: the same per-image values as rendering all seeds at once (up to
    # the float noise of another batch size, which can flip a pixel's 8-bit rounding: 0.13 % seen on one
    # CPU), far closer than two images of the run are to each other
    for a, b in zip(plain_study.trials[:1], trials[:1], strict=True):
        assert a.user_attrs["setting_key"] == b.user_attrs["setting_key"]
        for m in ("clip_score", "lpips"):
            values = a.user_attrs[f"{m}_values"]
            assert b.user_attrs[f"{m}_values"] == pytest.approx(values, rel=1e-2, abs=1e-4)
            assert min(abs(x - y) for x in values for y in values if x != y) > 2e-2 * max(map(abs, values))
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert len(pruned) == 1 and pruned[0].user_attrs["rough_dominated_by"] == 0
    assert pruned[0].user_attrs["setting_key"] == cut_key[0]
    assert set(pruned[0].user_attrs["rough_values"]) == {"clip_score", "lpips", "seconds"}
    assert [s for k, s in renders if k == cut_key[0]] == [(0,)]  # its second seed was never rendered
    assert len(out.trials) == 3  # the cut trial counts towards n_trials=4
    # a repeat of the cut setting is cut again without rendering
    out.load_study().enqueue_trial(pruned[0].params)
    run_study(load_config(rough), n_trials=5, progress=False)
    last = out.load_study().trials
    again = last[-2] if "fresh_after" in last[-1].user_attrs else last[-1]
    assert again.state == TrialState.PRUNED and again.user_attrs["reused_from"] == pruned[0].number
    assert sum(k == cut_key[0] for k, _ in renders) == 1


@pytest.mark.slow
def test_classes_take_turns_and_each_gets_its_own_study(study_file: Callable[..., Path]) -> None:
    from tests.conftest import TWO_CLASSES

    cfg = load_config(study_file(n_trials=2, classes=TWO_CLASSES))
    outcomes = run_study(cfg, progress=False)
    assert set(outcomes) == {"portrait", "landscape"}
    names = {s.study_name for s in optuna.get_all_study_summaries(cfg.default_storage)}
    assert names == {"small.portrait", "small.landscape"}
    assert all(len(o.trials) == 2 for o in outcomes.values())


@pytest.mark.slow
def test_study_stops_when_every_setting_of_a_small_space_is_rendered(study_file: Callable[..., Path]) -> None:
    path = study_file(name="tiny_space", n_trials=20)
    text = (
        path.read_text()
        .replace("steps = [2, 8]", "steps = [7, 8]")
        .replace("guidance = [1.0, 9.0]", "guidance = [7.0, 7.5]")
    )
    text = text.replace('schedulers = ["euler", "dpmpp_2m_karras", "ddim"]', 'schedulers = ["euler"]\nvariants = []')
    path.write_text(text)
    out = run_study(load_config(path), progress=False)["portrait"]  # euler and the baseline's: 2 x 2 x 2 settings
    keys = [t.user_attrs["setting_key"] for t in out.trials]
    assert len(keys) == len(set(keys)) == 8
    assert out.load_study().user_attrs["exhausted"] is True


def test_a_study_leaves_the_callers_logging_and_random_state_alone(study_file: Callable[..., Path]) -> None:
    import torch

    optuna.logging.set_verbosity(optuna.logging.INFO)
    torch.manual_seed(1234)
    state = torch.random.get_rng_state()
    run_study(load_config(study_file(name="polite", n_trials=2)), progress=False)  # loads LPIPS: seeds its trunk
    assert optuna.logging.get_verbosity() == optuna.logging.INFO
    assert torch.equal(torch.random.get_rng_state(), state)


def test_results_read_every_trial_as_optuna_reads_it(finished_study, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import shutil

    from sqlalchemy import create_engine

    from autotune.results.reader import read_trials

    cfg, _ = finished_study
    url = f"sqlite:///{shutil.copy(cfg.default_storage.removeprefix('sqlite:///'), tmp_path / 'copy.db')}"
    study = optuna.load_study(study_name=study_name(cfg, "portrait"), storage=url)
    study.enqueue_trial({"scheduler": "euler", "steps": 3, "guidance": 2.0})  # a waiting trial, fixed params
    ours = read_trials(create_engine(url), study._study_id)  # without Optuna
    theirs = study.get_trials(deepcopy=False)
    assert len(ours) == len(theirs) >= 7
    for a, b in zip(ours, theirs, strict=True):
        assert (a.number, a.state.name, a.values, a.params, a.trial_id) == (
            b.number,
            b.state.name,
            b.values,
            b.params,
            b._trial_id,
        )
        assert (a.user_attrs, a.system_attrs, a.datetime_start, a.datetime_complete) == (
            b.user_attrs,
            b.system_attrs,
            b.datetime_start,
            b.datetime_complete,
        )


def test_progress_names_the_start_up_and_each_units_phase_with_one_clock(
    study_file: Callable[..., Path], seconds_by_evaluations: None, capsys: pytest.CaptureFixture[str]
) -> None:
    import re

    path = study_file(name="progress", n_trials=3)
    path.write_text(path.read_text().replace("[search]\n", "[search]\nseed = 2\n"))
    run_study(load_config(path), progress=True, timeout=3600)
    err = capsys.readouterr().err
    assert "autotune: start-up: loading tiny and the metrics' models (cpu, float32)" in err
    assert "autotune: start-up: checking that the reference setting converges" in err
    for phase in ("baseline", "search: a new setting", "settling"):
        assert f"doing=portrait: {phase}" in err, phase
    lefts = re.findall(r"left=~?(\d\d):(\d\d):(\d\d)", err)
    assert lefts and all(int(h) * 3600 + int(m) * 60 + int(s) <= 3600 for h, m, s in lefts)  # never past the limit
    assert "<" not in "".join(re.findall(r"\[[^\]]*\]", err))  # no second clock (tqdm's own remaining time)
