"""Studying what production serves: model sources, what production adds to every call, metric weights
from disk; each compared with the same call in plain diffusers."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch

import autotune
from autotune.config import ConfigError, load_config
from autotune.model.evaluate import Evaluator
from autotune.model.pipeline import Calls, check_calls, load_pipeline, resolve_config
from autotune.model.render import generate
from autotune.space.settings import Settings
from autotune.testing.tiny import tiny_pipeline_path

PROMPT = "a studio portrait of an old fisherman"
STUDY = """
[model]
id = "{id}"
device = "cpu"
height = 32
width = 32
{model}
[search]
steps = [2, 8]
schedulers = ["euler", "dpmpp_2m_karras"]
guidance = [1.0, 9.0]
n_trials = 1
seeds = [0]
[baseline]
scheduler = "euler"
steps = 4
guidance = 7.5
[reference]
scheduler = "dpmpp_2m_karras"
steps = 20
guidance = 7.5
[recommend]
confirm_seeds = [1000, 1001]
broken_share = 0.9         # what one prompt's few images can show (an exact bound)
{extra}
[classes.portrait]
prompts = ["{prompt}"]
{classes}
"""


def study(folder: Path, id: str = "tiny", model: str = "", extra: str = "", classes: str = "") -> Path:
    path = folder / "s.toml"
    path.write_text(STUDY.format(id=id, model=model, extra=extra, prompt=PROMPT, classes=classes))
    return path


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Beside the study files: a copy of the tiny model, a LoRA for it and another VAE."""
    import diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    root = tmp_path_factory.mktemp("assets")
    shutil.copytree(tiny_pipeline_path(), root / "models" / "mine")
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(root / "models" / "mine", safety_checker=None)
    torch.manual_seed(0)
    targets = ["to_q", "to_k", "to_v", "to_out.0"]
    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=targets, init_lora_weights=False))
    diffusers.StableDiffusionPipeline.save_lora_weights(
        root / "loras", unet_lora_layers=get_peft_model_state_dict(pipe.unet), safe_serialization=True
    )
    vae = diffusers.AutoencoderKL.from_pretrained(root / "models" / "mine", subfolder="vae")
    with torch.no_grad():
        vae.decoder.conv_out.bias.add_(0.3)  # another decoder: a visibly different image from the same latents
    vae.save_pretrained(root / "vae")
    return root


def plain_render(folder: Path, negative: str | None = None, lora: float | None = None, vae: Path | None = None):  # type: ignore[no-untyped-def]
    """The baseline's image of PROMPT's first seed as a team renders it with diffusers alone (its
    generator seed: ``autotune.noise_seed(PROMPT, 0)``)."""
    import diffusers

    extra = {"vae": diffusers.AutoencoderKL.from_pretrained(vae)} if vae else {}
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, **extra)
    if lora is not None:
        pipe.load_lora_weights(str(folder.parent.parent / "loras"), adapter_name="mine")
        pipe.set_adapters(["mine"], adapter_weights=[lora])
    pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(
        PROMPT,
        negative_prompt=negative,
        num_inference_steps=4,
        guidance_scale=7.5,
        height=32,
        width=32,
        generator=torch.Generator().manual_seed(autotune.noise_seed(PROMPT, 0)),
        output_type="pt",
    )
    return (out.images[0] * 255).round() / 255


def autotune_render(path: Path) -> torch.Tensor:
    cfg = load_config(path)
    p = load_pipeline(cfg.model, calls=Calls.of(cfg))
    check_calls(p, cfg)
    return generate(p, Settings("euler", 4, 7.5), [PROMPT], [0], 32, 32).images[0]


def to_single_file(folder: Path, out: Path) -> None:
    """Write a diffusers SD folder as one original-layout (LDM) checkpoint, as A1111 and ComfyUI keep
    models: the inverse of diffusers' own ``convert_ldm_*`` (general in the number of blocks)."""
    import json

    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING
    from safetensors.torch import load_file, save_file

    def weights(sub: str) -> dict[str, torch.Tensor]:
        return load_file(next((folder / sub).glob("*.safetensors")))

    ckpt: dict[str, torch.Tensor] = {}
    config = json.loads((folder / "unet" / "config.json").read_text())
    per = config["layers_per_block"] + 1
    resnet = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
              "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}  # fmt: skip
    static = DIFFUSERS_TO_LDM_MAPPING["unet"]["layers"]
    up_attention = {int(k.split(".")[1]) for k in weights("unet") if k.startswith("up_blocks") and ".attentions." in k}
    for key, value in weights("unet").items():
        parts = key.split(".")
        if key in static:
            ldm = static[key]
        elif parts[0] in ("down_blocks", "up_blocks"):
            b, kind = int(parts[1]), parts[2]
            down = parts[0] == "down_blocks"
            if kind in ("downsamplers", "upsamplers"):
                slot = f"{(b + 1) * per}.0.op" if down else f"{b * per + per - 1}.{2 if b in up_attention else 1}.conv"
                ldm = f"{'input' if down else 'output'}_blocks.{slot}.{parts[-1]}"
            else:
                index = (1 + b * per if down else b * per) + int(parts[3])
                rest = parts[4:] if kind == "attentions" else [resnet.get(parts[4], parts[4]), *parts[5:]]
                ldm = f"{'input' if down else 'output'}_blocks.{index}.{1 if kind == 'attentions' else 0}." + ".".join(
                    rest
                )
        else:  # mid_block.resnets.0 / attentions.0 / resnets.1 -> middle_block.0 / 1 / 2
            slot = 1 if parts[1] == "attentions" else 2 * int(parts[2])
            rest = parts[3:] if parts[1] == "attentions" else [resnet.get(parts[3], parts[3]), *parts[4:]]
            ldm = f"middle_block.{slot}." + ".".join(rest)
        ckpt["model.diffusion_model." + ldm] = value
    vae_static = DIFFUSERS_TO_LDM_MAPPING["vae"]
    attention = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out": "proj_out"}
    n_up = len(json.loads((folder / "vae" / "config.json").read_text())["up_block_types"])
    for key, value in weights("vae").items():
        parts = key.split(".")
        if key in vae_static:
            ldm = vae_static[key]
        elif parts[1] == "mid_block" and parts[2] == "attentions":
            ldm = f"{parts[0]}.mid.attn_1.{attention[parts[4]]}.{parts[-1]}"
        elif parts[1] == "mid_block":
            ldm = f"{parts[0]}.mid.block_{int(parts[3]) + 1}." + ".".join(parts[4:]).replace(
                "conv_shortcut", "nin_shortcut"
            )
        else:
            b = int(parts[2]) if parts[0] == "encoder" else n_up - 1 - int(parts[2])
            where = f"{parts[0]}.{'down' if parts[0] == 'encoder' else 'up'}.{b}"
            if parts[3] in ("downsamplers", "upsamplers"):
                ldm = f"{where}.{'downsample' if parts[0] == 'encoder' else 'upsample'}.conv.{parts[-1]}"
            else:
                ldm = f"{where}.block.{parts[4]}." + ".".join(parts[5:]).replace("conv_shortcut", "nin_shortcut")
        ckpt["first_stage_model." + ldm] = value
    for key, value in weights("text_encoder").items():
        ckpt["cond_stage_model.transformer.text_model." + key] = value
    save_file({k: v.contiguous() for k, v in ckpt.items()}, out)


def test_a_single_file_checkpoint_is_studied_like_its_folder(assets: Path) -> None:
    folder = assets / "single"
    folder.mkdir(exist_ok=True)
    to_single_file(assets / "models" / "mine", folder / "mine.safetensors")
    path = study(folder, id="mine.safetensors", model='config = "../models/mine"')
    assert resolve_config(load_config(path)).family.name == "sd"
    assert torch.equal(autotune_render(path), plain_render(assets / "models" / "mine"))
    # without model.config: the hub repo of the architecture diffusers recognises, not reachable here
    with pytest.raises(ConfigError, match=r"model.config: the checkpoint is a .*stable-diffusion-v1-5 model, whose"):
        resolve_config(load_config(study(folder, id="mine.safetensors")))
    (folder / "junk.safetensors").write_text("not a checkpoint")
    with pytest.raises(ConfigError, match=r"model.id: cannot read '.*junk.safetensors' as a checkpoint"):
        resolve_config(load_config(study(folder, id="junk.safetensors")))


def test_a_relative_model_path_is_read_from_the_study_files_folder(
    assets: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = assets / "studies"
    folder.mkdir(exist_ok=True)
    monkeypatch.chdir(tmp_path)  # elsewhere: the path must not be read from the current directory
    cfg = load_config(study(folder, id="../models/mine"))
    assert resolve_config(cfg).family.name == "sd"
    assert torch.equal(autotune_render(folder / "s.toml"), plain_render(assets / "models" / "mine"))
    with pytest.raises(ConfigError, match=r"model.id: no model folder or checkpoint file at '.*/models/theirs' "):
        resolve_config(load_config(study(folder, id="../models/theirs")))


def test_negative_prompt_lora_and_vae_render_as_the_same_diffusers_call(assets: Path) -> None:
    folder = assets / "prod"
    folder.mkdir(exist_ok=True)
    model = 'loras = { "../loras" = 0.8 }\nvae = "../vae"'
    path = study(folder, id="../models/mine", model=model, extra='[call]\nnegative_prompt = "blurry, lowres"')
    mine = assets / "models" / "mine"
    produced = autotune_render(path)
    assert torch.equal(produced, plain_render(mine, "blurry, lowres", 0.8, assets / "vae"))
    for other in (plain_render(mine), plain_render(mine, "blurry, lowres"), plain_render(mine, None, 0.8)):
        assert (produced - other).abs().max() > 0.05  # each addition changes the picture


@pytest.mark.slow
def test_a_study_with_a_class_negative_prompt_and_a_lora_stores_what_diffusers_renders(assets: Path) -> None:
    from autotune.model.references import decode_png
    from autotune.store.artifacts import open_store
    from autotune.store.reference_table import image_name
    from autotune.store.storage import open_storage
    from autotune.study.run import run_study

    folder = assets / "study"
    folder.mkdir(exist_ok=True)
    path = study(
        folder,
        id="../models/mine",
        model='loras = { "../loras" = 0.8 }',
        extra='[call]\nnegative_prompt = "watermark"',  # the class's own wins
        classes='negative_prompt = "blurry, lowres"',
    )
    cfg = load_config(path)
    out = run_study(cfg, progress=False, decide=False)["portrait"]
    production = out.load_study().user_attrs["fingerprint"]["production"]
    assert production == {
        "model": {"loras": {"../loras": 0.8}},
        "call": {"negative_prompt": "blurry, lowres"},
    }
    trial = out.load_study().trials[0]
    metas = optuna.artifacts.get_all_artifact_meta(trial, storage=open_storage(cfg.default_storage))
    (meta,) = [m for m in metas if m.filename == image_name(0, 0)]
    with open_store(cfg.artifacts).open_reader(meta.artifact_id) as f:
        stored = decode_png(f.read())
    mine = assets / "models" / "mine"
    assert (stored - plain_render(mine, "blurry, lowres", 0.8)).abs().max() <= 1 / 255 + 1e-6
    assert (stored - plain_render(mine)).abs().max() > 0.05
    # the negative prompt is part of what the study compares: changing it is refused
    path.write_text(path.read_text().replace('"blurry, lowres"', '"grainy"'))
    with pytest.raises(ConfigError, match=r"production.call.negative_prompt 'blurry, lowres' -> 'grainy'"):
        run_study(load_config(path), progress=False, decide=False)


def test_a_pipeline_function_builds_the_teams_own_pipeline(assets: Path) -> None:
    folder = assets / "hook"
    folder.mkdir(exist_ok=True)
    (folder / "team_pipes.py").write_text(
        "import diffusers\n\n"
        "def build(model_id, dtype):\n"
        "    with open(__file__ + '.built', 'a') as f:\n"
        "        f.write('x')\n"
        "    cls = diffusers.StableDiffusionPipeline\n"
        "    return cls.from_pretrained(model_id, torch_dtype=dtype, safety_checker=None)\n"
    )
    path = study(folder, id="../models/mine", model='pipeline = "team_pipes:build"')
    assert torch.equal(autotune_render(path), plain_render(assets / "models" / "mine"))
    # a command builds it once: the pipeline built to describe the model is the one the evaluator loads
    built = folder / "team_pipes.py.built"
    built.unlink()
    Evaluator(resolve_config(load_config(path)), f"sqlite:///{folder / 'built.db'}", "cpu")
    assert built.read_text() == "x"
    path = study(folder, id="../models/mine", model='pipeline = "team_pipes:missing"')
    with pytest.raises(ConfigError, match=r"model.pipeline: 'team_pipes' has no function 'missing'"):
        resolve_config(load_config(path))


def _cli(path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "autotune.cli", *args, str(path)],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


UNREACHABLE = {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9"}  # a port nothing listens on


@pytest.mark.parametrize(
    ("model", "metrics", "message"),
    [
        ('id = "someorg/some-model"', "", "model.id: 'someorg/some-model' is not in the local Hugging Face cache"),
        ("", 'clip_model = "ViT-B-32"\nclip_pretrained = "laion2b_s34b_b79k"', "metrics.clip_pretrained: ViT-B-32"),
        ("", 'clip_model = "ViT-B-32"\nclip_pretrained = "weights/missing.bin"', "clip_pretrained: no weights file at"),
        ("", 'lpips_backbone = "weights/alexnet.pth"', "metrics.lpips_backbone: no weights file at"),
        ('device = "cuda"', "", "s.toml: model.device: 'cuda' asked for, but torch sees no CUDA device"),
        ("", 'clip_model = "ViT-Q-99"', "metrics.clip_model: 'ViT-Q-99' is not an open_clip model (the nearest: "),
    ],
    ids=["hub id", "clip tag", "clip file", "lpips file", "cuda", "clip name"],
)
@pytest.mark.slow
def test_what_cannot_load_offline_is_one_line_and_leaves_nothing(
    tmp_path: Path, model: str, metrics: str, message: str
) -> None:
    if "cuda" in model and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    text = STUDY.format(
        id="tiny", model="", extra=f"[metrics]\n{metrics}" if metrics else "", prompt=PROMPT, classes=""
    )
    if model.startswith("id ="):
        text = text.replace('id = "tiny"', model)
    elif model:
        text = text.replace('device = "cpu"', model)
    path = tmp_path / "s.toml"
    path.write_text(text)
    out = _cli(path, "study", "--quiet", env=UNREACHABLE)  # the hub is a closed port: refused, never waited on
    assert out.returncode == 2, out.stderr
    assert out.stderr.count("\n") == 1 and message in out.stderr and len(out.stderr) < 400, out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.toml"]  # no database, no outputs


def test_metric_weights_load_from_local_files(assets: Path, tmp_path: Path) -> None:
    import torchvision

    from autotune.micro import clip_dir
    from autotune.model.metrics.clip_score import ClipScore
    from autotune.model.metrics.lpips_distance import Lpips

    shutil.copytree(clip_dir(), tmp_path / "weights" / "clip")
    torch.manual_seed(1)
    trunk = torchvision.models.alexnet()
    torch.save(trunk.state_dict(), tmp_path / "weights" / "alexnet.pth")
    images = torch.rand(2, 3, 32, 32)
    local = ClipScore("local-dir:weights/clip", None, home=str(tmp_path))
    assert torch.allclose(local(images, ["a digit seven"] * 2), ClipScore("micro")(images, ["a digit seven"] * 2))
    from_file = Lpips("alex", "weights/alexnet.pth", home=str(tmp_path))
    assert torch.equal(from_file.model.net.slice1[0].weight, trunk.features[0].weight)
    assert not torch.equal(from_file(images[:1], images[1:]), Lpips("alex", "random")(images[:1], images[1:]))


def test_clip_skip_the_stack_cannot_apply_is_one_line_and_leaves_nothing(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from autotune.cli import main

    path = study(tmp_path, extra="[call]\nclip_skip = 2")
    assert main(["study", str(path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "call.clip_skip: StableDiffusionPipeline cannot apply it on this stack" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.toml"]


@pytest.mark.slow
def test_a_cached_hub_id_loads_from_the_cache_when_the_hub_is_unreachable(tmp_path: Path) -> None:
    repo = tmp_path / "hub" / "models--someorg--tiny"
    shutil.copytree(tiny_pipeline_path(), repo / "snapshots" / "0123abcd")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    code = (
        "from autotune.config import ModelConfig\n"
        "from autotune.model.pipeline import load_pipeline\n"
        "p = load_pipeline(ModelConfig(id='someorg/tiny', device='cpu'))\n"
        "print(type(p.pipe).__name__)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, **UNREACHABLE, "HF_HUB_CACHE": str(tmp_path / "hub")},
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "StableDiffusionPipeline"  # from the cache: the unreachable hub was not needed
