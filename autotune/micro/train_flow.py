"""Train the ``flow`` micro model: the glyph world in Flux's layout, a flow-matching transformer with true
classifier-free guidance.

    python -m autotune.micro.train_flow                        # rebuilds autotune/micro/flow/pipeline
    python -m autotune.micro.train_flow --out /tmp/f --scale 0.02 --threads 1   # a quick smoke run

A real ``FluxPipeline``: a ``FluxTransformer2DModel`` (double- and single-stream blocks, rotary
positions, 16 image tokens of 2 x 2 latent patches) trained here on flow matching (velocity
``noise - latent`` at ``x = (1 - sigma) latent + sigma noise``, sigma drawn logit-normal), a small
``T5EncoderModel`` trained with it for the sequence (its tokenizer a word-level Unigram vocabulary built
offline), the ``glyphs`` model's own text encoder (frozen) for the pooled embedding and its VAE (frozen;
``shift_factor`` 0 recorded, as Flux's VAE has one), Flux dev's ``FlowMatchEulerDiscreteScheduler``
(dynamic shifting by image size). Not guidance-distilled: 10 % of captions are dropped (both
encoders read the empty prompt), so guidance is **true CFG** (``true_cfg_scale`` with a
``negative_prompt``, two transformer calls a step), as Flux models trained without guidance distillation
have it; the embedded-guidance path runs on the random-weight ``tiny-flux``.

The sequence is read at 16 T5 tokens (the longest caption is 11): call it with
``max_sequence_length=16``, as Flux schnell is called with 256. One combination in eight of glyph, ink,
background and weight is held out of training (:func:`held_out`); at the end fresh images of held-out
combinations are rendered at the model's default (28 steps, true CFG 4, each image its own noise) and
the shipped glyph CLIP's zero-shot accuracy on them is printed, for the glyph and for the ink colour.
Seeded: the same seed, torch build and thread count give identical safetensors.
"""

from __future__ import annotations

import argparse
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from autotune.micro import clip_dir, glyph_data, pipeline_dir
from autotune.micro.train import _latents, _schedule
from autotune.micro.train_glyphs import WORDS, zero_shot

__all__ = ["DEFAULT", "held_out", "main"]

HERE = Path(__file__).resolve().parent / "flow"
SEQUENCE = 16  # T5 tokens the model reads (max_sequence_length)
DEFAULT = {"num_inference_steps": 28, "true_cfg_scale": 4.0}  # as trained: the baseline of its studies
STEPS = 12_000
IMAGES = 24_000
BATCH = 64


def held_out() -> list[glyph_data.Glyph]:
    """One combination in eight, drawn once from a fixed seed: never captioned in training."""
    every = glyph_data.combos()
    return sorted(random.Random(8).sample(every, len(every) // 8), key=every.index)


def t5_tokenizer() -> Any:
    """A Unigram vocabulary of the caption words (each one piece, "▁red"), the letters and T5's specials,
    with single characters to fall back on."""
    from transformers import T5Tokenizer

    words = sorted({*WORDS, *glyph_data.LETTERS})
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [("\u2581" + w, -1.0) for w in words]
    pieces += [(chr(i), -8.0) for i in range(33, 127)]
    return T5Tokenizer(vocab=pieces, extra_ids=0)


def build(vae_dir: Path) -> dict[str, Any]:
    """The pipeline's parts, seeded: the new transformer and T5, the glyphs model's text encoder and VAE."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextModel, CLIPTokenizer, T5Config, T5EncoderModel

    torch.manual_seed(4)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,  # the VAE's 4 latent channels, packed 2 x 2
        num_layers=2,
        num_single_layers=4,
        attention_head_dim=32,
        num_attention_heads=4,
        joint_attention_dim=64,
        pooled_projection_dim=64,
        guidance_embeds=False,
        axes_dims_rope=(8, 12, 12),
    )
    t5 = T5EncoderModel(
        T5Config(vocab_size=len(t5_tokenizer()), d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4)
    )
    vae = AutoencoderKL.from_pretrained(vae_dir / "vae", torch_dtype=torch.float32).eval()
    vae.register_to_config(shift_factor=0.0)
    scheduler = FlowMatchEulerDiscreteScheduler(  # Flux dev's: the shift follows the image's token count
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    return {
        "transformer": transformer,
        "text_encoder_2": t5,
        "tokenizer_2": t5_tokenizer(),
        "text_encoder": CLIPTextModel.from_pretrained(vae_dir / "text_encoder", torch_dtype=torch.float32).eval(),
        "tokenizer": CLIPTokenizer.from_pretrained(vae_dir / "tokenizer"),
        "vae": vae,
        "scheduler": scheduler,
    }


def _pack(latents: torch.Tensor) -> torch.Tensor:
    """(B, 4, 8, 8) -> (B, 16, 16): Flux's 2 x 2 patches as tokens (the pipeline's ``_pack_latents``)."""
    b, c, h, w = latents.shape
    x = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def train(
    parts: dict[str, Any], x: torch.Tensor, labels: torch.Tensor, captions: list[str], steps: int, log: Any
) -> None:
    """Flow matching on the VAE's latents of ``x``, captions ``labels`` into ``captions``, 10 % empty."""
    from diffusers import FluxPipeline

    transformer, t5, vae = parts["transformer"], parts["text_encoder_2"], parts["vae"]
    dist = _latents(vae, x)
    mean, std, sf = dist.mean, dist.std, vae.config.scaling_factor
    every = [*captions, ""]
    with torch.no_grad():
        clip_ids = parts["tokenizer"](every, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
        pooled = parts["text_encoder"](clip_ids.input_ids, output_hidden_states=False).pooler_output
    t5_ids = parts["tokenizer_2"](
        every, padding="max_length", max_length=SEQUENCE, truncation=True, return_tensors="pt"
    ).input_ids
    image_ids = FluxPipeline._prepare_latent_image_ids(1, 4, 4, torch.device("cpu"), torch.float32)
    text_ids = torch.zeros(SEQUENCE, 3)
    params = [*transformer.parameters(), *t5.parameters()]
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)
    sched = _schedule(opt, steps)
    gen = torch.Generator().manual_seed(4)
    transformer.train()
    t5.train()
    for step in range(steps):
        idx = torch.randint(len(x), (BATCH,), generator=gen)
        latents = _pack((mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=gen)) * sf)
        which = torch.where(torch.rand(BATCH, generator=gen) < 0.1, len(captions), labels[idx])
        noise = torch.randn(latents.shape, generator=gen)
        sigma = torch.sigmoid(torch.randn(BATCH, generator=gen))  # logit-normal, as SD3 and Flux train
        noisy = (1 - sigma[:, None, None]) * latents + sigma[:, None, None] * noise
        pred = transformer(
            hidden_states=noisy,
            encoder_hidden_states=t5(t5_ids[which]).last_hidden_state,
            pooled_projections=pooled[which],
            timestep=sigma,
            img_ids=image_ids,
            txt_ids=text_ids,
        ).sample
        loss = F.mse_loss(pred, noise - latents)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if step % 250 == 0 or step == steps - 1:
            log(f"transformer {step}/{steps} loss {loss.item():.4f}")
    transformer.eval()
    t5.eval()


def save(out: Path, parts: dict[str, Any]) -> None:
    """The pipeline as a diffusers folder, float16, replacing ``out/pipeline``."""
    from diffusers import FluxPipeline
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    pipe: Any = FluxPipeline(**parts)
    pipe.to(dtype=torch.float16)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        pipe.save_pretrained(Path(tmp) / "pipeline", safe_serialization=True)
        shutil.rmtree(out / "pipeline", ignore_errors=True)
        (Path(tmp) / "pipeline").rename(out / "pipeline")


def fresh_renders(folder: Path, n: int, seed: int = 7) -> tuple[torch.Tensor, list[glyph_data.Glyph]]:
    """``n`` images the saved pipeline renders at its default from held-out combinations, each its own noise."""
    from diffusers import FluxPipeline

    pipe = FluxPipeline.from_pretrained(folder / "pipeline", dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    rng = random.Random(seed)
    glyphs = [rng.choice(held_out()) for _ in range(n)]
    images = []
    for i, g in enumerate(glyphs):
        out = pipe(
            glyph_data.caption(g),
            negative_prompt="",
            height=32,
            width=32,
            max_sequence_length=SEQUENCE,
            generator=torch.Generator().manual_seed(10_000 + i),
            output_type="pt",
            **DEFAULT,
        )
        images.append(out.images.float())
    return torch.cat(images), glyphs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="folder for pipeline/ (default: the package's)")
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the training steps (smoke runs)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (results are identical per count)")
    parser.add_argument("--check", type=int, default=96, help="fresh renders the zero-shot figure is measured on")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.monotonic()

    def log(message: str) -> None:
        print(f"[{time.monotonic() - start:6.0f} s] {message}", flush=True)

    every = glyph_data.combos()
    hidden = set(held_out())
    images, glyphs = glyph_data.dataset(max(512, round(IMAGES * min(1.0, args.scale * 10))))
    keep = [i for i, g in enumerate(glyphs) if g not in hidden]
    x = torch.from_numpy(images[keep]).permute(0, 3, 1, 2).float() / 255
    index = {g: i for i, g in enumerate(every)}
    labels = torch.tensor([index[glyphs[i]] for i in keep])
    log(f"{len(x)} images drawn ({len(hidden)} of {len(every)} combinations held out)")
    parts = build(pipeline_dir("glyphs"))
    size = {k: sum(p.numel() for p in parts[k].parameters()) / 1e6 for k in ("transformer", "text_encoder_2")}
    log(f"transformer {size['transformer']:.2f}M parameters, T5 {size['text_encoder_2']:.2f}M")
    train(parts, x, labels, [glyph_data.caption(g) for g in every], max(2, round(STEPS * args.scale)), log)
    save(args.out, parts)
    total = sum(f.stat().st_size for f in (args.out / "pipeline").rglob("*") if f.is_file())
    log(f"saved to {args.out}/pipeline ({total / 2**20:.1f} MiB of weights and configs)")
    if not args.check:
        return
    import open_clip

    clip, _, _ = open_clip.create_model_and_transforms(f"local-dir:{clip_dir('glyphs')}")
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(clip_dir("glyphs"))  # as the CLIP was trained with
    rendered, shown = fresh_renders(args.out, args.check)
    acc = zero_shot(clip.float().eval(), tok, rendered, shown)
    log(
        f"zero-shot accuracy on {args.check} fresh renders of held-out combinations: "
        f"glyph {acc['char']:.0%}, ink {acc['ink']:.0%}"
    )


if __name__ == "__main__":
    main()
