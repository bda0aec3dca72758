"""Train the micro model autotune ships: a digits text-to-image pipeline and a CLIP to score it.

    python -m autotune.micro.train                 # rebuilds autotune/micro/{pipeline,clip}
    python -m autotune.micro.train --out /tmp/m --scale 0.05   # a quick smoke run

Data: scikit-learn's bundled ``load_digits()`` (1,797 8x8 digits, no download), upsampled to
32x32, dark ink on white, captioned "a handwritten digit seven". Real diffusers and open_clip
classes throughout, so ``StableDiffusionPipeline`` and ``open_clip.create_model("local-dir:...")``
load the result unchanged:

1. ``AutoencoderKL`` 32x32x3 -> 8x8x4 latents (4x down), trained on reconstruction.
2. A word-level ``CLIPTokenizer``, a 2-layer ``CLIPTextModel`` and a ``UNet2DConditionModel``
   with cross-attention, trained together on epsilon prediction, 10 % empty captions so that
   classifier-free guidance works.
3. An open_clip ViT (32 px) and text tower trained to tell the ten captions apart.

Weights are saved in float16 (the pipeline loads them in float32 on the CPU). Seeded: the same
seed, torch build and thread count give identical safetensors.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
WORDS = ("a", "handwritten", "digit", *DIGITS)
HERE = Path(__file__).resolve().parent
SD_BETAS = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000}


def caption(digit: int) -> str:
    return f"a handwritten digit {DIGITS[digit]}"


def load_digits_32() -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 3, 32, 32) in [0, 1], dark ink on white, and their labels."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32)[:, None] / 16
    x = F.interpolate(x, size=32, mode="bilinear", align_corners=False).clamp(0, 1)
    return (1 - x).repeat(1, 3, 1, 1), torch.tensor(data.target)


def build_tokenizer(folder: Path, words: tuple[str, ...] = WORDS) -> Any:
    """A CLIP BPE vocabulary of byte symbols plus the caption words, each one token.

    Each word's merges chain its letters left to right; where an earlier word's merge splits a later
    word otherwise ("r e" of red inside green), the later word gets merges of the parts it fell into.
    """
    from transformers import CLIPTokenizer

    from autotune.testing.tiny import bytes_to_unicode

    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols]
    merges: list[str] = []

    def chain(parts: list[str]) -> None:
        while len(parts) > 1:  # left to right: each prefix a token
            merges.append(f"{parts[0]} {parts[1]}")
            parts = [parts[0] + parts[1], *parts[2:]]
            if parts[0] not in tokens:
                tokens.append(parts[0])

    for word in words:
        chain([*word[:-1], word[-1] + "</w>"])
    for _ in range(len(words) + 1):
        specials = ["<|startoftext|>", "<|endoftext|>"]  # end of text last: open_clip pools at the largest id
        (folder / "vocab.json").write_text(
            json.dumps({t: i for i, t in enumerate(tokens + specials)}), encoding="utf-8"
        )
        (folder / "merges.txt").write_text(
            "#version: 0.2\n" + "\n".join(dict.fromkeys(merges)) + "\n", encoding="utf-8"
        )
        tok = CLIPTokenizer(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"), model_max_length=77)
        split = [tok.tokenize(word) for word in words if len(tok.tokenize(word)) > 1]
        if not split:
            return tok
        for parts in split:
            chain(parts)
    raise AssertionError(f"cannot make every word one token: {split}")


def _schedule(opt: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    warm = max(1, steps // 20)
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(i, steps) / steps))
    )


def _latents(vae: Any, x: torch.Tensor) -> Any:
    """The VAE's posterior of every image (in chunks past 4,096 images: the activations of a whole
    colour data set at once would need gigabytes)."""
    with torch.no_grad():
        if len(x) <= 4096:
            return vae.encode(x * 2 - 1).latent_dist
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

        parts = [vae.encode(x[i : i + 1024] * 2 - 1).latent_dist.parameters for i in range(0, len(x), 1024)]
        return DiagonalGaussianDistribution(torch.cat(parts))


def train_vae(x: torch.Tensor, steps: int, log: Any, channels: tuple[int, ...] = (16, 32, 32)) -> Any:
    from diffusers import AutoencoderKL

    torch.manual_seed(1)
    vae: Any = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=channels,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=32,
    )
    opt = torch.optim.AdamW(vae.parameters(), lr=2e-3, weight_decay=0.0)
    sched = _schedule(opt, steps)
    gen = torch.Generator().manual_seed(1)
    for step in range(steps):
        batch = x[torch.randint(len(x), (64,), generator=gen)] * 2 - 1
        posterior = vae.encode(batch).latent_dist
        recon = vae.decode(posterior.sample(generator=gen)).sample
        loss = F.mse_loss(recon, batch) + 1e-6 * posterior.kl().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 200 == 0 or step == steps - 1:
            log(f"vae {step}/{steps} loss {loss.item():.4f}")
    vae.eval()
    std = _latents(vae, x).mean.std().item()
    vae.register_to_config(scaling_factor=round(1 / std, 5))
    return vae


def train_denoiser(
    x: torch.Tensor,
    labels: torch.Tensor,
    vae: Any,
    tok: Any,
    steps: int,
    log: Any,
    captions: list[str] | None = None,
    channels: tuple[int, ...] = (32, 64, 64),
) -> tuple[Any, Any]:
    """The text encoder and the UNet, trained together on epsilon prediction; ``labels`` index ``captions``
    (the ten digits' by default), and 10 % of the images get the empty caption."""
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(2)
    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tok),
            hidden_size=64,
            intermediate_size=256,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.eos_token_id,
        )
    )
    unet: Any = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=channels,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        cross_attention_dim=64,
        attention_head_dim=8,
        norm_num_groups=16,
    )
    noise_schedule: Any = DDPMScheduler(**SD_BETAS)
    dist = _latents(vae, x)
    mean, std = dist.mean, dist.std
    sf = vae.config.scaling_factor
    captions = captions if captions is not None else [caption(d) for d in range(10)]
    ids = tok([*captions, ""], padding="max_length", max_length=77, return_tensors="pt")
    params = list(unet.parameters()) + list(text.parameters())
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)
    sched = _schedule(opt, steps)
    gen = torch.Generator().manual_seed(2)
    for step in range(steps):
        idx = torch.randint(len(x), (64,), generator=gen)
        latents = (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=gen)) * sf
        which = torch.where(torch.rand(64, generator=gen) < 0.1, len(captions), labels[idx])  # 10 %: empty caption
        noise = torch.randn(latents.shape, generator=gen)
        t = torch.randint(0, 1000, (64,), generator=gen)
        cond = text(ids.input_ids[which]).last_hidden_state
        pred = unet(noise_schedule.add_noise(latents, noise, t), t, encoder_hidden_states=cond).sample
        loss = F.mse_loss(pred, noise)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if step % 250 == 0 or step == steps - 1:
            log(f"unet {step}/{steps} loss {loss.item():.4f}")
    return unet.eval(), text.eval()


CLIP_CONFIG: dict[str, Any] = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "layers": 3, "width": 96, "head_width": 32, "patch_size": 4},
    "text_cfg": {"context_length": 77, "width": 64, "heads": 4, "layers": 2, "hf_tokenizer_name": "autotune-micro"},
}
CLIP_PREPROCESS = {
    "mean": [0.5, 0.5, 0.5],
    "std": [0.5, 0.5, 0.5],
    "interpolation": "bicubic",
    "resize_mode": "shortest",
}


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Shifts, contrast and noise, so the score holds on generated digits as on the data."""
    n = len(x)
    dx, dy = torch.randint(-3, 4, (2,), generator=gen).tolist()
    x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
    contrast = 0.6 + 0.4 * torch.rand(n, 1, 1, 1, generator=gen)
    x = 1 - (1 - x) * contrast
    return (x + 0.05 * torch.randn(x.shape, generator=gen)).clamp(0, 1)


def fit_clip(
    config: dict[str, Any],
    tok: Any,
    ids: torch.Tensor,
    batch: Callable[[torch.Generator], tuple[torch.Tensor, torch.Tensor]],
    steps: int,
    log: Any,
    heads: Callable[[], torch.nn.Module] | None = None,
    head_loss: Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    log_every: int = 200,
) -> Any:
    """The one CLIP training loop of both shipped models: an open_clip ``CLIP`` of ``config`` trained
    with cross-entropy of each image against the captions ``ids`` (its label: the index of its own),
    on ``batch(gen)``'s images in 0..1 and labels; ``heads`` (built after the model) add
    ``head_loss(heads, image_features, labels)`` and are dropped after training. Seeded: the same
    torch build and thread count rebuild the same weights."""
    import open_clip

    torch.manual_seed(3)
    cfg = json.loads(json.dumps(config))
    cfg["text_cfg"]["vocab_size"] = len(tok)
    cfg["text_cfg"].pop("hf_tokenizer_name")
    model = open_clip.CLIP(**cfg)
    extra = heads() if heads is not None else None
    params = [*model.parameters(), *(extra.parameters() if extra is not None else ())]
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.05)
    sched = _schedule(opt, steps)
    gen = torch.Generator().manual_seed(3)
    for step in range(steps):
        images, labels = batch(gen)
        feats = model.encode_image((images - 0.5) / 0.5)
        img = F.normalize(feats, dim=-1)
        txt = F.normalize(model.encode_text(ids), dim=-1)
        loss = F.cross_entropy(model.logit_scale.exp() * img @ txt.T, labels)
        if extra is not None and head_loss is not None:
            loss = loss + head_loss(extra, feats, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if step % log_every == 0 or step == steps - 1:
            log(f"clip {step}/{steps} loss {loss.item():.4f}")
    return model.eval()


def train_clip(x: torch.Tensor, labels: torch.Tensor, tok: Any, steps: int, log: Any) -> Any:
    """The digits CLIP: the ten captions told apart, every tenth digit held out for the accuracy printed."""
    held = torch.arange(len(x)) % 10 == 0
    train_x, train_y = x[~held], labels[~held]
    ids = tok([caption(d) for d in range(10)], padding="max_length", max_length=77, return_tensors="pt").input_ids

    def batch(gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(len(train_x), (128,), generator=gen)
        return _augment(train_x[idx], gen), train_y[idx]

    model = fit_clip(CLIP_CONFIG, tok, ids, batch, steps, log)
    with torch.no_grad():
        img = F.normalize(model.encode_image((x[held] - 0.5) / 0.5), dim=-1)
        txt = F.normalize(model.encode_text(ids), dim=-1)
        acc = ((img @ txt.T).argmax(-1) == labels[held]).float().mean().item()
    log(f"clip held-out zero-shot accuracy {acc:.1%} on {int(held.sum())} digits")
    return model


def save(
    out: Path, vae: Any, unet: Any, text: Any, tok: Any, clip: Any, clip_config: dict[str, Any] | None = None
) -> None:
    """The pipeline (diffusers folder) and the CLIP (open_clip local dir), float16, replacing ``out``'s;
    ``vae`` None: the CLIP alone (a CLIP retrained beside the pipeline already there)."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline
    from diffusers.utils import logging as diffusers_logging
    from safetensors.torch import save_file
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()  # its notes on casting to float16 and its shard progress bars
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()

    scheduler: Any = PNDMScheduler(**SD_BETAS, set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1)
    scheduler.register_to_config(clip_sample=False)  # as SD records it: DDIM/DDPM built from it must not clip
    pipe: Any = (
        None
        if vae is None
        else StableDiffusionPipeline(
            vae=vae,
            text_encoder=text,
            tokenizer=tok,
            unet=unet,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    )
    if pipe is not None:
        pipe.to(dtype=torch.float16)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        if vae is not None:
            pipe.save_pretrained(Path(tmp) / "pipeline", safe_serialization=True)
        clip_dir = Path(tmp) / "clip"
        clip_dir.mkdir()
        cfg = json.loads(json.dumps(clip_config or CLIP_CONFIG))
        cfg["text_cfg"]["vocab_size"] = len(tok)
        config = {"model_cfg": cfg, "preprocess_cfg": CLIP_PREPROCESS}
        (clip_dir / "open_clip_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        state = {k: v.detach().to(torch.float16).contiguous() for k, v in clip.state_dict().items()}
        save_file(state, clip_dir / "open_clip_model.safetensors")
        tok.save_pretrained(clip_dir)
        for name in ("pipeline", "clip") if vae is not None else ("clip",):
            shutil.rmtree(out / name, ignore_errors=True)
            (Path(tmp) / name).rename(out / name)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=HERE, help="folder for pipeline/ and clip/ (default: the package's)"
    )
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the training steps (smoke runs)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (results are identical per count)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.monotonic()

    def log(message: str) -> None:
        print(f"[{time.monotonic() - start:6.0f} s] {message}", flush=True)

    x, labels = load_digits_32()
    steps = {name: max(2, round(n * args.scale)) for name, n in {"vae": 800, "unet": 2500, "clip": 600}.items()}
    with tempfile.TemporaryDirectory() as tmp:
        tok = build_tokenizer(Path(tmp))
    vae = train_vae(x, steps["vae"], log).eval()
    unet, text = train_denoiser(x, labels, vae, tok, steps["unet"], log)
    clip = train_clip(x, labels, tok, steps["clip"], log)
    save(args.out, vae, unet, text, tok, clip)
    size = sum(f.stat().st_size for d in ("pipeline", "clip") for f in (args.out / d).rglob("*") if f.is_file())
    log(f"saved to {args.out}/pipeline and clip ({size / 2**20:.1f} MiB of weights and configs)")


if __name__ == "__main__":
    main()
