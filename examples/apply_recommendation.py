"""Serve a class's recommended setting: one line with autotune, or the JSON alone with plain diffusers.

    python examples/apply_recommendation.py [studies/demo.toml]

Runs offline against the demo study's outputs (run `make demo` first). With a real model, load
your own pipeline instead of the tiny one; everything else stays the same.
"""

from __future__ import annotations

import json
import sys

import diffusers
import numpy as np
import torch

import autotune
from autotune.testing.tiny import tiny_pipeline_path

study = sys.argv[1] if len(sys.argv) > 1 else "studies/demo.toml"
cfg = autotune.load_config(study)
pipe = diffusers.StableDiffusionPipeline.from_pretrained(tiny_pipeline_path(), safety_checker=None)
prompt = cfg.classes["portrait"][0]

# 1. With autotune: swap the scheduler, get the call kwargs.
recs = autotune.load_recommendations(study)
kwargs = autotune.apply(pipe, recs["portrait"])
print(f"portrait -> {recs['portrait'].setting}: {recs['portrait'].scheduler_class}, pipe(prompt, **{kwargs})")
image = pipe(prompt, **kwargs, height=cfg.model.height, width=cfg.model.width, generator=torch.manual_seed(0))
out = cfg.output_dir / "apply_example.png"
image.images[0].save(out)

# 2. Without autotune: the "diffusers" block of recommendations.json is all serving code needs.
block = json.loads((cfg.output_dir / "recommendations.json").read_text())["classes"]["portrait"]["diffusers"]
pipe.scheduler = getattr(diffusers, block["scheduler_class"]).from_config(
    pipe.scheduler.config, **block["scheduler_config"]
)
again = pipe(
    prompt, **block["call_kwargs"], height=cfg.model.height, width=cfg.model.width, generator=torch.manual_seed(0)
)
same = np.array_equal(np.asarray(again.images[0]), np.asarray(image.images[0]))
print(f"wrote {out}; the diffusers block alone renders the same image: {bool(same)}")
