"""Validate before you ship: baseline vs recommended setting on prompts the study never saw.

Held-out prompts are routed to their classes; each class's baseline and recommended setting
render every routed prompt with every seed; the per-image differences (recommended minus
baseline) must stay within the study's tolerance on their one-sided 95 % bound, over prompts
(the rule of :mod:`autotune.decision`). The speed-up is timed as the study times cost: the
``[serving]`` call, repeated, after a warm-up.

Example:
    >>> report = validate(cfg, read_prompts("holdout.txt"), seeds=[0, 1, 2])
    >>> report["passed"]
    True
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from autotune.config import ConfigError, StudyConfig
from autotune.config.objectives import quality
from autotune.config.tables import read_text
from autotune.decision.bounds import BROKEN
from autotune.results.notes import speedup_text

__all__ = ["class_tolerance", "read_prompts", "validate"]


def read_prompts(path: str | Path) -> list[str]:
    """One prompt per line (UTF-8, a byte-order mark allowed); blank lines and lines starting with ``#`` are skipped."""
    path = Path(path)
    text = read_text(path, "prompts file")
    prompts = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise ConfigError(f"{path}: expected one prompt per line, found none")
    return prompts


def _finite(d: dict[str, Any]) -> dict[str, Any]:
    """JSON has no infinity: a bound of one image (no spread) is written as null."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in d.items()}


def class_tolerance(
    resolved: Any,
    recs: Any,
    c: str,
    base: Any,
    clip_tolerance: float | None = None,
    lpips_tolerance: float | None = None,
) -> Any:
    """Class ``c``'s tolerance for images the study never saw: the study's, in metric units where it was
    measured (else scaled by ``base``'s spread on them), unless overridden (CLIP in points, LPIPS in
    seed-to-seed LPIPS)."""
    from autotune.decision.tolerance import tolerance

    objectives = resolved.metrics.objectives
    measured = recs.tolerances.get(c, {})
    fixed = {m: measured[m] for m in quality(objectives) if isinstance(measured.get(m), int | float)}
    if clip_tolerance is not None:
        fixed["clip_score"] = clip_tolerance
    if lpips_tolerance is not None:
        fixed.pop("lpips", None)
    seed = recs.seed_lpips.get(c)
    stated = {"lpips": lpips_tolerance}
    return tolerance(resolved.recommend, objectives, base, seed, fixed=fixed, stated=stated)[0]


def validate(
    cfg: StudyConfig,
    prompts: Sequence[str],
    seeds: Sequence[int] | None = None,
    *,
    storage: str | None = None,
    device: str | None = None,
    clip_tolerance: float | None = None,
    lpips_tolerance: float | None = None,
    allow_untested: bool = False,
) -> dict[str, Any]:
    """Render baseline and recommendation per class on ``prompts``; return (and write) ``validation.json``.

    It passes when every class that held-out prompts were routed to held its tolerance, and every
    studied class got at least one (``allow_untested`` accepts classes that got none).
    """
    from autotune.config.objectives import cost_of
    from autotune.decision.cost import evaluations
    from autotune.decision.evidence import Candidate, images_of
    from autotune.decision.rule import overall, speedup, verdicts
    from autotune.files import atomic_write
    from autotune.model.evaluate import Evaluator, in_turn
    from autotune.model.pipeline import resolve_config
    from autotune.results.notes import call_ratio, timing_check
    from autotune.results.recommendations_file import DEFAULT_CLASS, load_recommendations
    from autotune.serving.router import Router
    from autotune.space import schedulers
    from autotune.space.settings import Settings

    recs = load_recommendations(cfg.output_dir / "recommendations.json")
    if not [c for c in recs.classes if c != DEFAULT_CLASS]:  # a gate that validated nothing does not pass
        result = {"study": cfg.name, "classes": {}, "untested": [], "unrecommended": recs.unrecommended,
                  "passed": False, "nothing": recs.nothing() or
                  f"{recs.path}: no class has a recommendation, only the default (the baseline)"}  # fmt: skip
        atomic_write(cfg.output_dir / "validation.json", json.dumps(result, indent=2) + "\n")
        return result
    routed = dict(zip(prompts, (c for c, _ in Router.from_study(recs).route_many(list(prompts))), strict=True))
    seeds = list(seeds or cfg.search.seeds)
    resolved = resolve_config(cfg)
    held_out = {q: c for q, c in routed.items() if c != DEFAULT_CLASS}  # served with their class's negative prompt
    print(f"autotune: validate: loading {cfg.model.id} and the metrics' models", file=sys.stderr)
    evaluator = Evaluator(resolved, storage or cfg.default_storage, device, routed=held_out)
    by_class: dict[str, list[str]] = {}
    for prompt, c in routed.items():
        by_class.setdefault(c, []).append(prompt)
    classes: dict[str, Any] = {}
    for c, ps in by_class.items():
        if c == DEFAULT_CLASS or c not in recs.classes:
            continue
        rec = recs[c]
        chosen = rec.settings()
        baseline = Settings.of(resolved.baseline)
        print(
            f"autotune: validate: {c}: {len(ps)} held-out prompts x {len(seeds)} images, recommended and baseline, "
            "then both timed in turn",
            file=sys.stderr,
        )
        ours, theirs = (evaluator.evaluate(s, ps, seeds, timed=False) for s in (chosen, baseline))
        if cost_of(cfg.metrics.objectives):  # timed in turn: a slow spell of the machine falls on both
            timed = in_turn(evaluator, [chosen, baseline], ps[0], seeds[0], cfg.serving.repeats)
            ours, theirs = (dataclasses.replace(e, seconds=s) for e, s in zip((ours, theirs), timed, strict=True))
        a, b = (images_of(e.per_image, len(ps), seeds) for e in (ours, theirs))
        mine = Candidate(1, a, seconds=tuple(ours.seconds), deterministic=schedulers.get(rec.scheduler).deterministic)
        base = Candidate(0, b, seconds=tuple(theirs.seconds))
        bounds = verdicts(mine, base, class_tolerance(resolved, recs, c, base, clip_tolerance, lpips_tolerance))
        faster = speedup(mine, base)
        ratio = call_ratio(
            *(evaluations(e.model_calls, e.guided_calls, s) for e, s in ((ours, chosen), (theirs, baseline)))
        )
        doubted = None if not faster or chosen == baseline else faster[0]  # the baseline kept: 1x, nothing to doubt
        timing = timing_check(doubted, faster and faster[1:], ratio, f"autotune validate {cfg.path}")
        classes[c] = {
            "prompts": ps,
            "recommended": rec.setting,
            "baseline": baseline.label(),
            "images": len(ps) * len(seeds),
            "bounds": {x.metric: _finite(dataclasses.asdict(x)) | {"verdict": x.verdict} for x in bounds},
            "speedup": None if timing else faster[0] if faster else None,
            "speedup_timed": faster[0] if faster else None,
            "speedup_range": list(faster[1:]) if faster else None,
            "model_call_ratio": ratio,
            "timing": timing,
            "study_speedup": rec.speedup,
            "within_tolerance": overall(bounds) == "pass",
            "why_not": [x.describe() for x in bounds if x.verdict != "pass"],
        }
    untested = [c for c in recs.classes if c != DEFAULT_CLASS and c not in classes]
    result = {
        "study": cfg.name,
        "seeds": seeds,
        "tolerance_override": {"clip_points": clip_tolerance, "lpips_x_seed_lpips": lpips_tolerance},
        "routed_to_default": by_class.get(DEFAULT_CLASS, []),
        "classes": classes,
        "untested": untested,
        "unrecommended": recs.unrecommended,  # classes whose baseline never completed: nothing to validate
        "passed": all(v["within_tolerance"] for v in classes.values())
        and not recs.unrecommended
        and (allow_untested or not untested),
    }
    atomic_write(cfg.output_dir / "validation.json", json.dumps(result, indent=2) + "\n")
    return result


def format_validation(result: dict[str, Any]) -> str:
    """One line per class: verdict, speed-up, quality deltas with their 95% intervals."""
    lines = []
    for c, v in result["classes"].items():
        parts = [
            f"collapsed {b['collapsed'][0]} of {b['images']} (baseline {b['collapsed'][1]}; 95 % bound on the "
            f"share {'none: one image' if b['worst'] is None else format(b['worst'], '+.1%')}, "
            f"allowed {b['tolerance']:+.1%})"
            if m == BROKEN
            else f"Δ{m} {b['mean']:+.3g} (95 % bound "
            f"{'none: one image' if b['worst'] is None else format(b['worst'], '+.3g')}, "
            f"tolerance {'not known' if b['tolerance'] is None else format(b['tolerance'], '.3g')})"
            for m, b in v["bounds"].items()
        ]
        verdict = "ok  " if v["within_tolerance"] else "FAIL"
        speed = speedup_text(v) or "not timed"
        speed += f" ({v['timing']})" if v.get("timing") else ""
        lines.append(f"{verdict} {c}: {v['recommended']} on {v['images']} held-out images: {speed}, {', '.join(parts)}")
    if result.get("nothing"):
        return f"FAIL nothing validated: {result['nothing']}"
    for c, state in result["unrecommended"].items():
        lines.append(f"FAIL {c}: no recommendation to validate (its baseline never completed; decision {state})")
    for c in result["untested"]:
        lines.append(f"untested {c}: no held-out prompt was routed to it (--allow-untested accepts that)")
    if result.get("routed_to_default"):
        lines.append(f"     {len(result['routed_to_default'])} prompts fit no class (default: the baseline)")
    return "\n".join(lines)
