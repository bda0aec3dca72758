"""Guidance on a range of noise levels only (Kynkaanniemi et al. 2024): a call outside the interval is made
unguided and counted so, its image the unguided call's bit for bit where the interval guides nowhere, on a
batched-CFG model and on the true-CFG flow model; searched, walked inward, and carried to production."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import optuna
import pytest
import torch

import autotune
from autotune.decision.agenda import neighbours
from autotune.decision.cost import evaluations
from autotune.model.render import generate
from autotune.results.recommendations_file import _from_summary, trial_summary
from autotune.serving.export import a1111, comfyui, export
from autotune.space.families import FAMILIES
from autotune.space.guidance import INTERVAL, interval_from_json, interval_json
from autotune.space.settings import Settings, suggest

PROMPTS = ["a studio portrait of an old fisherman", "a misty mountain lake at dawn"]


def _computed(module) -> tuple[list[int], object]:  # type: ignore[no-untyped-def]
    """The batch size of every call a submodule computes (after the interval halved it, or skipped it)."""
    sizes: list[int] = []
    handle = module.register_forward_pre_hook(lambda _m, args: sizes.append(int(args[0].shape[0])))
    return sizes, handle


def test_outside_the_interval_a_call_is_made_unguided_and_counted_so(tiny) -> None:  # type: ignore[no-untyped-def]
    guided = generate(tiny, Settings.make("euler", 10, 7.5), PROMPTS[:1], [3], 32, 32)
    plain = generate(tiny, Settings.make("euler", 10, 1.0), PROMPTS[:1], [3], 32, 32)
    assert Settings.make("euler", 10, 7.5, interval=(0.0, math.inf)).interval == ()  # every sigma: none
    assert Settings.make("euler", 10, 1.0, interval=(0.5, 5.0)).interval == ()  # no guidance: nothing to limit

    nowhere = generate(tiny, Settings.make("euler", 10, 7.5, interval=(100.0, 200.0)), PROMPTS[:1], [3], 32, 32)
    assert torch.equal(nowhere.images, plain.images) and (nowhere.model_calls, nowhere.guided_calls) == (10, 0)

    s = Settings.make("euler", 10, 7.5, interval=(0.5, 5.0))
    sizes, handle = _computed(tiny.pipe.unet.conv_in)
    try:
        ours = generate(tiny, s, PROMPTS[:1], [3], 32, 32)
    finally:
        handle.remove()
    sigmas = [float(x) for x in tiny.pipe.scheduler.sigmas[:-1]]  # Euler calls the model once at each
    inside = [0.5 < x <= 5.0 for x in sigmas]
    assert sizes == [2 if i else 1 for i in inside] and 0 < sum(inside) < 10
    assert (ours.model_calls, ours.guided_calls) == (10, sum(inside))
    assert evaluations(ours.model_calls, ours.guided_calls, s) == 10 + sum(inside)
    assert not torch.equal(ours.images, guided.images) and not torch.equal(ours.images, plain.images)
    batch = generate(tiny, s, PROMPTS, [3], 32, 32)  # each prompt's conditional half kept
    assert (batch.images[:1] - ours.images).abs().max().item() <= 2 / 255
    assert tiny.pipe.unet.__dict__.get("forward") is None  # the render leaves the denoiser as it found it


def test_on_the_true_cfg_flow_model_the_negative_call_is_skipped_outside(flow) -> None:  # type: ignore[no-untyped-def]
    prompt = ["a bold red circle on white"]
    plain = generate(flow, Settings.make("flow_euler", 8, 1.0), prompt, [0], 32, 32)
    nowhere = generate(flow, Settings.make("flow_euler", 8, 4.0, interval=(2.0, 3.0)), prompt, [0], 32, 32)
    assert torch.equal(nowhere.images, plain.images) and (nowhere.model_calls, nowhere.guided_calls) == (8, 0)

    sizes, handle = _computed(flow.pipe.transformer.x_embedder)
    try:
        ours = generate(flow, Settings.make("flow_euler", 8, 4.0, interval=(0.3, 0.9)), prompt, [0], 32, 32)
    finally:
        handle.remove()
    inside = sum(0.3 < float(x) <= 0.9 for x in flow.pipe.scheduler.sigmas[:-1])
    assert 0 < inside < 8 and len(sizes) == 8 + inside  # one call a step, a second where guided
    assert (ours.model_calls, ours.guided_calls) == (8, inside)


def test_the_interval_is_searched_stored_and_walked_inward() -> None:
    space = SimpleNamespace(
        schedulers=("euler",), steps=(4, 12), steps_step=1, guidance=(1.0, 9.0), guidance_step=0.5,
        variants=(), guidance_sigma_low=(0.3, 1.0), guidance_sigma_high=(5.0,),
    )  # fmt: skip
    study = optuna.create_study(storage="sqlite:///:memory:", sampler=optuna.samplers.RandomSampler(seed=4))
    seen = set()
    for _ in range(30):
        trial = study.ask()
        s = suggest(trial, space, FAMILIES["sd"])  # type: ignore[arg-type]
        assert trial.params[INTERVAL[0]] in (0.0, 0.3, 1.0) and trial.params[INTERVAL[1]] in (5.0, math.inf)
        assert Settings.from_params(trial.params) == s
        seen.add(s.interval)
        study.tell(trial, 1.0)
    assert {(0.3, 5.0), (1.0, math.inf), ()} <= seen

    s = Settings.make("euler", 8, 5.0, interval=(0.3, math.inf))
    assert s.label() == "Euler, 8 steps, CFG 5 for sigma in (0.3, inf]"
    assert s.key() != Settings.make("euler", 8, 5.0).key()
    near = [n.interval for n in neighbours(s, space)]  # type: ignore[arg-type]
    assert near == [(0.3, math.inf)] * 3 + [(1.0, math.inf), (0.3, 5.0)]  # fewer steps, CFG -/+, each end inward
    assert interval_from_json(json.loads(json.dumps(interval_json(s.interval)))) == s.interval  # no Infinity in JSON


def test_an_interval_round_trips_through_the_recommendation_apply_and_the_export(tiny) -> None:  # type: ignore[no-untyped-def]
    from tests.test_serving import fresh_pipe

    s = Settings.make("dpmpp_2m", 6, 7.5, {"timestep_spacing": "trailing"}, interval=(0.6, 4.0))
    render = generate(tiny, s, PROMPTS[:1], [0], 32, 32)
    attrs = {"model_calls": render.model_calls, "guided_calls": render.guided_calls}
    trial = SimpleNamespace(number=4, params=s.params(), user_attrs=attrs, values=[1.0])
    summary = json.loads(json.dumps(trial_summary(trial, ("seconds",), FAMILIES["sd"], tiny.base_scheduler_config)))
    assert summary["guidance_interval"] == summary["diffusers"]["guidance_interval"] == [0.6, 4.0]
    assert summary["model_evaluations"] == 6 + render.guided_calls and 0 < render.guided_calls < 6
    rec = _from_summary("portrait", summary, "sd", None)
    plain_rec = _from_summary("default", {**summary, "guidance_interval": None}, "sd", None)

    def image(pipe, kwargs):  # type: ignore[no-untyped-def]
        g = torch.Generator().manual_seed(autotune.noise_seed(PROMPTS[0], 0))
        return pipe(PROMPTS[0], generator=g, height=32, width=32, output_type="pt", **kwargs).images

    pipe = fresh_pipe()
    applied = image(pipe, autotune.apply(pipe, rec))
    assert (applied - render.images).abs().max().item() <= 2 / 255  # what the study measured
    unlimited = image(pipe, autotune.apply(pipe, plain_rec))  # the router switches class: the interval goes
    assert pipe.unet.__dict__.get("forward") is None and not torch.equal(unlimited, applied)

    recs = SimpleNamespace(
        study="s", model={"id": "tiny"}, items=lambda: [("portrait", rec), ("default", plain_rec)],
        values=lambda: [rec, plain_rec],
    )  # fmt: skip
    namespace: dict = {}  # type: ignore[type-arg]
    exec(compile(export(recs, "diffusers"), "export.py", "exec"), namespace)  # type: ignore[arg-type]
    exported = image(pipe := fresh_pipe(), namespace["apply"](pipe, "portrait"))
    assert torch.equal(exported, applied)
    assert torch.equal(image(pipe, namespace["apply"](pipe, "default")), unlimited)

    assert any("guidance for sigma in (0.6, 4] only" in x and "minimum sigma" in x for x in a1111(rec)["no_equivalent"])
    assert any("limits guidance to a range of noise levels" in x for x in comfyui(rec)["no_equivalent"])


def test_on_the_flow_model_apply_and_the_export_skip_the_same_negative_calls(flow) -> None:  # type: ignore[no-untyped-def]
    from diffusers import FluxPipeline

    from autotune.micro import pipeline_dir
    from autotune.micro.train_flow import SEQUENCE

    prompt = "a bold red circle on white"
    s = Settings.make("flow_euler", 8, 4.0, interval=(0.3, 0.9))
    render = generate(flow, s, [prompt], [0], 32, 32)
    trial = SimpleNamespace(number=2, params=s.params(), user_attrs={"model_calls": 8, "guided_calls": 5}, values=[1.0])
    call = {"max_sequence_length": SEQUENCE}
    summary = json.loads(json.dumps(trial_summary(trial, ("seconds",), FAMILIES["flux_cfg"], None, call)))
    rec = _from_summary("bold", summary, "flux_cfg", None)
    assert rec.call_kwargs["negative_prompt"] == "" and rec.guidance_interval == (0.3, 0.9)

    def image(pipe, kwargs):  # type: ignore[no-untyped-def]
        g = torch.Generator().manual_seed(autotune.noise_seed(prompt, 0))
        return (pipe(prompt, generator=g, height=32, width=32, output_type="pt", **kwargs).images * 255).round() / 255

    pipe = FluxPipeline.from_pretrained(pipeline_dir("flow"), torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    calls, handle = _computed(pipe.transformer.x_embedder)
    try:
        applied = image(pipe, autotune.apply(pipe, rec))
    finally:
        handle.remove()
    assert len(calls) == 8 + 5 and (applied - render.images).abs().max().item() <= 1 / 255 + 1e-6
    recs = SimpleNamespace(study="s", model={"id": "flow"}, items=lambda: [("bold", rec)], values=lambda: [rec])
    namespace: dict = {}  # type: ignore[type-arg]
    exec(compile(export(recs, "diffusers"), "export.py", "exec"), namespace)  # type: ignore[arg-type]
    pipe = FluxPipeline.from_pretrained(pipeline_dir("flow"), torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    assert torch.equal(image(pipe, namespace["apply"](pipe, "bold")), applied)


@pytest.mark.slow
def test_a_study_searches_the_interval_and_records_what_it_cost(study_file, seconds_by_evaluations) -> None:  # type: ignore[no-untyped-def]
    from tests.test_guidance_cutoff import searched_study

    done = searched_study(study_file, "guidance_sigma_low = [1.0, 3.0]\n")
    assert all(t.params[INTERVAL[0]] in (0.0, 1.0, 3.0) and INTERVAL[1] not in t.params for t in done)
    assert done[0].params[INTERVAL[0]] == 0.0  # the baseline: guidance at every noise level
    limited = [t for t in done if Settings.from_params(t.params).interval]
    assert limited, [t.params for t in done]
    for t in limited:  # guidance stopped at the interval's low end: the last calls ran unguided
        assert 0 < t.user_attrs["guided_calls"] < t.user_attrs["model_calls"], t.params
