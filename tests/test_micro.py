"""The shipped micro model: it loads as a user's own folders load, draws the digit it is asked for,
and converges as a real model does. Its images and CLIP are trained; the LPIPS backbone is random."""

from __future__ import annotations

import json

import pytest
import torch

from autotune.config import ModelConfig
from autotune.micro import clip_dir, pipeline_dir
from autotune.micro.train import DIGITS, caption
from autotune.model.pipeline import load_pipeline
from autotune.model.render import generate
from autotune.space.settings import Settings


@pytest.fixture(scope="module")
def micro():  # type: ignore[no-untyped-def]
    return load_pipeline(ModelConfig(id="micro", device="cpu"))


@pytest.fixture(scope="module")
def clip():  # type: ignore[no-untyped-def]
    from autotune.model.metrics.clip_score import ClipScore

    return ClipScore("micro")


def test_shipped_weights_load_as_stable_diffusion_in_float32_and_fit_in_8_mb(micro) -> None:  # type: ignore[no-untyped-def]
    files = [f for d in (pipeline_dir(), clip_dir()) for f in d.rglob("*") if f.is_file()]
    assert sum(f.stat().st_size for f in files) <= 8 * 1024 * 1024
    assert all(f.suffix in {".json", ".txt", ".safetensors"} for f in files)  # no pickles
    assert type(micro.pipe).__name__ == "StableDiffusionPipeline" and micro.family.name == "sd"
    assert micro.pipe.unet.dtype == torch.float32  # shipped as float16, computed in float32 on the CPU
    assert micro.base_scheduler_config["clip_sample"] is False  # DDIM/DDPM built from it do not clip
    config = json.loads((clip_dir() / "open_clip_config.json").read_text())
    assert config["model_cfg"]["vision_cfg"]["image_size"] == 32


def test_clip_names_the_prompted_digit_at_20_steps_cfg_5(micro, clip) -> None:  # type: ignore[no-untyped-def]
    captions = [caption(d) for d in range(10)]
    render = generate(micro, Settings.make("dpmpp_2m_karras", 20, 5.0), captions, [0, 1], height=32, width=32)
    images = render.images  # prompt-major: digit d's two seeds at 2d, 2d + 1
    scores = torch.stack([clip(images, [c] * len(images)) for c in captions], dim=1)  # (20 images, 10 captions)
    named = scores.argmax(dim=1)
    truth = torch.arange(10).repeat_interleave(2)
    accuracy = (named == truth).float().mean().item()
    assert accuracy >= 0.9, [DIGITS[i] for i in named]
    right = scores[torch.arange(20), truth]
    assert right.mean() > 60 and (scores.sum(1) - right).mean() / 9 < right.mean() - 30  # the right caption stands out


@pytest.mark.slow
def test_euler_gets_closer_to_the_reference_with_more_steps(micro) -> None:  # type: ignore[no-untyped-def]
    from autotune.model.metrics.lpips_distance import Lpips

    lpips = Lpips("alex", "random")
    prompts, seeds = [caption(3), caption(8)], [0, 1]
    reference = generate(micro, Settings.make("dpmpp_2m_karras", 100, 5.0), prompts, seeds, 32, 32).images
    distance = {
        steps: lpips(generate(micro, Settings.make("euler", steps, 5.0), prompts, seeds, 32, 32).images, reference)
        .mean()
        .item()
        for steps in (4, 10, 30)
    }
    assert distance[4] > distance[10] > distance[30]
    assert distance[30] < distance[4] / 5
