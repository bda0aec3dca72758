"""Small random-weight models built in code, so the demo and the tests run offline.

The tiny Stable Diffusion pipeline has the real architecture (UNet, an 8x VAE like SD's,
a CLIP text encoder and a byte-level CLIP tokenizer) with random weights drawn from a fixed
seed. Its sampling ODE is real: error against a many-step reference shrinks as steps grow,
so LPIPS-to-reference curves behave as they do on a trained model.

Every builder seeds torch inside ``torch.random.fork_rng``, so building one leaves the caller's
random state as it was.

Example:
    >>> folder = tiny_pipeline_path("tiny")  # built once into the cache folder, then reused
    >>> pipe = StableDiffusionPipeline.from_pretrained(folder)
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

TINY_CLIP = "autotune-tiny-clip"
_VERSION = "sd-v3"  # bump when the architecture below changes: it names the cache folder

_TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 2},
}


def cache_dir() -> Path:
    """Folder holding the built tiny models (``$AUTOTUNE_CACHE`` or ``~/.cache/autotune``)."""
    root = os.environ.get("AUTOTUNE_CACHE") or Path.home() / ".cache" / "autotune"
    return Path(root)


def bytes_to_unicode() -> dict[int, str]:
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
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]
    vocab, merges = folder / "vocab.json", folder / "merges.txt"
    vocab.write_text(json.dumps({t: i for i, t in enumerate(tokens)}), encoding="utf-8")
    merges.write_text("#version: 0.2\n", encoding="utf-8")
    return vocab, merges


def build_tiny_pipeline() -> Any:
    """Build the seeded random-weight StableDiffusionPipeline (about 2M parameters)."""
    import torch
    from diffusers import PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel

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
    tokenizer = _byte_tokenizer()
    scheduler: Any = PNDMScheduler(  # Stable Diffusion 1.5's shipped scheduler config
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        set_alpha_to_one=False,
        skip_prk_steps=True,
        steps_offset=1,
    )
    scheduler.register_to_config(clip_sample=False)  # as SD's config says: DDIM/DDPM built from it must not clip
    return StableDiffusionPipeline(
        unet=unet,
        vae=_vae(),
        text_encoder=_clip_text(tokenizer),
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _clip_text(tokenizer: Any, projection: bool = False, hidden: int = 32) -> Any:
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(0)
    config = CLIPTextConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.eos_token_id,
        hidden_size=hidden,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=len(tokenizer),
        max_position_embeddings=77,
        projection_dim=hidden,
    )
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)


def _byte_tokenizer() -> Any:
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        vocab, merges = _tokenizer_files(Path(tmp))
        return CLIPTokenizer(vocab=str(vocab), merges=str(merges), model_max_length=77)


def _vae(shift: float | None = None) -> Any:
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    extra = (
        {}
        if shift is None
        else {"shift_factor": shift, "scaling_factor": 1.5, "use_quant_conv": False, "use_post_quant_conv": False}
    )
    return AutoencoderKL(
        block_out_channels=(16, 16, 32, 32),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        norm_num_groups=8,
        layers_per_block=1,
        **extra,
    )


def build_tiny_sdxl() -> Any:
    """SDXL's architecture in small: two text encoders (the second with projection), micro-conditioning."""
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    tokenizer = _byte_tokenizer()
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=80,
        cross_attention_dim=64,
        norm_num_groups=16,
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1, timestep_spacing="leading"
    )
    return StableDiffusionXLPipeline(
        vae=_vae(),
        text_encoder=_clip_text(tokenizer),
        tokenizer=tokenizer,
        text_encoder_2=_clip_text(tokenizer, projection=True),
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=scheduler,
    )


def build_tiny_sd3() -> Any:
    """SD3's MMDiT transformer in small, flow matching, two CLIP encoders (no T5, as SD3 allows)."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    tokenizer = _byte_tokenizer()
    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(
        sample_size=8,
        patch_size=1,
        in_channels=4,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=4,
        caption_projection_dim=32,
        joint_attention_dim=64,
        pooled_projection_dim=64,
        out_channels=4,
    )
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_vae(shift=0.06),
        text_encoder=_clip_text(tokenizer, projection=True),
        tokenizer=tokenizer,
        text_encoder_2=_clip_text(tokenizer, projection=True),
        tokenizer_2=tokenizer,
        text_encoder_3=None,
        tokenizer_3=None,
    )


def _t5_tokenizer() -> Any:
    """T5's tokenizer over characters (a Unigram vocabulary of printable ASCII), built offline."""
    from transformers import T5Tokenizer  # transformers 5: the fast one, T5TokenizerFast its alias

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]  # the minimal T5 vocabulary
    return T5Tokenizer(vocab=pieces + [(chr(i), -5.0) for i in range(33, 127)], extra_ids=0)


def build_tiny_flux() -> Any:
    """Flux's transformer in small: double and single stream blocks, embedded (distilled) guidance, flow
    matching, a CLIP encoder for the pooled embedding and a T5 encoder for the sequence."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    tokenizer = _byte_tokenizer()
    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,  # the VAE's 4 latent channels, packed 2 x 2
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        guidance_embeds=True,
        axes_dims_rope=(4, 6, 6),
    )
    t5 = T5EncoderModel(T5Config(vocab_size=100, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4))
    return FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True),  # Flux dev's: by image size
        vae=_vae(shift=0.06),
        text_encoder=_clip_text(tokenizer),
        tokenizer=tokenizer,
        text_encoder_2=t5,
        tokenizer_2=_t5_tokenizer(),
        transformer=transformer,
    )


TINY_MODELS = {
    "tiny": build_tiny_pipeline,
    "tiny-sdxl": build_tiny_sdxl,
    "tiny-sd3": build_tiny_sd3,
    "tiny-flux": build_tiny_flux,
}


def _own_rng() -> Any:
    """Seeding inside leaves the caller's torch random state as it was."""
    import torch

    return torch.random.fork_rng(devices=[])


def tiny_pipeline_path(name: str = "tiny") -> Path:
    """Build a tiny pipeline once (``tiny``, ``tiny-sdxl``, ``tiny-sd3``, ``tiny-flux``) and return its folder."""
    builder = TINY_MODELS[name]
    folder = cache_dir() / f"{name}-{_VERSION}"
    if not (folder / "model_index.json").exists():
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # no "Writing model shards" bar in a user's log
        folder.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder.parent) as tmp, _own_rng():
            builder().save_pretrained(tmp, safe_serialization=True)
            with contextlib.suppress(OSError):  # atomic: a concurrent builder's folder wins
                os.replace(tmp, folder)
            Path(tmp).mkdir(exist_ok=True)
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
    logging.disable(logging.WARNING)  # open_clip warns on the root logger that no weights loaded
    try:
        with _own_rng():
            torch.manual_seed(0)
            return open_clip.create_model(TINY_CLIP, pretrained=None)
    finally:
        logging.disable(logging.NOTSET)
