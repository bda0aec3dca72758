"""Quality metrics: autotune's own, one file each, and a study file's own (``[metrics.custom.NAME]``).
Which exist, their directions and tolerances are the rows of
:data:`autotune.config.objectives.OBJECTIVES`; this module loads the implementation a row names.

Every metric has ``score(images, prompts, references)``: ``images`` a float tensor (N, 3, H, W) in
0..1, one prompt per image, ``references`` the high-step reference images when its row says it is
scored against them (else None); it returns one number per image. Built-in classes are made with
``from_config(metrics, device, home)`` (the study's ``[metrics]``), a study file's with
``Class(device=..., **options)``.

Example:
    >>> lp = load_metric("lpips", cfg.metrics, "cpu", "")
    >>> lp.score(images, prompts, references)
    tensor([...])
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import sys
from collections.abc import Sequence
from typing import Any, Protocol

import torch

from autotune.config import ConfigError
from autotune.config.objectives import OBJECTIVES
from autotune.config.tables import first_line, study_path

__all__ = ["Metric", "import_metric", "load_metric"]


class Metric(Protocol):
    def score(self, images: torch.Tensor, prompts: Sequence[str], references: torch.Tensor | None) -> Any: ...


def import_metric(where: str, home: str, key: str) -> type:
    """The class ``where`` names: ``package.module:Class`` (the study file's folder ``home`` searched
    first) or ``file.py:Class`` (relative to it); what cannot be imported is one line naming ``key``."""
    module, _, name = where.partition(":")
    try:
        if module.endswith(".py"):
            path = study_path(module, home)
            spec = importlib.util.spec_from_file_location(f"autotune_metric_{path.stem}", path)
            if spec is None or spec.loader is None or not path.is_file():
                raise FileNotFoundError(f"no such file {str(path)!r}")
            loaded = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(loaded)
        else:
            added = home and home not in sys.path
            if added:
                sys.path.insert(0, home)
            try:
                loaded = importlib.import_module(module)
            finally:
                if added:
                    sys.path.remove(home)
        return getattr(loaded, name)
    except Exception as e:  # the user's code: any failure to import it is this key's error
        raise ConfigError(f"{key}: cannot load {where!r} ({type(e).__name__}: {first_line(e)})") from None


class Checked:
    """A study file's metric, its scores checked: one finite number per image, as a CPU float tensor."""

    def __init__(self, name: str, metric: Any) -> None:
        self.name, self.metric = name, metric

    def score(self, images: torch.Tensor, prompts: Sequence[str], references: torch.Tensor | None) -> torch.Tensor:
        out = self.metric.score(images, prompts, references)
        values = torch.as_tensor(out.detach().cpu() if isinstance(out, torch.Tensor) else out, dtype=torch.float64)
        if values.shape != (len(images),):
            shape = tuple(values.shape)
            raise ValueError(f"metric {self.name}: expected {len(images)} scores, one per image, got shape {shape}")
        if not all(math.isfinite(v) for v in values.tolist()):
            raise ValueError(f"metric {self.name}: returned a score that is not finite ({values.tolist()})")
        return values


def load_metric(name: str, metrics: Any, device: str, home: str) -> Metric:
    """The implementation objective ``name``'s row names, loaded with the study's ``[metrics]``."""
    row = OBJECTIVES[name]
    assert row.metric is not None, f"{name} is not a quality metric"
    key = f"metrics.custom.{name}"
    cls = import_metric(row.metric, home, f"{key}.score")
    if not row.custom:
        return cls.from_config(metrics, device, home)  # type: ignore[attr-defined]
    try:
        return Checked(name, cls(device=str(device), **row.options))
    except Exception as e:  # the user's constructor: its weights, its options
        raise ConfigError(f"{key}: {row.metric} could not be built ({type(e).__name__}: {first_line(e)})") from None
