from __future__ import annotations

import pytest
import torch

from autotune import schedulers
from autotune.pipeline import generate
from autotune.space import Settings


@pytest.mark.parametrize(
    ("alias", "name"),
    [
        ("DPM++ 2M Karras", "dpmpp_2m_karras"),
        ("Euler a", "euler_a"),
        ("DPM2 a", "dpm2_a"),
        ("EulerDiscreteScheduler", "euler"),
        ("DPMSolverMultistepScheduler", "dpmpp_2m"),
        ("UniPC", "unipc"),
    ],
)
def test_aliases_resolve_to_canonical_names(alias: str, name: str) -> None:
    assert schedulers.canonical(alias) == name


def test_unknown_name_raises_key_error() -> None:
    with pytest.raises(KeyError):
        schedulers.canonical("DPM++ 9M Turbo")


def test_table_has_the_names_users_expect() -> None:
    required = {"euler", "euler_a", "heun", "lms", "deis", "pndm", "ddim", "unipc", "dpmpp_2m", "dpmpp_2m_karras"}
    assert required <= set(schedulers.names())


@pytest.mark.parametrize("name", schedulers.names())
def test_every_scheduler_builds_on_tiny_pipeline_and_renders_finite_image(tiny, name: str) -> None:  # type: ignore[no-untyped-def]
    spec = schedulers.get(name)
    sched = schedulers.build(name, tiny.base_scheduler_config)
    assert type(sched).__name__ == spec.class_name
    for key, value in spec.kwargs.items():
        assert sched.config[key] == value
    render = generate(tiny, Settings(name, 4, 7.5), ["a red apple"], [0], 32, 32)
    assert render.images.shape == (1, 3, 32, 32)
    assert torch.isfinite(render.images).all()
    assert render.images.std() > 0.01  # a picture, not a flat field
    # the table's calls per step is the rule; the measured count may differ by one call
    # (second-order samplers skip their last correction, PLMS repeats its first step)
    assert abs(render.model_calls - spec.calls_per_step * 4) <= 1


def test_overrides_of_one_scheduler_do_not_leak_into_the_next(tiny) -> None:  # type: ignore[no-untyped-def]
    generate(tiny, Settings("dpmpp_2m_karras", 2, 7.5), ["x"], [0], 32, 32)
    assert tiny.pipe.scheduler.config.use_karras_sigmas is True
    generate(tiny, Settings("dpmpp_2m", 2, 7.5), ["x"], [0], 32, 32)
    assert tiny.pipe.scheduler.config.use_karras_sigmas is False
