"""CLIP score: 100 x cosine similarity of open_clip image and text embeddings (Hessel et al. 2021).

Unlike torchmetrics this keeps negative values, so a score lies in [-100, 100]. Its direction
(higher is better) is declared once, in :data:`autotune.config.objectives.OBJECTIVES`.

Example:
    >>> scorer = ClipScore("tiny")
    >>> scorer(images, ["a cat", "a dog"])    # images: (N, 3, H, W) in [0, 1]
    tensor([...])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from autotune.weights.clip import load_open_clip

__all__ = ["ClipScore", "clip_score"]


def _preprocess(model: Any, images: torch.Tensor) -> torch.Tensor:
    """Resize the shortest side, centre-crop and normalise, as open_clip's transform does."""
    cfg = getattr(model.visual, "preprocess_cfg", {})
    size = model.visual.image_size
    size = size[0] if isinstance(size, tuple | list) else size
    h, w = images.shape[-2:]
    scale = size / min(h, w)
    images = F.interpolate(
        images,
        size=(max(size, round(h * scale)), max(size, round(w * scale))),
        mode="bicubic",
        align_corners=False,
        antialias=True,
    )
    top, left = (images.shape[-2] - size) // 2, (images.shape[-1] - size) // 2
    images = images[..., top : top + size, left : left + size].clamp(0, 1)
    mean = torch.tensor(cfg.get("mean", (0.48145466, 0.4578275, 0.40821073)), device=images.device)
    std = torch.tensor(cfg.get("std", (0.26862954, 0.26130258, 0.27577711)), device=images.device)
    return (images - mean[:, None, None]) / std[:, None, None]


@torch.no_grad()
def clip_score(images: torch.Tensor, text_features: torch.Tensor, model: Any) -> torch.Tensor:
    """Per-image score 100 x cos(image, text) for images (N, 3, H, W) in [0, 1] and N text features."""
    dtype = next(model.parameters()).dtype
    feats = model.encode_image(_preprocess(model, images.float()).to(dtype)).float()
    return 100 * F.cosine_similarity(feats, text_features.float(), dim=-1)


class ClipScore:
    """Loads the model once, caches each prompt's text features, scores batches on the device."""

    @classmethod
    def from_config(cls, metrics: Any, device: str, home: str) -> ClipScore:
        """The study's CLIP (``[metrics] clip_model``, ``clip_pretrained``)."""
        return cls(metrics.clip_model, metrics.clip_pretrained, device, home)

    def __init__(
        self,
        name: str = "tiny",
        pretrained: str | None = None,
        device: str = "cpu",
        home: str = "",
    ) -> None:
        model, self.tokenizer = load_open_clip(name, pretrained, home)
        self.model = model.to(device).eval()
        self.device = device
        self._text: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def text_features(self, prompts: Sequence[str]) -> torch.Tensor:
        missing = [p for p in dict.fromkeys(prompts) if p not in self._text]
        if missing:
            feats = self.model.encode_text(self.tokenizer(missing).to(self.device)).float()
            self._text.update(zip(missing, feats, strict=True))
        return torch.stack([self._text[p] for p in prompts])

    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        return clip_score(images.to(self.device), self.text_features(prompts), self.model).cpu()

    def score(self, images: torch.Tensor, prompts: Sequence[str], references: torch.Tensor | None) -> torch.Tensor:
        """The metric protocol of :mod:`autotune.model.metrics` (no reference needed)."""
        return self(images, prompts)
