"""CLIP score: 100 x cosine similarity of open_clip image and text embeddings (Hessel et al. 2021).

Unlike torchmetrics this keeps negative values, so a score lies in [-100, 100].

Example:
    >>> scorer = ClipScore("tiny")
    >>> scorer(images, ["a cat", "a dog"])    # images: (N, 3, H, W) in [0, 1]
    tensor([...])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from autotune._schema import ConfigError, first_line, study_path

__all__ = ["ClipScore", "clip_score", "clip_source", "load_open_clip"]

_WEIGHT_FILES = (".safetensors", ".bin", ".pt", ".pth")


def clip_source(name: str, pretrained: str | None, home: str = "") -> tuple[str, str | None]:
    """``[metrics] clip_model`` and ``clip_pretrained`` with local paths made absolute (relative ones
    start at the study file's folder ``home``): ``"local-dir:FOLDER"`` and a weights file."""
    if name.startswith("local-dir:"):
        name = f"local-dir:{study_path(name[10:], home)}"
    if pretrained is not None and (Path(pretrained).suffix in _WEIGHT_FILES or "/" in pretrained):
        pretrained = str(study_path(pretrained, home))
    return name, pretrained


def load_open_clip(
    name: str, pretrained: str | None = None, home: str = ""
) -> tuple[Any, Callable[[list[str]], torch.Tensor]]:
    """An open_clip model and its tokenizer: ``"micro"`` the shipped one trained on digits, ``"tiny"``
    the random offline one, otherwise any name open_clip takes, with ``pretrained`` a tag open_clip
    downloads (from the local cache when there) or a weights file; ``"local-dir:FOLDER"`` an open_clip
    folder. What cannot load is one :class:`ConfigError` line, within seconds when offline."""
    import open_clip

    if name == "tiny":
        from autotune.tiny import TINY_CLIP, tiny_clip

        return tiny_clip(), open_clip.get_tokenizer(TINY_CLIP)
    if name == "micro":
        from autotune.micro import clip_dir

        name = f"local-dir:{clip_dir()}"
    name, pretrained = clip_source(name, pretrained, home)
    if name.startswith("local-dir:") and not Path(name[10:]).is_dir():
        raise ConfigError(f"metrics.clip_model: no open_clip folder at {name[10:]!r}")
    if pretrained is not None and pretrained.startswith("/"):
        if not Path(pretrained).is_file():
            raise ConfigError(f"metrics.clip_pretrained: no weights file at {pretrained!r}")
    elif pretrained is not None:
        _check_tag(open_clip, name, pretrained)
    try:
        model = open_clip.create_model(name, pretrained=pretrained)
    except (RuntimeError, ValueError, OSError, KeyError) as e:
        raise ConfigError(
            f"metrics.clip_model: cannot load {name!r} with weights {pretrained!r}: {first_line(e)}"
        ) from None
    return model, open_clip.get_tokenizer(name)


def _check_tag(open_clip: Any, name: str, tag: str) -> None:
    """Weights open_clip would download: known, and in the local cache or the hub reachable."""
    from autotune._net import hub_unreachable, unreachable

    cfg = open_clip.get_pretrained_cfg(name, tag)
    if not cfg:
        raise ConfigError(
            f"metrics.clip_pretrained: open_clip has no weights {tag!r} for {name!r} (open_clip.list_pretrained() "
            "lists them), and no file of that name exists"
        )
    if cfg.get("hf_hub"):
        from huggingface_hub import try_to_load_from_cache

        repo = cfg["hf_hub"].rstrip("/")
        files = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
        why = None if any(isinstance(try_to_load_from_cache(repo, f), str) for f in files) else hub_unreachable()
    else:
        why = unreachable(cfg.get("url", ""))
    if why is not None:
        raise ConfigError(
            f"metrics.clip_pretrained: {name} {tag} weights are not in the local cache and {why}: download them on "
            "a connected machine, or set clip_pretrained to the weights file (relative to the study file)"
        )


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

    higher_is_better = True

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
