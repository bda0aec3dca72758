"""open_clip models by name, for the two places that need one: the study's CLIP score (scoring images)
and the router's text encoder (serving; a class's centroid as the study stores it). ``"micro"`` is the
shipped one, ``"tiny"`` a random offline one, ``"local-dir:FOLDER"`` an open_clip folder, any other name
open_clip's own with ``pretrained`` a tag (cached or downloadable) or a weights file.

Example:
    >>> model, tokenizer = load_open_clip("micro")
    >>> encode = text_encoder(model, tokenizer)
    >>> encode(["a handwritten digit seven"]).shape
    (1, 64)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from autotune.config.tables import WEIGHT_FILES, ConfigError, first_line, study_path

__all__ = [
    "TextEncoder",
    "centroid",
    "class_embedding",
    "clip_source",
    "load_open_clip",
    "load_text_encoder",
    "text_encoder",
]

TextEncoder = Callable[[Sequence[str]], Any]  # prompts -> (N, D) unit vectors (numpy)


def clip_source(name: str, pretrained: str | None, home: str = "") -> tuple[str, str | None]:
    """``[metrics] clip_model`` and ``clip_pretrained`` with local paths made absolute (relative ones
    start at the study file's folder ``home``): ``"local-dir:FOLDER"`` and a weights file."""
    if name.startswith("local-dir:"):
        name = f"local-dir:{study_path(name[10:], home)}"
    if pretrained is not None and (Path(pretrained).suffix in WEIGHT_FILES or "/" in pretrained):
        pretrained = str(study_path(pretrained, home))
    return name, pretrained


def load_open_clip(name: str, pretrained: str | None = None, home: str = "") -> tuple[Any, Callable[[list[str]], Any]]:
    """An open_clip model and its tokenizer: ``"micro"`` and ``"glyphs"`` the shipped ones, ``"tiny"``
    the random offline one, otherwise any name open_clip takes, with ``pretrained`` a tag open_clip
    downloads (from the local cache when there) or a weights file; ``"local-dir:FOLDER"`` an open_clip
    folder. What cannot load is one :class:`ConfigError` line, within seconds when offline."""
    import open_clip

    if name == "tiny":
        from autotune.testing.tiny import TINY_CLIP, tiny_clip

        return tiny_clip(), open_clip.get_tokenizer(TINY_CLIP)
    from autotune.micro import MODELS, clip_dir

    if name in MODELS:
        name = f"local-dir:{clip_dir(name)}"
    name, pretrained = clip_source(name, pretrained, home)
    if name.startswith("local-dir:") and not Path(name[10:]).is_dir():
        raise ConfigError(f"metrics.clip_model: no open_clip folder at {name[10:]!r}")
    if pretrained is not None and pretrained.startswith("/"):
        if not Path(pretrained).is_file():
            raise ConfigError(f"metrics.clip_pretrained: no weights file at {pretrained!r}")
    elif pretrained is not None:
        _check_tag(open_clip, name, pretrained)
    if not name.startswith(("local-dir:", "hf-hub:")) and name not in open_clip.list_models():
        import difflib

        near = difflib.get_close_matches(name, open_clip.list_models(), n=5, cutoff=0.5)
        hint = f"the nearest: {', '.join(near)}" if near else "open_clip.list_models() has them"
        raise ConfigError(f"metrics.clip_model: {name!r} is not an open_clip model ({hint})")
    try:
        model = open_clip.create_model(name, pretrained=pretrained)
    except (RuntimeError, ValueError, OSError, KeyError) as e:
        raise ConfigError(
            f"metrics.clip_model: cannot load {name!r} with weights {pretrained!r}: {first_line(e)}"
        ) from None
    return model, open_clip.get_tokenizer(name)


def _check_tag(open_clip: Any, name: str, tag: str) -> None:
    """Weights open_clip would download: known, and in the local cache or the hub reachable."""
    from autotune.weights.net import hub_unreachable, unreachable

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


def text_encoder(model: Any, tokenizer: Any, device: str = "cpu") -> TextEncoder:
    """An open_clip model's text tower as a function: prompts -> unit-length embeddings (numpy)."""
    import numpy as np
    import torch

    @torch.no_grad()
    def encode(prompts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        out = []
        for i in range(0, len(prompts), batch_size):
            feats = model.encode_text(tokenizer(list(prompts[i : i + batch_size])).to(device)).float()
            out.append(torch.nn.functional.normalize(feats, dim=-1).cpu().numpy())
        return np.concatenate(out)

    return encode


def load_text_encoder(
    clip_model: str, clip_pretrained: str | None = None, device: str = "cpu", home: str = ""
) -> TextEncoder:
    """Load the study's CLIP model (``"tiny"``: the random offline one) and return its text encoder."""
    model, tokenizer = load_open_clip(clip_model, clip_pretrained, home)
    return text_encoder(model.to(device).eval(), tokenizer, device)


def centroid(embeddings: np.ndarray) -> np.ndarray:
    """Unit-length mean direction of unit-length embeddings."""
    mean = embeddings.mean(axis=0)
    return np.asarray(mean / max(float(np.linalg.norm(mean)), 1e-12))


def class_embedding(encode: TextEncoder, prompts: Sequence[str]) -> dict[str, Any]:
    """A class as the router stores it: its centroid and its least typical prompt's similarity to it."""
    emb = encode(prompts)
    c = centroid(emb)
    return {"centroid": [round(float(x), 6) for x in c], "lowest": float((emb @ c).min())}
