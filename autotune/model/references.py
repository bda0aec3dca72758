"""Reference images: the "gold" image of one (model, prompt, seed, size, setting), rendered once, kept as
a lossless PNG (8-bit, as served) in the study database's reference table, reused by every later run
and every worker on the storage; and the check that a reference setting converges at all.

Example:
    >>> store = ReferenceStore("sqlite:///studies/demo.db")
    >>> refs = store.images(pipeline, Settings.make("dpmpp_2m_karras", 100, 7.5), prompts, seeds, 64, 64)
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from autotune.model.pipeline import Pipeline
from autotune.model.render import generate, render_pairs
from autotune.space import schedulers
from autotune.space.settings import Settings
from autotune.store.reference_table import ReferenceTable, generator_kind, reference_key

__all__ = ["CONVERGENCE_LIMIT", "ReferenceStore", "check_reference", "convergence", "decode_png", "encode_png"]


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


def _key(p: Pipeline, prompt: str, seed: int, height: int, width: int, settings: Settings) -> str:
    dtype = str(p.dtype).removeprefix("torch.")
    return reference_key(p.identity(prompt), prompt, seed, height, width, settings, dtype, generator_kind(p.device))


class ReferenceStore:
    """References rendered with a pipeline, read from and written to the study's reference table."""

    def __init__(self, url: str, engine: Any | None = None) -> None:
        self.table = ReferenceTable(url, engine)
        self.rendered = 0  # references rendered by this process (0 once cached)

    def contains(self, p: Pipeline, settings: Settings, prompt: str, seed: int, height: int, width: int) -> bool:
        return bool(self.table.get([_key(p, prompt, seed, height, width, settings)]))

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
        found = self.table.get(keys)
        missing = list(dict.fromkeys(i for i, k in enumerate(keys) if k not in found))
        if missing:  # in batches: another batch moves a pixel by 2/255 at most, and what is stored is what counts
            rendered = render_pairs(p, settings, [jobs[i] for i in missing], height, width, batch_size).images
            for i, image in zip(missing, rendered, strict=True):
                q, s = jobs[i]
                found[keys[i]] = encode_png(image)
                self.table.put(keys[i], p.model_id, q, s, settings, found[keys[i]])
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
