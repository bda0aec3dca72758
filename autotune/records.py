"""What autotune stores in a study beside Optuna's own columns, in one place: every trial and study attribute
it writes, as a field of a typed record, and how each is read back. No other module spells an attribute's
key: it writes with :func:`put_trial` and :func:`put_study` and reads with :func:`trial_record` or :func:`study_record`.

On the ground floor (the decision reads trials' records, and sits below the storage). Stored as Optuna
user attributes (JSON), so optuna-dashboard shows every one; a record read back keeps only the fields it
knows, and a field a study stored before it existed reads as its default.

Example:
    >>> put_trial(trial, setting="Euler, 12 steps, CFG 6", setting_key=key)
    >>> put_trial(trial, values={"clip_score": [31.2, 30.8]})  # stored as clip_score_values
    >>> trial_record(frozen).values["clip_score"]
    [31.2, 30.8]
    >>> study_record(study.user_attrs).renders[3]  # the extra images the decision rendered for trial 3
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "SCHEMA",
    "StudyRecord",
    "TrialRecord",
    "attributes",
    "put_study",
    "put_trial",
    "renders_key",
    "study_record",
    "trial_record",
]

SCHEMA = 1  # the records' version, stored as the study attribute ``schema``
_VALUES = "_values"  # a metric's per-image values: the trial attribute ``<metric>_values``
_RENDERS = "renders."  # the decision's extra images of a trial: study attributes ``renders.<trial>.<chunk>``


@dataclass(frozen=True)
class TrialRecord:
    """A trial's attributes. Set when it is queued (``baseline``, ``proposed``, ``enqueued_by``,
    ``retry_of``, ``fresh_after``), asked (``worker``), drawn (``setting`` ... ``deterministic``), rendered
    (``values`` ... ``noise_seeds``), stopped short (``reused_from`` ... ``same_setting_running``) or failed
    (``fail_reason`` ... ``withdrawn``)."""

    baseline: bool = False  # the study file's baseline
    proposed: bool = False  # queued by the decision's walk (not drawn by the optimiser)
    enqueued_by: str | None = None  # the worker that queued it (a stopped run withdraws its own)
    retry_of: int | None = None  # the interrupted trial it renders again
    fresh_after: int | None = None  # queued because the optimiser repeated itself in this trial
    worker: str | None = None  # host:pid of the process that runs it
    setting: str = ""  # the setting's label, as people read it
    setting_key: str | None = None  # what makes two settings render the same (Settings.key)
    scheduler_class: str | None = None  # the diffusers scheduler class
    scheduler_config: dict[str, Any] | None = None  # its overrides of the model's scheduler config
    deterministic: bool | None = None  # the sampler draws no noise after the first
    timesteps: list[int] | None = None  # a fitted schedule's timesteps
    fit_stopped: str | None = None  # why the fit of that schedule stopped early
    values: dict[str, list[float]] = field(default_factory=dict)  # per metric: per image (seconds: per call)
    model_calls: float | None = None  # denoiser calls of one image
    guided_calls: float | None = None  # of which ran with guidance (as counted)
    render_seconds: float | None = None  # the quality renders' wall time
    images: int | None = None  # images rendered
    prompts_rendered: int | None = None  # the class's first prompts it rendered
    noise_seeds: list[int] | None = None  # each image's generator seed, prompt-major
    reused_from: int | None = None  # an earlier trial of the same setting gave its verdict
    rough: dict[str, float] | None = None  # rough-first: its first seed's summaries
    rough_dominated_by: int | None = None  # ... clearly dominated by this trial
    surplus: bool = False  # workers claimed the last trials at the same moment
    same_setting_running: int | None = None  # another trial was rendering the same setting
    fail_reason: str | None = None  # why it failed, in one line
    fail_traceback: str | None = None  # the end of the traceback
    interrupted: bool = False  # stopped by a signal or a dead worker: rendered again
    infrastructure: bool = False  # the disk, the database or the image store failed: rendered again
    withdrawn: bool = False  # queued and never begun when its run stopped


@dataclass(frozen=True)
class StudyRecord:
    """A class's study attributes: what it was run with, and what its decision keeps between runs."""

    schema: int = 0  # SCHEMA when the study was (last) run; 0: before the records were versioned
    fingerprint: dict[str, Any] = field(default_factory=dict)  # what makes its trials comparable
    prompts: list[str] = field(default_factory=list)  # the class's prompts
    router: dict[str, Any] | None = None  # the class's CLIP centroid (autotune.weights.clip.class_embedding)
    scheduler_base: dict[str, Any] | None = None  # the model's own scheduler config
    seed_lpips: float | None = None  # LPIPS between two seeds of the baseline's first prompt
    artifacts: str | None = None  # where its images are stored
    fitted_schedules: dict[str, Any] = field(default_factory=dict)  # fitted timesteps, per sampler and steps
    exhausted: bool = False  # the optimiser found no untried setting
    decision: dict[str, Any] | None = None  # its state: deciding (by whom, why stopped) or settled
    race_images: int = 0  # images search racing spent
    confirmations: list[int] = field(default_factory=list)  # trials whose confirmations began, in that order
    timed_together: dict[str, Any] | None = None  # {"trials": [baseline, chosen], "seconds": [[...], [...]]}
    renders: dict[int, dict[str, Any]] = field(default_factory=dict)  # per trial: the decision's extra images
    # (stored a chunk at a time, each chunk an attribute of its own: a long night appends, never rewrites)


def renders_key(number: int, chunk: Mapping[str, Any]) -> str:
    """The study attribute of one chunk of trial ``number``'s extra images, named by its first image's unit
    (``renders.12.3:1000``: a chunk renders images not rendered before, so no two chunks share a name)."""
    return f"{_RENDERS}{number}.{min(chunk)}"


_TRIAL = {f.name for f in dataclasses.fields(TrialRecord)}
_STUDY = {f.name for f in dataclasses.fields(StudyRecord)}


def trial_record(t: Any) -> TrialRecord:
    """The record of a trial (an Optuna trial, frozen or not, or anything with ``user_attrs``)."""
    attrs: Mapping[str, Any] = t.user_attrs
    known = {k: v for k, v in attrs.items() if k in _TRIAL and v is not None}
    known["values"] = {k[: -len(_VALUES)]: v for k, v in attrs.items() if k.endswith(_VALUES) and k != "rough_values"}
    if "rough_values" in attrs:
        known["rough"] = attrs["rough_values"]
    return TrialRecord(**known)


def study_record(attrs: Mapping[str, Any]) -> StudyRecord:
    """The record of a study, from its user attributes (``study.user_attrs``, or as the reader read them)."""
    known = {k: v for k, v in attrs.items() if k in _STUDY and v is not None}
    renders: dict[int, dict[str, Any]] = {}
    for k, v in attrs.items():
        if k.startswith(_RENDERS):  # renders.<trial>.<chunk>; studies stored before chunks: renders.<trial>
            renders.setdefault(int(k[len(_RENDERS) :].partition(".")[0]), {}).update(v)
    known["renders"] = renders
    return StudyRecord(**known)


def put_trial(trial: Any, **fields: Any) -> None:
    """Store trial record fields on a trial (Optuna's ``set_user_attr``), in the order given; ``values`` as one
    attribute per metric. A name that is no field of the record is refused (a typo would store an attribute
    nobody reads)."""
    for key, value in attributes(**fields).items():
        trial.set_user_attr(key, value)


def put_study(study: Any, **fields: Any) -> None:
    """Store study record fields on a study, in the order given; ``renders`` ({trial: images}) as a new chunk
    of each trial's images (added to those stored before)."""
    for key, value in _stored_as(fields, _STUDY, "StudyRecord").items():
        study.set_user_attr(key, value)


def attributes(**fields: Any) -> dict[str, Any]:
    """Trial record fields as the user attributes that store them (for ``enqueue_trial(user_attrs=...)``)."""
    return _stored_as(fields, _TRIAL, "TrialRecord")


def _stored_as(fields: Mapping[str, Any], names: set[str], record: str) -> dict[str, Any]:
    """Record fields as the attributes that store them, in order; a name that is no field of ``record`` refused."""
    unknown = set(fields) - names
    if unknown:
        raise TypeError(f"{sorted(unknown)} are no fields of {record}")
    return dict(kv for name, value in fields.items() for kv in _attributes(name, value))


def _attributes(name: str, value: Any) -> list[tuple[str, Any]]:
    if name == "values":
        return [(f"{m}{_VALUES}", v) for m, v in value.items()]
    if name == "rough":
        return [("rough_values", value)]
    if name == "renders":
        return [(renders_key(n, v), v) for n, v in value.items() if v]
    return [(name, value)]
