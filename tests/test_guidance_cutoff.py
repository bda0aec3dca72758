"""Guidance on part of the trajectory: a searched setting whose unconditional calls stop at its cutoff,
whose images are diffusers' own callback's, counted in the cost, and carried to production unchanged."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

import autotune
from autotune.cli import main
from autotune.decision.agenda import neighbours
from autotune.decision.cost import evaluations
from autotune.model.render import generate
from autotune.results.notes import call_ratio
from autotune.results.recommendations_file import _from_summary, trial_summary
from autotune.serving.export import a1111, comfyui, export
from autotune.space import schedulers
from autotune.space.families import FAMILIES
from autotune.space.guidance import guided_steps
from autotune.space.settings import Settings

PROMPTS = ["a studio portrait of an old fisherman", "a misty mountain lake at dawn"]


def _batches(pipe) -> tuple[list[int], object]:  # type: ignore[no-untyped-def]
    """The batch size of every denoiser call, recorded by a forward hook."""
    sizes: list[int] = []
    handle = pipe.unet.register_forward_pre_hook(lambda _m, args: sizes.append(int(args[0].shape[0])))
    return sizes, handle


def test_a_cutoff_stops_the_unconditional_calls_where_diffusers_callback_does(tiny) -> None:  # type: ignore[no-untyped-def]
    from diffusers.callbacks import SDCFGCutoffCallback

    cut = Settings.make("euler", 10, 7.5, cutoff=0.5)
    sizes, handle = _batches(tiny.pipe)
    try:
        full = generate(tiny, Settings.make("euler", 10, 7.5), PROMPTS[:1], [3], 32, 32)  # warms the pipeline
        sizes.clear()
        ours = generate(tiny, cut, PROMPTS[:1], [3], 32, 32)
        steps = list(sizes)
    finally:
        handle.remove()
    # guided through step int(10 * 0.5) = 5: 6 doubled calls, then 4 conditional ones
    assert steps == [2] * 6 + [1] * 4 and (ours.model_calls, ours.guided_calls) == (10, 6)
    assert (full.model_calls, full.guided_calls) == (10, 10) and not torch.equal(ours.images, full.images)
    assert guided_steps(10, 0.5) == 6 and cut.guided_share() == 0.6
    assert evaluations(ours.model_calls, ours.guided_calls, cut) == 16.0
    assert evaluations(ours.model_calls, None, cut) == 16.0  # uncounted (an older trial): the setting's own share
    assert call_ratio(16.0, 20.0) == 1.25  # 20 evaluations with guidance on every step

    # diffusers' own callback, called as its docs show, from the same noise: the same image
    tiny.pipe.scheduler = schedulers.build("euler", tiny.base_scheduler_config, {})
    out = tiny.pipe(
        PROMPTS[0],
        num_inference_steps=10,
        guidance_scale=7.5,
        generator=torch.Generator().manual_seed(autotune.noise_seed(PROMPTS[0], 3)),
        height=32,
        width=32,
        output_type="pt",
        callback_on_step_end=SDCFGCutoffCallback(cutoff_step_ratio=0.5),
        callback_on_step_end_tensor_inputs=["prompt_embeds"],
    )
    assert ((out.images * 255).round() / 255 - ours.images).abs().max().item() < 2.5 / 255

    # a batch of prompts: diffusers' callback keeps one prompt's row and fails; ours keeps each prompt's
    batch = generate(tiny, cut, PROMPTS, [3], 32, 32)
    assert batch.images.shape[0] == 2 and (batch.images[:1] - ours.images).abs().max().item() <= 2 / 255


def test_a_cutoff_setting_round_trips_through_the_recommendation_apply_and_the_export(tiny) -> None:  # type: ignore[no-untyped-def]
    from tests.test_serving import fresh_pipe

    s = Settings.make("dpmpp_2m", 6, 7.5, {"timestep_spacing": "trailing"}, cutoff=0.4)
    assert Settings.from_params(s.params()) == s and s.params()["guidance_cutoff"] == 0.4
    assert s.key() != Settings.make("dpmpp_2m", 6, 7.5, {"timestep_spacing": "trailing"}).key()
    assert s.label() == "DPM++ 2M [timestep_spacing=trailing], 6 steps, CFG 7.5 on 3 of 6 steps (cutoff 0.4)"
    assert Settings.make("euler", 6, 1.0, cutoff=0.4).cutoff == 1.0  # no guidance: nothing to cut

    render = generate(tiny, s, PROMPTS[:1], [0], 32, 32)
    attrs = {"model_calls": render.model_calls, "guided_calls": render.guided_calls}
    trial = SimpleNamespace(number=4, params=s.params(), user_attrs=attrs, values=[1.0])
    summary = json.loads(json.dumps(trial_summary(trial, ("seconds",), FAMILIES["sd"], tiny.base_scheduler_config)))
    assert summary["guidance_cutoff"] == 0.4 and summary["model_evaluations"] == 6 * (1 + 3 / 6)
    rec = _from_summary("portrait", summary, "sd", None)

    def image(pipe, kwargs):  # type: ignore[no-untyped-def]
        g = torch.Generator().manual_seed(autotune.noise_seed(PROMPTS[0], 0))
        return pipe(PROMPTS[0], generator=g, height=32, width=32, output_type="pt", **kwargs).images

    applied = image(p := fresh_pipe(), autotune.apply(p, rec))
    assert (applied - render.images).abs().max().item() <= 2 / 255  # what the study measured

    recs = SimpleNamespace(study="s", model={"id": "tiny"}, items=lambda: [("portrait", rec)], values=lambda: [rec])
    namespace: dict = {}  # type: ignore[type-arg]
    exec(compile(export(recs, "diffusers"), "export.py", "exec"), namespace)  # type: ignore[arg-type]
    exported = image(p := fresh_pipe(), namespace["apply"](p, "portrait"))
    assert torch.equal(exported, applied)

    # the other tools cannot stop guidance after a share of the steps: said, not approximated
    assert any("guidance on the first 0.4" in x for x in a1111(rec)["no_equivalent"])
    assert any("no core node" in x for x in comfyui(rec)["no_equivalent"])


def test_the_decision_walks_the_cutoff_down_from_its_recommendation() -> None:
    space = SimpleNamespace(
        steps=(2, 30), steps_step=1, guidance=(1.0, 9.0), guidance_step=0.5, guidance_cutoff=(0.3, 1.0),
        guidance_cutoff_step=0.1,
    )  # fmt: skip
    near = neighbours(Settings.make("euler", 8, 5.0, cutoff=0.6), space)  # type: ignore[arg-type]
    got = [(n.steps, n.guidance, n.cutoff) for n in near]
    assert got == [(7, 5.0, 0.6), (8, 4.5, 0.6), (8, 5.5, 0.6), (8, 5.0, 0.5)]
    unsearched = SimpleNamespace(**{**vars(space), "guidance_cutoff": None})
    assert [n.cutoff for n in neighbours(Settings.make("euler", 8, 5.0), unsearched)] == [1.0] * 3  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("guidance_cutoff = [0.5, 0.9]\n", "search.guidance_cutoff: expected [low, 1.0]"),
        ("guidance_cutoff = [0.55, 1.0]\n", "search.guidance_cutoff: expected [low, 1.0] with 1 - low a multiple"),
        ("guidance_cutoff = [0.0, 1.0]\n", "search.guidance_cutoff: expected [low, high] with 0.05 <= low"),
        ("guidance_sigma_low = [0.0, 0.5]\n", "search.guidance_sigma_low: expected distinct noise levels above 0"),
        (
            "guidance_sigma_low = [0.5, 6.0]\nguidance_sigma_high = [5.0]\n",
            "search.guidance_sigma_low: expected every value below each of search.guidance_sigma_high [5.0]",
        ),
        ('guidance_sigma_high = ["inf"]\n', "search.guidance_sigma_high: expected"),
    ],
)
def test_a_bad_cutoff_or_interval_is_one_line_naming_the_key(study_file, capsys, extra, message) -> None:  # type: ignore[no-untyped-def]
    path = study_file()
    path.write_text(path.read_text().replace("[search]\n", "[search]\n" + extra))
    assert main(["study", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and str(path) in err


def searched_study(study_file, keys: str) -> list:  # type: ignore[no-untyped-def, type-arg]
    """The complete trials of a 6-trial study of the tiny model searching ``keys`` besides the defaults; the
    optimiser picks every setting after the baseline, from a seeded random sampler: no matter of timing."""
    from autotune.config import load_config
    from autotune.study.run import run_study

    path = study_file(n_trials=6)
    search = f'[search]\n{keys}seed = 3\nsampler = "random"\nfront_share = 1.0\n'
    path.write_text(path.read_text().replace("[search]\n", search))
    outcome = run_study(load_config(path), progress=False)["portrait"]
    return [t for t in outcome.trials if t.state.name == "COMPLETE"]


@pytest.mark.slow
def test_a_study_searches_the_cutoff_and_records_what_it_cost(study_file, seconds_by_evaluations) -> None:  # type: ignore[no-untyped-def]
    done = searched_study(study_file, "guidance_cutoff = [0.5, 1.0]\n")
    assert all("guidance_cutoff" in t.params for t in done)
    assert done[0].params["guidance_cutoff"] == 1.0  # the baseline: guidance on every step
    for t in done:
        s = Settings.from_params(t.params)
        n = s.steps * schedulers.get(s.scheduler).calls_per_step
        assert t.user_attrs["guided_calls"] == (guided_steps(n, s.cutoff) if s.guidance > 1 else 0), s.label()
    assert any(Settings.from_params(t.params).cutoff < 1 for t in done)
