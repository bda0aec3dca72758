"""The search space: a :class:`Settings` point and how an Optuna trial suggests one.

Example:
    >>> settings = suggest(trial, cfg.search)
    >>> settings
    Settings(scheduler='dpmpp_2m_karras', steps=12, guidance=6.5)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from autotune.config import SearchConfig, SettingConfig

__all__ = ["Settings", "suggest"]


@dataclass(frozen=True)
class Settings:
    """One inference setting: sampler name (canonical), denoising steps, guidance scale."""

    scheduler: str
    steps: int
    guidance: float

    @classmethod
    def of(cls, setting: SettingConfig) -> Settings:
        return cls(setting.scheduler, setting.steps, setting.guidance)

    def params(self) -> dict[str, Any]:
        """The trial parameters that produce this setting (for ``study.enqueue_trial``)."""
        return asdict(self)


def suggest(trial: Any, space: SearchConfig) -> Settings:
    """Ask an Optuna trial for a setting inside ``space``."""
    return Settings(
        scheduler=trial.suggest_categorical("scheduler", list(space.schedulers)),
        steps=trial.suggest_int("steps", *space.steps),
        guidance=trial.suggest_float("guidance", *space.guidance, step=space.guidance_step),
    )
