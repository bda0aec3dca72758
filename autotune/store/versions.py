"""Study names, fingerprints and versions: which stored trials a study file may be compared with.
Pure: the storage is read through the two functions the caller passes (Optuna's storage while a
study runs, the fast reader's tables when reading one back).

Example:
    >>> version, resolved = find_version(cfg, names, attrs_of)
    >>> study_name(cfg, "portrait", version)
    'demo.portrait'
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Collection, Mapping
from typing import Any

from autotune.config import ConfigError, StudyConfig
from autotune.config.resolve import ResolvedStudy, resolve
from autotune.decision.panel import Panel
from autotune.noise import NOISE
from autotune.records import study_record
from autotune.space import schedulers
from autotune.space.families import FAMILIES

__all__ = ["MEASURED", "find_version", "fingerprint", "study_name"]

# measured where the study runs (no model is loaded to read a study back): compared only when running
MEASURED = ("device", "dtype", "weights")
# added to the fingerprint after studies were stored without them: compared when the stored one has them
_LATER = ("baseline", "revision", "held_out", *MEASURED)


def study_name(cfg: StudyConfig, class_name: str, version: int = 1) -> str:
    """``NAME.CLASS``; a study started afresh with ``--new-version`` is ``NAME.vN.CLASS``."""
    return f"{cfg.name}.{class_name}" if version == 1 else f"{cfg.name}.v{version}.{class_name}"


def _setting(s: Any, follows_trial: bool = False) -> dict[str, Any]:
    return {
        "scheduler": s.scheduler,
        "steps": s.steps,
        "guidance": "trial" if follows_trial else s.guidance,
        "options": dict(s.options),
    }


def fingerprint(cfg: ResolvedStudy, class_name: str, measured: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What makes two runs' metrics comparable: model (and its revision), size, metrics, family, the
    baseline every candidate is compared with, the reference, seeds, the class's prompts (a trial's
    metrics are means over them), the prompts confirmation holds out of the search, how production calls
    the pipeline (the cost objective times that call) and ``measured``: the device kind, dtype and weights
    digest it renders with."""
    ref = cfg.reference
    prompts = list(cfg.classes[class_name])
    return {
        **{k: v for k, v in (measured or {}).items() if v is not None},
        "serving": dataclasses.asdict(cfg.serving),
        "model": cfg.model.id,
        "revision": cfg.model.revision,
        "size": [cfg.model.height, cfg.model.width],
        "objectives": list(cfg.metrics.objectives),
        "clip": [cfg.metrics.clip_model, cfg.metrics.clip_pretrained],
        "lpips": [cfg.metrics.lpips_net, cfg.metrics.lpips_backbone],
        **_custom(cfg),
        "family": cfg.family.name,
        "baseline": _setting(cfg.baseline),
        "reference": _setting(ref, ref.follows_trial),
        "seeds": list(cfg.search.seeds),
        "noise": NOISE,
        "prompts": prompts,
        "held_out": list(Panel.of(len(prompts), cfg.search, cfg.recommend).held_prompts),
        **_production(cfg, class_name),
    }


def _custom(cfg: ResolvedStudy) -> dict[str, Any]:
    """A study file's own metrics as far as they make scores: the class, its options, what it is scored
    against (its tolerance is the rule's, not the data's); absent when none (older studies compare equal)."""
    rows = {n: [c.score, c.reference, dict(sorted(c.options.items()))] for n, c in cfg.metrics.custom.items()}
    return {"custom_metrics": rows} if rows else {}


def _production(cfg: ResolvedStudy, class_name: str) -> dict[str, Any]:
    """What production adds to the model and every call; absent when nothing (older studies compare equal)."""
    out = {"model": cfg.model.additions(), "call": cfg.call_for(class_name)}
    return {"production": {k: v for k, v in out.items() if v}} if any(out.values()) else {}


def _changes(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """What differs between two fingerprints, as ``key old -> new``."""
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _changes(a, b, f"{prefix}{k}.")
        elif isinstance(a, list) and isinstance(b, list) and k == "prompts":
            out += _entries(f"{prefix}{k}", a, b)
        elif a != b and k == "noise" and a is None:
            out.append("noise: stored when every prompt shared one noise per seed; each image now draws its own")
        elif a != b:
            out.append(f"{prefix}{k} {a!r} -> {b!r}")
    return out


def _entries(key: str, old: list[Any], new: list[Any], most: int = 3) -> list[str]:
    """The entries of a list that changed, as ``key[i] old -> new`` (at most ``most``, then a count)."""

    def short(x: Any) -> str:
        text = repr(x)
        return text if len(text) <= 50 else text[:46] + "...'"

    out = [
        f"{key}[{i}] {'(none)' if i >= len(old) else short(old[i])} -> {'(none)' if i >= len(new) else short(new[i])}"
        for i in range(max(len(old), len(new)))
        if (old[i] if i < len(old) else None) != (new[i] if i < len(new) else None)
    ]
    return out[:most] + ([f"{key}: {len(out) - most} more changed"] if len(out) > most else [])


def find_version(
    cfg: StudyConfig,
    names: Collection[str],
    attrs_of: Callable[[str], Mapping[str, Any]],
    resolved: ResolvedStudy | None = None,
    *,
    new_version: bool = False,
    measured: Mapping[str, Any] | None = None,
) -> tuple[int, ResolvedStudy]:
    """The version of the study whose fingerprint matches the file, and the file resolved as it ran.

    ``names`` are the storage's study names, ``attrs_of(name)`` a study's user attributes.
    ``resolved`` is the file resolved against its model (running a study); without it (reading a
    study: no model is loaded) each stored version's family resolves the file. With ``new_version``
    a changed file gets the next free version. A changed search space is fine (Optuna handles it); a
    changed model (revision, weights), size, metric, seeds, baseline, reference or class's prompts
    makes earlier trials incomparable, so it is refused; a class added to the file is a new study.
    ``measured`` (device kind, dtype, weights digest) is compared when given (running) and the study
    recorded it. A study from before ``[serving]`` timed batches, not serving calls: refused like any change.
    """
    changed, found = "", None  # reading: the newest version that matches (measured facts are not compared)
    for version in itertools.count(1):
        existing = {c: study_name(cfg, c, version) for c in cfg.classes if study_name(cfg, c, version) in names}
        if not existing:
            if found is not None:
                return found
            first = study_name(cfg, next(iter(cfg.classes)), version)
            if resolved is None and version == 1:
                raise ConfigError(f"classes: no study {first!r} in the storage; {cfg.run_first}")
            if resolved is not None and (version == 1 or new_version):
                return version, resolved
            hint = "pass --new-version to start" if resolved is not None else "`autotune study --new-version` starts"
            raise ConfigError(
                f"{cfg.path}: changed since the study ran ({changed}), so its trials are not comparable; "
                f"{hint} {first} beside it, or undo the change"
            )
        here: ResolvedStudy | None = resolved
        changes: list[str] = []
        for c, name in existing.items():
            record = study_record(attrs_of(name))
            stored = dict(record.fingerprint)
            here = here or resolve(cfg, FAMILIES[stored.get("family") or "sd"], schedulers.names())
            if "held_out" not in stored:  # stored before the draw: it held out the class's last prompts, and goes on so
                here = dataclasses.replace(here, recommend=dataclasses.replace(here.recommend, holdout_seed=None))
            new = fingerprint(here, c, measured)
            if stored and "prompts" not in stored:  # fingerprinted before prompts were: the study's record
                stored["prompts"] = record.prompts or new["prompts"]
            if stored:  # what the stored one lacks was not recorded then (or is measured, and this reads)
                new = {k: v for k, v in new.items() if k in stored or k not in _LATER}
                stored = {k: v for k, v in stored.items() if k in new or k not in MEASURED}
            if stored:
                per_class = ("prompts", "held_out")
                changes += [f"classes.{c}.{x}" if x.startswith(per_class) else x for x in _changes(stored, new)]
        if not changes:
            assert here is not None
            if resolved is not None:
                return version, here
            found = version, here
        else:
            changed = ", ".join(dict.fromkeys(changes))
    raise AssertionError("unreachable")
