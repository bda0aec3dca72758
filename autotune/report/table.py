"""Outputs of a study: ``recommendations.json``, ``pareto_<class>.csv`` and the terminal table.

Every file is written to a temporary name and renamed, so a kill never leaves half a file.

Example:
    >>> outcomes = recommend(cfg)
    >>> write_outputs(cfg, outcomes)
    [PosixPath('studies/demo/recommendations.json'), PosixPath('studies/demo/pareto_portrait.csv'), ...]
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from pathlib import Path
from typing import Any

from autotune import schedulers
from autotune.families import ResolvedStudy
from autotune.outputs import RULE_TEXT, atomic_write, random_weights_warning
from autotune.study.results import ClassOutcome, Outcomes, settings_of, trial_summary

__all__ = ["format_table", "publish", "recommendations_data", "write_all", "write_outputs"]


def _class_data(cfg: ResolvedStudy, o: ClassOutcome) -> dict[str, Any]:
    objectives = cfg.metrics.objectives
    base = {
        "trials_completed": o.n_completed,
        "settings_rendered": len(o.trials),
        "trials_failed": o.n_failed,
        "pareto_front_size": len(o.front),
        "seed_lpips": o.seed_lpips,
        "seconds_fit": (
            None
            if o.seconds_fit is None
            else {
                "formula": "seconds per image = a + b * calls + c * calls * (guidance > 1)",
                "a": o.seconds_fit.a,
                "b": o.seconds_fit.b,
                "c": o.seconds_fit.c,
                "outlier_trials": list(o.seconds_outliers),
            }
        ),
    }
    rec = o.recommendation
    if rec is None:
        return {
            **base,
            "recommended": None,
            "reason": "the baseline trial has not completed yet: nothing to compare against",
        }
    by_number = {t.number: t for t in o.trials}
    base_config = o.study.user_attrs.get("scheduler_base")
    chosen = trial_summary(by_number[rec.chosen.number], objectives, o.family, base_config)
    baseline = trial_summary(by_number[rec.baseline.number], objectives, o.family, base_config)
    chosen["seconds_fitted"], baseline["seconds_fitted"] = rec.chosen.cost, rec.baseline.cost
    tol = o.tolerance
    assert tol is not None
    r = cfg.recommend
    return {
        **chosen,
        "speedup": rec.speedup,
        "speedup_range": rec.speedup_range,
        "met_tolerance": rec.met_tolerance,
        "confirmed": rec.confirmed,
        "reason": rec.reason,
        "baseline": baseline,
        "tolerance": {
            "clip_score": tol.clip,
            "clip_score_in_sd": (tol.clip / o.clip_noise) if tol.clip is not None and o.clip_noise else None,
            "clip_score_seed_sd": o.clip_noise,
            "lpips": tol.lpips,
            "lpips_in_seed_lpips": r.lpips_tolerance if tol.lpips is not None else None,
        },
        "decision": {
            "confirm_seeds": list(r.confirm_seeds),
            "race_images": o.study.user_attrs.get("race_images", 0),
            "race_budget": r.race_budget,
            "candidates": list(rec.stages),
        },
        **base,
    }


def recommendations_data(cfg: ResolvedStudy, outcomes: dict[str, ClassOutcome]) -> dict[str, Any]:
    """The content of ``recommendations.json``: one recommended setting per class, with evidence.

    Besides the classes: ``default``, the baseline, for prompts that fit no class, and ``router``,
    the class centroids of the study's CLIP text embeddings (see :mod:`autotune.router`).
    """
    from autotune.router import router_data

    classes = {c: _class_data(cfg, o) for c, o in outcomes.items()}
    data: dict[str, Any] = {
        "study": cfg.name,
        "model": {
            "id": cfg.model.id,
            "family": cfg.family.name,
            "height": cfg.model.height,
            "width": cfg.model.width,
            **cfg.model.additions(),
        },
        "call": {c: cfg.call_for(c) for c in outcomes},  # what every measured call was given besides the setting
        "objectives": list(cfg.metrics.objectives),
        "rule": {
            "name": cfg.recommend.rule,
            "clip_tolerance": cfg.recommend.clip_tolerance,
            "clip_tolerance_sd": cfg.recommend.clip_tolerance_sd,
            "lpips_tolerance": cfg.recommend.lpips_tolerance,
            "stochastic": cfg.recommend.stochastic,
            "text": RULE_TEXT,
        },
        "serving": dataclasses.asdict(cfg.serving),
        "classes": classes,
    }
    if warning := random_weights_warning(cfg):
        data["random_weights"] = warning
    baseline = next((d["baseline"] for d in classes.values() if "baseline" in d), None)
    if baseline is not None:
        data["default"] = baseline
    embedded = {c: o.study.user_attrs["router"] for c, o in outcomes.items() if "router" in o.study.user_attrs}
    if embedded:
        from autotune.metrics.clip_score import clip_source

        clip = clip_source(cfg.metrics.clip_model, cfg.metrics.clip_pretrained, str(cfg.directory))
        data["router"] = router_data(embedded, clip)  # local weights as absolute paths: serving runs elsewhere
    return data


def _pareto_csv(cfg: ResolvedStudy, o: ClassOutcome) -> str:
    objectives = list(cfg.metrics.objectives)
    chosen = o.recommendation.chosen.number if o.recommendation else None
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(
        [
            "trial",
            "scheduler",
            "options",
            "steps",
            "guidance",
            *objectives,
            "model_calls",
            "deterministic",
            "baseline",
            "recommended",
        ]
    )
    cost = objectives.index("seconds") if "seconds" in objectives else 0
    shown = {o.trials[i].number: o.trials[i] for i in o.front}
    shown.update({t.number: t for t in o.trials if t.number == chosen})  # on the front or not, it is listed
    for t in sorted(shown.values(), key=lambda t: t.values[cost] if t.values else 0.0):
        s = settings_of(t)
        assert t.values is not None
        options = ";".join(f"{k}={v}" for k, v in s.options)
        w.writerow(
            [
                t.number,
                s.scheduler,
                options,
                s.steps,
                s.guidance,
                *(f"{v:.6g}" for v in t.values),
                t.user_attrs.get("model_calls", ""),
                schedulers.get(s.scheduler).deterministic,
                bool(t.user_attrs.get("baseline")),
                t.number == chosen,
            ]
        )
    return buf.getvalue()


def write_outputs(cfg: ResolvedStudy, outcomes: dict[str, ClassOutcome], out_dir: Path | None = None) -> list[Path]:
    """Write ``recommendations.json`` and one ``pareto_<class>.csv`` per class; return their paths."""
    out = out_dir or cfg.output_dir
    written = [out / "recommendations.json"]
    atomic_write(written[0], json.dumps(recommendations_data(cfg, outcomes), indent=2) + "\n")
    for c, o in outcomes.items():
        written.append(out / f"pareto_{c}.csv")
        atomic_write(written[-1], _pareto_csv(cfg, o))
    return written


def _note(d: dict[str, Any]) -> str:
    """The recommendation of one class as markdown, for the study's note in optuna-dashboard."""
    if "trial" not in d:
        return f"**No recommendation yet.** {d['reason']}"
    x, base = d["diffusers"], d["baseline"]
    overrides = "".join(f", {k}={v!r}" for k, v in x["scheduler_config"].items())
    kwargs = ", ".join(f"{k}={v!r}" for k, v in x["call_kwargs"].items())
    lo_hi = (
        f" ({d['speedup_range'][0]:.2f}-{d['speedup_range'][1]:.2f}x over the timed calls)"
        if d.get("speedup_range")
        else ""
    )
    speedup = f"**{d['speedup']:.2f}x**{lo_hi} the speed of" if d["speedup"] else "compared with"
    rows = "\n".join(f"| {m} | {v:.4g} | {base['metrics'][m]:.4g} |" for m, v in d["metrics"].items())
    stages = "\n".join(
        f"| {st['trial']} | {st['setting']} | {st['search']} | {st.get('confirmation', '-')} |"
        for st in d["decision"]["candidates"]
    )
    return (
        f"## Recommended: {d['setting']} (trial {d['trial']})\n\n"
        f"{speedup} the baseline, {base['setting']} (trial {base['trial']}). {d['reason']}.\n\n"
        f"| metric | recommended | baseline |\n|---|---|---|\n{rows}\n\n"
        f"Candidates looked at, cheapest first (bounds in `recommendations.json` and `report.html`):\n\n"
        f"| trial | setting | search | confirmation |\n|---|---|---|---|\n{stages}\n\n"
        f"```python\nfrom diffusers import {x['scheduler_class']}\n"
        f"pipe.scheduler = {x['scheduler_class']}.from_config(pipe.scheduler.config{overrides})\n"
        f"image = pipe(prompt, {kwargs}).images[0]\n```\n\n"
        f"{d['trials_completed']} completed trials, {d['trials_failed']} failed, "
        f"{d['pareto_front_size']} on the Pareto front (see the plot below and `report.html`)."
    )


def publish(cfg: ResolvedStudy, outcomes: dict[str, ClassOutcome]) -> None:
    """Per class, the recommendation as the study's note and its Pareto figure, for optuna-dashboard."""
    from optuna_dashboard import save_note, save_plotly_graph_object

    from autotune.figures import pareto_figure

    data = recommendations_data(cfg, outcomes)
    warning = f"\n\n**{data['random_weights']}**" if "random_weights" in data else ""
    for c, o in outcomes.items():
        save_note(o.study, _note(data["classes"][c]) + warning)
        if o.trials:
            save_plotly_graph_object(o.study, pareto_figure(cfg, o), graph_object_id="pareto-front")


def write_all(outcomes: Outcomes, storage: str | None = None) -> list[Path]:
    """Everything a run leaves: JSON, CSVs, ``report.html``, and the dashboard's notes and figures."""
    from autotune.report_html import write_report

    cfg = outcomes.cfg
    paths = write_outputs(cfg, outcomes)
    paths.append(write_report(cfg, outcomes, storage))
    publish(cfg, outcomes)
    return paths


def _fmt(value: Any, spec: str = ".3g") -> str:
    return "-" if value is None else format(value, spec)


def _speedup(d: dict[str, Any]) -> str:
    if not d["speedup"]:
        return ""
    lo, hi = d["speedup_range"]
    return f"{d['speedup']:.2f}x ({lo:.2f}-{hi:.2f})"


def format_table(cfg: ResolvedStudy, outcomes: dict[str, ClassOutcome]) -> str:
    """A plain-text table: per class the recommended setting, its metrics and the baseline's."""
    data = recommendations_data(cfg, outcomes)["classes"]
    metrics = list(cfg.metrics.objectives)
    head = ["class", "setting", *(("median seconds" if m == "seconds" else m) for m in metrics), "speed-up"]
    head += ["trials", "note"]
    rows = []
    for c, d in data.items():
        if "trial" not in d:  # no recommendation yet
            rows.append([c, "-", *("-" for _ in metrics), "-", str(d["trials_completed"]), d["reason"]])
            continue
        for label, x in (("", d), ("  baseline", d["baseline"])):
            setting = f"{x['setting']} (#{x['trial']})"
            rows.append(
                [
                    c + label if label else c,
                    setting,
                    *(_fmt(x["metrics"][m], ".4g") for m in metrics),
                    _speedup(d) if not label else "",
                    str(d["trials_completed"]) if not label else "",
                    ("" if d["met_tolerance"] and d["confirmed"] else d["reason"]) if not label else "",
                ]
            )
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in [head, *rows]]
    warning = random_weights_warning(cfg)
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:], *([f"\n{warning}"] if warning else [])])
