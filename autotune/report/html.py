"""``studies/NAME/report.html``: one self-contained page to look at a study in the morning.

Plotly's JavaScript and every image are embedded, so the page opens offline and can be mailed.
Per class: the Pareto front, quality against steps per scheduler, hypervolume history,
parameter importances, the front as a table, baseline vs recommended vs reference images,
and a steps x scheduler grid built from trials already rendered (``render_grid`` renders a
full one on request).

Example:
    >>> outcomes = recommend(cfg)
    >>> write_report(cfg, outcomes, cfg.default_storage)
    PosixPath('studies/demo/report.html')
"""

from __future__ import annotations

import base64
import datetime
import html
import io
import statistics
import sys
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

from autotune.config.objectives import cost_of, quality
from autotune.config.resolve import ResolvedStudy, reference_setting
from autotune.decision.rule import collapsed_images, collapsed_text
from autotune.files import atomic_write
from autotune.noise import noise_seed
from autotune.records import trial_record
from autotune.report.figures import hypervolume_figure, importance_figure, pareto_figure, steps_figure, title
from autotune.report.images import StoredImages
from autotune.results.notes import (
    fleet_text,
    random_weights_warning,
    speedup_text,
    tolerance_text,
)
from autotune.results.reader import ClassOutcome, settings_of
from autotune.results.recommendations_file import RULE_TEXT, recommendations_data
from autotune.store.artifacts import reader_store

__all__ = ["GridImages", "recommended_guidance", "spread", "write_report"]

GridImages = dict[str, dict[tuple[str, int], bytes]]  # class -> (scheduler label, steps) -> PNG
_MAX_GRID = 8  # rows and columns of the steps x scheduler grid
_THUMB = 256  # longest side of an embedded image, pixels


def _img(png: bytes | None, title: str = "") -> str:
    if png is None:
        return '<div class="missing">not stored</div>'
    from PIL import Image

    image = Image.open(io.BytesIO(png))
    if max(image.size) > _THUMB:
        image.thumbnail((_THUMB, _THUMB))
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        png = buf.getvalue()
    data = base64.b64encode(png).decode()
    return f'<img src="data:image/png;base64,{data}" title="{html.escape(title)}" alt="{html.escape(title)}">'


def _paired(rec: Any, base: Any, metric: str) -> str:
    """Recommended minus baseline, per image, as mean ± std (the spread over prompts and seeds)."""
    a, b = trial_record(rec).values.get(metric), trial_record(base).values.get(metric)
    if a and b and len(a) == len(b):
        d = [x - y for x, y in zip(a, b, strict=True)]
        return f"{statistics.fmean(d):+.4g} ± {statistics.pstdev(d):.2g}"
    return "-"


def _table(head: Iterable[str], rows: Iterable[Iterable[Any]], cls: str = "") -> str:
    th = "".join(f"<th>{html.escape(str(h))}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


def _fleet(cfg: ResolvedStudy, data: Mapping[str, Any]) -> str:
    """The fleet's saving on the study file's traffic shares (nothing without them)."""
    if not cfg.traffic:
        return ""
    return f'<p class="fleet">{html.escape(fleet_text(data.get("fleet")) or "")}</p>'


def _summary(cfg: ResolvedStudy, outcomes: Mapping[str, ClassOutcome], data: Mapping[str, Any]) -> str:
    """Per class the pick, its speed-up as ``recommendations.json`` (``data``) states it, its quality deltas."""
    judged = quality(cfg.metrics.objectives)
    rows = []
    for c, o in outcomes.items():
        rec = o.recommendation
        if rec is None:
            rows.append([c, f"no recommendation yet: {o.no_baseline()}", "-", *("-" for _ in judged)])
            continue
        by_number = {t.number: t for t in o.trials}
        chosen, base = by_number[rec.chosen.number], by_number[rec.baseline.number]
        setting = html.escape(settings_of(chosen).label())
        if not rec.met_tolerance or not rec.confirmed:
            setting += f'<div class="note">{html.escape(rec.reason)}</div>'
        d = data["classes"][c]
        speedup = html.escape(speedup_text(d) or "-")
        if d["timing"]:
            speedup += f'<div class="note">{html.escape(d["timing"])}</div>'
        broken = collapsed_text(collapsed_images(rec.chosen, rec.baseline, o.tolerance)) if o.tolerance else "-"
        rows.append([f'<a href="#class-{c}">{c}</a>', setting, speedup, *(_paired(chosen, base, m) for m in judged)])
        rows[-1].append(broken)
    head = ["class", "recommended setting", "speed-up vs baseline (range over timed calls)"]
    head += [*(f"Δ {title(m)}" for m in judged), "collapsed images (search and confirmation)"]
    return _table(head, rows, "summary")


def _figure(fig: go.Figure | None, fig_id: str, empty: str) -> str:
    if fig is None:
        return f'<p class="note">{html.escape(empty)}</p>'
    data = fig.to_json().replace("</", "<\\/")
    script = f'<script type="application/json" data-figure="{fig_id}">{data}</script>'
    return f'<div class="figure" id="{fig_id}"></div>{script}'


def _front_table(cfg: ResolvedStudy, o: ClassOutcome) -> str:
    objectives = list(cfg.metrics.objectives)
    rec = o.recommendation
    cost = objectives.index(c) if (c := cost_of(objectives)) else 0
    front = sorted((o.trials[i] for i in o.front), key=lambda t: (t.values or [0.0])[cost])
    rows = []
    for t in front:
        assert t.values is not None
        mark = []
        r = trial_record(t)
        if r.baseline:
            mark.append("baseline")
        if rec and t.number == rec.chosen.number:
            mark.append("recommended")
        s = settings_of(t)
        rows.append(
            [
                t.number,
                html.escape(s.scheduler_label()),
                s.steps,
                f"{s.guidance:g}",
                *(f"{v:.4g}" for v in t.values),
                "-" if r.model_calls is None else r.model_calls,
                ", ".join(mark),
            ]
        )
    head = ["trial", "scheduler", "steps", "guidance", *objectives, "model calls", ""]
    return _table(head, rows, "front")


def _decision(cfg: ResolvedStudy, o: ClassOutcome) -> str:
    """Every candidate the rule looked at, cheapest first, its bounds on the search and confirmation
    images; the decision's state, what the bound speaks for, and the recommendation's neighbours."""
    from autotune.results.notes import prompts_note

    rec = o.recommendation
    if rec is None:
        return '<p class="note">No decision yet: the baseline trial has not completed.</p>'
    rows = [
        [
            str(st["trial"]),
            html.escape(str(st["setting"])),
            str(st["search"]),
            "<br>".join(html.escape(b) for b in st["search_bounds"]),  # type: ignore[attr-defined]
            str(st.get("confirmation", "-")),
            "<br>".join(html.escape(b) for b in st.get("confirmation_bounds", [])),  # type: ignore[attr-defined]
        ]
        for st in rec.stages
    ]
    head = ["trial", "setting", "search", "search bounds", "confirmation", "confirmation bounds"]
    state = (
        ""
        if o.decision_state == "settled"
        else f" The decision is {o.decision_state}: a cheaper setting may still qualify."
    )
    prompts = prompts_note(len(cfg.classes[o.name]), rec.chosen.images, rec.chosen.confirm)
    notes = f"{rec.reason}.{state} Prompts: {prompts}."
    margin = ""
    if o.margin:
        margin_rows = [[html.escape(m["change"]), html.escape(m["setting"]), html.escape(m["verdict"]),
                        "<br>".join(html.escape(b) for b in m.get("bounds", []))] for m in o.margin]  # fmt: skip
        margin = "<h4>Its neighbours, on its own images</h4>" + _table(
            ["change", "setting", "verdict", "bounds"], margin_rows, "margin"
        )
    return f'<p class="note">{html.escape(notes)}</p>' + _table(head, rows, "decision") + margin


def _comparison(cfg: ResolvedStudy, o: ClassOutcome, images: StoredImages) -> str:
    rec = o.recommendation
    if rec is None:
        return '<p class="note">No comparison yet: the baseline trial has not completed.</p>'
    by_number = {t.number: t for t in o.trials}
    chosen, base = by_number[rec.chosen.number], by_number[rec.baseline.number]
    seed = cfg.search.seeds[0]
    rows, unstored = [], 0
    for i, prompt in enumerate(cfg.classes[o.name]):
        pair = images.trial(base, i, seed), images.trial(chosen, i, seed)
        if pair == (None, None):  # scored by racing or confirmation, whose images are not kept
            unstored += 1
            continue
        rows.append(
            [
                f"{html.escape(prompt)}<br><small>generator seed {noise_seed(prompt, seed)}</small>",
                _img(pair[0], f"baseline: {settings_of(base).label()}"),
                _img(pair[1], f"recommended: {settings_of(chosen).label()}"),
                _img(images.reference(o, prompt, seed, settings_of(chosen).guidance), "reference"),
            ]
        )
    note = (
        f'<p class="note">The {unstored} other prompts of the class were scored by racing or confirmation, '
        "which keep scores, not images.</p>"
        if unstored
        else ""
    )
    head = [
        f"prompt (its image {seed}: each prompt draws its own noise)",
        f"baseline: {settings_of(base).label()}",
        f"recommended: {settings_of(chosen).label()}",
        f"reference: {reference_setting(cfg, settings_of(chosen).guidance).label()}",
    ]
    return _table(head, rows, "images") + note


def recommended_guidance(cfg: ResolvedStudy, o: ClassOutcome) -> float:
    """The recommended trial's guidance; the baseline's before there is a recommendation."""
    if o.recommendation is not None:
        return next(settings_of(t).guidance for t in o.trials if t.number == o.recommendation.chosen.number)
    return cfg.baseline.guidance


def spread(values: list[int], n: int) -> list[int]:
    """At most ``n`` of the sorted ``values``, evenly spaced, first and last kept."""
    values = sorted(set(values))
    if len(values) <= n:
        return values
    return sorted({values[round(i * (len(values) - 1) / (n - 1))] for i in range(n)})


def _grid(
    cfg: ResolvedStudy, o: ClassOutcome, images: StoredImages, rendered: dict[tuple[str, int], bytes] | None
) -> str:
    prompt, seed = cfg.classes[o.name][0], cfg.search.seeds[0]
    best: dict[tuple[str, int], Any] = {}
    if rendered is not None:
        how = "rendered for this report at the recommended guidance"
        keys = list(rendered)
    else:
        guidance = recommended_guidance(cfg, o)
        for t in o.trials:  # per cell, the trial whose guidance is nearest the recommended one
            s = settings_of(t)
            key = (s.scheduler_label(), s.steps)
            if key not in best or abs(s.guidance - guidance) < abs(settings_of(best[key]).guidance - guidance):
                best[key] = t
        how = (
            "from the trials already rendered, nearest guidance to the recommended one "
            "(autotune report --render-grid renders a full grid)"
        )
        keys = list(best)
    if not keys:
        return '<p class="note">No trial images yet.</p>'
    labels = sorted(label for label, _ in Counter(label for label, _ in keys).most_common(_MAX_GRID))
    steps = spread([n for label, n in keys if label in labels], _MAX_GRID)

    def cell(label: str, n: int) -> str:
        if rendered is not None:
            png = rendered.get((label, n))
        else:
            png = images.trial(best[(label, n)], 0, seed) if (label, n) in best else None
        return _img(png, f"{label}, {n} steps") if png is not None or (label, n) in best else ""

    body = [[html.escape(label), *(cell(label, n) for n in steps)] for label in labels]
    noise = noise_seed(prompt, seed)
    caption = f'<p class="note">"{html.escape(prompt)}", generator seed {noise}; {html.escape(how)}.</p>'
    return caption + _table(["scheduler \\ steps", *map(str, steps)], body, "grid")


def _section(cfg: ResolvedStudy, o: ClassOutcome, images: StoredImages, grid: GridImages | None) -> str:
    c = o.name
    parts = [
        f'<section id="class-{c}"><h2>{html.escape(c)}</h2>',
        f'<p class="note">{o.n_completed} completed trials ({len(o.trials)} distinct settings), '
        f"{o.n_failed} failed; {len(o.front)} on the Pareto front.</p>",
        _figure(pareto_figure(cfg, o) if o.trials else None, f"{c}-pareto", "No completed trial yet."),
        "<h3>How it was decided</h3>",
        _decision(cfg, o),
        "<h3>Images: baseline, recommended, reference</h3>",
        _comparison(cfg, o, images),
        "<h3>Quality against steps</h3>",
        _figure(steps_figure(cfg, o) if o.trials else None, f"{c}-steps", "No completed trial yet."),
        "<h3>Steps x scheduler</h3>",
        _grid(cfg, o, images, (grid or {}).get(o.name)),
        "<h3>Hypervolume history</h3>",
        _figure(hypervolume_figure(cfg, o) if o.trials else None, f"{c}-hypervolume", "No completed trial yet."),
        "<h3>Parameter importances</h3>",
        _figure(importance_figure(cfg, o), f"{c}-importances", "Needs at least 3 distinct completed trials."),
        "<h3>Pareto front</h3>",
        _front_table(cfg, o),
        "</section>",
    ]
    return "\n".join(parts)


_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ddd;padding:4px 8px;text-align:left;
vertical-align:top;font-size:14px}th{background:#f4f4f4}.note{color:#555;font-size:14px}
img{display:block;image-rendering:pixelated;width:128px;height:auto}table.images img{width:192px}
.missing{color:#999;font-size:12px}#errors{color:#b00;white-space:pre-wrap}
section{border-top:2px solid #ccc;margin-top:2em}
.warning{background:#fff3cd;border:1px solid #e0c36c;padding:6px 10px;font-size:14px}
"""

_SCRIPT = """
(function(){
  var drawn = 0, errors = [];
  document.querySelectorAll('script[data-figure]').forEach(function(s){
    try {
      var fig = JSON.parse(s.textContent);
      Plotly.newPlot(document.getElementById(s.dataset.figure), fig.data, fig.layout, {responsive: true});
      drawn += 1;
    } catch (e) { errors.push(s.dataset.figure + ': ' + e); }
  });
  document.body.dataset.figuresDrawn = drawn;
  if (errors.length) { var el = document.getElementById('errors'); el.hidden = false;
    el.textContent = 'Some figures failed to draw:\\n' + errors.join('\\n'); }
})();
"""


def write_report(
    cfg: ResolvedStudy,
    outcomes: Mapping[str, ClassOutcome],
    storage: str | None = None,
    *,
    grid: GridImages | None = None,
    out_dir: Path | None = None,
) -> Path:
    """Write ``report.html`` (atomically) and return its path."""
    from plotly.offline import get_plotlyjs

    store = reader_store(cfg, [o.stored.artifacts for o in outcomes.values()])
    images = StoredImages(cfg, storage or cfg.default_storage, store)
    now = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    m = cfg.model
    intro = (
        f'<p class="note">Model <code>{html.escape(m.id)}</code> at {m.height}x{m.width}; objectives '
        f"{', '.join(cfg.metrics.objectives)}; tolerances: {html.escape(tolerance_text(cfg))}. "
        f"{html.escape(RULE_TEXT)} Seconds: one serving call ({cfg.serving.batch_size} image(s)), median of "
        f"{cfg.serving.repeats} after a warm-up; the recommendation's and the baseline's timed again in turn, call "
        "for call, once the decision settled. Δ is recommended minus baseline per image, mean ± std over "
        f"prompts and seeds. Written {now}.</p>"
    )
    if warning := random_weights_warning(cfg):
        intro += f'<p class="warning">{html.escape(warning)}</p>'
    sections = [_section(cfg, o, images, grid) for o in outcomes.values()]
    data = recommendations_data(cfg, outcomes)  # the summary states what recommendations.json states
    page = (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>autotune: {html.escape(cfg.name)}</title>'
        f"<style>{_STYLE}</style><script>{get_plotlyjs()}</script></head>\n<body>"
        f'<h1>autotune study: {html.escape(cfg.name)}</h1>{intro}<div id="errors" hidden></div>'
        f"<h2>Summary</h2>{_summary(cfg, outcomes, data)}{_fleet(cfg, data)}\n"
        + "\n".join(sections)
        + f"<script>{_SCRIPT}</script></body></html>\n"
    )
    path = (out_dir or cfg.output_dir) / "report.html"
    atomic_write(path, page)
    if images.missing:
        print(
            f"autotune: warning: {images.missing} trial images are gone from {cfg.artifacts} (deleted?); "
            f"{path} shows the rest",
            file=sys.stderr,
        )
    return path
