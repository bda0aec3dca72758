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

``import autotune`` is light: the study machinery (Optuna, SQLAlchemy) and the router load on
first use of ``run_study``, ``recommend`` or ``Router``.

The package is laid out on floors, each importing only from its own and lower ones (docs/layout.md;
``tests/test_layout.py`` keeps it so), bottom first: ``process``, ``testing``, ``noise``, ``records``
(what a study stores) · ``micro`` · ``space`` (schedulers, families, settings) · ``config`` (study
files) · ``decision`` (the rule, pure math), ``files`` · ``store`` (Optuna's storage), ``weights`` ·
``results`` (a study read back, ``recommendations.json``), ``model`` (pipeline, rendering, metrics) ·
``study`` (the trial loop, racing) · ``report``, ``serving`` (apply, route, export) · ``validate`` ·
``parity`` · ``arguments`` · ``cli``. The read side never imports the model side but for the report's grid.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from autotune.config import ConfigError, StudyConfig, load_config
from autotune.noise import noise_seed
from autotune.results.recommendations_file import ClassRecommendation, Recommendations, load_recommendations
from autotune.serving.apply import apply
from autotune.space.settings import Settings

if TYPE_CHECKING:
    from autotune.results.reader import recommend
    from autotune.serving.router import Router
    from autotune.study.run import run_study

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
    "noise_seed",
    "recommend",
    "run_study",
]
__version__ = "0.1.0"
_LAZY = {"Router": "autotune.serving.router", "recommend": "autotune.results.reader", "run_study": "autotune.study.run"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'autotune' has no attribute {name!r}")
