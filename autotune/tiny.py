"""Small random-weight models built in code, so the demo and the tests run offline.

The tiny Stable Diffusion pipeline has the real architecture (UNet, an 8x VAE like SD's,
a CLIP text encoder and a byte-level CLIP tokenizer) with random weights drawn from a fixed
seed. Its sampling ODE is real: error against a many-step reference shrinks as steps grow,
so LPIPS-to-reference curves behave as they do on a trained model.

Example:
    >>> pipe = load_tiny_pipeline()          # built once, then loaded from the disk cache
    >>> model = tiny_clip()                  # open_clip model with a registered tiny config
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

TINY_ID = "tiny"
TINY_CLIP = "autotune-tiny-clip"
_VERSION = "sd-v1"  # bump when the architecture below changes: it names the cache folder

_TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 2},
}


def cache_dir() -> Path:
    """Folder holding the built tiny models (``$AUTOTUNE_CACHE`` or ``~/.cache/autotune``)."""
    root = os.environ.get("AUTOTUNE_CACHE") or Path.home() / ".cache" / "autotune"
    return Path(root)


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible byte -> printable character table (as in openai/CLIP)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs], strict=True))


def _tokenizer_files(folder: Path) -> tuple[Path, Path]:
    """Write a byte-level CLIP vocabulary (no merges): every text tokenizes offline."""
    symbols = list(_bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]
    vocab, merges = folder / "vocab.json", folder / "merges.txt"
    vocab.write_text(json.dumps({t: i for i, t in enumerate(tokens)}), encoding="utf-8")
    merges.write_text("#version: 0.2\n", encoding="utf-8")
    return vocab, merges


def build_tiny_pipeline() -> Any:
    """Build the seeded random-weight StableDiffusionPipeline (about 2M parameters)."""
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=16,
    )
    torch.manual_seed(0)
    vae = AutoencoderKL(  # four blocks: an 8x latent, as in SD, so attention runs on small maps
        block_out_channels=(16, 16, 32, 32),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        norm_num_groups=8,
        layers_per_block=1,
    )
    with tempfile.TemporaryDirectory() as tmp:
        vocab, merges = _tokenizer_files(Path(tmp))
        tokenizer = CLIPTokenizer(vocab=str(vocab), merges=str(merges), model_max_length=77)
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.eos_token_id,
            hidden_size=32,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            vocab_size=len(tokenizer),
            max_position_embeddings=77,
        )
    )
    scheduler = PNDMScheduler(  # Stable Diffusion 1.5's shipped scheduler config
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        set_alpha_to_one=False,
        skip_prk_steps=True,
        steps_offset=1,
    )
    return StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def tiny_pipeline_path() -> Path:
    """Build the tiny pipeline once and return its ``save_pretrained`` folder."""
    folder = cache_dir() / f"tiny-{_VERSION}"
    if not (folder / "model_index.json").exists():
        folder.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder.parent) as tmp:
            build_tiny_pipeline().save_pretrained(tmp, safe_serialization=True)
            with contextlib.suppress(OSError):  # atomic: a concurrent builder's folder wins
                os.replace(tmp, folder)
            Path(tmp).mkdir(exist_ok=True)  # so TemporaryDirectory's cleanup finds it
    return folder


def tiny_clip() -> Any:
    """A seeded random open_clip model registered as ``autotune-tiny-clip`` (32 px, offline)."""
    import open_clip
    import torch

    folder = cache_dir() / "open_clip_configs"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{TINY_CLIP}.json"
    text = json.dumps(_TINY_CLIP_CONFIG)
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")
    open_clip.add_model_config(path)
    torch.manual_seed(0)
    logging.disable(logging.WARNING)  # open_clip warns on the root logger that no weights loaded
    try:
        return open_clip.create_model(TINY_CLIP, pretrained=None)
    finally:
        logging.disable(logging.NOTSET)
