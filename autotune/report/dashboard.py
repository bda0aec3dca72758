"""What optuna-dashboard shows of a study beside Optuna's own views: per class the recommendation as the
study's note (markdown, with the diffusers code) and the Pareto figure.

Example:
    >>> publish(outcomes.cfg, outcomes)
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Mapping
from typing import Any

from autotune.config import ConfigError
from autotune.config.resolve import ResolvedStudy
from autotune.results.reader import ClassOutcome
from autotune.results.schema import recommendations_data

__all__ = ["publish"]


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
        f"pipe.scheduler = {x['scheduler_class']}.from_config(pipe.scheduler.config{overrides})\n"
        f"image = pipe(prompt, {kwargs}).images[0]\n```\n\n"
        f"{d['trials_completed']} completed trials, {d['trials_failed']} failed, "
        f"{d['pareto_front_size']} on the Pareto front (see the plot below and `report.html`)."
    )


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
        save_note(study, _note(data["classes"][c]) + warning)
        if o.trials:
            save_plotly_graph_object(study, pareto_figure(cfg, o), graph_object_id="pareto-front")
