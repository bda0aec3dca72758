"""Create or resume one Optuna study per prompt class, run trials, and read results back.

Storage is Optuna's RDB storage (SQLite beside the study file by default, PostgreSQL for
shared studies); reference images live in a table of their own in the same database.

Example:
    >>> cfg = load_config("studies/demo.toml")
    >>> outcomes = run_study(cfg, n_trials=10)
    >>> outcomes["portrait"].recommendation.chosen.values
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import random
import socket
import statistics
import subprocess
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import optuna
from optuna.artifacts import FileSystemArtifactStore, upload_artifact
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.exc import SQLAlchemyError

from autotune import schedulers
from autotune.config import ConfigError, StudyConfig
from autotune.families import FAMILIES, Family
from autotune.metrics import METRICS
from autotune.pareto import (
    Candidate,
    Recommendation,
    SecondsFit,
    clearly_dominated,
    fit_seconds,
    match_baseline,
    pareto_front,
)
from autotune.space import Settings, suggest, variant_choices

__all__ = [
    "ClassOutcome",
    "Evaluator",
    "StudyAborted",
    "artifact_store",
    "image_name",
    "open_storage",
    "recommend",
    "retry_schema_race",
    "run_study",
    "study_name",
    "study_version",
    "with_family_defaults",
    "worker_id",
]

T = TypeVar("T")
_MAX_CONSECUTIVE_FAILURES = 10  # fresh failures in a row (not repeats of a known-bad setting)
_MAX_INTERRUPTIONS = 2  # a setting whose trial was killed this often is not retried again


class TrialFailed(Exception):
    """A trial that rendered nothing usable; Optuna records it as FAIL and the study goes on."""


class StudyAborted(RuntimeError):
    """Every recent trial failed: stop instead of burning the night on the same error."""


@dataclass(frozen=True)
class ClassOutcome:
    """What a prompt class's study says: its completed trials, front and recommendation."""

    name: str
    study: optuna.Study
    trials: list[FrozenTrial]  # completed, one per distinct setting (reused duplicates left out)
    front: list[int]  # indices into ``trials``
    recommendation: Recommendation | None
    seed_lpips: float | None
    n_completed: int  # completed trials, repeats of a setting included
    n_failed: int
    family: Family
    seconds_fit: SecondsFit | None = None  # seconds per image against denoiser calls (what the rule compares)
    seconds_outliers: tuple[int, ...] = ()  # trial numbers whose timing is far off that line


def _calls_guided(t: FrozenTrial) -> tuple[float, bool]:
    return float(t.user_attrs["model_calls"]), float(t.params["guidance"]) > 1.0


def _seconds_fit(trials: Sequence[FrozenTrial], objectives: tuple[str, ...]) -> SecondsFit | None:
    if "seconds" not in objectives:
        return None
    timed = [t for t in trials if t.user_attrs.get("model_calls") and t.values is not None]
    i = objectives.index("seconds")
    calls, guided = zip(*(_calls_guided(t) for t in timed), strict=True) if timed else ((), ())
    return fit_seconds(calls, guided, [t.values[i] for t in timed])


def study_name(cfg: StudyConfig, class_name: str, version: int = 1) -> str:
    """``NAME.CLASS``; a study started afresh with ``--new-version`` is ``NAME.vN.CLASS``."""
    return f"{cfg.name}.{class_name}" if version == 1 else f"{cfg.name}.v{version}.{class_name}"


def _changes(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """What differs between two fingerprints; a value ``new`` leaves unset (None: a family default
    not yet resolved, as in ``autotune recommend``) matches anything."""
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _changes(a, b, f"{prefix}{k}.")
        elif b is not None and a != b:
            out.append(f"{prefix}{k} {a!r} -> {b!r}")
    return out


def study_version(cfg: StudyConfig, storage: optuna.storages.BaseStorage, *, new_version: bool = False) -> int:
    """The version of the study whose fingerprint matches ``cfg``, or the next free one with ``new_version``.

    A changed search space is fine (Optuna handles it); a changed model, size, metric, seeds or
    reference makes earlier trials incomparable, so it is refused unless ``new_version``.
    """
    names = set(optuna.get_all_study_names(storage))
    current = _fingerprint(cfg)
    changed = ""
    for version in itertools.count(1):
        existing = [study_name(cfg, c, version) for c in cfg.classes if study_name(cfg, c, version) in names]
        if not existing:
            if version == 1 or new_version:
                return version
            fresh = study_name(cfg, next(iter(cfg.classes)), version)
            raise ConfigError(
                f"{cfg.path}: changed since the study ran ({changed}), so its trials are not comparable; "
                f"pass --new-version to start {fresh} beside it, or undo the change"
            )
        study_id = storage.get_study_id_from_name(existing[0])
        changes = _changes(storage.get_study_user_attrs(study_id).get("fingerprint", current), current)
        if not changes:
            return version
        changed = ", ".join(changes)
    raise AssertionError("unreachable")


def retry_schema_race(create: Callable[[], T], attempts: int = 6) -> T:
    """Run ``create`` (which may create tables), again when a worker starting at the same moment
    created them first (PostgreSQL: a duplicate key or an existing relation; SQLite: a UNIQUE constraint)."""
    for attempt in range(attempts):
        try:
            return create()
        except SQLAlchemyError as e:
            text = str(getattr(e, "orig", e))
            if attempt == attempts - 1 or not any(
                s in text for s in ("duplicate key", "UNIQUE constraint", "already exists")
            ):
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage for ``url``; a bad URL or a file that is no database is a ConfigError."""
    from sqlalchemy.exc import ArgumentError, DatabaseError, OperationalError

    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"timeout": 60}

    def create() -> optuna.storages.RDBStorage:
        with warnings.catch_warnings():  # heartbeats are "experimental" since Optuna 2.9
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(url, engine_kwargs=kwargs, heartbeat_interval=60, grace_period=180)

    try:
        return retry_schema_race(create)
    except (ArgumentError, DatabaseError, OperationalError, ImportError, ValueError) as e:
        msg = str(getattr(e, "orig", None) or e).strip().splitlines()[0]
        raise ConfigError(f"storage {url!r}: cannot open it as a study database ({msg})") from None


def _directions(cfg: StudyConfig) -> list[optuna.study.StudyDirection]:
    return [optuna.study.StudyDirection[METRICS[m].direction.upper()] for m in cfg.metrics.objectives]


def _sampler(name: str, seed: int | None = None) -> optuna.samplers.BaseSampler:
    """The study's sampler; ``tpe`` (the default) is multivariate TPE, the best measured by
    ``benchmarks/search.py`` (README, Performance); constant liar keeps parallel workers apart."""
    with warnings.catch_warnings():  # multivariate, group and constant_liar are "experimental" in Optuna 4
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if name == "tpe":
            return optuna.samplers.TPESampler(multivariate=True, group=True, constant_liar=True, seed=seed)
        if name == "tpe_independent":
            return optuna.samplers.TPESampler(constant_liar=True, seed=seed)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


def _fingerprint(cfg: StudyConfig) -> dict[str, Any]:
    """What makes two runs' metrics comparable: model, size, metrics and reference."""
    return {
        "model": cfg.model.id,
        "size": [cfg.model.height, cfg.model.width],
        "objectives": list(cfg.metrics.objectives),
        "clip": [cfg.metrics.clip_model, cfg.metrics.clip_pretrained],
        "lpips": [cfg.metrics.lpips_net, cfg.metrics.lpips_backbone],
        "family": cfg.family,
        "reference": dataclasses.asdict(cfg.reference),
        "seeds": list(cfg.search.seeds),
    }


def _load_study(
    cfg: StudyConfig,
    class_name: str,
    storage: optuna.storages.BaseStorage,
    family: Family | None = None,
    version: int = 1,
) -> optuna.Study | None:
    """Load the class's study; with ``family``, create it first when it does not exist.

    Creation is atomic (the study name is unique in the storage): only the process that
    created the study sets its attributes and enqueues the baseline, so workers starting
    together never enqueue it twice.
    """
    name = study_name(cfg, class_name, version)
    sampler = _sampler(cfg.search.sampler)
    if family is None:
        try:
            return optuna.load_study(study_name=name, storage=storage, sampler=sampler)
        except KeyError:
            return None
    try:
        study = optuna.create_study(study_name=name, storage=storage, directions=_directions(cfg), sampler=sampler)
    except optuna.exceptions.DuplicatedStudyError:
        return optuna.load_study(study_name=name, storage=storage, sampler=sampler)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(list(cfg.metrics.objectives))
    study.set_user_attr("fingerprint", _fingerprint(cfg))
    study.set_user_attr("prompts", list(cfg.classes[class_name]))
    _enqueue_baseline(study, cfg, family)
    return study


def _is_baseline(t: FrozenTrial) -> bool:
    return bool(t.user_attrs.get("baseline"))


def _enqueue_baseline(study: optuna.Study, cfg: StudyConfig, family: Family) -> None:
    """Make the baseline the next trial of a new study."""
    base = Settings.of(cfg.baseline)
    searched = variant_choices(base.scheduler, cfg.search.variants, family)
    study.enqueue_trial(base.params(searched), user_attrs={"baseline": True})


def _rendering(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """Trials that render their setting: completed, running, or cut by rough-first after the first seed
    (those that reused a stored setting's metrics render nothing)."""
    states = (TrialState.COMPLETE, TrialState.RUNNING)
    return [t for t in trials if (t.state in states or _rough_cut(t)) and "reused_from" not in t.user_attrs]


def _claimed(study: optuna.Study) -> int:
    """Settings rendered or being rendered (on any worker): what counts towards ``n_trials``."""
    return len(_rendering(study.get_trials(deepcopy=False)))


class _RandomDraw:
    """Stands in for a trial in :func:`suggest`: every parameter uniformly at random on its grid."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        return self.rng.choice(list(choices))

    def suggest_int(self, name: str, low: int, high: int) -> int:
        return self.rng.randint(low, high)

    def suggest_float(self, name: str, low: float, high: float, *, step: float) -> float:
        return round(low + step * self.rng.randint(0, int((high - low) / step + 1e-9)), 9)


def _fresh_params(study: optuna.Study, space: Any, family: Family, draws: int = 1000) -> dict[str, Any] | None:
    """Parameters of a setting the study has not tried or queued yet, drawn at random (None: found none)."""
    trials = study.get_trials(deepcopy=False)
    tried = {t.user_attrs.get("setting_key") for t in trials}
    queued = (t.system_attrs.get("fixed_params") for t in trials if t.state == TrialState.WAITING)
    tried |= {Settings.from_params(q).key() for q in queued if q and "scheduler" in q}
    rng = random.Random()
    for _ in range(draws):
        settings = suggest(_RandomDraw(rng), space, family)
        if settings.key() not in tried:
            return settings.params(variant_choices(settings.scheduler, space.variants, family))
    return None


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _alive(worker: str) -> bool:
    """False only for a worker of this machine whose process is gone; Optuna's heartbeat judges others."""
    host, _, pid = worker.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _interrupted(t: FrozenTrial) -> bool:
    """Failed without a verdict on its setting: killed, stopped by Ctrl-C, or found stale by the heartbeat."""
    return t.state == TrialState.FAIL and (bool(t.user_attrs.get("interrupted")) or "fail_reason" not in t.user_attrs)


def _recover(study: optuna.Study) -> int:
    """Fail the trials whose worker died on this machine; enqueue each interrupted trial once more.

    A setting interrupted ``_MAX_INTERRUPTIONS`` times (one that kills its worker, say) is not retried
    again. Returns the number of trials enqueued.
    """
    storage = study._storage
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = t.user_attrs.get("worker")
        if worker and not _alive(worker):
            storage.set_trial_user_attr(t._trial_id, "interrupted", True)
            storage.set_trial_user_attr(t._trial_id, "fail_reason", f"interrupted: its worker {worker} is gone")
            storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    times = Counter(repr(sorted(t.params.items())) for t in trials if _interrupted(t))
    enqueued = 0
    for t in trials:
        if (
            _interrupted(t)
            and t.params
            and t.number not in retried
            and times[repr(sorted(t.params.items()))] < _MAX_INTERRUPTIONS
        ):
            attrs: dict[str, Any] = {"retry_of": t.number, **({"baseline": True} if _is_baseline(t) else {})}
            study.enqueue_trial(t.params, user_attrs=attrs, skip_if_exists=False)
            enqueued += 1
    return enqueued


# --------------------------------------------------------------------------- evaluation


class Evaluator:
    """Pipeline, metric models and reference store: loaded once per process, shared by classes."""

    def __init__(self, cfg: StudyConfig, storage_url: str, device: str | None) -> None:
        from autotune.metrics.clip_score import ClipScore
        from autotune.metrics.lpips_distance import Lpips
        from autotune.pipeline import load_pipeline
        from autotune.references import ReferenceStore

        self.cfg = cfg
        self.pipeline = load_pipeline(cfg.model, device)
        dev = self.pipeline.device
        objectives = cfg.metrics.objectives
        m = cfg.metrics
        self.clip = ClipScore(m.clip_model, m.clip_pretrained, dev)  # scores, and embeds prompts for the router
        self.lpips = Lpips(m.lpips_net, m.lpips_backbone, dev) if "lpips" in objectives else None
        self.store = ReferenceStore(storage_url)
        self.artifacts = artifact_store(cfg) if cfg.report.images else None

    def references(self, prompts: Sequence[str], seeds: Sequence[int], guidance: float | None = None) -> Any:
        """Reference images (prompt-major), at the trial's guidance when the reference follows it."""
        cfg = self.cfg
        g = guidance if cfg.reference.guidance == "trial" else None
        setting = Settings.of(cfg.reference, g if g is not None else _baseline_guidance(cfg))
        m = cfg.model
        return self.store.images(self.pipeline, setting, prompts, seeds, m.height, m.width, cfg.search.batch_size)

    def prepare(self, study: optuna.Study, class_name: str) -> None:
        """Store the class's router embedding and (rendering its references) its seed-to-seed LPIPS."""
        from autotune.router import class_embedding, text_encoder

        prompts = list(self.cfg.classes[class_name])
        encode = text_encoder(self.clip.model, self.clip.tokenizer, self.clip.device)
        study.set_user_attr("router", class_embedding(encode, prompts))
        if self.lpips is None or "seed_lpips" in study.user_attrs:
            return
        seeds = list(self.cfg.search.seeds)
        ref_seeds = seeds[:2] if len(seeds) > 1 else [*seeds, max(seeds) + 1]
        refs = self.references(prompts, ref_seeds)
        study.set_user_attr("seed_lpips", float(self.lpips(refs[0::2], refs[1::2]).mean()))

    def evaluate(
        self, settings: Settings, prompts: Sequence[str], seeds: Sequence[int]
    ) -> tuple[dict[str, list[float]], int, Any]:
        """Per-image values of every objective (prompt-major), model calls per image, and the images."""
        from autotune.pipeline import generate

        cfg = self.cfg
        m = cfg.model
        render = generate(self.pipeline, settings, prompts, seeds, m.height, m.width, cfg.search.batch_size)
        per_image: dict[str, list[float]] = {"seconds": render.seconds}
        if "clip_score" in cfg.metrics.objectives:
            per_image["clip_score"] = self.clip(render.images, [q for q in prompts for _ in seeds]).tolist()
        if self.lpips is not None:
            per_image["lpips"] = self.lpips(render.images, self.references(prompts, seeds, settings.guidance)).tolist()
        return per_image, render.model_calls, render.images


def _baseline_guidance(cfg: StudyConfig) -> float:
    g = cfg.baseline.guidance
    assert isinstance(g, float)
    return g


def _aggregate(name: str, values: list[float]) -> float:
    return statistics.median(values) if METRICS[name].aggregate == "median" else statistics.fmean(values)


def _same_setting(study: optuna.Study, key: str, number: int) -> FrozenTrial | None:
    """An earlier finished trial of the same setting (completed, cut by rough-first, or failed with a reason)."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)):
        if t.number == number or t.user_attrs.get("setting_key") != key or "reused_from" in t.user_attrs:
            continue
        if t.user_attrs.get("interrupted"):
            continue
        if t.state == TrialState.COMPLETE or "fail_reason" in t.user_attrs or _rough_cut(t):
            return t
    return None


def _rough_cut(t: FrozenTrial) -> bool:
    return t.state == TrialState.PRUNED and "rough_dominated_by" in t.user_attrs


def _first_seed(values: Sequence[float], n_seeds: int) -> list[float]:
    """The first seed's values of a prompt-major list."""
    return list(values[::n_seeds])


def _merge_seeds(first: Sequence[T], rest: Sequence[T], n_seeds: int) -> list[T]:
    """Prompt-major order again from the first seed's items and the other seeds' (both prompt-major)."""
    out: list[T] = []
    for i, item in enumerate(first):
        out += [item, *rest[i * (n_seeds - 1) : (i + 1) * (n_seeds - 1)]]
    return out


def _objective(
    cfg: StudyConfig, study: optuna.Study, class_name: str, evaluator: Evaluator, target: int
) -> Callable[[optuna.Trial], list[float]]:
    family = evaluator.pipeline.family

    def objective(trial: optuna.Trial) -> list[float]:
        trial.set_user_attr("worker", worker_id())
        if sum(t.number < trial.number for t in _rendering(study.get_trials(deepcopy=False))) >= target:
            # workers that checked the count at the same moment: the later trial steps back
            trial.set_user_attr("surplus", True)
            raise optuna.TrialPruned(f"other workers already claimed the study's {target} trials")
        try:
            return _evaluate_trial(trial)
        except KeyboardInterrupt:  # Ctrl-C: not the setting's fault; the next run retries it
            trial.set_user_attr("interrupted", True)
            trial.set_user_attr("fail_reason", "interrupted (Ctrl-C)")
            raise

    def _evaluate_trial(trial: optuna.Trial) -> list[float]:
        settings = suggest(trial, cfg.search, family)
        spec = schedulers.get(settings.scheduler)
        trial.set_user_attr("setting", settings.label())
        trial.set_user_attr("setting_key", settings.key())
        trial.set_user_attr("scheduler_class", spec.class_name)
        trial.set_user_attr("scheduler_config", settings.scheduler_overrides())
        trial.set_user_attr("deterministic", spec.deterministic)
        earlier = _same_setting(study, settings.key(), trial.number)
        if earlier is not None:  # spend nothing twice: discrete spaces repeat suggestions
            trial.set_user_attr("reused_from", earlier.number)
            # a sampler that repeats itself has stopped exploring: the next trial tries a new setting
            fresh = _fresh_params(study, cfg.search, family)
            if fresh is None:
                study.set_user_attr("exhausted", True)
            else:
                study.enqueue_trial(fresh, user_attrs={"fresh_after": trial.number}, skip_if_exists=False)
            if _rough_cut(earlier):
                trial.set_user_attr("rough_dominated_by", earlier.user_attrs["rough_dominated_by"])
                raise optuna.TrialPruned(f"rough-first cut the same setting in trial {earlier.number}")
            if earlier.state == TrialState.FAIL:
                reason = f"same setting failed in trial {earlier.number}: {earlier.user_attrs['fail_reason']}"
                trial.set_user_attr("fail_reason", reason)
                raise TrialFailed(reason)
            for key, value in earlier.user_attrs.items():
                if key.endswith(("_mean", "_std", "_values")) or key in ("model_calls", "images"):
                    trial.set_user_attr(key, value)
            assert earlier.values is not None
            return list(earlier.values)
        try:
            per_image, calls, images = _render(trial, settings)
        except optuna.TrialPruned:
            raise
        except Exception as e:  # any render or metric failure fails this trial, not the study
            reason = _reason(e)
            trial.set_user_attr("fail_reason", reason)
            _free_device_memory()
            raise TrialFailed(reason) from e
        for name, values in per_image.items():
            trial.set_user_attr(f"{name}_mean", statistics.fmean(values))
            trial.set_user_attr(f"{name}_std", statistics.pstdev(values))
            trial.set_user_attr(f"{name}_values", [round(v, 6) for v in values])  # prompt-major, per seed
        trial.set_user_attr("model_calls", calls)
        trial.set_user_attr("images", len(per_image["seconds"]))
        if evaluator.artifacts is not None:
            cfg.artifact_dir.mkdir(parents=True, exist_ok=True)
            _upload_images(trial, images, cfg.search.seeds, evaluator.artifacts)
        return [_aggregate(name, per_image[name]) for name in cfg.metrics.objectives]

    def _render(trial: optuna.Trial, settings: Settings) -> tuple[dict[str, list[float]], int, Any]:
        """Every image of the setting; with ``rough_first``, the other seeds only when the first seed's
        images are not clearly dominated by a setting already rendered (compared on that seed)."""
        prompts, seeds = cfg.classes[class_name], cfg.search.seeds
        if not cfg.search.rough_first or len(seeds) == 1:
            return evaluator.evaluate(settings, prompts, seeds)
        first, calls, images = evaluator.evaluate(settings, prompts, seeds[:1])
        objectives = cfg.metrics.objectives
        if not trial.user_attrs.get("baseline"):
            done = [
                t
                for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if "reused_from" not in t.user_attrs and all(f"{m}_values" in t.user_attrs for m in objectives)
            ]
            rendered = [
                {m: _aggregate(m, _first_seed(t.user_attrs[f"{m}_values"], len(seeds))) for m in objectives}
                for t in done
            ]
            rough = {m: _aggregate(m, first[m]) for m in objectives}
            better = clearly_dominated(rough, rendered, {m: METRICS[m].higher_is_better for m in objectives})
            if better is not None:
                trial.set_user_attr("rough_values", rough)
                trial.set_user_attr("rough_dominated_by", done[better].number)
                raise optuna.TrialPruned(
                    f"rough-first: its first seed is clearly dominated by trial {done[better].number}"
                )
        import torch

        rest, _, more = evaluator.evaluate(settings, prompts, seeds[1:])
        per_image = {m: _merge_seeds(first[m], rest[m], len(seeds)) for m in first}
        return per_image, calls, torch.stack(_merge_seeds(list(images), list(more), len(seeds)))

    return objective


def artifact_store(cfg: StudyConfig) -> FileSystemArtifactStore:
    """The study's image store: ``studies/NAME/artifacts`` (what ``optuna-dashboard --artifact-dir`` serves)."""
    return FileSystemArtifactStore(str(cfg.artifact_dir))


def image_name(prompt_index: int, seed: int) -> str:
    """Artifact file name of one trial image; the prompt's text is in the study's ``prompts`` attribute."""
    return f"prompt{prompt_index}_seed{seed}.png"


def _upload_images(trial: optuna.Trial, images: Any, seeds: tuple[int, ...], store: FileSystemArtifactStore) -> None:
    """Every image of the trial as a PNG artifact, prompt-major like the render."""
    import tempfile

    from autotune.references import encode_png

    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        for i, image in enumerate(images):
            path = Path(tmp) / image_name(i // len(seeds), seeds[i % len(seeds)])
            path.write_bytes(encode_png(image))
            upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=trial, mimetype="image/png")


def _free_device_memory() -> None:
    from autotune.pipeline import free_memory

    free_memory()


def _reason(e: BaseException) -> str:
    """One line for ``fail_reason``: the exception, and where it was raised when it says nothing."""
    import traceback

    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    if not text:
        frame = traceback.extract_tb(e.__traceback__)[-1]
        text = f"raised at {'/'.join(Path(frame.filename).parts[-3:])}:{frame.lineno}"
    return f"{type(e).__name__}: {text}"[:500]


# --------------------------------------------------------------------------- running


def run_study(
    cfg: StudyConfig,
    *,
    storage: str | None = None,
    n_trials: int | None = None,
    timeout: float | None = None,
    device: str | None = None,
    progress: bool = True,
    check_reference: bool = True,
    new_version: bool = False,
    workers: int = 1,
) -> dict[str, ClassOutcome]:
    """Run (or resume) every class's study until it has ``n_trials`` completed trials or time runs out.

    ``n_trials`` counts the study's completed trials, not this run's: a resumed study runs on
    to the total. Classes take turns one trial at a time, so a timeout leaves every class
    with a comparable number of trials. Before the first trial, the reference setting must
    converge (see :func:`autotune.references.convergence`) unless ``check_reference`` is False.

    ``workers`` > 1 starts that many processes in all on this machine (one per GPU when
    ``device`` is CUDA and there are several), sharing the storage; they return when done.

    Safe to run in several processes against one storage (``--workers``, PostgreSQL): a trial
    counts towards ``n_trials`` from the moment it starts, and each process first fails the
    trials of dead workers on its machine and enqueues them again (see :func:`_recover`).
    Raises :class:`ConfigError` when the study file changed in a way that makes the stored
    trials incomparable, unless ``new_version`` starts ``NAME.vN.CLASS`` beside them.
    """
    from autotune.pipeline import resolve_config

    if cfg.family is None:
        cfg = resolve_config(cfg)
    url = storage or cfg.default_storage
    if url.startswith("sqlite:///"):
        cfg.directory.mkdir(parents=True, exist_ok=True)
    rdb = open_storage(url)
    version = study_version(cfg, rdb, new_version=new_version)
    _check_writable(cfg.output_dir)
    target = n_trials or cfg.search.n_trials
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # failed trials get one line each, not a traceback
    evaluator = Evaluator(cfg, url, device)
    if check_reference and "lpips" in cfg.metrics.objectives:
        _check_reference(cfg, evaluator)
    family = evaluator.pipeline.family
    studies = {c: _load_study(cfg, c, rdb, family, version) for c in cfg.classes}
    objectives = {}
    for c, study in studies.items():
        assert study is not None
        if study.user_attrs.get("exhausted"):  # the space may have grown since: look again
            study.set_user_attr("exhausted", False)
        _recover(study)
        evaluator.prepare(study, c)
        objectives[c] = _objective(cfg, study, c, evaluator, target)
    deadline = time.monotonic() + timeout if timeout else math.inf
    helpers = _spawn_workers(cfg, url, target, timeout, evaluator.pipeline.device, workers - 1)
    bar = _Progress(cfg, studies, target, deadline, progress)
    failures = 0
    try:
        while time.monotonic() < deadline:
            pending = [
                c
                for c, s in studies.items()
                if s is not None and _claimed(s) < target and not s.user_attrs.get("exhausted")
            ]
            if not pending:
                break
            for c in pending:
                study = studies[c]
                assert study is not None
                ran: list[FrozenTrial] = []  # the trial this process ran (others' trials interleave)
                study.optimize(objectives[c], n_trials=1, catch=(TrialFailed,), callbacks=[_append_to(ran)])
                last = ran[-1]
                if last.state != TrialState.FAIL:
                    failures = 0
                elif "reused_from" not in last.user_attrs:
                    failures += 1
                bar.update(_failure_line(c, last))
                if failures >= _MAX_CONSECUTIVE_FAILURES:
                    raise StudyAborted(
                        f"{failures} trials in a row failed; the last: "
                        f"{last.user_attrs.get('fail_reason', 'unknown reason')}"
                    )
                if time.monotonic() >= deadline:
                    break
    finally:
        bar.close()
        _join(helpers)
    return recommend(cfg, storage=url)


def _failure_line(class_name: str, t: FrozenTrial) -> str | None:
    """One line for a trial that failed on its own (not a repeat of a failed setting), else None."""
    if t.state != TrialState.FAIL or "reused_from" in t.user_attrs:
        return None
    setting = t.user_attrs.get("setting", "setting not drawn")
    return f"autotune: {class_name} trial {t.number} ({setting}) failed: {t.user_attrs.get('fail_reason', 'unknown')}"


def _spawn_workers(
    cfg: StudyConfig, url: str, target: int, timeout: float | None, device: str, n: int
) -> list[subprocess.Popen[bytes]]:
    """``n`` more ``autotune study --worker`` processes on this storage; GPUs dealt out round robin."""
    import torch

    gpus = torch.cuda.device_count() if device.startswith("cuda") else 0
    env = dict(os.environ)
    if n and device == "cpu":  # share the cores: N processes x all-core thread pools thrash (4 on 2 cores: 3x slower)
        threads = max(1, (os.cpu_count() or 1) // (n + 1))
        env["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)
    procs = []
    for i in range(1, n + 1):
        dev = f"cuda:{i % gpus}" if gpus > 1 else device
        cmd = [sys.executable, "-m", "autotune.cli", "study", str(cfg.path), "--worker", "--storage", url]
        cmd += ["--n-trials", str(target), "--device", dev, "--no-reference-check"]
        if timeout:
            cmd += ["--timeout", str(timeout)]
        procs.append(subprocess.Popen(cmd, env=env))
    return procs


def _join(procs: list[subprocess.Popen[bytes]]) -> None:
    """Wait for the helper workers; on Ctrl-C they got the signal too (same process group)."""
    for p in procs:
        try:
            code = p.wait()
        except KeyboardInterrupt:
            p.terminate()
            p.wait()
            raise
        if code not in (0, 130):
            print(f"autotune: warning: worker process {p.pid} exited with code {code}", file=sys.stderr)


def _append_to(ran: list[FrozenTrial]) -> Callable[[optuna.Study, FrozenTrial], None]:
    return lambda _, t: ran.append(t)


def _check_writable(folder: Path) -> None:
    """Fail before the night starts, not after it, when the outputs cannot be written."""
    import tempfile

    probe_in = folder if folder.exists() else folder.parent
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{folder}: cannot write the study's outputs there (it is a file, not a folder)")
    try:
        tempfile.TemporaryFile(dir=probe_in).close()
    except OSError as e:
        raise ConfigError(f"{probe_in}: cannot write the study's outputs there ({e.strerror})") from None


def _check_reference(cfg: StudyConfig, evaluator: Evaluator) -> None:
    """Refuse a reference setting that does not converge, naming one that does."""
    from autotune.references import check_reference

    ref = Settings.of(cfg.reference, _baseline_guidance(cfg) if cfg.reference.guidance == "trial" else None)
    prompt, seed, h, w = next(iter(cfg.classes.values()))[0], cfg.search.seeds[0], cfg.model.height, cfg.model.width
    if evaluator.lpips is None or evaluator.store.contains(evaluator.pipeline, ref, prompt, seed, h, w):
        return  # checked before this reference was first rendered
    verdict = check_reference(evaluator.pipeline, evaluator.lpips, ref, prompt, seed, h, w)
    if verdict is not None:
        raise ConfigError(f"{cfg.path}: reference: {verdict} (or pass --no-reference-check)")


class _Progress:
    """A tqdm bar over all classes: trials done, Pareto front sizes, time left."""

    def __init__(
        self, cfg: StudyConfig, studies: dict[str, optuna.Study | None], target: int, deadline: float, enabled: bool
    ) -> None:
        from tqdm import tqdm

        self.studies, self.deadline, self.target = studies, deadline, target
        self.bar = tqdm(
            total=target * len(studies),
            initial=self._done(),
            desc=f"autotune {cfg.name}",
            unit="trial",
            disable=not enabled,
            file=sys.stderr,
            dynamic_ncols=True,
        )
        self.update()

    def _done(self) -> int:
        """Settings rendered (or rendering) per class, up to the target: reused repeats do not move the bar."""
        return sum(min(_claimed(s), self.target) for s in self.studies.values() if s is not None)

    def update(self, line: str | None = None) -> None:
        if line:
            self.bar.write(line, file=sys.stderr)
        fronts = {c: len(s.best_trials) for c, s in self.studies.items() if s is not None}
        post = {"front": " ".join(f"{c}:{n}" for c, n in fronts.items())}
        if self.deadline < math.inf:
            post["left"] = time.strftime("%H:%M:%S", time.gmtime(max(0.0, self.deadline - time.monotonic())))
        self.bar.set_postfix(post, refresh=False)
        self.bar.update(self._done() - self.bar.n)

    def close(self) -> None:
        self.bar.close()


# --------------------------------------------------------------------------- results


def _candidate(t: FrozenTrial, objectives: tuple[str, ...], fit: SecondsFit | None = None) -> Candidate:
    """The trial as the rule sees it; with ``fit``, its seconds are the fitted ones (stable between runs)."""
    assert t.values is not None
    deterministic = schedulers.get(t.params["scheduler"]).deterministic
    values = dict(zip(objectives, t.values, strict=True))
    if fit is not None and t.user_attrs.get("model_calls"):
        values["seconds"] = fit(*_calls_guided(t))
    return Candidate(t.number, values, deterministic)


def _outcome(cfg: StudyConfig, class_name: str, study: optuna.Study) -> ClassOutcome:
    objectives = cfg.metrics.objectives
    all_trials = study.get_trials(deepcopy=False)
    trials = [t for t in all_trials if t.state == TrialState.COMPLETE and "reused_from" not in t.user_attrs]
    fit = _seconds_fit(trials, objectives)
    candidates = [_candidate(t, objectives, fit) for t in trials]
    higher = {m: METRICS[m].higher_is_better for m in objectives}
    front = pareto_front([dict(zip(objectives, t.values, strict=True)) for t in trials], higher)
    seed_lpips = study.user_attrs.get("seed_lpips")
    base = next((c for c, t in zip(candidates, trials, strict=True) if _is_baseline(t)), None)
    rec = None
    if base is not None:
        r = cfg.recommend
        rec = match_baseline(
            candidates, base, clip_tolerance=r.clip_tolerance, lpips_tolerance=r.lpips_tolerance, seed_lpips=seed_lpips
        )
    n_failed = sum(t.state == TrialState.FAIL for t in all_trials)
    n_completed = sum(t.state == TrialState.COMPLETE for t in all_trials)
    family = FAMILIES[study.user_attrs.get("fingerprint", {}).get("family") or "sd"]
    outliers: tuple[int, ...] = ()
    if fit is not None:
        i = objectives.index("seconds")
        outliers = tuple(
            t.number for t in trials if t.user_attrs.get("model_calls") and fit.outlier(*_calls_guided(t), t.values[i])
        )
    return ClassOutcome(class_name, study, trials, front, rec, seed_lpips, n_completed, n_failed, family, fit, outliers)


def recommend(cfg: StudyConfig, *, storage: str | None = None) -> dict[str, ClassOutcome]:
    """Read every class's study from storage and apply the recommendation rule (renders nothing)."""
    url = storage or cfg.default_storage
    if url.startswith("sqlite:///") and not _sqlite_path(url).exists():
        raise ConfigError(f"storage {url!r}: no study database yet; run `autotune study {cfg.path}` first")
    rdb = open_storage(url)
    version = study_version(cfg, rdb)
    out = {}
    for c in cfg.classes:
        study = _load_study(cfg, c, rdb, version=version)
        if study is None:
            raise ConfigError(
                f"classes.{c}: no study {study_name(cfg, c, version)!r} in {url}; run `autotune study {cfg.path}` first"
            )
        out[c] = _outcome(cfg, c, study)
    return out


def _sqlite_path(url: str) -> Path:
    return Path(url.removeprefix("sqlite:///"))


def with_family_defaults(cfg: StudyConfig, outcomes: dict[str, ClassOutcome]) -> StudyConfig:
    """The study file with the defaults of the model family its study stored (baseline, reference
    left unset in the file), without loading the model: what reading a finished study needs."""
    from autotune.config import resolve

    if cfg.family is not None or not outcomes:
        return cfg
    return resolve(cfg, next(iter(outcomes.values())).family, schedulers.names())


def settings_of(t: FrozenTrial) -> Settings:
    return Settings.from_params(t.params)


def trial_summary(t: FrozenTrial, objectives: tuple[str, ...], family: Family) -> dict[str, Any]:
    """A trial as plain JSON-able data: setting, diffusers recipe, metrics and their spread."""
    s = settings_of(t)
    spec = schedulers.get(s.scheduler)
    assert t.values is not None
    return {
        "trial": t.number,
        "setting": s.label(),
        "scheduler": s.scheduler,
        "a1111_name": spec.a1111,
        "options": dict(s.options),
        "steps": s.steps,
        "guidance": s.guidance,
        "deterministic": spec.deterministic,
        "diffusers": {
            "scheduler_class": spec.class_name,
            "scheduler_config": s.scheduler_overrides(),
            "call_kwargs": s.call_kwargs(family),
        },
        "metrics": dict(zip(objectives, t.values, strict=True)),
        "metrics_std": {m: t.user_attrs.get(f"{m}_std") for m in objectives},
        "model_calls": t.user_attrs.get("model_calls"),
    }
