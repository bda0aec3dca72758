"""The shipped flow model: the glyph world in Flux's layout, guided with true classifier-free guidance.
It loads in plain diffusers as a true-CFG Flux, the glyph CLIP names what it was asked for on renders of
combinations it never saw, its guidance is counted as a second call a step, and its training is seeded."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from autotune.config import ModelConfig
from autotune.micro import glyph_data as world
from autotune.micro import pipeline_dir
from autotune.micro.train_flow import DEFAULT, held_out
from autotune.model.pipeline import describe_model
from autotune.model.render import generate
from autotune.space.settings import Settings
from tests.test_glyphs import _named


@pytest.fixture(scope="module")
def clip():  # type: ignore[no-untyped-def]
    from autotune.model.metrics.clip_score import ClipScore

    return ClipScore("glyphs")


def test_it_loads_in_plain_diffusers_as_a_flux_guided_with_true_cfg() -> None:
    from diffusers import FluxPipeline

    plain = FluxPipeline.from_pretrained(pipeline_dir("flow"))
    assert plain.transformer.config.guidance_embeds is False and plain.scheduler.config.use_dynamic_shifting
    described = describe_model(ModelConfig(id="flow", device="cpu"))
    assert described.family.name == "flux_cfg" and described.family.guidance_param == "true_cfg_scale"
    # Flux's pipeline hands its scheduler a sigma schedule: Heun (flow) cannot take one, the flow solvers can
    assert set(described.compatible) == {"flow_euler", "flow_dpmpp_2m", "flow_unipc"}


def test_clip_names_the_prompted_glyph_and_ink_on_20_fresh_renders_of_combinations_it_never_saw(flow, clip) -> None:  # type: ignore[no-untyped-def]
    rng = random.Random(20)
    asked = [rng.choice(held_out()) for _ in range(20)]
    default = Settings.make("flow_euler", DEFAULT["num_inference_steps"], DEFAULT["true_cfg_scale"])
    render = generate(flow, default, [world.caption(g) for g in asked], [7], 32, 32)
    assert render.model_calls == 28 and render.guided_calls == 28  # true CFG: the negative prompt's call each step
    hits = _named(clip, render.images, asked)
    assert hits["char"] >= 18 and hits["ink"] >= 18, hits  # the 90 %


def test_guidance_reaches_the_image_and_costs_a_call_only_where_it_runs(flow) -> None:  # type: ignore[no-untyped-def]
    prompt = ["a thin green letter A on a white background"]
    off, on = (generate(flow, Settings.make("flow_unipc", 8, g), prompt, [0], 32, 32) for g in (1.0, 4.0))
    assert (off.model_calls, off.guided_calls, on.model_calls, on.guided_calls) == (8, 0, 8, 8)
    assert (off.images - on.images).abs().mean() > 1e-2


@pytest.mark.slow
def test_two_seeded_smoke_runs_of_the_training_script_write_identical_weights(tmp_path: Path) -> None:
    from autotune.micro import train_flow

    for run in ("a", "b"):
        train_flow.main(["--out", str(tmp_path / run), "--scale", "0.0004", "--threads", "1", "--check", "0"])
    files = sorted(f.relative_to(tmp_path / "a") for f in (tmp_path / "a").rglob("*.safetensors"))
    assert len(files) == 4  # transformer, T5, the glyphs text encoder and VAE
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)


@pytest.mark.parametrize(
    ("key", "why"),
    [
        ("guidance_cutoff = [0.5, 1.0]", "search.guidance_cutoff: a flux_cfg model cannot stop guidance part-way "
         "(its true CFG is a second call diffusers' Flux pipeline makes on every step, which no callback stops; the "
         "cutoff exists for sd, sdxl and sd3); remove the key"),
        ("fitted_schedules = true", "search.fitted_schedules: a flux_cfg model's pipeline takes a sigma schedule, not "
         "the list of timesteps a fitted schedule is (fitted schedules exist for sd and sdxl); remove the key"),
    ],
)  # fmt: skip
def test_an_axis_the_flow_pipeline_cannot_take_is_refused_in_one_line_that_says_why(
    tmp_path: Path, key: str, why: str
) -> None:
    from autotune.config import ConfigError, load_config
    from autotune.model.pipeline import resolve_config

    path = tmp_path / "cut.toml"
    path.write_text(
        f'[model]\nid = "flow"\ndevice = "cpu"\n[search]\n{key}\n'
        '[classes.thin]\nprompts = ["a thin green letter A on a white background"]\n'
    )
    with pytest.raises(ConfigError) as err:
        resolve_config(load_config(path))
    assert str(err.value) == f"{path}: {why}"
