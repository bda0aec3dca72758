"""The GPU check, in one call: the gpu tests, timing noise, batch-1 against batch-8 cost, a study's
overhead and peak memory, on the micro model (32 px) and the SD-layout stand-in (512 px, float16).

    python benchmarks/gpu_check.py              # on a CUDA machine (about 5 minutes on an H100)
    python benchmarks/gpu_check.py --cpu-shrink # anywhere: the same steps, CPU-sized (stand-in at 64 px, float32)

Prints each figure with the device, torch build and model it comes from, and writes them to
benchmarks/results/gpu_check.json (or --out). On a bare CUDA machine, bring the packages as
../shared/gpu/README.md says and run it with ``python3`` from the project tree.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))  # overhead.py beside this file

import torch  # noqa: E402
from overhead import measure, sd_standin  # noqa: E402


def peak_mib(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return int(re.search(r"VmHWM:\s+(\d+)", Path("/proc/self/status").read_text())[1]) / 1024  # type: ignore[index]


def cpu_name() -> str:
    found = (
        re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
        if Path("/proc/cpuinfo").exists()
        else None
    )
    return f"CPU, {os.cpu_count()} cores ({found[1].strip() if found else platform.machine()})"


def render_figures(model: str, size: int, device: str, dtype: str, repeats: int) -> dict[str, Any]:
    """Timing noise of one setting rendered ``repeats`` times, and per-image cost at batch 1 and 8."""
    from autotune.config import ModelConfig
    from autotune.micro.train import caption
    from autotune.model.pipeline import load_pipeline
    from autotune.model.render import generate
    from autotune.space.settings import Settings

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    p = load_pipeline(ModelConfig(id=model, device=device, dtype=dtype))
    setting = Settings.make("dpmpp_2m_karras", 20, 5.0)
    prompts = [caption(d) for d in range(8)]
    generate(p, setting, prompts[:1], [0], size, size, batch_size=1)  # warm-up of the batch-1 shape
    generate(p, setting, prompts, [0], size, size, batch_size=8)  # and of the batch-8 shape
    one = [sum(generate(p, setting, prompts[:1], [0], size, size, batch_size=1).seconds) for _ in range(repeats)]
    eight = [statistics.fmean(generate(p, setting, prompts, [0], size, size, 8).seconds) for _ in range(repeats)]
    median = statistics.median(one)
    return {
        "setting": setting.label(),
        "timer": "CUDA events" if device.startswith("cuda") else "perf_counter",
        "batch1_seconds_median": median,
        "batch1_noise_median_abs_dev": statistics.median(abs(s - median) / median for s in one),
        "batch1_noise_max_over_min": max(one) / min(one),
        "batch8_seconds_per_image_median": statistics.median(eight),
        "batch1_over_batch8": median / statistics.median(eight),
        "peak_mib": peak_mib(device),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-shrink", action="store_true", help="run on the CPU, CPU-sized")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "gpu_check.json")
    args = parser.parse_args()
    if not args.cpu_shrink and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device here; pass --cpu-shrink to run the CPU-sized check")
    device = "cpu" if args.cpu_shrink else "cuda"
    name = torch.cuda.get_device_name() if device == "cuda" else cpu_name()
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()  # the stand-in's first build saves and loads a pipeline
    transformers_logging.disable_progress_bar()
    out: dict[str, Any] = {"device": name, "torch": torch.__version__, "cpu_shrink": args.cpu_shrink}
    print(f"device: {name}; torch {torch.__version__}{' (CPU-shrunk run)' if args.cpu_shrink else ''}", flush=True)

    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider"], text=True, capture_output=True
    )
    out["pytest_gpu"] = {"exit_code": tests.returncode, "summary": tests.stdout.strip().splitlines()[-1:]}
    print(f"pytest -m gpu: exit {tests.returncode}: {' '.join(out['pytest_gpu']['summary'])}", flush=True)

    standin = str(sd_standin())
    runs = [("micro", "micro", 32, "float32" if args.cpu_shrink else "float16")]
    runs.append(
        (
            "sd-standin (random weights)",
            standin,
            64 if args.cpu_shrink else 512,
            "float32" if args.cpu_shrink else "float16",
        )
    )
    for label, model, size, dtype in runs:
        r = render_figures(model, size, device, dtype, args.repeats if not args.cpu_shrink else 3)
        o = measure(model, size, 2 if args.cpu_shrink else 6, device, dtype)
        out[label] = {"size": size, "dtype": dtype, **r, "study_overhead": o}
        print(
            f"{label} at {size} px, {dtype}: {r['setting']} batch 1 {r['batch1_seconds_median'] * 1000:.1f} ms "
            f"(median of {args.repeats if not args.cpu_shrink else 3}, {r['timer']}; median deviation "
            f"{r['batch1_noise_median_abs_dev']:.1%}, max/min {r['batch1_noise_max_over_min']:.2f}); "
            f"per image at batch 8 {r['batch8_seconds_per_image_median'] * 1000:.1f} ms: batch 1 costs "
            f"{r['batch1_over_batch8']:.2f}x per image; study overhead {o['ratio_per_trial']:.2f} per trial, "
            f"{o['ratio_whole_run']:.2f} whole run ({o['trials']} trials); peak memory {r['peak_mib']:.0f} MiB",
            flush=True,
        )
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
