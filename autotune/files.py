"""Files a study leaves for people: written whole (temporary name, then rename), checked writable first,
and saying so when their numbers come from random weights.

Example:
    >>> check_writable(cfg.output_dir)       # before the night starts
    >>> atomic_write(cfg.output_dir / "recommendations.json", text)
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from autotune.config import ConfigError
from autotune.families import ResolvedStudy

__all__ = ["RULE_TEXT", "atomic_write", "check_writable", "random_weights_warning", "tolerance_text"]


def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that a kill leaves the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; outputs are as readable as any new file
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_writable(folder: Path) -> None:
    """Fail before the night starts, not after it, when the outputs cannot be written."""
    probe_in = folder if folder.exists() else folder.parent
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{folder}: cannot write the study's outputs there (it is a file, not a folder)")
    try:
        tempfile.TemporaryFile(dir=probe_in).close()
    except OSError as e:
        raise ConfigError(f"{probe_in}: cannot write the study's outputs there ({e.strerror})") from None


def random_weights_warning(cfg: ResolvedStudy) -> str | None:
    """One sentence naming what in the study has random weights (the offline tiny models, a random
    LPIPS backbone), or None.

    Their figures measure a real sampling ODE and real metric code paths, not image quality:
    every place a user reads numbers (table, JSON, report, dashboard note) says so. The shipped
    micro model and its CLIP are trained, so they are not named.
    """
    parts = []
    if cfg.model.id.startswith("tiny"):
        parts.append(f"the model ({cfg.model.id})")
    if cfg.metrics.clip_model == "tiny" and "clip_score" in cfg.metrics.objectives:
        parts.append("the CLIP model (tiny)")
    if cfg.metrics.lpips_backbone == "random" and "lpips" in cfg.metrics.objectives:
        parts.append(f"the LPIPS backbone ({cfg.metrics.lpips_net})")
    if not parts:
        return None
    what = "any image is" if len(parts) > 1 or "LPIPS" not in parts[0] else "two images look alike to a person"
    return f"Random weights: {', '.join(parts)}. Their figures show how autotune works, not how {what}."


RULE_TEXT = (
    "A cheaper setting replaces the baseline when, on every quality metric, the one-sided 95 % bound of its "
    "per-image difference to the baseline (same prompt, same seed; Student's t over the per-prompt means) is "
    "within the tolerance, first on the search (and racing) seeds, then again on the confirmation seeds alone; "
    "cheaper means faster on every timed serving call; of those, the cheapest by fitted cost."
)


def tolerance_text(cfg: Any) -> str:
    """The study file's tolerances in the units it states them in."""
    r = cfg.recommend
    clip = (
        f"{r.clip_tolerance:g} CLIP points"
        if r.clip_tolerance is not None
        else (f"CLIP {r.clip_tolerance_sd:g} x the baseline's seed-to-seed standard deviation")
    )
    return f"{clip}, LPIPS {r.lpips_tolerance:g} x seed-to-seed LPIPS"
