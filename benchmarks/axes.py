"""A searched axis beyond the named settings against the named settings alone: a demo's study with and without
it, each recommendation judged on prompts and seeds no study used.

    .venv/bin/python benchmarks/axes.py [--axis cutoff|cache|deepcache|taylorseer|interval|interval_glyphs]
        [--studies 3] [--classes bold]

For each study seed 1..N and each arm, ``autotune study`` runs a demo study on the CPU (40 settings per class,
the LPIPS backbone random; each study seed also draws the class's held-out prompts, ``holdout_seed``).
``--axis cutoff`` (issue 21): studies/demo.toml (the trained glyphs micro model
and its CLIP), ``named`` without ``guidance_cutoff`` and ``fitted_schedules``, ``axes`` as shipped (both
searched). ``--axis cache`` (issue 45): studies/demo_flow.toml (the trained flow micro model), ``off`` as
shipped, ``cache`` with ``cache = ["first_block"]`` (diffusers' First Block Cache, its threshold searched);
``--axis deepcache``: studies/demo.toml, ``off`` as shipped, ``cache`` with ``cache = ["deepcache"]``
(DeepCache's interval searched); ``--axis taylorseer``: studies/demo_flow.toml with ``cache = ["taylorseer"]``
(TaylorSeer Lite's interval searched); ``--axis interval``: studies/demo_flow.toml, ``off`` as shipped,
``interval`` with a guidance interval's ends searched (:data:`AXES` names them); ``--axis interval_glyphs``:
the same on studies/demo.toml. ``autotune validate`` then renders each
class's recommendation and the baseline on the study's held-out prompts (studies/demo_holdout.txt,
demo_flow_holdout.txt: combinations no class lists) x seeds 500-502 (no study uses them) and times both
alone, as the study times cost. A pick is
*truly worse* where its mean CLIP or LPIPS difference to the baseline on those images is outside the study's
tolerance; validate's own verdict (the one-sided 95 % bound within tolerance) is printed beside it. Every
speed-up is validate's timing, beside the ratio of model evaluations (recommendations.json: denoiser calls x
(1 + the guided share), a call a cache cut short counted for the share it ran).

Writes benchmarks/results/axes.json (the other axes: the file :data:`AXES` names) after each
seed (a pass stopped early keeps its studies). Run it alone on the machine (it times settings).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
ROOT = HERE.parent
TRUTH_SEEDS = [500, 501, 502]
FLOW = ("demo_flow.toml", "demo_flow_holdout.txt")  # a study and its held-out prompts
GLYPHS = ("demo.toml", "demo_holdout.txt")
# per axis: the study and its held-out prompts, the arms (without, with), the results file, the lines the second
# arm adds to [search] (the cutoff's arms: the study file searches the axes, "named" removes them)
AXES = {
    "cutoff": (*GLYPHS, ("named", "axes"), "axes.json", ""),
    "cache": (*FLOW, ("off", "cache"), "axes_cache.json", 'cache = ["first_block"]'),
    "deepcache": (*GLYPHS, ("off", "cache"), "axes_deepcache.json", 'cache = ["deepcache"]'),
    "taylorseer": (*FLOW, ("off", "cache"), "axes_taylorseer.json", 'cache = ["taylorseer"]'),
    # the guidance interval's ends in the model's own sigma: the flow time on the flow model (1 at pure noise);
    # sqrt((1 - alphabar) / alphabar) on the glyphs model (14.6 at pure noise; the paper's SDXL ends among them)
    "interval": (
        *FLOW,
        ("off", "interval"),
        "axes_interval.json",
        "guidance_sigma_low = [0.1, 0.2, 0.3]\nguidance_sigma_high = [0.7, 0.85]",
    ),
    "interval_glyphs": (
        *GLYPHS,
        ("off", "interval"),
        "axes_interval_glyphs.json",
        "guidance_sigma_low = [0.28, 0.6, 1.0]\nguidance_sigma_high = [3.0, 5.42]",
    ),
}


def study_text(axis: str, arm: str, seed: int, classes: tuple[str, ...] = ()) -> str:
    text = (ROOT / "studies" / AXES[axis][0]).read_text().replace('device = "auto"', 'device = "cpu"')
    for other in set(re.findall(r"^\[classes\.(\w+)\]", text, flags=re.M)) - set(classes) if classes else ():
        text = re.sub(rf"^\[classes\.{other}\].*?(?=^\[|\Z)", "", text, flags=re.M | re.S)  # the classes asked for
    if arm == "named":
        text = re.sub(r"^(guidance_cutoff|fitted_schedules) = .*$", "", text, flags=re.M)
    if AXES[axis][4] and arm == AXES[axis][2][1]:  # the second arm: the lines it adds
        text = text.replace("[search]\n", f"[search]\n{AXES[axis][4]}\n", 1)
    text = re.sub(r"^holdout_seed = .*$", "", text, flags=re.M)  # each study draws its own held-out prompts
    text = text.replace("[recommend]", f"[recommend]\nholdout_seed = {seed}", 1)
    return text.replace("[search]\n", f"[search]\nseed = {seed}\n", 1)


def one_study(
    axis: str, arm: str, seed: int, held: list[str], folder: Path, classes: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Run the study, write its outputs, validate each class's pick on the held-out prompts and seeds."""
    from autotune.config import load_config
    from autotune.report.table import write_all
    from autotune.study.run import run_study
    from autotune.validate import validate

    path = folder / f"{arm}-{seed}" / AXES[axis][0]
    path.parent.mkdir()
    path.write_text(study_text(axis, arm, seed, classes))
    cfg = load_config(path)
    start = time.monotonic()
    write_all(run_study(cfg, progress=False))
    minutes = (time.monotonic() - start) / 60
    recs = json.loads((cfg.output_dir / "recommendations.json").read_text())["classes"]
    checked = validate(cfg, held, TRUTH_SEEDS)["classes"]
    out: dict[str, Any] = {"minutes": minutes}
    for c, v in checked.items():
        worse = [m for m, b in v["bounds"].items() if _worse(m, b)]
        out[c] = {
            "pick": v["recommended"],
            "speedup": v["speedup_timed"],  # as timed (validate withholds it where it breaks physics: "timing")
            "timing": v.get("timing"),
            "speedup_range": v["speedup_range"],
            "call_ratio": recs[c].get("model_call_ratio"),
            "study_speedup": v["study_speedup"],
            "truly_worse": bool(worse),
            "worse_on": worse,
            "bound_passes": v["within_tolerance"],
            "means": {m: b.get("mean") for m, b in v["bounds"].items()},
            "reason": recs[c].get("reason"),  # why the study kept what it kept
            "tolerance": {m: b["tolerance"] for m, b in v["bounds"].items()},
        }
        print(
            f"{arm} seed {seed} {c}: {v['recommended']}: {v['speedup_timed'] or 0:.2f}x held out "
            f"({out[c]['call_ratio'] or 1:.2f}x fewer model evaluations), truly worse: {bool(worse)}"
            f"{' (' + ', '.join(worse) + ')' if worse else ''}, bound {'passes' if v['within_tolerance'] else 'fails'}",
            flush=True,
        )
    return out


def _worse(metric: str, b: dict[str, Any]) -> bool:
    """The held-out mean beyond the tolerance (the collapsed share: more collapsed than the baseline by more
    than the allowance, as a share of the images)."""
    from autotune.config.objectives import OBJECTIVES

    if metric not in OBJECTIVES:  # "broken": the collapsed share
        return (b["collapsed"][0] - b["collapsed"][1]) / b["images"] > b["tolerance"]
    sign = 1 if OBJECTIVES[metric].higher_is_better else -1
    return bool(sign * b["mean"] < -b["tolerance"])


PHYSICAL = 1.25  # a held-out speed-up above this x its model-evaluation ratio is timing noise, not a saving


def summarise(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per class and arm: truly worse picks, and the median saving of the picks (a truly worse pick saves
    nothing), timed and in model evaluations; a timing that breaks physics is flagged."""
    arms = list(runs)  # (without, with), or one arm alone (``--arms``)
    classes = [c for c in runs[arms[-1]][0] if c != "minutes"]
    summary: dict[str, Any] = {}
    for c in classes:
        summary[c] = {}
        for arm in runs:
            rows = [r[c] for r in runs[arm]]
            holds = [not r["truly_worse"] for r in rows]
            speed = [r["speedup"] or 1.0 for r in rows]  # None: validate withheld a timing that broke physics
            calls = [r["call_ratio"] or 1.0 for r in rows]
            summary[c][arm] = {
                "truly_worse": f"{sum(not h for h in holds)}/{len(rows)}",
                "speedups": [round(x, 2) for x in speed],
                "call_ratios": [round(x, 2) for x in calls],
                "timing_noise": [x > PHYSICAL * y for x, y in zip(speed, calls, strict=True)],
                "median_speedup_that_holds": statistics.median(
                    x if h else 1.0 for x, h in zip(speed, holds, strict=True)
                ),
                "median_call_ratio_that_holds": statistics.median(
                    x if h else 1.0 for x, h in zip(calls, holds, strict=True)
                ),
            }
        for kind in ("speedup", "call_ratio") if len(arms) == 2 else ():
            a, n = (summary[c][arm][f"median_{kind}_that_holds"] for arm in arms[::-1])
            summary[c][f"{arms[1]}_over_{arms[0]}_{kind}"] = a / n
    summary["study_minutes"] = {arm: [round(r["minutes"], 1) for r in runs[arm]] for arm in runs}
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--axis", choices=list(AXES), default="cutoff")
    parser.add_argument("--studies", type=int, default=3)
    parser.add_argument("--summarise", action="store_true", help="summarise results/axes.json's runs again")
    parser.add_argument("--arms", help="these arms only, comma-separated (default: both)")
    parser.add_argument("--classes", help="these prompt classes only, comma-separated (default: every class)")
    parser.add_argument("--out", help="the results file (default: the axis's in benchmarks/results/)")
    parser.add_argument("--keep", help="keep each study's folder (its database and outputs) under this folder")
    args = parser.parse_args()
    _, holdout, arms, results, _ = AXES[args.axis]
    arms = tuple(args.arms.split(",")) if args.arms else arms
    classes = tuple(args.classes.split(",")) if args.classes else ()
    out = Path(args.out) if args.out else HERE / "results" / results
    if args.summarise:
        runs = json.loads(out.read_text())["runs"]
    else:
        import torch

        from autotune.validate import read_prompts

        torch.set_num_threads(2)
        held = read_prompts(ROOT / "studies" / holdout)
        runs = {arm: [] for arm in arms}
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(args.keep or tmp)
            folder.mkdir(parents=True, exist_ok=True)
            for seed in range(1, args.studies + 1):
                for arm in arms:
                    runs[arm].append(one_study(args.axis, arm, seed, held, folder, classes))
                write(out, runs)  # after each seed: a pass stopped early keeps its studies
    print(json.dumps(write(out, runs), indent=2))


def write(out: Path, runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    summary = summarise(runs)
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"summary": summary, "runs": runs}, indent=2) + "\n")
    return summary


if __name__ == "__main__":
    main()
