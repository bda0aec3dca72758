"""The micro model shipped with autotune: a digits pipeline and the CLIP that scores it, trained here.

``model.id = "micro"`` loads the pipeline (a diffusers folder), ``clip_model = "micro"`` the CLIP
(an open_clip ``local-dir:`` folder), as a user's own folders load. Rebuild with
``python -m autotune.micro.train``. Render it at 32 px.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["clip_dir", "pipeline_dir"]

_HERE = Path(__file__).resolve().parent


def pipeline_dir() -> Path:
    return _HERE / "pipeline"


def clip_dir() -> Path:
    return _HERE / "clip"
