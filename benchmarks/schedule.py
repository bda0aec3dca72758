"""A class's own schedule against every named one: is the fitted schedule closer to the teacher?

    .venv/bin/python benchmarks/schedule.py [--steps 4,6,8] [--samplers dpmpp_2m,euler] [--classes thin,bold]

On the trained ``glyphs`` micro model (32 px colour glyphs; the LPIPS backbone is random), for each
class of studies/demo.toml, sampler that takes custom timesteps and step count: the schedule autotune
fits (:func:`autotune.model.fit.fit_timesteps`, exactly as a study does: the class's first 2 prompts x
the search seeds 0 and 1, against the study's reference, DPM++ 2M Karras 50 steps at CFG 5, at most 24
renders of those 4 images, kept only if also closer on the next 2 prompts), then judged where the fit
never looked: LPIPS to the same reference on the class's held-out prompts (studies/demo_holdout.txt) x
seeds 500-502, beside the best *named* setting of every sampler the demo searches (Euler, DPM++ 2M,
DPM++ 2M Karras, UniPC, DDIM, each with its default, leading, linspace and trailing spacings and its
Karras, exponential and beta sigmas where it takes them) at the same step count and CFG. Prints, per
class and step count, the fitted LPIPS, the best named LPIPS and which setting it was, their ratio
(below 1: the fit is closer), and the fit's cost (renders, images, seconds on this machine). Writes
benchmarks/results/schedule.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
import tomllib
from pathlib import Path

HERE = Path(__file__).parent
ROOT = HERE.parent
GUIDANCE = 5.0
FIT_SEEDS = [0, 1]
TRUTH_SEEDS = [500, 501, 502]
NAMED = ["euler", "dpmpp_2m", "dpmpp_2m_karras", "unipc", "ddim"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", default="4,6,8")
    parser.add_argument("--samplers", default="dpmpp_2m,euler")
    parser.add_argument("--classes", default="thin,bold")
    args = parser.parse_args()
    import torch

    from autotune.config import ModelConfig
    from autotune.model.fit import FIT_PROMPTS, fit_timesteps
    from autotune.model.metrics.lpips_distance import Lpips
    from autotune.model.pipeline import load_pipeline
    from autotune.model.render import generate
    from autotune.space.settings import Settings, variant_choices

    torch.set_num_threads(2)
    p = load_pipeline(ModelConfig(id="glyphs", device="cpu"))
    lpips = Lpips("alex", "random")
    demo = tomllib.loads((ROOT / "studies" / "demo.toml").read_text())
    ref = Settings.make(demo["reference"]["scheduler"], demo["reference"]["steps"], GUIDANCE)
    lines = (ROOT / "studies" / "demo_holdout.txt").read_text().splitlines()
    held = [x.strip() for x in lines if x.strip() and not x.startswith("#")]
    out: dict[str, object] = {"model": "glyphs (trained, 32 px; LPIPS backbone random)", "reference": ref.label()}
    results = []
    for c in args.classes.split(","):
        fit_prompts = demo["classes"][c]["prompts"][:FIT_PROMPTS]
        check_prompts = demo["classes"][c]["prompts"][FIT_PROMPTS : 2 * FIT_PROMPTS]
        truth = [q for q in held if q.startswith(f"a {c} ")]
        fit_refs = generate(p, ref, fit_prompts, FIT_SEEDS, 32, 32).images
        check = (check_prompts, generate(p, ref, check_prompts, FIT_SEEDS, 32, 32).images)
        truth_refs = generate(p, ref, truth, TRUTH_SEEDS, 32, 32).images

        def judged(s: Settings, truth: list[str] = truth, refs: object = truth_refs) -> float:
            return float(lpips(generate(p, s, truth, TRUTH_SEEDS, 32, 32).images, refs).mean())

        for steps in map(int, args.steps.split(",")):
            named: dict[str, float] = {}
            sampler_of: dict[str, str] = {}
            for name in NAMED:
                choices = variant_choices(name, ("sigmas", "timestep_spacing"), None)
                for values in itertools.product(*choices.values()):
                    s = Settings.make(name, steps, GUIDANCE, dict(zip(choices, values, strict=True)))
                    if s.label() not in named:
                        named[s.label()], sampler_of[s.label()] = judged(s), name
            best = min(named, key=named.__getitem__)
            for name in args.samplers.split(","):
                s = Settings.make(name, steps, GUIDANCE, {"sigmas": "fitted"})
                t0 = time.perf_counter()
                timesteps, info = fit_timesteps(p, s, fit_prompts, FIT_SEEDS, fit_refs, lpips, 32, 32, check=check)
                seconds = time.perf_counter() - t0
                fitted = judged(Settings.make(name, steps, GUIDANCE, {"sigmas": "fitted"}, timesteps=timesteps))
                own = min(v for k, v in named.items() if sampler_of[k] == name)
                row = {"class": c, "steps": steps, "sampler": name, "timesteps": timesteps, "fitted": fitted,
                       "best_named": named[best], "best_named_setting": best, "own_best_named": own,
                       "ratio": fitted / named[best], **info, "fit_seconds": seconds}  # fmt: skip
                results.append(row)
                print(
                    f"{c} {steps} steps {name}: fitted {timesteps} (from {info['start']}) LPIPS {fitted:.5f}; "
                    f"best named {best} {named[best]:.5f} (own sampler's best {own:.5f}): ratio "
                    f"{row['ratio']:.2f}; held on the check prompts: {info['held_on_check']}; "
                    f"fit {info['renders']} renders, {info['images']} images, {seconds:.0f} s",
                    flush=True,
                )
    out["results"] = results
    wins = [r for r in results if r["ratio"] < 1]
    out["summary"] = {
        "fitted_closer": f"{len(wins)} of {len(results)}",
        "median_ratio": statistics.median(r["ratio"] for r in results) if results else None,
    }
    print(json.dumps(out["summary"]))
    path = HERE / "results" / "schedule.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
