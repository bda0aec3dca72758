"""Feature caching as a searched axis: a setting's cache survives Optuna's parameters, the render turns it on
(one image a call, its saving counted as the share of the denoiser it ran), the study file refuses it
where diffusers has none, and what a study validated with a cache on, `autotune.apply` renders again."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import torch

from autotune.config import ConfigError, ModelConfig, load_config
from autotune.config.study_file import SearchConfig
from autotune.model.pipeline import Calls, load_pipeline
from autotune.model.render import generate
from autotune.space import caches
from autotune.space.settings import Settings, searched_params, suggest
from tests.test_families import CLASSES, SHOWABLE

PROMPTS = ["a bold yellow letter A on a blue background", "a thin red letter E on a white background"]


@pytest.fixture(scope="module")
def flow():  # type: ignore[no-untyped-def]
    return load_pipeline(ModelConfig(id="flow", device="cpu"), calls=Calls({"max_sequence_length": 16}))


def test_a_cache_is_part_of_the_setting_its_parameters_its_key_and_its_name() -> None:
    cached = Settings.make("flow_euler", 12, 4.0, cache=("first_block", 0.3))
    plain = Settings.make("flow_euler", 12, 4.0)
    params = cached.params({caches.CACHE: (caches.OFF, "first_block")})
    assert params == {"scheduler": "flow_euler", "steps": 12, "guidance": 4.0, "cache": "first_block",
                      "cache.first_block": 0.3}  # fmt: skip
    assert Settings.from_params(params) == cached
    assert plain.params({caches.CACHE: ()})["cache"] == "off" and Settings.from_params(plain.params()) == plain
    assert cached.key() != plain.key() and cached.label() == "Euler (flow), 12 steps, CFG 4, First Block Cache 0.3"
    assert Settings.make("flow_euler", 12, 4.0, cache=("first_block", 0.0)) == plain  # never reuses: none
    assert caches.code(cached.cache) == "pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=0.3))"


def test_the_search_suggests_off_or_a_cache_with_its_own_threshold_on_the_studys_grid() -> None:
    space = SearchConfig(
        steps=(4, 12), schedulers=("flow_euler",), guidance=(1.0, 6.0), variants=(),
        cache=("first_block",), cache_threshold=(0.2, 0.4), cache_threshold_step=0.1,
    )  # fmt: skip
    assert searched_params("flow_euler", space, None)[caches.CACHE] == ("off", "first_block")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = [suggest(study.ask(), space) for _ in range(40)]
    values = {s.cache[1] for s in seen if s.cache}
    assert values == {0.2, 0.3, 0.4} and sum(not s.cache for s in seen) >= 10


def test_a_cached_render_counts_the_share_it_ran_and_an_image_does_not_depend_on_its_batch(flow) -> None:  # type: ignore[no-untyped-def]
    plain = generate(flow, Settings.make("flow_euler", 12, 4.0), PROMPTS, [0, 1], 32, 32)
    assert (plain.model_calls, plain.guided_calls) == (12, 12)  # every block of every call ran: whole calls
    cached = Settings.make("flow_euler", 12, 4.0, cache=("first_block", 0.4))
    both = generate(flow, cached, PROMPTS, [0, 1], 32, 32)
    alone = generate(flow, cached, PROMPTS[1:], [1], 32, 32)
    assert torch.equal(both.images[3], alone.images[0])  # one image a call: the cache decides per image
    # a reused step runs the first of 6 blocks only: fewer calls' worth, never fewer than the first step's
    assert 12 * 0.3 < both.model_calls < 11 and both.guided_calls < 12
    assert 0.005 < float((both.images - plain.images).abs().mean()) < 0.2  # it changes the image, a little
    assert not flow.pipe.transformer.is_cache_enabled  # off again after the render


def test_a_cache_on_a_unet_model_or_an_unknown_one_is_refused_in_one_line(tmp_path: Path) -> None:
    from autotune.model.pipeline import resolve_config

    path = tmp_path / "cached.toml"
    body = '[model]\nid = "{}"\ndevice = "cpu"\n[search]\ncache = ["{}"]\n[classes.a]\nprompts = ["a cat"]\n'
    path.write_text(body.format("tiny", "first_block"))
    with pytest.raises(ConfigError) as err:
        resolve_config(load_config(path))
    assert str(err.value) == (
        f"{path}: search.cache: diffusers' caches hook a transformer's blocks, and a sd model denoises with a "
        "UNet (caches exist here for sd3 and flux models); remove the key"
    )
    path.write_text(body.format("flow", "deep"))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == f"{path}: search.cache: expected a list of first_block, got 'deep'"


@pytest.mark.slow
def test_apply_renders_the_studys_image_with_the_cache_on_and_the_next_class_turns_it_off(tmp_path: Path) -> None:
    """A flow study searching the cache: a trial it rendered with First Block Cache, handed to a plain
    diffusers FluxPipeline through `autotune.apply`, renders the study's image of the same prompt and noise;
    the baseline applied after it leaves no cache on."""
    import diffusers

    import autotune
    from autotune.cli import main
    from autotune.micro import pipeline_dir
    from autotune.results.reader import recommend
    from autotune.results.recommendations_file import _from_summary, trial_summary
    from autotune.space.families import FAMILIES
    from tests.test_serving import render, trial_image

    path = tmp_path / "cached.toml"
    path.write_text(
        'name = "cached"\n[model]\nid = "flow"\ndevice = "cpu"\nheight = 32\nwidth = 32\n'
        "[call]\nmax_sequence_length = 16\n"
        '[search]\nsteps = [6, 10]\nn_trials = 4\nseeds = [0]\nguidance = [1.0, 6.0]\nsampler = "random"\nseed = 1\n'
        'schedulers = ["flow_euler"]\ncache = ["first_block"]\n'
        "cache_threshold = [0.3, 0.5]\ncache_threshold_step = 0.1\n"
        '[baseline]\nscheduler = "flow_euler"\nsteps = 10\nguidance = 4.0\n'
        '[reference]\nscheduler = "flow_euler"\nsteps = 40\nguidance = 4.0\n'
        + SHOWABLE
        + "confirm_seeds = [1000, 1001]\nfinalists = 1\nrace_seeds = 2\nrace_budget = 0\n"
        + CLASSES
    )
    assert main(["study", str(path), "--quiet"]) == 0
    cfg = load_config(path)
    (outcome,) = recommend(cfg).values()
    study = outcome.load_study()
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    cached = [t for t in done if t.params.get("cache") == "first_block"]
    assert cached and all(t.user_attrs["model_calls"] < t.params["steps"] for t in cached)  # it reused steps
    t = cached[0]
    family = FAMILIES["flux_cfg"]
    data = trial_summary(t, ("clip_score", "lpips", "seconds"), family, call={"max_sequence_length": 16})
    assert data["cache"] == {"name": "first_block", "param": "threshold", "value": t.params["cache.first_block"]}
    assert data["diffusers"]["cache"]["config_class"] == "FirstBlockCacheConfig"
    rec = _from_summary("portrait", data, family.name, None)

    pipe = diffusers.FluxPipeline.from_pretrained(pipeline_dir("flow"), torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    kwargs = autotune.apply(pipe, rec)
    assert pipe.transformer.is_cache_enabled
    image = render(pipe, cfg, "a studio portrait of an old fisherman", kwargs)
    assert (image - trial_image(cfg, outcome, t.number)).abs().max() <= 1 / 255 + 1e-6
    autotune.apply(pipe, autotune.load_recommendations(cfg.path)["default"])
    assert not pipe.transformer.is_cache_enabled
