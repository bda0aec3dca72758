from __future__ import annotations

import time

import pytest
import torch

from autotune.model.render import generate
from autotune.model.timing import DeviceTimer
from autotune.space.settings import Settings


def test_cpu_timer_measures_the_work_inside_it() -> None:
    start = time.perf_counter()
    with DeviceTimer("cpu") as t:
        time.sleep(0.05)
    around = time.perf_counter() - start
    assert 0.05 <= t.seconds <= around  # the work inside, at most what a clock around it saw: no machine's speed


def test_timer_reports_nan_before_use() -> None:
    assert DeviceTimer("cpu").seconds != DeviceTimer("cpu").seconds  # NaN


@pytest.mark.gpu
def test_cuda_timer_counts_queued_kernels() -> None:
    x = torch.randn(4096, 4096, device="cuda")
    x @ x  # warm-up
    with DeviceTimer("cuda") as short:
        x @ x
    with DeviceTimer("cuda") as long:
        for _ in range(10):
            x @ x
    assert long.seconds > 5 * short.seconds > 0


def test_generate_renders_every_prompt_with_every_seed(tiny) -> None:  # type: ignore[no-untyped-def]
    r = generate(tiny, Settings("euler", 3, 5.0), ["a cat", "a dog"], [0, 1, 2], 32, 32, batch_size=4)
    assert r.images.shape == (6, 3, 32, 32)
    assert len(r.seconds) == 6 and all(s > 0 for s in r.seconds)
    assert r.model_calls == 3
    assert r.images.min() >= 0 and r.images.max() <= 1
    # 8-bit quantised, as served
    assert torch.equal((r.images * 255).round(), r.images * 255)


def test_image_depends_on_prompt_and_seed_not_on_batch(tiny) -> None:  # type: ignore[no-untyped-def]
    s = Settings("euler", 3, 5.0)
    together = generate(tiny, s, ["a cat", "a dog"], [0, 1], 32, 32, batch_size=4).images
    alone = generate(tiny, s, ["a dog"], [1], 32, 32).images[0]
    assert (together[3] - alone).abs().max() <= 2 / 255
    assert (together[2] - together[3]).abs().mean() > 0.01  # another seed, another image
    assert (together[0] - together[2]).abs().mean() > 0.001  # another prompt, another image


def test_dpmpp_sde_images_reproduce_from_their_seed_whatever_the_batch_and_the_global_rng(tiny) -> None:  # type: ignore[no-untyped-def]
    """diffusers seeds DPM++ SDE's Brownian tree from the global RNG unless told; autotune seeds it per image."""
    pytest.importorskip("torchsde")
    s = Settings("dpmpp_sde", 4, 5.0)
    torch.manual_seed(0)
    together = generate(tiny, s, ["a cat"], [0, 1], 32, 32, batch_size=2).images
    torch.manual_seed(123)  # what loading another model or a metric does to the global RNG
    alone = generate(tiny, s, ["a cat"], [1], 32, 32).images[0]
    assert (together[1] - alone).abs().max() <= 2 / 255
    assert (together[0] - together[1]).abs().mean() > 0.01


def test_auto_batch_halves_on_out_of_memory_and_keeps_the_size_that_fits(tiny, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from autotune.model import render as pipeline_module

    s = Settings("euler", 3, 5.0)
    prompts, seeds = ["a cat", "a dog"], [0, 1, 2]
    one_by_one = generate(tiny, s, prompts, seeds, 32, 32, batch_size=1).images
    real_call, sizes = pipeline_module._call, []

    def small_device(p, settings, batch_prompts, *args):  # type: ignore[no-untyped-def]
        sizes.append(len(batch_prompts))
        if len(batch_prompts) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_call(p, settings, batch_prompts, *args)

    monkeypatch.setattr(pipeline_module, "_call", small_device)
    monkeypatch.setattr(tiny, "auto_batch", 16)
    r = generate(tiny, s, prompts, seeds, 32, 32)
    assert sizes == [6, 3, 2, 2, 2] and tiny.auto_batch == 2  # 16 -> all 6 images, 3, then 2 that fit
    assert (r.images - one_by_one).abs().max() <= 2 / 255 and len(r.seconds) == 6
    sizes.clear()
    generate(tiny, s, prompts, seeds, 32, 32)
    assert sizes == [2, 2, 2]  # remembered for the rest of the process
    with pytest.raises(torch.OutOfMemoryError):  # a fixed batch size that does not fit is the user's call
        generate(tiny, s, prompts, seeds, 32, 32, batch_size=4)


def test_heun_costs_two_model_calls_per_step(tiny) -> None:  # type: ignore[no-untyped-def]
    r = generate(tiny, Settings("heun", 5, 5.0), ["a cat"], [0], 32, 32)
    assert r.model_calls == 2 * 5 - 1


def test_more_steps_converge_towards_the_reference(tiny) -> None:  # type: ignore[no-untyped-def]
    ref = generate(tiny, Settings("dpmpp_2m_karras", 60, 7.5), ["a cat"], [0], 32, 32).images
    errors = [
        (generate(tiny, Settings("euler", n, 7.5), ["a cat"], [0], 32, 32).images - ref).abs().mean() for n in (4, 16)
    ]
    assert errors[1] < errors[0] / 2


@pytest.mark.gpu
def test_fp16_study_on_cuda_records_finite_metrics(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from autotune.config import load_config
    from autotune.study.run import run_study

    path = tmp_path / "gpu.toml"
    path.write_text(
        '[model]\ndevice = "cuda"\ndtype = "float16"\nheight = 64\nwidth = 64\n[search]\nn_trials = 3\n'
        'schedulers = ["dpmpp_2m_karras", "euler"]\nvariants = []\n'
        '[classes.a]\nprompts = ["a cat", "a dog"]\n'
    )
    out = run_study(load_config(path), progress=False)["a"]
    assert len(out.trials) == 3 and out.n_failed == 0
    for t in out.trials:
        assert all(v == v for v in t.values)  # no NaN
        assert 0 < t.values[2] < 5  # CUDA-event seconds per image
