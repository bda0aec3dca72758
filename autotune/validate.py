"""Validate before you ship: baseline vs recommended setting on prompts the study never saw.

Held-out prompts are routed to their classes; each class's baseline and recommended setting
render every routed prompt with every seed; the per-image differences (recommended minus
baseline) get a mean and a 95% confidence interval, and the mean must stay within the study's
tolerance (the rule of :func:`autotune.pareto.match_baseline`).

Example:
    >>> report = validate(cfg, read_prompts("holdout.txt"), seeds=[0, 1, 2])
    >>> report["passed"]
    True
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from autotune.config import ConfigError, StudyConfig

__all__ = ["paired_interval", "read_prompts", "validate"]


def read_prompts(path: str | Path) -> list[str]:
    """One prompt per line (UTF-8); blank lines and lines starting with ``#`` are skipped."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such prompts file") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: expected UTF-8 text, byte {e.start} is not") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the prompts file ({e.strerror})") from None
    prompts = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise ConfigError(f"{path}: expected one prompt per line, found none")
    return prompts


def paired_interval(deltas: Sequence[float], level: float = 0.95) -> dict[str, float | int | None]:
    """Mean of paired differences with its Student-t confidence interval (none for one pair)."""
    from scipy import stats

    n = len(deltas)
    mean = statistics.fmean(deltas)
    if n < 2:
        return {"mean": mean, "low": None, "high": None, "n": n}
    half = float(stats.t.ppf((1 + level) / 2, n - 1)) * statistics.stdev(deltas) / math.sqrt(n)
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": n}


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
    from autotune import schedulers
    from autotune.evaluate import Evaluator
    from autotune.outputs import atomic_write
    from autotune.pareto import Candidate, failed_tolerance
    from autotune.pipeline import resolve_config
    from autotune.router import Router
    from autotune.serving import DEFAULT_CLASS, load_recommendations
    from autotune.space import Settings

    recs = load_recommendations(cfg.output_dir / "recommendations.json")
    router = Router.from_study(recs)
    routed = router.route_many(list(prompts))
    seeds = list(seeds or cfg.search.seeds)
    resolved = resolve_config(cfg)
    evaluator = Evaluator(resolved, storage or cfg.default_storage, device)
    clip_tol = cfg.recommend.clip_tolerance if clip_tolerance is None else clip_tolerance
    lpips_tol = cfg.recommend.lpips_tolerance if lpips_tolerance is None else lpips_tolerance
    by_class: dict[str, list[str]] = {}
    for prompt, (c, _) in zip(prompts, routed, strict=True):
        by_class.setdefault(c, []).append(prompt)
    classes: dict[str, Any] = {}
    for c, ps in by_class.items():
        if c == DEFAULT_CLASS or c not in recs.classes:
            continue
        rec = recs[c]
        chosen = Settings.make(rec.scheduler, rec.steps, rec.guidance, rec.options)
        baseline = Settings.of(resolved.baseline)
        ours = evaluator.evaluate(chosen, ps, seeds).per_image
        theirs = evaluator.evaluate(baseline, ps, seeds).per_image
        quality: list[str] = [m for m in ("clip_score", "lpips") if m in ours]
        deltas = {m: paired_interval([a - b for a, b in zip(ours[m], theirs[m], strict=True)]) for m in quality}
        mean = {m: statistics.fmean(ours[m]) for m in quality}
        base_mean = {m: statistics.fmean(theirs[m]) for m in quality}
        why = failed_tolerance(
            Candidate(1, mean, schedulers.get(rec.scheduler).deterministic),
            Candidate(0, base_mean, schedulers.get(baseline.scheduler).deterministic),
            clip_tolerance=clip_tol,
            lpips_tolerance=lpips_tol,
            seed_lpips=recs.seed_lpips.get(c),
        )
        classes[c] = {
            "prompts": ps,
            "recommended": rec.setting,
            "baseline": baseline.label(),
            "images": len(ps) * len(seeds),
            "delta": deltas,
            "recommended_mean": mean,
            "baseline_mean": base_mean,
            "speedup": statistics.median(theirs["seconds"]) / max(statistics.median(ours["seconds"]), 1e-12),
            "study_speedup": rec.speedup,
            "within_tolerance": not why,
            "why_not": why,
        }
    untested = [c for c in recs.classes if c != DEFAULT_CLASS and c not in classes]
    result = {
        "study": cfg.name,
        "seeds": seeds,
        "tolerance": {"clip": clip_tol, "lpips": lpips_tol},
        "routed_to_default": by_class.get(DEFAULT_CLASS, []),
        "classes": classes,
        "untested": untested,
        "passed": all(v["within_tolerance"] for v in classes.values()) and (allow_untested or not untested),
    }
    atomic_write(cfg.output_dir / "validation.json", json.dumps(result, indent=2) + "\n")
    return result


def format_validation(result: dict[str, Any]) -> str:
    """One line per class: verdict, speed-up, quality deltas with their 95% intervals."""
    lines = []
    for c, v in result["classes"].items():
        parts = []
        for m, d in v["delta"].items():
            ci = f" [{d['low']:+.3g}, {d['high']:+.3g}]" if d["low"] is not None else ""
            parts.append(f"Δ{m} {d['mean']:+.3g}{ci}")
        verdict = "ok  " if v["within_tolerance"] else "FAIL"
        why = f"  ({'; '.join(v['why_not'])})" if v["why_not"] else ""
        lines.append(
            f"{verdict} {c}: {v['recommended']} on {v['images']} held-out images: "
            f"{v['speedup']:.2f}x faster, {', '.join(parts)}{why}"
        )
    for c in result["untested"]:
        lines.append(f"untested {c}: no held-out prompt was routed to it (--allow-untested accepts that)")
    if result["routed_to_default"]:
        lines.append(f"     {len(result['routed_to_default'])} prompts fit no class (default: the baseline)")
    return "\n".join(lines)
