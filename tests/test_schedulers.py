from __future__ import annotations

import pytest
import torch

from autotune.model.render import generate
from autotune.space import schedulers, variants
from autotune.space.settings import Settings


@pytest.mark.parametrize(
    ("alias", "name"),
    [
        ("DPM++ 2M Karras", "dpmpp_2m_karras"),
        ("Euler a", "euler_a"),
        ("DPM2 a", "dpm2_a"),
        ("EulerDiscreteScheduler", "euler"),
        ("DPMSolverMultistepScheduler", "dpmpp_2m"),
        ("UniPC", "unipc"),
        ("DPM2 a Karras", "dpm2_a_karras"),
        ("PLMS", "pndm"),
        ("DPM++ 2S a", "dpmpp_2s_a"),
        ("DPM++ 3M SDE", "dpmpp_3m_sde"),
        ("DPM++ 3M SDE Karras", "dpmpp_3m_sde_karras"),
    ],
)
def test_aliases_resolve_to_canonical_names(alias: str, name: str) -> None:
    assert schedulers.canonical(alias) == name


def test_unknown_name_raises_key_error() -> None:
    with pytest.raises(KeyError):
        schedulers.canonical("DPM++ 9M Turbo")


# diffusers' own A1111/k-diffusion table (docs/source/en/api/schedulers/overview.md), every row it maps
DIFFUSERS_A1111_TABLE = [
    "DPM++ 2M", "DPM++ 2M Karras", "DPM++ 2M SDE", "DPM++ 2M SDE Karras", "DPM++ 2S a", "DPM++ 2S a Karras",
    "DPM++ SDE", "DPM++ SDE Karras", "DPM2", "DPM2 Karras", "DPM2 a", "DPM2 a Karras", "Euler", "Euler a",
    "Heun", "LMS", "LMS Karras", "DDIM", "PLMS", "UniPC", "DEIS", "LCM",
]  # fmt: skip


def test_every_sampler_in_the_diffusers_a1111_table_is_accepted_and_builds() -> None:
    import json

    from autotune.testing.tiny import tiny_pipeline_path

    config = json.loads((tiny_pipeline_path("tiny") / "scheduler" / "scheduler_config.json").read_text())
    for a1111 in DIFFUSERS_A1111_TABLE:
        spec = schedulers.get(a1111)
        built = schedulers.build(spec.name, config)
        assert type(built).__name__ == spec.class_name, a1111
        for key, value in spec.kwargs.items():
            assert built.config[key] == value, a1111


def test_unknown_names_say_why() -> None:
    assert "did you mean 'DPM++ 2M Karras'" in schedulers.unknown("DPM++ 2M Karas")
    assert "did you mean 'dpmpp_2m_karras'" in schedulers.unknown("dpmpp_2m_karas")
    assert "no scheduler for" in schedulers.unknown("DPM fast")
    assert "expected one of: euler, euler_a" in schedulers.unknown("warp9")


def test_table_has_the_names_users_expect() -> None:
    required = {
        "euler",
        "euler_a",
        "heun",
        "lms",
        "lms_karras",
        "deis",
        "pndm",
        "ddim",
        "unipc",
        "dpmpp_2m",
        "dpmpp_2m_karras",
        "dpmpp_2m_sde_karras",
        "dpmpp_sde",
        "dpm2",
        "dpm2_a",
        "flow_euler",
    }
    assert required <= set(schedulers.names())


@pytest.fixture(scope="module")
def tiny_sd3():  # type: ignore[no-untyped-def]
    from autotune.config import ModelConfig
    from autotune.model.pipeline import load_pipeline

    return load_pipeline(ModelConfig(id="tiny-sd3", device="cpu"))


@pytest.mark.parametrize("steps", [4, 20])
@pytest.mark.parametrize("name", schedulers.names())
def test_every_scheduler_builds_and_renders_a_finite_image(tiny, tiny_sd3, name: str, steps: int) -> None:  # type: ignore[no-untyped-def]
    spec = schedulers.get(name)
    p = tiny_sd3 if spec.flow else tiny
    render = generate(p, Settings(name, steps, 7.5), ["a red apple"], [0], 32, 32)
    assert type(p.pipe.scheduler).__name__ == spec.class_name
    for key, value in spec.kwargs.items():
        assert p.pipe.scheduler.config[key] == value
    assert render.images.shape == (1, 3, 32, 32)
    assert torch.isfinite(render.images).all()
    assert render.images.std() > 0.01  # a picture, not a flat field
    # the table's calls per step is the rule; the measured count may differ by one call
    # (second-order samplers skip their last correction, PLMS repeats its first step)
    assert abs(render.model_calls - spec.calls_per_step * steps) <= 1


VARIANT_CASES = [
    (name, v.name, value)
    for name in schedulers.names()
    for v in schedulers.variants_of(name)
    for value in v.choices[1:]
]


@pytest.mark.parametrize(("name", "variant", "value"), VARIANT_CASES, ids=[f"{n}-{v}-{x}" for n, v, x in VARIANT_CASES])
def test_every_variant_value_reaches_the_scheduler_config(
    tiny,
    tiny_sd3,
    name: str,
    variant: str,  # type: ignore[no-untyped-def]
    value: object,
) -> None:
    p = tiny_sd3 if schedulers.get(name).flow else tiny
    p.pipe.scheduler = schedulers.build(name, p.base_scheduler_config, {variant: value})
    expected = variants.VARIANTS[variant].to_kwargs(value)
    assert expected and all(p.pipe.scheduler.config[k] == v for k, v in expected.items())


def test_default_variant_keeps_the_models_own_config(tiny) -> None:  # type: ignore[no-untyped-def]
    sched = schedulers.build("dpmpp_2m", tiny.base_scheduler_config, {"timestep_spacing": "default"})
    assert sched.config.timestep_spacing == tiny.base_scheduler_config["timestep_spacing"] == "leading"


def test_ddim_and_ddpm_built_from_the_tiny_models_config_do_not_clip_latents(tiny) -> None:  # type: ignore[no-untyped-def]
    # SD records clip_sample = false; a PNDMScheduler built in code does not, and DDIM/DDPM would clip
    for name in ("ddim", "ddpm"):
        assert schedulers.build(name, tiny.base_scheduler_config).config.clip_sample is False


def test_entry_fixed_parameters_are_not_searched() -> None:
    assert "sigmas" not in {v.name for v in schedulers.variants_of("dpmpp_2m_karras")}
    assert "sigmas" in {v.name for v in schedulers.variants_of("dpmpp_2m")}
    assert "algorithm_type" not in {v.name for v in schedulers.variants_of("unipc")}


def test_ays_renders_with_the_familys_timesteps(tiny) -> None:  # type: ignore[no-untyped-def]
    from autotune.space.families import FAMILIES
    from autotune.space.settings import ays_timesteps

    assert ays_timesteps(FAMILIES["sd"], 10) == [999, 850, 736, 645, 545, 455, 343, 233, 124, 24]
    ts = ays_timesteps(FAMILIES["sd"], 6)
    assert len(ts) == 6 and ts[0] == 999 and ts[-1] == 24 and ts == sorted(ts, reverse=True)
    r = generate(tiny, Settings.make("dpmpp_2m", 6, 7.5, {"sigmas": "ays"}), ["a cat"], [0], 32, 32)
    assert r.model_calls == 6 and torch.isfinite(r.images).all()


def test_overrides_of_one_scheduler_do_not_leak_into_the_next(tiny) -> None:  # type: ignore[no-untyped-def]
    generate(tiny, Settings("dpmpp_2m_karras", 2, 7.5), ["x"], [0], 32, 32)
    assert tiny.pipe.scheduler.config.use_karras_sigmas is True
    generate(tiny, Settings("dpmpp_2m", 2, 7.5), ["x"], [0], 32, 32)
    assert tiny.pipe.scheduler.config.use_karras_sigmas is False


@pytest.mark.parametrize("name", ["flow_dpmpp_2m", "flow_unipc"])
def test_a_multistep_solver_on_flow_sigmas_shifts_them_as_the_models_own_scheduler_does(tiny_sd3, name: str) -> None:  # type: ignore[no-untyped-def]
    base = tiny_sd3.base_scheduler_config
    built, unshifted = schedulers.build(name, base), schedulers.build(name, {**base, "shift": 1.0})
    assert built.config.flow_shift == base["shift"] == 3.0  # the FlowMatch schedulers' shift, under its own key
    built.set_timesteps(8)
    unshifted.set_timesteps(8)
    s = unshifted.sigmas[:-1].float()
    assert torch.allclose(built.sigmas[:-1].float(), 3 * s / (1 + 2 * s), atol=1e-3)  # shifted as FlowMatch shifts
    handed = schedulers.complete(name, base, schedulers.overrides(name))  # what the recommendation carries
    assert handed["flow_shift"] == 3.0 and handed["use_flow_sigmas"] and handed["prediction_type"] == "flow_prediction"
