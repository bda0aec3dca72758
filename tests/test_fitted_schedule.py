"""A class's own step schedule: offered only to samplers that take custom timesteps, fitted once per
class and step count against the reference, kept in the study, and reproduced by the recommendation,
``apply`` and the exported diffusers module image for image."""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import optuna
import pytest
import torch

import autotune
from autotune.config import load_config
from autotune.model.fit import FIT_PROMPTS
from autotune.results.recommendations_file import _from_summary, trial_summary
from autotune.serving.export import a1111, comfyui, export
from autotune.space.families import FAMILIES
from autotune.space.settings import Settings, variant_choices
from autotune.study.run import run_study


def test_only_samplers_that_take_custom_timesteps_are_offered_a_fitted_schedule() -> None:
    sd = FAMILIES["sd"]
    offered = {n: "fitted" in variant_choices(n, "all", sd, fitted=True).get("sigmas", ()) for n in
               ("euler", "dpmpp_2m", "heun", "unipc", "ddim", "dpmpp_2m_karras", "euler_a", "lms")}  # fmt: skip
    # UniPC takes sigmas, not timesteps; DDIM and LMS take neither; a Karras entry fixes its sigmas;
    # Euler a draws fresh noise (searched, never recommended: no fit for it)
    assert offered == {"euler": True, "dpmpp_2m": True, "heun": True, "unipc": False, "ddim": False,
                       "dpmpp_2m_karras": False, "euler_a": False, "lms": False}  # fmt: skip
    assert "fitted" not in variant_choices("dpmpp_2m", "all", sd)["sigmas"]  # only where the study asks for it
    s = Settings.make("dpmpp_2m", 3, 5.0, {"sigmas": "fitted"}, timesteps=[900, 500, 100])
    assert s.call_kwargs(sd)["timesteps"] == [900, 500, 100] and s.key() != Settings.make("dpmpp_2m", 3, 5.0).key()
    assert Settings.make("dpmpp_2m", 3, 5.0, timesteps=[900, 500, 100]).timesteps == ()  # not fitted: no list


def test_a_fitted_schedule_under_any_spacing_is_one_setting() -> None:
    # its own timesteps decide every step: a spacing variant of it would be a second trial of the same images
    own = [901, 700, 500, 300, 100]
    plain = Settings.make("dpmpp_2m", 5, 5.0, {"sigmas": "fitted"}, timesteps=own)
    for spacing in ("trailing", "linspace", "leading"):
        spaced = Settings.make("dpmpp_2m", 5, 5.0, {"sigmas": "fitted", "timestep_spacing": spacing}, timesteps=own)
        assert spaced == plain and spaced.key() == plain.key()
    assert "timestep_spacing" not in plain.label()
    named = Settings.make("dpmpp_2m", 5, 5.0, {"timestep_spacing": "trailing"})
    assert named.options == (("timestep_spacing", "trailing"),)  # a named spacing is kept


FITTED = {"scheduler": "dpmpp_2m", "steps": 4, "guidance": 7.5, "dpmpp_2m.sigmas": "fitted"}


def _baseline_then_a_fit(study_file):  # type: ignore[no-untyped-def]
    """A study of DPM++ 2M with fitted schedules: its baseline run, and a fitted setting queued next (the
    decision's walk would come to it too, at its own pace)."""
    path = study_file(n_trials=1)
    text = path.read_text().replace('schedulers = ["euler", "dpmpp_2m_karras", "ddim"]', 'schedulers = ["dpmpp_2m"]')
    path.write_text(text.replace("[search]\n", '[search]\nfitted_schedules = true\nvariants = ["sigmas"]\n'))
    cfg = load_config(path)
    run_study(cfg, progress=False)  # the baseline
    study = optuna.load_study(study_name="small.portrait", storage=cfg.default_storage)
    study.enqueue_trial(FITTED)
    return cfg, study


@pytest.mark.slow
def test_a_fitted_schedule_round_trips_from_the_study_to_the_export(study_file) -> None:  # type: ignore[no-untyped-def]
    from tests.test_serving import fresh_pipe, render, trial_image

    cfg, study = _baseline_then_a_fit(study_file)
    outcome = run_study(dataclasses.replace(cfg, search=dataclasses.replace(cfg.search, n_trials=2)), progress=False)
    fits = study.user_attrs["fitted_schedules"]
    (t,) = [t for t in outcome["portrait"].trials if t.params.get("dpmpp_2m.sigmas") == "fitted"]
    fit = fits["dpmpp_2m|4"]
    assert t.state.name == "COMPLETE" and t.user_attrs["timesteps"] == fit["timesteps"] and len(fit["timesteps"]) == 4
    assert fit["distance"] <= fit["start_distance"]  # never worse, on the fit images, than the spacing it left
    assert fit["images"] == fit["renders"] * len(cfg.classes["portrait"][:FIT_PROMPTS])
    assert "sigmas=fitted: " + " ".join(map(str, fit["timesteps"])) in t.user_attrs["setting"]
    outcome = outcome["portrait"]
    summary = json.loads(json.dumps(trial_summary(t, cfg.metrics.objectives, FAMILIES["sd"],
                                                  study.user_attrs["scheduler_base"])))  # fmt: skip
    assert summary["diffusers"]["call_kwargs"]["timesteps"] == fit["timesteps"]
    rec = _from_summary("portrait", summary, "sd", None)
    stored = trial_image(cfg, outcome, t.number)  # what the study measured
    applied = render(p := fresh_pipe(), cfg, cfg.classes["portrait"][0], autotune.apply(p, rec))
    assert (applied - stored).abs().max().item() <= 2 / 255
    recs = SimpleNamespace(study="s", model={"id": "tiny"}, items=lambda: [("portrait", rec)], values=lambda: [rec])
    namespace: dict = {}  # type: ignore[type-arg]
    exec(compile(export(recs, "diffusers"), "export.py", "exec"), namespace)  # type: ignore[arg-type]
    exported = render(p := fresh_pipe(), cfg, cfg.classes["portrait"][0], namespace["apply"](p, "portrait"))
    assert torch.equal(exported, applied)
    assert a1111(rec)["no_equivalent"] == ["sigmas=fitted"] and comfyui(rec)["no_equivalent"] == ["sigmas=fitted"]

    # resumed, another guidance at those steps renders with the schedule stored, and fits nothing new
    study.enqueue_trial({**FITTED, "guidance": 5.0})
    again = run_study(dataclasses.replace(cfg, search=dataclasses.replace(cfg.search, n_trials=3)), progress=False)
    later = again["portrait"].load_study()
    assert later.user_attrs["fitted_schedules"] == fits
    assert [t.user_attrs["timesteps"] for t in later.trials if t.params.get("guidance") == 5.0] == [fit["timesteps"]]


@pytest.mark.slow
def test_a_fit_stops_at_the_deadline_and_what_it_reached_is_this_trials_alone(study_file, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A stepped clock: each of the fit's renders takes 10 s of it, nothing else any. With 35 s, the fit
    renders its three spacings (30 s), begins one move before the deadline (40 s) and looks no further;
    the trial renders what the fit reached, and the study keeps no schedule that was cut short."""
    from autotune.model import fit as fit_module
    from autotune.study import run

    cfg, study = _baseline_then_a_fit(study_file)
    clock, real = {"t": 1000.0}, fit_module.generate

    def ten_seconds(*args, **kwargs):  # type: ignore[no-untyped-def]
        clock["t"] += 10
        return real(*args, **kwargs)

    monkeypatch.setattr(run, "now", lambda: clock["t"])
    monkeypatch.setattr(fit_module, "generate", ten_seconds)
    more = dataclasses.replace(cfg, search=dataclasses.replace(cfg.search, n_trials=2))
    outcome = run_study(more, progress=False, timeout=35)["portrait"]
    assert clock["t"] == 1040  # three spacings, then the one move begun before the deadline
    (t,) = [t for t in outcome.trials if t.params.get("dpmpp_2m.sigmas") == "fitted"]
    assert t.state.name == "COMPLETE" and t.user_attrs["fit_stopped"] == "the time limit"
    assert len(t.user_attrs["timesteps"]) == 4 and "dpmpp_2m|4" not in study.user_attrs.get("fitted_schedules", {})
    assert outcome.decision_state == "stopped: the time limit"
