"""Quality metrics, one file each; which exist, and their directions, are declared in
:data:`autotune.config.objectives.OBJECTIVES` (a new metric: a file here and a line there).

Every metric class has ``from_config(metrics, device, home)`` (the study's ``[metrics]``) and
``score(images, prompts, references)`` (per-image values; ``references`` when the objective says it
is scored against the reference image).

Example:
    >>> lp = load_metric("lpips", cfg.metrics, "cpu", "")
    >>> lp.score(images, prompts, references)
    tensor([...])
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any, Protocol

import torch

from autotune.config.objectives import OBJECTIVES

__all__ = ["Metric", "load_metric"]


class Metric(Protocol):
    def score(self, images: torch.Tensor, prompts: Sequence[str], references: torch.Tensor | None) -> torch.Tensor: ...


def load_metric(name: str, metrics: Any, device: str, home: str) -> Metric:
    """The implementation the objective ``name`` declares, loaded with the study's ``[metrics]``."""
    where = OBJECTIVES[name].metric
    assert where is not None, f"{name} is not a quality metric"
    module, _, cls = where.partition(":")
    return getattr(importlib.import_module(module), cls).from_config(metrics, device, home)
