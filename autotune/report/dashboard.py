"""What optuna-dashboard shows of a study beside Optuna's own views: per class the recommendation as the
study's note (markdown, with the diffusers code), each trial's note (its setting, metrics by name, its
part in the decision) and, on the study's page, two figures: the answer (the pick against the baseline,
and every candidate by trial number and setting) and the seconds-vs-quality front with the baseline and
the pick marked.

Example:
    >>> publish(outcomes.cfg, outcomes)
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from autotune.config import ConfigError
from autotune.config.resolve import ResolvedStudy
from autotune.results.notes import speedup_text
from autotune.results.reader import ClassOutcome
from autotune.results.recommendations_file import recommendations_data
from autotune.store.optuna_api import TrialHandle

if TYPE_CHECKING:
    import plotly.graph_objects as go

__all__ = ["publish"]


def _note(d: dict[str, Any]) -> str:
    """The recommendation of one class as markdown, for the study's note in optuna-dashboard."""
    if "trial" not in d:
        return f"**No recommendation yet.** {d['reason']}"
    x, base = d["diffusers"], d["baseline"]
    overrides = "".join(f",\n    {k}={v!r}" for k, v in x["scheduler_config"].items())  # one per line: no
    kwargs = "".join(f"\n    {k}={v!r}," for k, v in x["call_kwargs"].items())  # line runs off the note's edge
    lo_hi = (
        f" ({d['speedup_range'][0]:.2f}-{d['speedup_range'][1]:.2f}x over the timed calls)"
        if d.get("speedup_range")
        else ""
    )
    speedup = f"**{d['speedup']:.2f}x**{lo_hi} the speed of" if d["speedup"] else "compared with"
    if d.get("timing"):
        speedup = f"**{d['model_call_ratio']:.2g}x fewer model calls** ({d['timing']}) than"
    rows = "\n".join(f"| {m} | {v:.4g} | {base['metrics'][m]:.4g} |" for m, v in d["metrics"].items())
    stages = "\n".join(
        f"| {st['trial']} | {st['setting']} | {st['search']} | {st.get('confirmation', '-')} |"
        for st in d["decision"]["candidates"]
    )
    margin = "".join(f"\n- {m['change']} ({m['setting']}): {m['verdict']}" for m in d.get("margin", []))
    state = "" if d["decision"]["state"] == "settled" else f" **The decision is {d['decision']['state']}.**"
    return (
        f"## Recommended: {d['setting']} (trial {d['trial']})\n\n"
        f"{speedup} the baseline, {base['setting']} (trial {base['trial']}). {d['reason']}.{state}\n\n"
        f"Its neighbours on its own images:{margin or ' none rendered'}\n\n"
        f"| metric | recommended | baseline |\n|---|---|---|\n{rows}\n\n"
        f"Candidates looked at, cheapest first (bounds in `recommendations.json` and `report.html`):\n\n"
        f"| trial | setting | search | confirmation |\n|---|---|---|---|\n{stages}\n\n"
        f"```python\nfrom diffusers import {x['scheduler_class']}\n"
        f"pipe.scheduler = {x['scheduler_class']}.from_config(\n    pipe.scheduler.config{overrides}\n)\n"
        f"image = pipe(\n    prompt,{kwargs}\n).images[0]\n```\n\n"
        f"{d['trials_completed']} completed trials, {d['trials_failed']} failed, "
        f"{d['pareto_front_size']} on the Pareto front (see the plot below and `report.html`)."
    )


def _trial_note(t: Any, d: dict[str, Any], objectives: tuple[str, ...]) -> str:
    """A trial's note: its setting, its metrics by name (the baseline's beside them) and its part in the decision."""
    from autotune.results.reader import settings_of

    baseline = d.get("baseline", {})
    base = baseline.get("metrics", {})
    stage = {st["trial"]: st for st in d.get("decision", {}).get("candidates", [])}.get(t.number)
    if t.number == baseline.get("trial"):
        part = "**the baseline**"
    elif t.number == d.get("trial"):
        part = "**the recommendation**"
    elif stage:
        part = f"a candidate: {_verdict(stage)}"
    else:
        part = "on the front or searched; not a candidate to replace the baseline"
    rows = "\n".join(
        f"| {m} | {v:.4g} | {base[m]:.4g} |" if m in base else f"| {m} | {v:.4g} | - |"
        for m, v in zip(objectives, t.values or [], strict=False)
    )
    head = "| metric | this trial | baseline |\n|---|---|---|"
    return f"### {settings_of(t).label()}\n\nTrial {t.number}: {part}.\n\n{head}\n{rows}"


def _verdict(stage: Mapping[str, Any]) -> str:
    """A candidate's verdicts as the decision's ``candidates`` list holds them: on the search's images, and on
    fresh ones where it was confirmed."""
    fresh = f"; fresh images: {stage['confirmation']}" if stage.get("confirmation") else ""
    return f"search: {stage['search']}{fresh}"


def answer_figure(c: str, d: dict[str, Any], warning: str | None) -> go.Figure:
    """The class's answer for its study's page: a table of the pick and the baseline (trial, setting,
    speed-up or compute ratio) and every candidate the decision looked at, cheapest first, with its
    verdict; titled with why, and any doubt on the timing."""
    import textwrap

    import plotly.graph_objects as go

    if "trial" not in d:
        fig = go.Figure()
        fig.update_layout(title=dict(text=f"{c}: no recommendation yet: {d['reason']}", font=dict(size=12)), height=120)
        return fig
    base = d["baseline"]
    speed = speedup_text(d) or "not timed"
    rows = [
        ["<b>recommended</b>", f"#{d['trial']}", f"<b>{d['setting']}</b>", speed],
        ["baseline", f"#{base['trial']}", base["setting"], "1x"],
        *(
            ["candidate", f"#{st['trial']}", st["setting"], _verdict(st)] for st in d["decision"]["candidates"]
        ),
    ]  # fmt: skip
    table = go.Table(
        columnwidth=[100, 40, 300, 190],
        header=dict(values=["", "<b>trial</b>", "<b>setting</b>", "<b>speed-up vs baseline / verdict</b>"]),
        cells=dict(values=[list(col) for col in zip(*rows, strict=True)], align="left"),
    )
    said = [f"{c}: {d['reason']}", *(n for n in (d.get("timing"), warning) if n)]
    lines = [line for text in said for line in textwrap.wrap(text, 90)]
    fig = go.Figure(table)
    fig.update_layout(
        title=dict(text="<br>".join(lines), font=dict(size=12)),
        height=80 + 16 * len(lines) + 48 * (len(rows) + 1),
        margin=dict(t=30 + 16 * len(lines), l=10, r=10, b=10),
    )
    return fig


def bindable(host: str, port: int) -> None:
    """Raise :class:`ConfigError` naming the flag to change when the server cannot listen on ``host:port``."""
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError as e:
            flag, value = ("--port", port) if e.errno in (errno.EADDRINUSE, errno.EACCES) else ("--host", repr(host))
            why = f"cannot serve on {host}:{port} ({e.strerror})"
            raise ConfigError(f"{flag} {value}: {why}; pass another {flag}") from None


def publish(cfg: ResolvedStudy, outcomes: Mapping[str, ClassOutcome]) -> None:
    """Per class, the recommendation as the study's note and its Pareto figure, for optuna-dashboard."""
    from optuna_dashboard import save_note, save_plotly_graph_object

    from autotune.report.figures import pareto_figure

    data = recommendations_data(cfg, outcomes)
    warning = f"\n\n**{data['random_weights']}**" if "random_weights" in data else ""
    for c, o in outcomes.items():
        study = o.load_study()
        d = data["classes"][c]
        save_note(study, _note(d) + warning)
        for t in o.trials:  # each trial's page opens with its setting, named metrics and its part in the decision
            save_note(TrialHandle.of(study, t.trial_id), _trial_note(t, d, cfg.metrics.objectives))
        save_plotly_graph_object(study, answer_figure(c, d, data.get("random_weights")), graph_object_id="answer")
        if o.trials:  # (optuna-dashboard lays out a study's figures in an order of its own, not theirs)
            save_plotly_graph_object(study, pareto_figure(cfg, o), graph_object_id="pareto-front")
