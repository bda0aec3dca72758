"""Prompt classes in production: send a new prompt to the nearest class by CLIP text embedding.

A class is the normalised mean of its study prompts' embeddings, from the study's own CLIP text
encoder (stored in ``recommendations.json``). A prompt whose best cosine similarity is below
the threshold goes to ``"default"`` (serve it the baseline).

Example:
    >>> router = Router.from_study("studies/demo.toml")
    >>> router.route("a portrait of a sailor")
    ('portrait', 0.93)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from autotune.results.recommendations_file import DEFAULT_CLASS, Recommendations, load_recommendations
from autotune.weights.clip import TextEncoder, load_text_encoder

__all__ = ["Router"]


class Router:
    """Nearest class centroid by cosine similarity, with a ``default`` class below ``threshold``."""

    def __init__(self, centroids: Mapping[str, Sequence[float]], encode: TextEncoder, threshold: float) -> None:
        self.classes = list(centroids)
        self.matrix = np.stack([np.asarray(v, dtype=np.float32) for v in centroids.values()])
        self.encode = encode
        self.threshold = threshold

    @classmethod
    def from_study(
        cls, source: str | Path | Recommendations, *, threshold: float | None = None, device: str = "cpu"
    ) -> Router:
        """The router of a study: ``studies/NAME.toml``, its ``recommendations.json``, or those loaded."""
        recs = source if isinstance(source, Recommendations) else load_recommendations(source)
        r = recs.router
        if not r.get("centroids"):
            where = recs.path or recs.study
            raise ValueError(f"{where}: has no router data; rerun `autotune study` or `autotune report` to add it")
        encode = load_text_encoder(r["clip_model"], r.get("clip_pretrained"), device)
        return cls(r["centroids"], encode, r["threshold"] if threshold is None else threshold)

    def route_many(self, prompts: Sequence[str]) -> list[tuple[str, float]]:
        """``(class, similarity)`` for each prompt, encoded in batches."""
        if not prompts:
            return []
        sims = self.encode(prompts) @ self.matrix.T
        best = sims.argmax(axis=1)
        return [
            (self.classes[j] if s[j] >= self.threshold else DEFAULT_CLASS, float(s[j]))
            for s, j in zip(sims, best, strict=True)
        ]

    def route(self, prompt: str) -> tuple[str, float]:
        """The class of one prompt and its cosine similarity to that class's centroid."""
        return self.route_many([prompt])[0]
