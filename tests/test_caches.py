"""Feature caching as a searched axis: a setting's cache survives Optuna's parameters, the render turns it on
(First Block Cache one image a call; the saving counted as the share of the denoiser's compute that ran),
the study file refuses a cache on a model it does not fit, and what a study validated with a cache on,
`autotune.apply` renders again in plain diffusers, on a transformer and on a UNet."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import torch

from autotune.config import ConfigError, load_config
from autotune.config.study_file import SearchConfig
from autotune.model.render import generate
from autotune.space import caches
from autotune.space.settings import Settings, searched_params, suggest
from tests.test_families import CLASSES, SHOWABLE

PROMPTS = ["a bold yellow letter A on a blue background", "a thin red letter E on a white background"]


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
    seer = Settings.make("flow_euler", 12, 4.0, cache=("taylorseer", 3.0))
    assert seer.cache == ("taylorseer", 3) and seer.label() == "Euler (flow), 12 steps, CFG 4, TaylorSeer 3"
    assert caches.code(seer.cache) == (
        "pipe.transformer.enable_cache(TaylorSeerCacheConfig(cache_interval=3, disable_cache_before_step=3, "
        "max_order=1, use_lite_mode=True))"
    )
    assert Settings.make("flow_euler", 12, 4.0, cache=("taylorseer", 1)).cache == ()  # every step whole: none
    deep = Settings.make("ddim", 10, 5.0, cache=("deepcache", 3.0))
    assert deep.cache == ("deepcache", 3) and deep.label() == "DDIM, 10 steps, CFG 5, DeepCache 3"
    assert Settings.make("ddim", 10, 5.0, cache=("deepcache", 1)).cache == ()  # every step whole: none
    assert Settings.make("ddim", 10, 5.0, {}, 0.5, (), ("deepcache", 3)).cutoff == 1  # keeps the guided batch
    assert caches.as_config(deep.cache) == {
        "config_class": "DeepCacheSDHelper", "config": {"cache_interval": 3, "cache_branch_id": 0}
    }  # fmt: skip


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
    unet = SearchConfig(steps=(4, 12), schedulers=("ddim",), guidance=(1.0, 6.0), variants=(), cache=("deepcache",))
    other = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    assert {s.cache[1] for s in (suggest(other.ask(), unet) for _ in range(40)) if s.cache} == {2, 3, 4, 5}


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


def test_taylorseer_skips_the_blocks_between_whole_steps_and_counts_it(flow) -> None:  # type: ignore[no-untyped-def]
    plain = generate(flow, Settings.make("flow_euler", 12, 4.0), PROMPTS, [0, 1], 32, 32)
    shares = []
    for interval in (2, 5):
        cached = Settings.make("flow_euler", 12, 4.0, cache=("taylorseer", interval))
        both = generate(flow, cached, PROMPTS, [0, 1], 32, 32)
        alone = generate(flow, cached, PROMPTS[1:], [1], 32, 32)
        assert torch.equal(both.images[3], alone.images[0])  # its state is one image's: none shared in a batch
        assert both.guided_calls == both.model_calls  # true CFG: both passes of a step skip alike
        assert 0.001 < float((both.images - plain.images).abs().mean()) < 0.2
        shares.append(both.model_calls)
        assert not flow.pipe.transformer.is_cache_enabled
    # the first 3 steps whole, then steps 4, 6, 8, 10 (interval 2) or 4 and 9 (interval 5); a skipped step still
    # runs the embeddings and the output layers (a little of a call)
    assert 7 < shares[0] < 8 and 5 < shares[1] < 6


def test_deepcache_on_a_unet_runs_the_shallow_branch_between_whole_steps_and_counts_it(tiny) -> None:  # type: ignore[no-untyped-def]
    plain = generate(tiny, Settings.make("ddim", 12, 5.0), PROMPTS, [0], 32, 32)
    cached = generate(tiny, Settings.make("ddim", 12, 5.0, cache=("deepcache", 3)), PROMPTS, [0], 32, 32)
    # 4 of 12 steps whole, 8 the shallow branch (its first resnet, the last up block's, the embeddings and
    # the outer convolutions: a sizeable share of this tiny UNet's compute at 32 px)
    assert 4 < cached.model_calls < 10 and cached.guided_calls == cached.model_calls
    assert 0 < float((cached.images - plain.images).abs().mean()) < 0.2
    assert getattr(tiny.pipe, "_autotune_deepcache", None) is None  # off again: the UNet's own forwards back
    again = generate(tiny, Settings.make("ddim", 12, 5.0), PROMPTS, [0], 32, 32)
    assert torch.equal(again.images, plain.images) and again.model_calls == 12


def test_a_cache_on_a_model_it_does_not_fit_or_an_unknown_one_is_refused_in_one_line(tmp_path: Path) -> None:
    from autotune.model.pipeline import resolve_config

    path = tmp_path / "cached.toml"
    body = '[model]\nid = "{}"\ndevice = "cpu"\n[search]\ncache = ["{}"]\n[classes.a]\nprompts = ["a cat"]\n'
    for model, cache, why in [
        (
            "tiny",
            "first_block",
            "first_block works on flux, flux_cfg, distilled_flow models, not sd; expected deepcache",
        ),
        (
            "flow",
            "deepcache",
            "deepcache works on sd, sdxl, distilled models, not flux_cfg; expected first_block or taylorseer",
        ),
    ]:
        path.write_text(body.format(model, cache))
        with pytest.raises(ConfigError) as err:
            resolve_config(load_config(path))
        assert str(err.value) == f"{path}: search.cache: {why}"
    path.write_text(body.format("flow", "deep"))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == f"{path}: search.cache: expected a list of first_block, taylorseer, deepcache, got 'deep'"


CACHED_STUDIES = [  # model, its [call] and [search] lines, the searched cache, the baseline's sampler and steps
    ("flow", "[call]\nmax_sequence_length = 16\n", "first_block", "cache_threshold = [0.3, 0.5]\n", "flow_euler", 40),
    ("tiny", "", "deepcache", "cache_interval = [2, 4]\n", "ddim", 20),
    ("flow", "[call]\nmax_sequence_length = 16\n", "taylorseer", "cache_interval = [2, 3]\n", "flow_euler", 40),
]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("model", "call", "cache", "space", "sampler", "reference"), CACHED_STUDIES, ids=["flux", "unet", "taylorseer"]
)
def test_apply_and_the_diffusers_export_render_the_studys_image_with_the_cache_on_and_the_next_class_turns_it_off(
    tmp_path: Path, model: str, call: str, cache: str, space: str, sampler: str, reference: int
) -> None:
    """A study searching a cache (First Block Cache on the flow model's transformer, DeepCache on the tiny
    UNet): a trial it rendered with the cache on, handed to a plain diffusers pipeline through
    `autotune.apply` and through the `diffusers` export's code, renders the study's image of the same prompt
    and noise; the baseline applied after it leaves no cache on."""
    import dataclasses

    import diffusers

    import autotune
    from autotune.cli import main
    from autotune.micro import MODELS, pipeline_dir
    from autotune.results.reader import recommend
    from autotune.results.recommendations_file import _from_summary, trial_summary
    from autotune.serving.export import export, in_tools
    from autotune.space.families import FAMILIES
    from autotune.testing.tiny import tiny_pipeline_path
    from tests.test_serving import render, trial_image

    path = tmp_path / "cached.toml"
    path.write_text(
        f'name = "cached"\n[model]\nid = "{model}"\ndevice = "cpu"\nheight = 32\nwidth = 32\n{call}'
        '[search]\nsteps = [6, 10]\nn_trials = 4\nseeds = [0]\nguidance = [1.0, 6.0]\nsampler = "random"\nseed = 1\n'
        f'schedulers = ["{sampler}"]\ncache = ["{cache}"]\n{space}'
        f'[baseline]\nscheduler = "{sampler}"\nsteps = 10\nguidance = 4.0\n'
        f'[reference]\nscheduler = "{sampler}"\nsteps = {reference}\nguidance = 4.0\n'
        + SHOWABLE
        + "confirm_seeds = [1000, 1001]\nfinalists = 1\nrace_seeds = 2\nrace_budget = 0\n"
        + CLASSES
    )
    assert main(["study", str(path), "--quiet", "--no-reference-check"]) == 0
    cfg = load_config(path)
    (outcome,) = recommend(cfg).values()
    done = [t for t in outcome.load_study().trials if t.state == optuna.trial.TrialState.COMPLETE]
    cached = [t for t in done if t.params.get("cache") == cache]
    assert cached and all(t.user_attrs["model_calls"] < t.params["steps"] for t in cached)  # it saved compute
    t = cached[0]
    recs = autotune.load_recommendations(cfg.path)
    family = FAMILIES[recs["default"].family]
    data = trial_summary(t, ("clip_score", "lpips", "seconds"), family, call=recs["default"].call_kwargs)
    param = caches.CACHES[cache].param
    value = t.params[f"cache.{cache}"]
    said = caches.code((cache, value))
    assert data["cache"] == {"name": cache, "param": param, "value": value, "code": said}
    assert data["diffusers"]["cache"]["config_class"] == caches.CACHES[cache].config_class
    rec = _from_summary("portrait", data, family.name, None)

    folder = pipeline_dir(model) if model in MODELS else tiny_pipeline_path(model)
    pipe = diffusers.DiffusionPipeline.from_pretrained(folder, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    expected = trial_image(cfg, outcome, t.number)
    prompt = "a studio portrait of an old fisherman"
    kwargs = autotune.apply(pipe, rec)
    assert (render(pipe, cfg, prompt, kwargs) - expected).abs().max() <= 1 / 255 + 1e-6
    autotune.apply(pipe, recs["default"])
    assert not getattr(caches.denoiser(pipe), "is_cache_enabled", False) and not getattr(
        pipe, "_autotune_deepcache", None
    )

    code: dict[str, object] = {}
    exec(export(dataclasses.replace(recs, classes={"portrait": rec, "default": recs["default"]}), "diffusers"), code)
    kwargs = code["apply"](pipe, "portrait")  # type: ignore[operator]
    assert (render(pipe, cfg, prompt, kwargs) - expected).abs().max() <= 1 / 255 + 1e-6
    code["apply"](pipe, "default")  # type: ignore[operator]
    assert not getattr(caches.denoiser(pipe), "is_cache_enabled", False) and not getattr(pipe, "_deepcache", None)

    # the tools' exports say in one line each that the cache is not theirs (ComfyUI's own caches: another rule)
    said = {tool: [m for m in missing if "on the denoiser" in m] for tool, (_, _, missing) in in_tools(rec).items()}
    assert [len(lines) for lines in said.values()] == [1, 1]
    assert all(lines[0].startswith(caches.label(rec.cache)) and "not exported" in lines[0] for lines in said.values())
    assert "EasyCache" in said["comfyui"][0] and "no core setting" in said["a1111"][0]
