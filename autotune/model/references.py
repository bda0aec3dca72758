"""Reference images, cached by content key in a table beside Optuna's in the study database.

A reference is the "gold" image of one (model, prompt, seed, size, setting): rendered once,
stored as a lossless PNG (8-bit, as served) in ``autotune_references``, and reused by every
later run and every worker sharing the storage. Nothing is pickled.

Example:
    >>> store = ReferenceStore("sqlite:///studies/demo.db")
    >>> refs = store.images(pipeline, Settings("dpmpp_2m_karras", 100, 7.5), prompts, seeds, 64, 64)
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from sqlalchemy import Column, Integer, LargeBinary, MetaData, String, Table, Text, create_engine, select
from sqlalchemy.exc import IntegrityError

from autotune.pipeline import Pipeline, generate
from autotune.space import Settings
from autotune.storage import retry_schema_race

__all__ = [
    "ReferenceStore",
    "check_reference",
    "convergence",
    "decode_png",
    "encode_png",
    "reference_key",
]

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


def reference_key(
    model: str, prompt: str, seed: int, height: int, width: int, settings: Settings, dtype: str, generator: str = "cpu"
) -> str:
    """Content key of a reference image: sha256 of everything that determines its pixels, the
    device kind its noise was drawn on included (a seed draws other noise on CUDA than on the CPU)."""
    data = [model, prompt, seed, height, width, settings.params(), dtype]
    if generator != "cpu":  # keys of CPU references stay as they were before the generator was keyed
        data.append(generator)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def _key(p: Pipeline, prompt: str, seed: int, height: int, width: int, settings: Settings) -> str:
    generator = "cpu" if p.device == "mps" else p.device.split(":")[0]
    dtype = str(p.dtype).removeprefix("torch.")
    return reference_key(p.identity(prompt), prompt, seed, height, width, settings, dtype, generator)


def encode_png(image: torch.Tensor) -> bytes:
    """(3, H, W) float in [0, 1] -> PNG bytes."""
    array = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def decode_png(data: bytes) -> torch.Tensor:
    """PNG bytes -> (3, H, W) float in [0, 1]."""
    array = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255


class ReferenceStore:
    """Reference images in the study's own database (SQLite or PostgreSQL)."""

    def __init__(self, url: str, engine: Any | None = None) -> None:
        self.engine = engine or create_engine(url)
        retry_schema_race(lambda: _META.create_all(self.engine, checkfirst=True))
        self.rendered = 0  # references rendered by this process (0 once cached)

    def _get(self, keys: Sequence[str]) -> dict[str, bytes]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(_REFERENCES.c.key, _REFERENCES.c.png).where(_REFERENCES.c.key.in_(keys)))
            return {k: bytes(png) for k, png in rows}

    def _put(self, row: dict[str, Any]) -> None:
        try:
            with self.engine.begin() as conn:
                conn.execute(_REFERENCES.insert().values(**row))
        except IntegrityError:
            pass  # another worker stored the same reference first: the images are the same

    def find(self, prompt: str, seed: int, settings: Settings) -> bytes | None:
        """The stored PNG of a reference, without a pipeline (for reports); None when never rendered."""
        c = _REFERENCES.c
        query = select(c.png).where(c.prompt == prompt, c.seed == seed, c.setting == json.dumps(settings.params()))
        with self.engine.connect() as conn:
            row = conn.execute(query.limit(1)).first()
        return bytes(row[0]) if row else None

    def contains(self, p: Pipeline, settings: Settings, prompt: str, seed: int, height: int, width: int) -> bool:
        return bool(self._get([_key(p, prompt, seed, height, width, settings)]))

    def images(
        self,
        p: Pipeline,
        settings: Settings,
        prompts: Sequence[str],
        seeds: Sequence[int],
        height: int,
        width: int,
        batch_size: int | str = "auto",
    ) -> torch.Tensor:
        """References for every (prompt, seed), prompt-major; renders only the missing ones."""
        jobs = [(prompt, seed) for prompt in prompts for seed in seeds]
        keys = [_key(p, q, s, height, width, settings) for q, s in jobs]
        found = self._get(keys)
        missing = [i for i, k in enumerate(keys) if k not in found]
        for i in missing:  # one at a time: a reference's pixels must not depend on a batch
            q, s = jobs[i]
            image = generate(p, settings, [q], [s], height, width, batch_size).images[0]
            found[keys[i]] = encode_png(image)
            self._put(
                {
                    "key": keys[i],
                    "model": p.model_id,
                    "prompt": q,
                    "seed": s,
                    "setting": json.dumps(settings.params()),
                    "png": found[keys[i]],
                }
            )
            self.rendered += 1
        return torch.stack([decode_png(found[k]) for k in keys])


CONVERGENCE_LIMIT = 0.01  # LPIPS(N steps, 2N steps) as a share of the seed-to-seed LPIPS


def convergence(p: Pipeline, lpips: Any, settings: Settings, prompt: str, seed: int, height: int, width: int) -> float:
    """How far a setting still moves when its steps double: LPIPS(N, 2N) / LPIPS(seed, seed + 1) at N."""
    import dataclasses

    at_n = generate(p, settings, [prompt], [seed, seed + 1], height, width).images
    at_2n = generate(p, dataclasses.replace(settings, steps=2 * settings.steps), [prompt], [seed], height, width).images
    return float(lpips(at_n[:1], at_2n)[0] / lpips(at_n[:1], at_n[1:2])[0].clamp_min(1e-12))


def _toml(settings: Settings) -> str:
    opts = ", ".join(f"{k} = {json.dumps(v)}" for k, v in settings.options)
    extra = f", options = {{ {opts} }}" if opts else ""
    return f'scheduler = "{settings.scheduler}", steps = {settings.steps}{extra}'


def check_reference(
    p: Pipeline, lpips: Any, reference: Settings, prompt: str, seed: int, height: int, width: int
) -> str | None:
    """``None`` when the reference converges; otherwise why not, and a setting that does."""
    from autotune import schedulers

    ratio = convergence(p, lpips, reference, prompt, seed, height, width)
    if ratio <= CONVERGENCE_LIMIT:
        return None
    n = reference.steps
    why = (
        f"{reference.label()} does not converge: its {n}- and {2 * n}-step images differ by "
        f"{ratio:.1%} of the seed-to-seed LPIPS (limit {CONVERGENCE_LIMIT:.0%})"
    )
    free = {v.name for v in schedulers.variants_of(reference.scheduler)}
    tries = [
        dict(reference.options, **change)
        for key, change in (("timestep_spacing", {"timestep_spacing": "trailing"}), ("sigmas", {"sigmas": "karras"}))
        if key in free
    ]
    candidates = [Settings.make(reference.scheduler, n, reference.guidance, o) for o in tries]
    fallback = p.family.reference[0]
    candidates.append(Settings.make(fallback, n, reference.guidance))
    for c in candidates:
        r = convergence(p, lpips, c, prompt, seed, height, width)
        if r <= CONVERGENCE_LIMIT:
            return f"{why}; this one converges ({r:.2%}): [reference] {_toml(c)}"
    return f"{why}; try more steps or Karras sigmas"
