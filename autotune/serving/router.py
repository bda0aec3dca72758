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

import json
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from autotune.results.schema import DEFAULT_CLASS, Recommendations, load_recommendations
from autotune.weights.clip import TextEncoder, centroid, load_text_encoder

__all__ = ["Router", "suggest_classes"]


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


_STOP = frozenset(
    {
        "a",
        "an",
        "the",
        "of",
        "in",
        "on",
        "at",
        "with",
        "and",
        "or",
        "for",
        "from",
        "into",
        "over",
        "under",
        "by",
        "to",
        "its",
        "their",
        "this",
        "that",
        "very",
        "photo",
        "image",
    }
)


def _name(prompts: Sequence[str], taken: set[str]) -> str:
    """A class name from the cluster's most frequent content word: ``portrait``, ``landscape_2``."""
    words = Counter(
        w for p in prompts for w in re.findall(r"[a-z]+", p.lower()) if len(w) > 2 and w not in _STOP
    ).most_common(1)
    base = words[0][0] if words else "class"
    name, i = base, 2
    while name in taken:
        name, i = f"{base}_{i}", i + 1
    taken.add(name)
    return name


def suggest_classes(prompts: Sequence[str], k: int, encode: TextEncoder, per_class: int = 8) -> str:
    """k-means (k clusters, cosine geometry) on a prompt log's embeddings, as ``[classes.*]`` TOML.

    Each class lists its ``per_class`` most central prompts (those nearest its centroid): a study
    needs representative prompts, not the whole log. Raises ValueError when k does not fit.
    """
    from sklearn.cluster import KMeans

    unique = list(dict.fromkeys(prompts))
    if not 1 <= k <= len(unique):
        raise ValueError(f"--k: expected 1..{len(unique)} (the number of distinct prompts), got {k}")
    emb = encode(unique)
    labels = KMeans(n_clusters=k, n_init=10, random_state=0).fit_predict(emb)
    clusters = []
    for j in range(k):
        idx = np.flatnonzero(labels == j)
        c = centroid(emb[idx])
        order = idx[np.argsort(-(emb[idx] @ c))]
        clusters.append([unique[i] for i in order])
    clusters.sort(key=len, reverse=True)
    taken: set[str] = set()
    out = [f"# {k} prompt classes from {len(prompts)} prompts ({len(unique)} distinct), by k-means on CLIP text"]
    for members in clusters:
        name = _name(members, taken)
        shown = members[:per_class]
        out.append(f"\n[classes.{name}]  # {len(members)} prompts; the {len(shown)} nearest its centre")
        out.append("prompts = [\n" + "".join(f"    {json.dumps(p, ensure_ascii=False)},\n" for p in shown) + "]")
    return "\n".join(out) + "\n"
