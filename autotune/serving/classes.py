"""From a request log to a study's prompt classes: ``autotune classes suggest``.

The log is a text file (one request's prompt per line) or JSON lines (``{"prompt": ..., "count": n}``,
``count`` optional); a prompt that repeats is traffic, not noise, and counts every time. The distinct
prompts are embedded with the study's CLIP text encoder (the router's) and clustered by k-means on
the unit sphere; ``k``, when not given, is the one of 2..``max_k`` with the highest mean silhouette
(cosine), each k's value printed. Each class's study prompts are a **sample** of its members, not
its most typical ones: its members sorted from most to least like the class centre are cut into
``per_class`` equal strata and one prompt is drawn (seeded) from each, so the study sees the class's
edges as production does. The other members are the class's held-out prompts, for ``autotune
validate``; each class records its traffic share (its requests over the log's).

Example:
    >>> log = read_log("requests.jsonl")
    >>> found = suggest(log, load_text_encoder("glyphs"), k=None)
    >>> found.k, [c.share for c in found.classes]
    (2, [0.6, 0.4])
"""

from __future__ import annotations

import itertools
import json
import random
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autotune.config.tables import ConfigError, read_text
from autotune.weights.clip import TextEncoder, centroid

__all__ = ["Suggested", "SuggestedClass", "holdout_text", "read_log", "study_text", "suggest", "suggest_file"]

_STOP = frozenset({"a", "an", "the", "of", "in", "on", "at", "with", "and", "or", "for", "from", "into", "over",
                   "under", "by", "to", "its", "their", "this", "that", "very", "photo", "image"})  # fmt: skip


def read_log(path: Path) -> dict[str, int]:
    """Each distinct prompt of a request log and its number of requests, in first-seen order. JSON lines
    when the file ends in ``.jsonl`` or its first line is an object; a bad line is one error naming it."""
    text = read_text(path, "request log")
    lines = [(i, line.strip()) for i, line in enumerate(text.splitlines(), 1)]
    lines = [(i, line) for i, line in lines if line and not line.startswith("#")]
    as_json = path.suffix == ".jsonl" or (bool(lines) and lines[0][1].startswith("{"))
    counts: Counter[str] = Counter()
    for i, line in lines:
        prompt, count = _entry(line, path, i) if as_json else (line, 1)
        counts[prompt] += count
    if not counts:
        raise ConfigError(f"{path}: expected one request per line (a prompt, or a JSON object with one), found none")
    return dict(counts)


def _entry(line: str, path: Path, i: int) -> tuple[str, int]:
    where = f"{path}:{i}"
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{where}: expected a JSON object, not valid JSON ({e.msg})") from None
    if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
        raise ConfigError(f'{where}: expected an object with a non-empty "prompt" string, got {line[:80]}')
    count = row.get("count", 1)
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ConfigError(f'{where}: "count": expected a positive integer (requests of this prompt), got {count!r}')
    return row["prompt"].strip(), count


@dataclass(frozen=True)
class SuggestedClass:
    name: str
    prompts: tuple[str, ...]  # the study's sample of the class
    held_out: tuple[str, ...]  # the class's other members
    requests: int  # requests of the log this class receives, duplicates counted
    share: float  # requests / the log's requests


@dataclass(frozen=True)
class Suggested:
    k: int
    scores: dict[int, float]  # the mean silhouette of each k tried (empty: k was given)
    classes: list[SuggestedClass]
    requests: int
    distinct: int


def _silhouette(emb: np.ndarray, labels: np.ndarray) -> float:
    from sklearn.metrics import silhouette_score

    return float(silhouette_score(emb, labels, metric="cosine"))


def _kmeans(emb: np.ndarray, k: int, seed: int) -> np.ndarray:
    from sklearn.cluster import KMeans

    return np.asarray(KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(emb))


def suggest(
    counts: Mapping[str, int], encode: TextEncoder, k: int | None, per_class: int = 16, seed: int = 0,
    max_k: int = 8,
) -> Suggested:  # fmt: skip
    """The classes of a log (``read_log``): ``k`` of them, or the k of 2..``max_k`` with the highest
    mean silhouette. Raises ValueError when ``k`` does not fit the distinct prompts."""
    unique = list(counts)
    if k is not None and not 1 <= k <= len(unique):
        raise ValueError(f"--k: expected 1..{len(unique)} (the log's distinct prompts), got {k}")
    if k is None and len(unique) < 3:
        raise ValueError(f"expected at least 3 distinct prompts to choose k, found {len(unique)}")
    emb = encode(unique)
    scores: dict[int, float] = {}
    if k is None:
        fits = {j: _kmeans(emb, j, seed) for j in range(2, min(max_k, len(unique) - 1) + 1)}
        scores = {j: _silhouette(emb, labels) for j, labels in fits.items()}
        k = max(scores, key=lambda j: scores[j])
        labels = fits[k]
    else:
        labels = _kmeans(emb, k, seed)
    total = sum(counts.values())
    rng = random.Random(seed)
    found: list[SuggestedClass] = []
    clusters = []
    for j in range(k):
        idx = np.flatnonzero(labels == j)
        clusters.append([unique[i] for i in idx[np.argsort(-(emb[idx] @ centroid(emb[idx])), kind="stable")]])
    for name, order in zip(_names(clusters), clusters, strict=True):
        sample = _stratified(order, min(per_class, max(len(order) - 1, 1)), rng)
        requests = sum(counts[p] for p in order)
        held = tuple(p for p in order if p not in set(sample))
        found.append(SuggestedClass(name, tuple(sample), held, requests, requests / total))
    found.sort(key=lambda c: -c.requests)
    return Suggested(k, scores, found, total, len(unique))


def _stratified(members: Sequence[str], n: int, rng: random.Random) -> list[str]:
    """One member drawn from each of ``n`` equal strata of ``members`` (most typical first)."""
    edges = [round(i * len(members) / n) for i in range(n + 1)]
    return [members[rng.randrange(a, b)] for a, b in itertools.pairwise(edges) if b > a]


def _words(prompts: Sequence[str]) -> Counter[str]:
    """In how many of the prompts each word (not a stop word) occurs."""
    return Counter(w for p in prompts for w in set(re.findall(r"[a-z]+", p.lower())) if len(w) > 2 and w not in _STOP)


def _names(clusters: Sequence[Sequence[str]]) -> list[str]:
    """Each cluster named after its most distinctive word: the one whose share of the cluster's prompts
    most exceeds its share of the other clusters' ("bold" rather than "background"); where another
    class has that name, after its best word and its next ("blue" and "blue_background", not "blue_2")."""
    counts = [_words(c) for c in clusters]
    everywhere = sum(counts, Counter())
    total = sum(len(c) for c in clusters)
    names: list[str] = []
    for members, own in zip(clusters, counts, strict=True):
        rest = max(total - len(members), 1)
        score = {w: n / len(members) - (everywhere[w] - n) / rest for w, n in own.items()}
        ranked = sorted(score, key=lambda w: (-score[w], w)) or ["class"]
        tries = [ranked[0], *(f"{ranked[0]}_{w}" for w in ranked[1:])]
        name = next((n for n in tries if n not in names), None)
        i = 2
        while name is None or name in names:
            name, i = f"{ranked[0]}_{i}", i + 1
        names.append(name)
    return names


def study_text(
    found: Suggested, log: Path, name: str, template: str | None, clip: tuple[str, str | None] = ("tiny", None)
) -> str:
    """A study file: the template's tables (its classes dropped) with the suggested classes, each with
    its traffic share; without a template, the defaults (a random tiny model: set [model] id) and the
    CLIP the classes were found with (the router's)."""
    if template is not None:
        head = _without_classes(template)
    else:
        pretrained = f"\nclip_pretrained = {json.dumps(clip[1])}" if clip[1] else ""
        model = '[model]\nid = "tiny"  # set your model here\n'
        head = f"{model}\n[metrics]\nclip_model = {json.dumps(clip[0])}{pretrained}\n"
    what = f"{found.k} classes (k given)" if not found.scores else f"k = {found.k}, the highest mean silhouette"
    out = [
        f'name = "{name}"',
        f"# classes from {log.name}: {found.requests} requests, {found.distinct} distinct prompts; {what};",
        "# each class's prompts a stratified sample of its members (one per stratum of similarity to its",
        "# centre, seeded); the other members are in the held-out file; traffic = the class's share of requests",
        head.rstrip(),
        "",
    ]
    for c in found.classes:
        out.append(f"[classes.{c.name}]  # {c.requests} of {found.requests} requests; {len(c.prompts)} of "
                   f"{len(c.prompts) + len(c.held_out)} distinct prompts")  # fmt: skip
        out.append(f"traffic = {c.share:.4f}")
        out.append("prompts = [\n" + "".join(f"    {json.dumps(p, ensure_ascii=False)},\n" for p in c.prompts) + "]")
        out.append("")
    return "\n".join(out)


def holdout_text(found: Suggested) -> str:
    """The held-out prompts, one per line, each class's under a ``# classes.NAME`` comment."""
    out = ["# held-out prompts: members of each class the study does not render (autotune validate --prompts)"]
    for c in found.classes:
        out += [f"# classes.{c.name}", *c.held_out]
    return "\n".join(out) + "\n"


def _without_classes(text: str) -> str:
    """A study file's text without its ``[classes.*]`` tables."""
    out, skipping, top = [], False, True
    for line in text.splitlines():
        header = re.match(r"\s*\[\s*([A-Za-z0-9_.\-\"]+)\s*\]", line)
        if header:
            skipping, top = header.group(1).split(".")[0] == "classes", False
        if not skipping and not (top and re.match(r"\s*name\s*=", line)):  # the new file has its own name
            out.append(line)
    return "\n".join(out) + "\n"


def suggest_file(
    log: Path, out: Path, *, k: int | None, max_k: int, per_class: int, seed: int, clip: tuple[str, str | None],
    template: Path | None,
) -> str:  # fmt: skip
    """``autotune classes suggest``: read the log, cluster it, write the study file ``out`` and its
    held-out prompts beside it (``NAME_holdout.txt``); what to print. Nothing is written on an error."""
    import sys

    from autotune.config import load_config
    from autotune.files import atomic_write
    from autotune.weights.clip import load_text_encoder

    name = out.stem
    if out.suffix != ".toml" or not name.replace("_", "").replace("-", "").isalnum():
        raise ConfigError(f"--out: expected a study file NAME.toml (NAME of letters, digits, '_' or '-'), got {out}")
    holdout = out.with_name(f"{name}_holdout.txt")
    for path in (out, holdout):
        if path.exists():
            raise ConfigError(f"{path}: exists; expected a new file (a study's file and database are kept as they are)")
    counts = read_log(log)
    if k is not None and k > len(counts):
        raise ConfigError(f"{log}: --k: expected 1..{len(counts)} (the log's distinct prompts), got {k}")
    home, text = "", None
    if template is not None:
        cfg = load_config(template)
        clip, home, text = (
            (cfg.metrics.clip_model, cfg.metrics.clip_pretrained),
            str(cfg.directory),
            template.read_text(),
        )
    if clip[0] == "tiny":
        print("autotune: warning: the CLIP model is 'tiny', random weights: its clusters group prompts by their "
              "characters, not their themes (--clip-model/--clip-pretrained or --study name a trained one)",
              file=sys.stderr)  # fmt: skip
    try:
        found = suggest(counts, load_text_encoder(*clip, home=home), k, per_class, seed, max_k)
    except ValueError as e:
        raise ConfigError(f"{log}: {e}") from None
    for j, score in found.scores.items():
        print(f"k = {j}: mean silhouette {score:.3f}{'  <- chosen' if j == found.k else ''}", file=sys.stderr)
    atomic_write(out, study_text(found, log, name, text, clip))
    atomic_write(holdout, holdout_text(found))
    lines = [f"{found.k} classes from {found.requests} requests ({found.distinct} distinct prompts):"]
    for c in found.classes:
        lines.append(
            f"  {c.name}: {c.share:.1%} of requests, {len(c.prompts)} study prompts, {len(c.held_out)} held out"
        )
    lines += [f"wrote {out} and {holdout}", f"next: autotune study {out}"]
    return "\n".join(lines)
