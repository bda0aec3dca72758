"""``autotune report --render-grid``: a full steps x scheduler grid per class, rendered for the report.
The one part of the read side that loads the model.

Example:
    >>> write_report(cfg, outcomes, grid=render_grid(cfg, outcomes))
"""

from __future__ import annotations

from collections.abc import Mapping

from autotune.config.resolve import ResolvedStudy
from autotune.report.html import GridImages, recommended_guidance, spread
from autotune.results.reader import ClassOutcome
from autotune.space.settings import Settings

__all__ = ["render_grid"]


def render_grid(cfg: ResolvedStudy, outcomes: Mapping[str, ClassOutcome], device: str | None = None) -> GridImages:
    """Render a full steps x scheduler grid per class: first prompt and seed, recommended guidance,
    with the calls production makes (the study's ``[call]`` and each class's negative prompt)."""
    from autotune.model.pipeline import Calls, load_pipeline
    from autotune.model.references import encode_png
    from autotune.model.render import generate

    p = load_pipeline(cfg.model, device, cfg.serving.safety_checker, calls=Calls.of(cfg))
    lo, hi = cfg.search.steps
    ladder = spread([round(lo * (hi / lo) ** (i / 5)) for i in range(6)], 6)
    out: GridImages = {}
    for c, o in outcomes.items():
        guidance = recommended_guidance(cfg, o)
        prompt, seed = cfg.classes[c][0], cfg.search.seeds[0]
        out[c] = {}
        for name in cfg.search.schedulers:
            for n in ladder:
                s = Settings.make(name, n, guidance)
                image = generate(p, s, [prompt], [seed], cfg.model.height, cfg.model.width).images[0]
                out[c][(s.scheduler_label(), n)] = encode_png(image)
    return out
