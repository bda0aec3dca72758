"""One anytime procedure: deciding while searching, within the deadline, interrupted and resumed."""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState

from autotune.cli import main
from autotune.config import load_config
from autotune.results.reader import recommend
from autotune.results.recommendations_file import recommendations_data
from autotune.study import decide as decide_module
from autotune.study.decide import ClassRun
from autotune.study.run import run_study

PROMPTS = ["an old fisherman", "a red apple", "a blue car", "a green tree", "a yellow house", "a black cat"]
SIX = f"[classes.portrait]\nprompts = {PROMPTS!r}\n".replace("'", '"')
DECIDING = "prompts_per_trial = 2\nfront_share = 0.0\nseed = 5\n"  # the decision's proposals alone, seeded draws


def _study(study_file: Callable[..., Path], name: str, n_trials: int = 6) -> Path:
    path = study_file(name=name, n_trials=n_trials, classes=SIX)
    text = (
        path.read_text()
        .replace("seeds = [0]\n", "seeds = [0]\n" + DECIDING)
        .replace("race_budget = 0", "race_budget = 64")
        .replace("broken_share = 0.5", "broken_share = 0.9")  # what a confirmation of 3 prompts can show
        .replace("confirm_seeds = [1000, 1001]", "confirm_seeds = [1000, 1001, 1002, 1003, 1004, 1005]")
    )
    path.write_text(text)
    return path


@pytest.mark.slow
def test_a_class_with_more_prompts_than_a_trial_renders_races_on_new_prompts(
    study_file: Callable[..., Path], seconds_by_evaluations: None
) -> None:
    # which candidates are cheaper, and so raced, follows the cost: on timed seconds a busy machine raced none
    cfg = load_config(_study(study_file, "wide"))
    out = run_study(cfg, progress=False)["portrait"]
    assert all(t.user_attrs["prompts_rendered"] == 2 for t in out.trials)  # a trial renders the first two
    raced = {k: v for k, v in out.attrs.items() if k.startswith("renders.")}
    prompts = {int(unit.split(":")[0]) for v in raced.values() for unit in v}
    assert prompts & {2, 3, 4, 5}, raced  # racing added prompts the trials did not render
    assert out.decision_state == "settled" and out.recommendation is not None


@pytest.mark.slow
def test_a_study_killed_while_racing_resumes_to_the_same_recommendation(
    study_file: Callable[..., Path], monkeypatch: pytest.MonkeyPatch, seconds_by_evaluations: None
) -> None:
    # the walk and the pick follow the fitted cost: timed seconds made the two runs part on the machine's
    # noise once in CI
    from autotune.study import decide

    whole = recommend(run_study(load_config(_study(study_file, "whole")), progress=False).cfg)["portrait"]
    path = _study(study_file, "killed")
    real = decide.ClassRun._render_units
    calls = {"n": 0}

    def dies_on_the_third_race(self, number, units):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(self, number, units)

    monkeypatch.setattr(decide.ClassRun, "_render_units", dies_on_the_third_race)
    with pytest.raises(KeyboardInterrupt):
        run_study(load_config(path), progress=False)
    stopped = recommend(load_config(path))["portrait"]
    assert stopped.decision_state == "stopped: interrupted (Ctrl-C)"  # not a final verdict
    monkeypatch.setattr(decide.ClassRun, "_render_units", real)
    resumed = run_study(load_config(path), progress=False)["portrait"]
    assert resumed.decision_state == "settled"
    assert whole.recommendation is not None and resumed.recommendation is not None
    assert resumed.recommendation.chosen.label == whole.recommendation.chosen.label
    assert resumed.recommendation.confirmed == whole.recommendation.confirmed


@pytest.mark.slow
def test_the_timeout_is_never_exceeded_by_more_than_one_render(
    study_file: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stepped clock: every render takes 10 s of it. The deadline counts from the call, loading included."""
    from autotune.model.evaluate import Evaluator
    from autotune.study import run

    clock = {"t": 1000.0}
    real = Evaluator.evaluate

    def ten_seconds(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        clock["t"] += 10
        return real(self, *args, **kwargs)

    monkeypatch.setattr(run, "now", lambda: clock["t"])
    monkeypatch.setattr(Evaluator, "evaluate", ten_seconds)
    out = run_study(load_config(_study(study_file, "timed", n_trials=50)), progress=False, timeout=45)["portrait"]
    assert 1045 <= clock["t"] <= 1045 + 10  # it used its time, and overran by at most the render under way
    assert out.decision_state == "stopped: the time limit" and out.recommendation is not None


def test_a_timeout_of_zero_is_refused(study_file: Callable[..., Path], capsys: pytest.CaptureFixture[str]) -> None:
    path = study_file(name="zero")
    assert main(["study", str(path), "--timeout", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--timeout: expected a duration above zero" in err
    assert not (path.parent / "zero.db").exists()


def _stopped(path: Path, code: int, why: str, capsys: pytest.CaptureFixture[str]) -> list[FrozenTrial]:
    """Run the study until the signal stops it: its exit code and its one line checked; the class's trials."""
    assert main(["study", str(path), "--quiet"]) == code
    assert capsys.readouterr().err.strip() == f"autotune: {why}"
    return optuna.load_study(study_name=f"{path.stem}.portrait", storage=load_config(path).default_storage).trials


def test_ctrl_c_while_loading_exits_130_and_says_so_on_disk_with_nothing_left_waiting(
    study_file: Callable[..., Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The studies exist before the model loads (the outputs say "deciding" from the start), so a Ctrl-C
    there leaves them, the queued baseline withdrawn and the decision stopped; the next run resumes."""
    from autotune.model import evaluate

    def interrupted(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluate.Evaluator, "__init__", interrupted)
    path = study_file(name="startup")
    trials = _stopped(path, 130, "interrupted (Ctrl-C)", capsys)
    assert [(t.state, t.user_attrs["fail_reason"]) for t in trials] == [
        (TrialState.FAIL, "withdrawn: interrupted (Ctrl-C) before it began")
    ]
    recs = json.loads((path.parent / "startup" / "recommendations.json").read_text())
    assert recs["classes"]["portrait"]["decision"] == {"state": "stopped: interrupted (Ctrl-C)"}
    monkeypatch.undo()
    assert main(["study", str(path), "--quiet"]) == 0  # resumed: the withdrawn baseline queued again


def test_a_signal_while_a_trial_is_asked_fails_that_trial_instead_of_leaving_it_running(
    study_file: Callable[..., Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """SIGTERM lands while the queued baseline is being asked (held there, raised as the ask ends): the
    trial it had just made RUNNING is failed as interrupted, and the next run renders it again."""
    import os
    import signal

    real = optuna.Study.ask

    def terminated_meanwhile(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        trial = real(self, *args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)  # the handler main installed holds it
        return trial

    monkeypatch.setattr(optuna.Study, "ask", terminated_meanwhile)
    trials = _stopped(path := study_file(name="asked"), 143, "interrupted (SIGTERM)", capsys)
    assert [(t.state, t.user_attrs["fail_reason"], t.user_attrs["interrupted"]) for t in trials] == [
        (TrialState.FAIL, "interrupted (SIGTERM)", True)
    ]
    monkeypatch.undo()
    assert main(["study", str(path), "--quiet"]) == 0


@pytest.mark.slow
def test_the_speedup_stated_is_the_recommendation_and_the_baseline_timed_in_turn_at_the_end(
    study_file: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The baseline's own timing is the study's first serving call: a slow spell then (here 1.5x, as a
    cold machine or another job) sat in every speed-up. Timed again in turn with the recommendation once
    the decision settled, the stated speed-up is the model-call ratio the fake clock charges."""
    from autotune.model import render
    from autotune.study.progress import Progress, speedup_label

    spell = {"calls": 0}

    def timed(p, settings, prompt, seed, height, width, batch_size=1, repeats=3):  # type: ignore[no-untyped-def]
        slow = 1.5 if spell["calls"] == 0 else 1.0  # the first timing of the run: the baseline's
        spell["calls"] += 1
        return [slow * 1e-3 * settings.steps * (1 + settings.guided_share())] * repeats

    monkeypatch.setattr(render, "time_serving", timed)
    shown_last: dict[str, str] = {}
    monkeypatch.setattr(Progress, "close", lambda bar: shown_last.update(bar.post))  # the bar's last line
    count = {"steps": 0, "readings": 0}
    step, decide = ClassRun.step, decide_module.decide

    def counted(name: str, f: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*a: Any, **k: Any) -> Any:
            count[name] += 1
            return f(*a, **k)

        return wrapper

    monkeypatch.setattr(ClassRun, "step", counted("steps", step))
    monkeypatch.setattr(decide_module, "decide", counted("readings", decide))
    path = _study(study_file, "together")
    out = run_study(load_config(path), progress=True)["portrait"]
    # the decision is read once for each state of the evidence, by the step, the proposer, the settling and the
    # bar together (each read it again on its own: twice a step and more)
    assert 0 < count["readings"] <= count["steps"] + 1, count
    rec = out.recommendation
    assert out.decision_state == "settled" and rec is not None and rec.chosen.number != rec.baseline.number
    chosen, base = out.evidence.by_number[rec.chosen.number], out.evidence.by_number[rec.baseline.number]
    first = statistics.median(base.seconds) / statistics.median(chosen.seconds)  # as the trials were timed
    assert out.stored.timed_together["trials"] == [rec.baseline.number, rec.chosen.number]
    assert [len(s) for s in out.stored.timed_together["seconds"]] == [3, 3]  # [serving] repeats, one call each
    ratio = base.seconds[0] / 1.5 / chosen.seconds[0]  # the calls the fake clock charges, without the spell
    assert first == pytest.approx(1.5 * ratio) and rec.speedup == pytest.approx(ratio)
    outcomes = recommend(load_config(path))  # as the outputs read it
    stored = outcomes["portrait"].recommendation
    assert stored is not None and stored.speedup == pytest.approx(ratio)
    shown = recommendations_data(outcomes.cfg, outcomes)["classes"]["portrait"]  # the table's seconds: the same
    assert shown["metrics"]["seconds"] == pytest.approx(statistics.median(rec.chosen.seconds))
    assert shown["baseline"]["metrics"]["seconds"] == pytest.approx(base.seconds[0] / 1.5)
    assert shown_last["pick"] == f"portrait:{speedup_label(stored)}" == f"portrait:{ratio:.1f}x"  # the bar agrees


def test_in_turn_times_one_call_of_each_setting_at_a_time() -> None:
    """What `_time_together` and `autotune validate` time by: a, b, a, b, ... (never a, a, a, b, b, b)."""
    from autotune.model.evaluate import in_turn
    from autotune.space.settings import Settings

    order: list[int] = []

    class Clock:
        def time(self, settings: Settings, prompt: str, seed: int, repeats: int) -> list[float]:
            order.append(settings.steps)
            return [float(len(order))] * repeats

    a, b = Settings.make("euler", 30, 5.0), Settings.make("euler", 10, 5.0)
    assert in_turn(Clock(), [a, b], "a cat", 0, 3) == [[1.0, 3.0, 5.0], [2.0, 4.0, 6.0]]  # type: ignore[arg-type]
    assert order == [30, 10, 30, 10, 30, 10]


@pytest.mark.slow
def test_a_failed_timing_in_turn_leaves_the_decision_and_says_so(
    study_file: Callable[..., Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    seconds_by_evaluations: None,
) -> None:  # fmt: skip
    from autotune.study import decide

    def out_of_memory(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(decide, "in_turn", out_of_memory)
    out = run_study(load_config(_study(study_file, "untimed")), progress=False)["portrait"]
    rec = out.recommendation
    assert out.decision_state == "settled" and rec is not None and rec.chosen.number != rec.baseline.number
    trial = out.evidence.by_number  # the trials' own timings
    own = statistics.median(trial[rec.baseline.number].seconds) / statistics.median(trial[rec.chosen.number].seconds)
    assert "timed_together" not in out.attrs and rec.speedup == pytest.approx(own)
    assert (
        "autotune: warning: portrait: timing the recommendation and the baseline again failed (RuntimeError: CUDA "
        "out of memory); the speed-up reads their trials' own timings"
    ) in capsys.readouterr().err
