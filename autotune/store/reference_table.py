"""The reference-image table beside Optuna's, and the names that key an image.

Reference images live in ``autotune_references`` in the study's own database, keyed by content
(:func:`reference_key`), so every worker and every reader (the report) finds the same image. It needs
only SQLAlchemy.

Example:
    >>> ReferenceTable("sqlite:///studies/demo.db").find(reference_key(...))
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Column, Integer, LargeBinary, MetaData, String, Table, Text, create_engine, select
from sqlalchemy.exc import IntegrityError

from autotune.noise import noise_seed
from autotune.space.settings import Settings
from autotune.store.storage import retry_schema_race

__all__ = ["ReferenceTable", "generator_kind", "image_name", "model_identity", "reference_key"]


def image_name(prompt_index: int, seed: int) -> str:
    """Artifact file name of one trial image; the prompt's text is in the study's ``prompts`` attribute."""
    return f"prompt{prompt_index}_seed{seed}.png"


_META = MetaData()
_REFERENCES = Table(
    "autotune_references",
    _META,
    Column("key", String(64), primary_key=True),
    Column("model", Text, nullable=False),
    Column("prompt", Text, nullable=False),
    Column("seed", Integer, nullable=False),
    Column("setting", Text, nullable=False),
    Column("png", LargeBinary, nullable=False),
)


def model_identity(model_id: str, adds: Mapping[str, Any], call: Mapping[str, Any], negative: str | None) -> str:
    """The model and what production adds to one prompt's call (VAE, LoRAs, ``[call]``, its negative prompt)."""
    extra = {k: v for k, v in {**adds, "call": dict(call), "negative_prompt": negative}.items() if v}
    return model_id if not extra else f"{model_id} {json.dumps(extra, sort_keys=True)}"


def generator_kind(device: str) -> str:
    """Where a seed's noise is drawn: the device kind (MPS draws on the CPU)."""
    kind = device.split(":")[0]
    return "cpu" if kind == "mps" else kind


def reference_key(
    identity: str, prompt: str, seed: int, height: int, width: int, settings: Settings, dtype: str, generator: str
) -> str:
    """Content key of a reference image: sha256 of everything that determines its pixels, its own noise
    (the generator seed of image ``seed`` of ``prompt``) and the device kind that noise is drawn on
    included (a seed draws other noise on CUDA than on the CPU)."""
    data = [identity, prompt, {"noise": noise_seed(prompt, seed)}, height, width, settings.params(), dtype]
    if generator != "cpu":  # keys of CPU references stay as they were before the generator was keyed
        data.append(generator)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


class ReferenceTable:
    """Reference images as PNG rows in the study's own database (SQLite or PostgreSQL); nothing is pickled."""

    def __init__(self, url: str, engine: Any | None = None) -> None:
        self.engine = engine or create_engine(url)
        retry_schema_race(lambda: _META.create_all(self.engine, checkfirst=True))

    def get(self, keys: Sequence[str]) -> dict[str, bytes]:
        """The stored PNGs of those ``keys`` that are stored."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(_REFERENCES.c.key, _REFERENCES.c.png).where(_REFERENCES.c.key.in_(keys)))
            return {k: bytes(png) for k, png in rows}

    def find(self, key: str) -> bytes | None:
        return self.get([key]).get(key)

    def put(self, key: str, model_id: str, prompt: str, seed: int, settings: Settings, png: bytes) -> None:
        row = {"key": key, "model": model_id, "prompt": prompt, "seed": noise_seed(prompt, seed)}
        row["setting"] = json.dumps(settings.params())
        try:
            with self.engine.begin() as conn:
                conn.execute(_REFERENCES.insert().values(**row, png=png))
        except IntegrityError:
            pass  # another worker stored the same reference first: the images are the same
