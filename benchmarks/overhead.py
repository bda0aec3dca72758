"""Overhead: a study's time divided by the time spent inside the pipeline rendering trial images.

    .venv/bin/python benchmarks/overhead.py [--trials 8] [--size 256] [--models tiny,sd-standin]

For each model, runs a study once to cache its references (and warm up), then times a run of
``--trials`` more trials. "Inside the pipeline" is the sum of every new trial's per-image
seconds (the pipeline call, timed on the device); everything else - Optuna and its storage,
CLIP and LPIPS, image artifacts, scheduler swaps - is overhead. Two ratios:

- per trial: the trials' own durations (Optuna's start to complete) over their pipeline seconds,
- whole run: the run's wall time, loading the models included, over the same.

Models: ``tiny`` (the 2M-parameter test model, where the pipeline is nearly free) and
``sd-standin``, the tiny pipeline with a UNet of Stable Diffusion's layout (4 levels, cross
attention in three) narrowed to CPU size, built once into benchmarks/cache/ and loaded from
that folder like any local model. Writes benchmarks/results/overhead.json.
Target: <= 1.10 once references are cached.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
STUDY = """
name = "overhead"
[model]
id = "{model}"
device = "{device}"
dtype = "{dtype}"
height = {size}
width = {size}
[search]
steps = [10, 40]
schedulers = ["euler", "dpmpp_2m_karras", "unipc", "ddim"]
seeds = [0, 1]
[baseline]
steps = 30
[reference]
steps = 60
[classes.portrait]
prompts = ["a studio portrait of an old fisherman", "a close-up photo of a smiling child"]
"""


def sd_standin() -> Path:
    """The tiny pipeline with a UNet of SD 1.5's layout, narrowed (about 50M parameters); built once."""
    folder = HERE / "cache" / "sd-standin"
    if (folder / "model_index.json").exists():
        return folder
    import torch
    from diffusers import DiffusionPipeline, UNet2DConditionModel

    from autotune.testing.tiny import tiny_pipeline_path

    pipe = DiffusionPipeline.from_pretrained(tiny_pipeline_path())
    torch.manual_seed(0)
    pipe.unet = UNet2DConditionModel(
        block_out_channels=(64, 128, 256, 256),
        layers_per_block=2,
        sample_size=32,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=pipe.text_encoder.config.hidden_size,
        attention_head_dim=8,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def measure(model: str, size: int, trials: int, device: str = "cpu", dtype: str = "float32") -> dict[str, Any]:
    from optuna.trial import TrialState

    from autotune.config import load_config
    from autotune.records import trial_record
    from autotune.study.run import run_study

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "overhead.toml"
        path.write_text(STUDY.format(model=model, size=size, device=device, dtype=dtype))
        cfg = load_config(path)
        run_study(cfg, n_trials=1, progress=False)  # references and the warm-up, not timed
        t0 = time.perf_counter()
        outcome = run_study(cfg, n_trials=1 + trials, progress=False)["portrait"]
        wall = time.perf_counter() - t0
        new = [
            t
            for t in outcome.study.get_trials(states=(TrialState.COMPLETE,))
            if t.number > 0 and trial_record(t).reused_from is None
        ]
        inside = sum(sum(trial_record(t).values["seconds"]) + (trial_record(t).render_seconds or 0.0) for t in new)
        in_trials = sum((t.datetime_complete - t.datetime_start).total_seconds() for t in new)  # type: ignore[operator]
    return {
        "size": size,
        "trials": len(new),
        "pipeline_seconds": round(inside, 2),
        "trial_seconds": round(in_trials, 2),
        "wall_seconds": round(wall, 2),
        "ratio_per_trial": round(in_trials / inside, 3),
        "ratio_whole_run": round(wall / inside, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--models", default="tiny,sd-standin")
    args = parser.parse_args()
    results = {}
    for name in args.models.split(","):
        model = str(sd_standin()) if name == "sd-standin" else name
        r = results[name] = measure(model, args.size, args.trials)
        print(
            f"{name} at {args.size} px, {r['trials']} rendered trials: "
            f"inside the pipeline {r['pipeline_seconds']:.1f} s, trials {r['trial_seconds']:.1f} s, "
            f"whole run {r['wall_seconds']:.1f} s -> overhead ratio "
            f"{r['ratio_per_trial']:.2f} per trial, {r['ratio_whole_run']:.2f} whole run",
            flush=True,
        )
    out = HERE / "results" / "overhead.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
