"""The shipped glyphs model: it loads as Stable Diffusion, its CLIP names the glyph and the ink colour it
was asked for on fresh renders, and it converges as a real model does. The LPIPS backbone is random."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import pytest
import torch

from autotune.config import ModelConfig
from autotune.micro import MODELS, clip_dir, pipeline_dir
from autotune.micro import glyph_data as world
from autotune.model.pipeline import load_pipeline
from autotune.model.render import generate
from autotune.space.settings import Settings


@pytest.fixture(scope="module")
def glyphs():  # type: ignore[no-untyped-def]
    return load_pipeline(ModelConfig(id="glyphs", device="cpu"))


@pytest.fixture(scope="module")
def clip():  # type: ignore[no-untyped-def]
    from autotune.model.metrics.clip_score import ClipScore

    return ClipScore("glyphs")


def test_the_shipped_models_together_are_safetensors_within_24_mb(glyphs) -> None:  # type: ignore[no-untyped-def]
    files = {f for name in MODELS for d in (pipeline_dir(name), clip_dir(name)) for f in d.rglob("*") if f.is_file()}
    assert sum(f.stat().st_size for f in files) <= 24_000_000
    assert all(f.suffix in {".json", ".txt", ".safetensors"} for f in files)  # no pickles
    assert type(glyphs.pipe).__name__ == "StableDiffusionPipeline" and glyphs.family.name == "sd"
    assert glyphs.pipe.unet.dtype == torch.float32 and glyphs.base_scheduler_config["clip_sample"] is False


def _named(clip, images, asked) -> dict[str, int]:  # type: ignore[no-untyped-def]
    """How many images the CLIP names the glyph and the ink of, among captions with that one word changed."""
    hits = {"char": 0, "ink": 0}
    for image, g in zip(images, asked, strict=True):
        for field, values in (("char", world.GLYPHS), ("ink", world.INKS)):
            options = [dataclasses.replace(g, **{field: v}) for v in values]
            scores = clip(image[None].expand(len(options), -1, -1, -1), [world.caption(o) for o in options])
            hits[field] += values[int(scores.argmax())] == getattr(g, field)
    return hits


def test_clip_names_glyph_and_ink_on_20_held_out_drawn_images(clip) -> None:  # type: ignore[no-untyped-def]
    drawn, asked = world.dataset(20, seed=99)  # the training data's seed is 0: these draws are new
    images = torch.from_numpy(drawn).permute(0, 3, 1, 2).float() / 255
    hits = _named(clip, images, asked)
    assert hits["char"] >= 18 and hits["ink"] >= 18, hits  # measured: 18 and 20 (97 % and 100 % on 120)


def test_clip_names_the_prompted_glyph_and_ink_on_20_fresh_renders_at_the_demos_baseline(glyphs, clip) -> None:  # type: ignore[no-untyped-def]
    rng = random.Random(20)
    asked = [rng.choice(world.combos()) for _ in range(20)]
    render = generate(glyphs, Settings.make("dpmpp_2m_karras", 30, 5.0), [world.caption(g) for g in asked], [7], 32, 32)
    hits = _named(clip, render.images, asked)
    # the 90 %; measured: glyph 18, ink 20 (93 % and 99 % on 240 other renders)
    assert hits["char"] >= 18 and hits["ink"] >= 18, hits


@pytest.mark.slow
def test_euler_gets_closer_to_the_reference_with_more_steps(glyphs) -> None:  # type: ignore[no-untyped-def]
    from autotune.model.metrics.lpips_distance import Lpips

    lpips = Lpips("alex", "random")
    prompts = ["a thin blue letter R on a white background", "a bold yellow digit four on a red background"]
    reference = generate(glyphs, Settings.make("dpmpp_2m_karras", 100, 5.0), prompts, [0, 1], 32, 32).images
    distance = {
        steps: lpips(generate(glyphs, Settings.make("euler", steps, 5.0), prompts, [0, 1], 32, 32).images, reference)
        .mean()
        .item()
        for steps in (3, 8, 30)
    }
    assert distance[3] > distance[8] > distance[30] and distance[30] < distance[3] / 4, distance


@pytest.mark.slow
def test_two_seeded_smoke_runs_of_the_training_script_write_identical_weights(tmp_path: Path) -> None:
    from autotune.micro import train_glyphs

    for run in ("a", "b"):
        train_glyphs.main(["--out", str(tmp_path / run), "--scale", "0.0004", "--threads", "1"])
    files = sorted(f.relative_to(tmp_path / "a") for f in (tmp_path / "a").rglob("*.safetensors"))
    assert len(files) == 4  # text encoder, VAE, UNet, CLIP
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
