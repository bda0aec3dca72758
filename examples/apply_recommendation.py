"""Serve a class's recommended setting: one line with autotune, or the JSON alone with plain diffusers.

    python examples/apply_recommendation.py [studies/demo.toml]

Runs offline against a finished study's outputs (`make demo` writes the default one). It loads the
study's own model through autotune's loader; in production, load your pipeline as you do today
(``diffusers.StableDiffusionPipeline.from_pretrained(...)``): everything else stays the same.
"""

from __future__ import annotations

import json
import sys

import diffusers
import numpy as np
import torch
from diffusers.callbacks import SDCFGCutoffCallback

import autotune
from autotune.model.pipeline import load_pipeline

study = sys.argv[1] if len(sys.argv) > 1 else "studies/demo.toml"
cfg = autotune.load_config(study)
pipe = load_pipeline(cfg.model, device="cpu").pipe  # your own pipeline in production
name = next(iter(cfg.classes))  # the study's first class (the router picks one per prompt: route_prompts.py)
prompt = cfg.classes[name][0]
size = {"height": cfg.model.height, "width": cfg.model.width}

# 1. With autotune: swap the scheduler, get the call kwargs (negative prompt and guidance cutoff included).
recs = autotune.load_recommendations(study)
kwargs = autotune.apply(pipe, recs[name])
print(f"{name} -> {recs[name].setting}: {recs[name].scheduler_class}, pipe(prompt, **{kwargs})")
image = pipe(prompt, **kwargs, **size, generator=torch.manual_seed(0)).images[0]
out = cfg.output_dir / "apply_example.png"
image.save(out)

# 2. Without autotune: the "diffusers" block of recommendations.json is all serving code needs.
block = json.loads((cfg.output_dir / "recommendations.json").read_text())["classes"][name]["diffusers"]
pipe.scheduler = getattr(diffusers, block["scheduler_class"]).from_config(
    pipe.scheduler.config, **block["scheduler_config"]
)
plain = dict(block["call_kwargs"])
if block["guidance_cutoff"] < 1:  # guidance stops after this share of the steps
    plain["callback_on_step_end"] = SDCFGCutoffCallback(cutoff_step_ratio=block["guidance_cutoff"])
again = pipe(prompt, **plain, **size, generator=torch.manual_seed(0)).images[0]
same = np.array_equal(np.asarray(again), np.asarray(image))
print(f"wrote {out}; the diffusers block alone renders the same image: {bool(same)}")
