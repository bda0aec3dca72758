from __future__ import annotations

import pytest
import torch

from autotune.model.metrics.clip_score import ClipScore
from autotune.model.metrics.lpips_distance import Lpips


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.rand(3, 3, 48, 64)


def test_lpips_is_zero_for_identical_images_and_grows_with_change(images: torch.Tensor) -> None:
    lp = Lpips("alex", "random")
    assert lp(images, images).abs().max() == 0
    small = lp(images, (images + 0.05 * torch.randn_like(images)).clamp(0, 1))
    large = lp(images, (images + 0.3 * torch.randn_like(images)).clamp(0, 1))
    assert (small > 0).all() and (large > small).all()


def test_lpips_random_backbone_is_seeded() -> None:
    a, b = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    assert torch.equal(Lpips()(a, b), Lpips()(a, b))


def test_clip_score_is_deterministic_and_tells_images_apart(images: torch.Tensor) -> None:
    prompts = ["a cat", "a dog", "a boat"]
    first, second = ClipScore("tiny")(images, prompts), ClipScore("tiny")(images, prompts)
    assert torch.equal(first, second)
    assert first.std() > 0


def test_clip_batch_scores_each_image_as_alone(images: torch.Tensor) -> None:
    scorer = ClipScore("tiny")
    prompts = ["a cat", "a dog", "a boat"]
    batch = scorer(images, prompts)
    singles = torch.cat([scorer(images[i : i + 1], [p]) for i, p in enumerate(prompts)])
    assert torch.allclose(batch, singles, atol=1e-4)
    assert batch.mean().item() == pytest.approx(singles.mean().item(), abs=1e-4)
