"""Outputs of a study: ``recommendations.json``, ``pareto_<class>.csv`` and the terminal table.

Every file is written to a temporary name and renamed, so a kill never leaves half a file.

Example:
    >>> outcomes = recommend(cfg)
    >>> write_outputs(cfg, outcomes)
    [PosixPath('studies/demo/recommendations.json'), PosixPath('studies/demo/pareto_portrait.csv'), ...]
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from autotune.config.objectives import OBJECTIVES, cost_of
from autotune.config.resolve import ResolvedStudy
from autotune.decision.rule import collapsed_text
from autotune.files import WriteFailed, atomic_write, write_failure
from autotune.records import trial_record
from autotune.results.notes import fleet_text, random_weights_warning, speedup_text
from autotune.results.reader import ClassOutcome, Outcomes, settings_of
from autotune.results.recommendations_file import recommendations_data
from autotune.space import schedulers

__all__ = ["format_table", "write_all", "write_outputs", "write_recommendations"]


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
    cost = objectives.index(c) if (c := cost_of(objectives)) else 0
    shown = {o.trials[i].number: o.trials[i] for i in o.front}
    shown.update({t.number: t for t in o.trials if t.number == chosen})  # on the front or not, it is listed
    for t in sorted(shown.values(), key=lambda t: t.values[cost] if t.values else 0.0):
        s = settings_of(t)
        assert t.values is not None
        cut = [f"guidance_cutoff={s.cutoff:g}"] if s.cutoff < 1 else []
        cut += [f"cache.{s.cache[0]}={s.cache[1]:g}"] if s.cache else []
        cut += [f"guidance_sigma=({s.interval[0]:g},{s.interval[1]:g}]"] if s.interval else []
        options = ";".join([*(f"{k}={v}" for k, v in s.options), *cut])
        w.writerow(
            [
                t.number,
                s.scheduler,
                options,
                s.steps,
                s.guidance,
                *(f"{v:.6g}" for v in t.values),
                "" if (r := trial_record(t)).model_calls is None else r.model_calls,
                schedulers.get(s.scheduler).deterministic,
                r.baseline,
                t.number == chosen,
            ]
        )
    return buf.getvalue()


def write_outputs(cfg: ResolvedStudy, outcomes: Mapping[str, ClassOutcome], out_dir: Path | None = None) -> list[Path]:
    """Write ``recommendations.json`` and one ``pareto_<class>.csv`` per class; return their paths."""
    written = [write_recommendations(cfg, outcomes, out_dir)]
    out = written[0].parent
    for c, o in outcomes.items():
        written.append(out / f"pareto_{c}.csv")
        atomic_write(written[-1], _pareto_csv(cfg, o))
    return written


def write_recommendations(
    cfg: ResolvedStudy, outcomes: Mapping[str, ClassOutcome], out_dir: Path | None = None
) -> Path:
    """Write ``recommendations.json`` alone (what a run writes first: its classes are deciding)."""
    path = (out_dir or cfg.output_dir) / "recommendations.json"
    atomic_write(path, json.dumps(recommendations_data(cfg, outcomes), indent=2) + "\n")
    return path


def write_all(outcomes: Outcomes, storage: str | None = None) -> list[Path]:
    """Everything a run leaves: JSON, CSVs, ``report.html``, and the dashboard's notes and figures."""
    from autotune.report.dashboard import publish
    from autotune.report.html import write_report

    cfg, paths, failed = outcomes.cfg, [], []

    def notes() -> list[Path]:  # in the storage, not a file
        publish(cfg, outcomes)
        return []

    for what, write in (
        ("recommendations.json and the Pareto CSVs", lambda: write_outputs(cfg, outcomes)),
        ("report.html", lambda: [write_report(cfg, outcomes, storage)]),
        ("the dashboard's notes", notes),
    ):
        try:  # each output that can be written is (a full disk may still take a small one)
            paths += write()
        except Exception as e:
            reason = write_failure(e) or (e.strerror if isinstance(e, OSError) else None)  # a read-only folder too
            if reason is None:
                raise
            failed.append(f"{what} ({reason})")
    if failed:
        raise WriteFailed(f"{cfg.output_dir}: could not write {'; '.join(failed)}")
    return paths


def _fmt(value: Any, spec: str = ".3g") -> str:
    return "-" if value is None else format(value, spec)


def _note(d: dict[str, Any]) -> str:
    """Why the baseline is kept, how the pick's neighbours fare, and a decision that did not finish."""
    parts = [] if d["met_tolerance"] and d["confirmed"] else [d["reason"]]
    if d.get("timing"):
        parts.append(d["timing"])
    if d.get("margin"):
        parts.append("; ".join(f"{m['change']}: {m['verdict']}" for m in d["margin"]))
    if d["decision"]["state"] != "settled":
        parts.append(f"decision {d['decision']['state']}")
    return " | ".join(parts)


def format_table(cfg: ResolvedStudy, outcomes: Mapping[str, ClassOutcome]) -> str:
    """A plain-text table: per class the recommended setting, its metrics and the baseline's."""
    everything = recommendations_data(cfg, outcomes)
    data = everything["classes"]
    metrics = list(cfg.metrics.objectives)
    head = ["class", "setting", *(OBJECTIVES[m].column for m in metrics), "collapsed"]
    head += ["speed-up", "trials"]
    rows, said = [], []
    for c, d in data.items():
        if "trial" not in d:  # no recommendation yet
            said.append(f"{c}: {d['reason']} | decision {d['decision']['state']}")
            rows.append([c, "-", *("-" for _ in metrics), "-", "-", str(d["trials_completed"])])
            continue
        if note := _note(d):
            said.append(f"{c}: {note}")
        for label, x in (("", d), ("  baseline", d["baseline"])):
            setting = f"{x['setting']} (#{x['trial']})"
            rows.append(
                [
                    c + label if label else c,
                    setting,
                    *(_fmt(x["metrics"][m], ".4g") for m in metrics),
                    collapsed_text(d.get("collapsed", {})) if not label else "",
                    speedup_text(d) if not label else "",
                    str(d["trials_completed"]) if not label else "",
                ]
            )
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in [head, *rows]]
    notes = [f"\n{n}" for n in (fleet_text(everything.get("fleet")), random_weights_warning(cfg)) if n]
    below = ["", "notes:", *(f"  {n}" for n in said)] if said else []
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:], *below, *notes])
