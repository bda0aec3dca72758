from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

import autotune
from autotune.cli import main
from autotune.serving.export import UNET_ONLY, a1111, comfyui, export


def _rec(scheduler: str, options: dict | None = None, steps: int = 12, guidance: float = 6.5):  # type: ignore[no-untyped-def, type-arg]
    return autotune.ClassRecommendation(
        name="x", setting="", scheduler=scheduler, options=options or {}, steps=steps, guidance=guidance,
        scheduler_class="", scheduler_config={}, call_kwargs={}, family="sd",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("scheduler", "options", "webui", "comfy"),
    [
        ("dpmpp_2m_karras", {}, ("DPM++ 2M", "Karras"), ("dpmpp_2m", "karras")),
        ("euler", {"sigmas": "exponential", "timestep_spacing": "linspace"}, ("Euler", "Exponential"),
         ("euler", "exponential")),
        ("euler_a", {"timestep_spacing": "trailing"}, ("Euler a", "SGM Uniform"), ("euler_ancestral", "sgm_uniform")),
        ("dpmpp_3m_sde_karras", {}, ("DPM++ 3M SDE", "Karras"), ("dpmpp_3m_sde", "karras")),
        ("ddim", {}, ("DDIM", "Uniform"), ("ddim", "ddim_uniform")),
        ("dpmpp_2m", {}, ("DPM++ 2M", "Uniform"), ("dpmpp_2m", "normal")),  # A1111's Automatic: Karras
        ("unipc", {"sigmas": "beta"}, ("UniPC", "Beta"), ("uni_pc", "beta")),
    ],
)  # fmt: skip
def test_equivalent_settings_in_a1111_and_comfyui(scheduler, options, webui, comfy) -> None:  # type: ignore[no-untyped-def]
    rec = _rec(scheduler, options)
    out = a1111(rec)
    assert (out["sampler"], out["schedule_type"], out["steps"], out["cfg_scale"]) == (*webui, 12, 6.5)
    assert out["infotext"] == f"Steps: 12, Sampler: {webui[0]}, Schedule type: {webui[1]}, CFG scale: 6.5"
    node = comfyui(rec)
    assert node == {"sampler_name": comfy[0], "scheduler": comfy[1], "steps": 12, "cfg": 6.5}


def test_what_a_tool_cannot_set_is_named_not_approximated() -> None:
    assert a1111(_rec("deis"))["no_equivalent"] == ["the sampler deis"]
    assert "infotext" not in a1111(_rec("deis"))
    assert comfyui(_rec("dpmpp_2m", {"solver_order": 3}))["no_equivalent"] == ["solver_order=3"]
    assert comfyui(_rec("pndm"))["no_equivalent"] == ["the sampler pndm"]
    assert a1111(_rec("euler", {"timestep_spacing": "leading"}))["no_equivalent"] == ["timestep_spacing=leading"]
    # a flow model's schedule is shifted outside the sampler, in nodes or settings the export does not write
    flow = comfyui(_rec("flow_unipc"))["no_equivalent"]
    assert flow == [
        "a flow-matching model's shifted sigma schedule (ComfyUI's export covers Euler (flow) on Flux's own sigmas, "
        "shifted by its ModelSamplingFlux node; its other samplers and schedules, and SD3's ModelSamplingSD3, were not "
        "matched to diffusers' on a flow model; not exported)"
    ]
    assert "Forge runs Flux and SD3 (Euler, Simple) with its own" in a1111(_rec("flow_unipc"))["no_equivalent"][-1]


FLUX_DEV = {  # Flux dev's scheduler config (its scheduler/scheduler_config.json)
    "num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15,
    "base_image_seq_len": 256, "max_image_seq_len": 4096,
}  # fmt: skip


def _comfyui_sigmas(node: dict, steps: int) -> list[float]:  # type: ignore[type-arg]
    """ComfyUI's sigmas for a Flux model under ``node``, written from its source: ModelSamplingFlux's shift at
    the image's size (comfy_extras/nodes_model_advanced.py), its table of 10,000 shifted timesteps
    (comfy/model_sampling.py) and the ``simple`` scheduler's picks from it (comfy/samplers.py)."""
    mm = (node["max_shift"] - node["base_shift"]) / (4096 - 256)
    mu = node["width"] * node["height"] / (8 * 8 * 2 * 2) * mm + node["base_shift"] - mm * 256
    table = [math.exp(mu) / (math.exp(mu) + (1 / ((i + 1) / 10000) - 1)) for i in range(10000)]
    return [table[-(1 + int(x * 10000 / steps))] for x in range(steps)] + [0.0]


@pytest.mark.parametrize(("options", "size"), [({}, (1024, 1024)), ({}, (768, 512)), ({"shift": 3.0}, (1024, 768))])
@pytest.mark.parametrize("steps", [4, 28])
def test_a_flux_setting_exports_to_comfyui_with_the_node_that_shifts_its_sigmas_as_diffusers_did(
    options: dict,
    size: tuple[int, int],
    steps: int,  # type: ignore[type-arg]
) -> None:
    """Euler (flow) on Flux: ComfyUI's euler, ``simple`` and a ModelSamplingFlux node whose shift at the image's
    size is diffusers' ``mu`` (dynamic) or the fixed shift; ComfyUI then steps through the sigmas diffusers'
    FluxPipeline sets, each within 5e-4 (ComfyUI picks from a table of 10,000 timesteps), by the same Euler step (its
    CONST model: x + v (sigma' - sigma))."""
    import numpy as np
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    from autotune.space import schedulers
    from autotune.space.settings import Settings

    width, height = size
    config = schedulers.complete(
        "flow_euler", FLUX_DEV, Settings.make("flow_euler", steps, 3.5, options).scheduler_overrides()
    )
    rec = dataclasses.replace(_rec("flow_euler", options, steps, 3.5), family="flux", scheduler_config=config)
    out = comfyui(rec, {"width": width, "height": height})
    assert (out["sampler_name"], out["scheduler"], out["steps"], out["cfg"], out["flux_guidance"]) == (
        "euler", "simple", steps, 1.0, 3.5
    )  # fmt: skip
    assert "no_equivalent" not in out and out["model_sampling"]["node"] == "ModelSamplingFlux"
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(config)
    tokens = (height // 16) * (width // 16)  # FluxPipeline's packed latents: 8x VAE, 2x2 patches
    mu = calculate_shift(tokens, 256, 4096, 0.5, 1.15)
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)  # as FluxPipeline calls it
    theirs = _comfyui_sigmas(out["model_sampling"], steps)
    assert max(abs(a - b) for a, b in zip(scheduler.sigmas.tolist(), theirs, strict=True)) < 5e-4
    true_cfg = comfyui(dataclasses.replace(rec, family="flux_cfg", call_kwargs={"negative_prompt": ""}))
    assert (true_cfg["cfg"], true_cfg["negative_prompt"], "flux_guidance" in true_cfg) == (3.5, "", False)
    recs = autotune.Recommendations(study="s", model={"width": width, "height": height}, classes={"x": rec})
    exported = json.loads(export(recs, "comfyui"))["x"]  # the parity check renders no Flux: said, not suggested
    assert (exported["model_sampling"], exported["parity"], exported["why"]) == (
        out["model_sampling"],
        "not checked",
        UNET_ONLY,
    )


def test_what_comfyui_cannot_match_on_flux_is_refused_in_one_line() -> None:
    """Multistep flow solvers, Karras or beta sigmas, and a dynamic shift over other token counts than Flux's."""
    dpm = dataclasses.replace(_rec("flow_dpmpp_2m"), family="flux", scheduler_config=FLUX_DEV)
    karras = dataclasses.replace(dpm, scheduler="flow_euler", options={"sigmas": "karras"})
    other = dataclasses.replace(dpm, scheduler="flow_euler", scheduler_config={**FLUX_DEV, "max_image_seq_len": 8192})
    for rec in (dpm, karras, other):
        out = comfyui(rec, {"width": 1024, "height": 1024})
        assert "model_sampling" not in out and out["no_equivalent"][-1].startswith("a flow-matching model's"), out
    assert "Forge" in a1111(dpm)["no_equivalent"][-1]


def test_export_of_a_finished_study_in_each_format(finished_study, capsys) -> None:  # type: ignore[no-untyped-def]
    cfg, _ = finished_study
    recs = autotune.load_recommendations(cfg.path)
    for fmt in ("a1111", "comfyui"):
        assert main(["export", str(cfg.path), "--format", fmt]) == 0
        data = json.loads(capsys.readouterr().out)
        assert set(data) == {"portrait", "landscape", "default"}
        assert data["default"]["setting"] == recs["default"].setting
    assert data["default"] == {  # the baseline: DPM++ 2M Karras, 8 steps, CFG 7.5
        "setting": "DPM++ 2M Karras, 8 steps, CFG 7.5", "sampler_name": "dpmpp_2m", "scheduler": "karras",
        "steps": 8, "cfg": 7.5,
    }  # fmt: skip
    assert main(["export", str(cfg.path), "--format", "diffusers"]) == 0
    code = capsys.readouterr().out
    namespace: dict = {}  # type: ignore[type-arg]
    exec(compile(code, "export.py", "exec"), namespace)  # the exported module, as serving code imports it
    from tests.test_serving import fresh_pipe, render

    def plain(kwargs: dict) -> dict:  # type: ignore[type-arg]
        return {k: v for k, v in kwargs.items() if not k.startswith("callback")}  # callbacks: objects of their own

    exported, applied = fresh_pipe(), fresh_pipe()
    for name in ["portrait", "default", "landscape", "portrait"]:  # in sequence, as a server switches classes
        kwargs, ours = namespace["apply"](exported, name), autotune.apply(applied, recs[name])
        assert plain(kwargs) == plain(ours) and ("callback_on_step_end" in kwargs) == (name == "landscape")
        assert type(exported.scheduler) is type(applied.scheduler)
        for key, value in recs[name].scheduler_config.items():
            assert exported.scheduler.config[key] == applied.scheduler.config[key] == value
        prompt = cfg.classes.get(name, ["a lighthouse"])[0]  # the same image: the cutoff at the same step
        assert torch.equal(render(exported, cfg, prompt, kwargs), render(applied, cfg, prompt, ours)), name


def test_every_name_recommendations_json_gives_is_the_one_export_gives() -> None:
    """One row per sampler carries its A1111 and ComfyUI names: the JSON and the export never disagree
    (they did for DEIS, DPM++ 2S, TCD, PNDM and the flow samplers)."""
    from types import SimpleNamespace

    from autotune.results.recommendations_file import _from_summary, trial_summary
    from autotune.space import schedulers
    from autotune.space.families import FAMILIES

    checked = 0
    for name in schedulers.names():
        variants = {v.name for v in schedulers.variants_of(name)}
        for options in ({}, {"sigmas": "karras"}, {"timestep_spacing": "trailing"}, {"timestep_spacing": "leading"}):
            if not set(options) <= variants:
                continue
            params = {"scheduler": name, "steps": 8, "guidance": 5.0, **{f"{name}.{k}": v for k, v in options.items()}}
            trial = SimpleNamespace(number=1, params=params, user_attrs={}, values=[1.0])
            summary = trial_summary(trial, ("seconds",), FAMILIES["sd"])
            rec = _from_summary("x", summary, "sd", None)
            assert a1111(rec)["sampler"] == summary["a1111_name"], (name, options)
            assert comfyui(rec)["sampler_name"] == summary["comfyui_name"], (name, options)
            checked += 1
    assert checked > len(schedulers.names())
    deis = trial_summary(SimpleNamespace(number=1, params={"scheduler": "deis", "steps": 8, "guidance": 5.0},
                                         user_attrs={}, values=[1.0]), ("seconds",), FAMILIES["sd"])  # fmt: skip
    assert deis["a1111_name"] is None and deis["comfyui_name"] == "deis"


def test_the_class_call_arguments_travel_to_each_tool_or_are_named() -> None:
    import dataclasses

    calls = {"negative_prompt": "blurry, lowres", "clip_skip": 1, "num_inference_steps": 12, "guidance_scale": 6.5}
    rec = dataclasses.replace(_rec("dpmpp_2m_karras"), call_kwargs=calls)
    out = a1111(rec)
    assert (out["negative_prompt"], out["clip_skip"]) == ("blurry, lowres", 2)  # A1111 counts the last layer as 1
    assert out["infotext"] == (
        "Negative prompt: blurry, lowres\n"
        "Steps: 12, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Clip skip: 2"
    )
    node = comfyui(rec)
    assert (node["negative_prompt"], node["stop_at_clip_layer"], "no_equivalent" in node) == (
        "blurry, lowres",
        -2,
        False,
    )
    rescaled = dataclasses.replace(rec, call_kwargs=calls | {"guidance_rescale": 0.7})  # no tool setting for it
    for out in (a1111(rescaled), comfyui(rescaled)):
        assert [m for m in out["no_equivalent"] if m.startswith("call argument guidance_rescale=0.7")], out
    assert "infotext" not in a1111(rescaled)  # a line that would render something else is not given
