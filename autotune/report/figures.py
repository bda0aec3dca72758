"""Plotly figures of one prompt class's study, for the HTML report and the dashboard.

Every figure is built from a :class:`~autotune.results.reader.ClassOutcome` alone (the importances
read the study's trials through Optuna): nothing is rendered.

Example:
    >>> outcome = recommend(cfg)["portrait"]
    >>> pareto_figure(cfg, outcome).write_html("front.html")
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from autotune.config import StudyConfig
from autotune.config.objectives import OBJECTIVES, cost_of, higher, quality
from autotune.results.reader import ClassOutcome, settings_of
from autotune.store.optuna_api import hypervolume

__all__ = ["hypervolume_figure", "hypervolume_history", "importance_figure", "pareto_figure", "steps_figure", "title"]

Values = Mapping[str, float]


def title(metric: str) -> str:
    """An axis or column title with its direction's arrow."""
    return OBJECTIVES[metric].label


def _values(cfg: StudyConfig, t: Any) -> dict[str, float]:
    assert t.values is not None
    return dict(zip(cfg.metrics.objectives, t.values, strict=True))


def _axes(cfg: StudyConfig) -> tuple[str, list[str]]:
    """The cost on x (seconds when measured) and each quality metric on its own y."""
    objectives = list(cfg.metrics.objectives)
    x = cost_of(objectives) or objectives[0]
    return x, [m for m in objectives if m != x] or [x]


def pareto_figure(cfg: StudyConfig, o: ClassOutcome) -> go.Figure:
    """Cost against each quality metric: dominated trials faded, the front, baseline and recommendation."""
    x, ys = _axes(cfg)
    fig = make_subplots(rows=1, cols=len(ys), subplot_titles=[f"{title(y)} vs {x}" for y in ys])
    on_front = set(o.front)
    rec = o.recommendation
    marked = {"baseline": rec.baseline.number, "recommended": rec.chosen.number} if rec else {}
    groups = [
        ("dominated", [t for i, t in enumerate(o.trials) if i not in on_front], dict(color="#9aa0a6", size=7), 0.35),
        ("Pareto front", [o.trials[i] for i in o.front], dict(color="#1f77b4", size=9), 1.0),
    ]
    for name in ("baseline", "recommended"):
        style = (
            dict(color="#d62728", size=16, symbol="star")
            if name == "baseline"
            else dict(color="#2ca02c", size=15, symbol="diamond")
        )
        groups.append((name, [t for t in o.trials if marked.get(name) == t.number], style, 1.0))
    for col, y in enumerate(ys, 1):
        for name, trials, style, opacity in groups:
            values = [_values(cfg, t) for t in trials]
            labelled = name in ("baseline", "recommended")
            fig.add_trace(
                go.Scatter(
                    x=[v[x] for v in values],
                    y=[v[y] for v in values],
                    mode="markers+text" if labelled else "markers",
                    text=[name] * len(trials) if labelled else None,
                    textposition="top center",
                    customdata=[[t.number, settings_of(t).label()] for t in trials],
                    hovertemplate=f"#%{{customdata[0]}} %{{customdata[1]}}<br>{x} %{{x:.4g}}<br>{y} %{{y:.4g}}"
                    f"<extra>{name}</extra>",
                    name=name,
                    legendgroup=name,
                    showlegend=col == 1,
                    marker=style,
                    opacity=opacity,
                ),
                row=1,
                col=col,
            )
        fig.update_xaxes(title_text=title(x), type="log" if OBJECTIVES[x].cost else None, row=1, col=col)
        fig.update_yaxes(title_text=title(y), row=1, col=col)
    fig.update_layout(
        title=f"{o.name}: {o.n_completed} completed trials, {len(o.trials)} distinct settings, "
        f"{len(o.front)} on the Pareto front",
        height=460,
        margin=dict(t=90),
    )
    return fig


def steps_figure(cfg: StudyConfig, o: ClassOutcome) -> go.Figure:
    """Best quality reached at each step count, one line per scheduler (and variant)."""
    judged = quality(cfg.metrics.objectives) or list(cfg.metrics.objectives)
    fig = make_subplots(rows=1, cols=len(judged), subplot_titles=[f"{title(m)} vs steps" for m in judged])
    best: dict[str, dict[str, dict[int, float]]] = {m: defaultdict(dict) for m in judged}
    for t in o.trials:
        v, steps, label = _values(cfg, t), settings_of(t).steps, settings_of(t).scheduler_label()
        for m in judged:
            pick = max if OBJECTIVES[m].higher_is_better else min
            seen = best[m][label].get(steps)
            best[m][label][steps] = v[m] if seen is None else pick(seen, v[m])
    labels = sorted(best[judged[0]])
    colors = _palette(len(labels))
    for col, m in enumerate(judged, 1):
        for label, color in zip(labels, colors, strict=True):
            points = sorted(best[m][label].items())
            fig.add_trace(
                go.Scatter(
                    x=[p[0] for p in points],
                    y=[p[1] for p in points],
                    mode="lines+markers",
                    name=label,
                    legendgroup=label,
                    showlegend=col == 1,
                    line=dict(color=color),
                ),
                row=1,
                col=col,
            )
        fig.update_xaxes(title_text="steps", row=1, col=col)
        fig.update_yaxes(title_text=title(m), row=1, col=col)
    fig.update_layout(title=f"{o.name}: best quality per step count and scheduler (any guidance)", height=440)
    return fig


def _palette(n: int) -> list[str]:
    import plotly.colors

    base = plotly.colors.qualitative.Dark24
    return [base[i % len(base)] for i in range(n)]


def hypervolume_figure(cfg: StudyConfig, o: ClassOutcome) -> go.Figure:
    """Hypervolume of the front after each trial, metrics scaled to the class's own range."""
    trials = sorted(o.trials, key=lambda t: t.number)
    history = hypervolume_history([_values(cfg, t) for t in trials], higher(cfg.metrics.objectives))
    fig = go.Figure(
        go.Scatter(x=[t.number for t in trials], y=history, mode="lines+markers", name="hypervolume", line_shape="hv")
    )
    fig.update_layout(
        title=f"{o.name}: hypervolume of the front (metrics scaled to their range; "
        f"the ideal is {1.1 ** len(cfg.metrics.objectives):.3g})",
        xaxis_title="trial",
        yaxis_title="hypervolume",
        height=360,
    )
    return fig


def importances(cfg: StudyConfig, o: ClassOutcome) -> dict[str, dict[str, float]] | None:
    """Optuna's PED-ANOVA importances of scheduler, steps and guidance for reaching each objective's
    best 10 % of trials; None with too few distinct trials.

    PED-ANOVA, not fANOVA: fANOVA's forests took minutes on 100 trials of a space with every
    scheduler (a categorical of 20+ choices), PED-ANOVA takes milliseconds on 10,000.
    """
    import optuna
    from optuna.trial import FrozenTrial

    if len(o.trials) < 3:
        return None
    study = o.load_study()
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i, m in enumerate(cfg.metrics.objectives):
            sign = -float(OBJECTIVES[m].sign)  # PED-ANOVA looks for low target values

            def target(t: FrozenTrial, i: int = i, sign: float = sign) -> float:
                assert t.values is not None
                return sign * t.values[i]

            try:
                out[m] = optuna.importance.get_param_importances(
                    study,
                    evaluator=optuna.importance.PedAnovaImportanceEvaluator(),
                    params=["scheduler", "steps", "guidance"],
                    target=target,
                )
            except (ValueError, RuntimeError):  # e.g. every trial has the same parameters
                return None
    return out


def importance_figure(cfg: StudyConfig, o: ClassOutcome) -> go.Figure | None:
    """One group of bars per parameter: how much it matters for reaching each objective's best trials."""
    found = importances(cfg, o)
    if found is None:
        return None
    params = sorted({p for per in found.values() for p in per})
    fig = go.Figure([go.Bar(name=title(m), x=params, y=[per.get(p, 0.0) for p in params]) for m, per in found.items()])
    fig.update_layout(
        title=f"{o.name}: parameter importances for each objective's best 10 % (Optuna PED-ANOVA)",
        barmode="group",
        yaxis_title="importance",
        height=360,
    )
    return fig


def hypervolume_history(
    points: Sequence[Values], higher_is_better: Mapping[str, bool], resolution: int = 250
) -> list[float]:
    """Hypervolume of the front after each point, every metric scaled to [0, 1] over all points.

    Higher-is-better metrics are flipped; the reference point is 1.1 on every axis, so the
    range's worst point still adds volume. 1.1**d would be a front of one ideal point. With
    more than ``resolution`` points the volume is computed every ``len(points) / resolution``
    points (and after the last), each in between repeating the one before: a 10,000-trial
    study's curve in seconds, not minutes.
    """
    names = list(higher_is_better)
    lo = {m: min(p[m] for p in points) for m in names} if points else {}
    hi = {m: max(p[m] for p in points) for m in names} if points else {}

    def scaled(p: Values) -> tuple[float, ...]:
        out = []
        for m in names:
            x = (p[m] - lo[m]) / (hi[m] - lo[m]) if hi[m] > lo[m] else 0.0
            out.append(1.0 - x if higher_is_better[m] else x)
        return tuple(out)

    stride = max(1, -(-len(points) // resolution))
    history: list[float] = []
    front: list[tuple[float, ...]] = []  # scaled non-dominated points so far
    moved = False  # the front changed since its volume was last computed
    for i, p in enumerate(points):
        q = scaled(p)
        if not any(all(a <= b for a, b in zip(f, q, strict=True)) for f in front):
            front = [f for f in front if not all(a <= b for a, b in zip(q, f, strict=True))] + [q]
            moved = True
        if moved and ((i + 1) % stride == 0 or i == len(points) - 1):
            history.append(hypervolume(front, [1.1] * len(names)))
            moved = False
        else:
            history.append(history[-1] if history else 0.0)
    return history
