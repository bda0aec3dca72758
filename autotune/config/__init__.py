"""Study files: read, checked and resolved against the model family, before anything renders.

``study`` (the file's dataclasses), ``load`` (:func:`load_config`: the file read and checked), ``schema``
(TOML against dataclasses), ``prompts`` (classes and ``[call]``), ``objectives`` (each metric's row: its
direction, tolerance and display, declared once) and ``resolve`` (the one place a study file meets its
model family).

Example:
    >>> cfg = load_config("studies/demo.toml")
    >>> cfg.search.seeds
    (0, 1, 2, 3)
"""

from __future__ import annotations

from autotune.config.load import load_config
from autotune.config.study_file import (
    CustomMetricConfig,
    MetricsConfig,
    ModelConfig,
    RecommendConfig,
    ReportConfig,
    SearchConfig,
    ServingConfig,
    SettingConfig,
    StorageConfig,
    StudyConfig,
)
from autotune.config.tables import ConfigError, ConfigWarning

__all__ = [
    "ConfigError",
    "ConfigWarning",
    "CustomMetricConfig",
    "MetricsConfig",
    "ModelConfig",
    "RecommendConfig",
    "ReportConfig",
    "SearchConfig",
    "ServingConfig",
    "SettingConfig",
    "StorageConfig",
    "StudyConfig",
    "load_config",
]
