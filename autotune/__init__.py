"""autotune: the cheapest Stable Diffusion inference settings that still look right.

Example:
    >>> import autotune
    >>> cfg = autotune.load_config("studies/demo.toml")
    >>> outcomes = autotune.run_study(cfg)
    >>> outcomes["portrait"].recommendation.speedup
"""

from __future__ import annotations

from autotune.config import ConfigError, StudyConfig, load_config
from autotune.space import Settings
from autotune.study import recommend, run_study

__all__ = ["ConfigError", "Settings", "StudyConfig", "load_config", "recommend", "run_study"]
__version__ = "0.1.0"
