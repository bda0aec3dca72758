"""autotune: the cheapest Stable Diffusion inference settings that still look right.

Example:
    >>> import autotune
    >>> cfg = autotune.load_config("studies/demo.toml")
    >>> outcomes = autotune.run_study(cfg)
    >>> outcomes["portrait"].recommendation.speedup

In serving code:
    >>> recs = autotune.load_recommendations("studies/demo/recommendations.json")
    >>> router = autotune.Router.from_study(recs)
    >>> name, similarity = router.route(prompt)
    >>> image = pipe(prompt, **autotune.apply(pipe, recs[name])).images[0]
"""

from __future__ import annotations

from autotune.config import ConfigError, StudyConfig, load_config
from autotune.router import Router
from autotune.serving import ClassRecommendation, Recommendations, apply, load_recommendations
from autotune.space import Settings
from autotune.study import recommend, run_study

__all__ = [
    "ClassRecommendation",
    "ConfigError",
    "Recommendations",
    "Router",
    "Settings",
    "StudyConfig",
    "apply",
    "load_config",
    "load_recommendations",
    "recommend",
    "run_study",
]
__version__ = "0.1.0"
