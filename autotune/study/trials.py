"""One prompt class's objective, driven by ask/tell: draw a setting, render it once, tell Optuna.

Spend nothing twice: a setting rendered before reuses its stored metrics (the next trial then
tries a setting not tried yet), a setting another worker is rendering right now is left to it.
Rough first: with two or more seeds, the other seeds render only when the first seed's images
are not clearly dominated by a setting already rendered.

Example:
    >>> objective = TrialRunner(cfg, study, "portrait", Evaluator(cfg, url, None), target=30)
    >>> objective.run_one().state
    TrialState.COMPLETE
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
import traceback
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import optuna
from optuna.artifacts import upload_artifact
from optuna.trial import FrozenTrial, TrialState

from autotune.config.objectives import COST, OBJECTIVES, summarise
from autotune.config.resolve import ResolvedStudy
from autotune.decision.evidence import distinct
from autotune.decision.pareto import clearly_dominated
from autotune.files import WriteFailed, write_failure
from autotune.model.evaluate import Evaluation, Scorer
from autotune.noise import noise_seed
from autotune.process import deferred, signals_kept, why, worker_id
from autotune.records import put_study, put_trial, study_record, trial_record
from autotune.space import schedulers
from autotune.space.settings import Settings, resample, suggest
from autotune.store.artifacts import is_bucket
from autotune.store.optuna_api import fail_stale_trials, heartbeat, reset_connections, storage_of, trial_id
from autotune.store.reference_table import image_name
from autotune.study import ledger
from autotune.study.sampling import fresh_params

__all__ = ["TrialFailed", "TrialRunner"]

T = TypeVar("T")
_TRACEBACK_CHARS = 8000  # the end of a failed trial's traceback kept in its ``fail_traceback`` attribute
# besides per-metric values: what a reuse copies
_KEPT_FROM_EARLIER = ("model_calls", "guided_calls", "images", "prompts_rendered", "timesteps", "noise_seeds")


class TrialFailed(Exception):
    """A trial that rendered nothing usable; Optuna records it as FAIL and the study goes on."""


def _reason(e: BaseException) -> str:
    """One line for ``fail_reason``: the exception, and where it was raised when it says nothing."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    if not text:
        frame = traceback.extract_tb(e.__traceback__)[-1]
        text = f"raised at {'/'.join(Path(frame.filename).parts[-3:])}:{frame.lineno}"
    return f"{type(e).__name__}: {text}"[:500]


def _merge_seeds(first: Sequence[T], rest: Sequence[T], n_seeds: int) -> list[T]:
    """Prompt-major order again from the first seed's items and the other seeds' (both prompt-major)."""
    out: list[T] = []
    for i, item in enumerate(first):
        out += [item, *rest[i * (n_seeds - 1) : (i + 1) * (n_seeds - 1)]]
    return out


def _values(e: Evaluation) -> dict[str, list[float]]:
    """Per-image quality values and, when timed, the seconds of each serving call."""
    return {**e.per_image, **({COST: e.seconds} if e.seconds else {})}


class TrialRunner:
    """A class's study, one trial at a time; ``scorer`` renders and scores (or a cache stands in)."""

    def __init__(
        self,
        cfg: ResolvedStudy,
        study: optuna.Study,
        class_name: str,
        scorer: Scorer,
        target: int,
        artifacts: Any = None,  # an Optuna artifact store (autotune.store.artifacts.open_store)
        rng: random.Random | None = None,
    ) -> None:
        self.cfg, self.study, self.class_name, self.scorer = cfg, study, class_name, scorer
        self.target, self.artifacts, self.rng = target, artifacts, rng or random.Random()
        every = cfg.classes[class_name]
        self.prompts, self.seeds = every[: cfg.search.first_prompts(len(every))], cfg.search.seeds  # racing adds more

    def run_one(self) -> FrozenTrial:
        """Ask for a trial, run it under Optuna's heartbeat, tell the outcome; the trial as stored.

        SIGINT or SIGTERM marks the trial interrupted (it is retried on the next run) and is raised again.
        """
        storage = storage_of(self.study)
        fail_stale_trials(self.study)  # other hosts' dead workers' trials, as optimize does first
        values: list[float] | None = None
        trial: optuna.Trial | None = None
        try:  # a signal held while the trial is asked is raised as the block ends: inside this try
            with deferred(), warnings.catch_warnings():  # asked and owned in one piece: never RUNNING unowned
                warnings.filterwarnings("ignore", "Heartbeat of storage is supposed to be used with Study.optimize")
                trial = self.study.ask()  # the heartbeat runs below, as in Optuna's own optimize loop
                put_trial(trial, worker=worker_id())
            with heartbeat(self.study, trial):
                try:
                    values = self._run(trial)
                    state = TrialState.COMPLETE
                except optuna.TrialPruned:
                    state = TrialState.PRUNED
                except TrialFailed:
                    state = TrialState.FAIL
        except KeyboardInterrupt as e:  # SIGINT or SIGTERM, not the setting's fault: the next run retries it
            if trial is None:
                raise
            with deferred():
                reset_connections(storage_of(self.study), e)  # the signal may have landed inside a commit
                put_trial(trial, interrupted=True, fail_reason=why(e))
                self.study.tell(trial, state=TrialState.FAIL)
            raise
        except Exception as e:
            self._stop_if_unwritable(trial, e)
            raise
        try:
            with deferred():
                self.study.tell(trial, values, state=state)
        except Exception as e:
            self._stop_if_unwritable(trial, e)
            raise
        return storage.get_trial(trial_id(trial))

    def _stop_if_unwritable(self, trial: optuna.Trial | None, e: Exception) -> None:
        """A full disk or a database gone is no fault of the setting, and the next trial would meet it too:
        the trial is failed as the infrastructure's (rendered again by the next run) where the storage
        still takes that, and the run stops (:class:`autotune.files.WriteFailed`), keeping what it stored."""
        reason = write_failure(e)
        if reason is None:
            return
        then = "goes on"  # no trial was asked for: nothing of this one to render again
        with deferred(), contextlib.suppress(Exception):
            reset_connections(storage_of(self.study), e)
            if trial is not None:
                then = "fails it and renders it again"  # unless the FAIL below is stored
                put_trial(trial, infrastructure=True, fail_reason=f"could not be written: {reason}")
                self.study.tell(trial, state=TrialState.FAIL)
                then = "renders it again"
        where = f"{self.class_name} trial {trial.number}" if trial is not None else f"{self.class_name}: a new trial"
        raise WriteFailed(
            f"{where} could not be stored ({reason}): stopped, every finished trial kept; make room (or bring the "
            f"database back) and run the same command: it {then}"
        ) from None

    def _trials(self) -> list[FrozenTrial]:
        return self.study.get_trials(deepcopy=False)

    def _run(self, trial: optuna.Trial) -> list[float]:
        trials = self._trials()
        me = next(t for t in trials if trial_id(t) == trial_id(trial))
        if ledger.surplus(trials, me, self.target):
            put_trial(trial, surplus=True)  # workers claimed the last trials at the same moment
            raise optuna.TrialPruned(f"other workers already claimed the study's {self.target} trials")
        settings = suggest(trial, self.cfg.search, self.scorer.family)
        spec = schedulers.get(settings.scheduler)
        key = settings.key(self.scorer.scheduler_config)
        put_trial(
            trial,
            setting=settings.label(),
            setting_key=key,
            scheduler_class=spec.class_name,
            scheduler_config=settings.scheduler_overrides(),
            deterministic=spec.deterministic,
        )
        trials = self._trials()  # read after writing the key: see ledger.rendering_now
        earlier = ledger.same_setting(trials, key, trial.number)
        if earlier is not None:
            return self._reuse(trial, earlier, trials)
        busy = ledger.rendering_now(trials, key, trial.number)
        if busy is not None:
            put_trial(trial, same_setting_running=busy.number)
            self._enqueue_fresh(trial, trials)
            raise optuna.TrialPruned(f"trial {busy.number} is rendering the same setting")
        try:
            with signals_kept():  # a signal a library reported as its own error is a stop, not the setting's failure
                if settings.fitted:
                    settings = self._fitted(trial, settings)
                evaluation = self._render(trial, settings)
        except optuna.TrialPruned:
            raise
        except Exception as e:  # any render or metric failure fails this trial, not the study
            if write_failure(e):  # the disk or the database, not the setting (see run_one)
                raise
            put_trial(trial, fail_reason=_reason(e), fail_traceback=traceback.format_exc()[-_TRACEBACK_CHARS:])
            from autotune.model.render import free_memory

            free_memory()
            raise TrialFailed(_reason(e)) from e
        return self._record(trial, evaluation)

    def _fitted(self, trial: optuna.Trial, settings: Settings) -> Settings:
        """The class's own schedule for the sampler and step count: fitted by the first trial that needs it
        while the fits have cost less than ``FIT_SHARE`` of the search's denoiser calls, afterwards the
        sampler's nearest fitted schedule resampled to the steps; kept in the study for every later run (one
        the deadline cut short is this trial's alone, ``fit_stopped``: the next run's trials fit afresh)."""
        from autotune.model.fit import FIT_SHARE

        fits = dict(study_record(self.study.user_attrs).fitted_schedules)
        name = f"{settings.scheduler}|{settings.steps}"
        fit = fits.get(name)
        if fit is None:
            s = self.cfg.search
            budget = FIT_SHARE * self.target * len(self.prompts) * len(self.seeds) * sum(s.steps) / 2
            own = {int(k.split("|")[1]): f for k, f in fits.items() if k.split("|")[0] == settings.scheduler}
            if sum(f.get("calls", 0) for f in fits.values()) < budget or not own:
                timesteps, info = self.scorer.fit_schedule(settings, self.prompts, self.seeds, self.in_time)
            else:  # the fit budget is spent: the nearest fit of this sampler, resampled
                near = min(own, key=lambda n: (abs(n - settings.steps), n))
                timesteps, info = resample(own[near]["timesteps"], settings.steps), {"resampled_from": near}
            fit = {"timesteps": timesteps, **info, "trial": trial.number}
            if info.get("stopped"):  # cut short by the deadline: this trial renders it; not kept for later ones
                put_trial(trial, fit_stopped=info["stopped"])
            else:
                fits[name] = fit
                put_study(self.study, fitted_schedules=fits)
        settings = dataclasses.replace(settings, timesteps=tuple(fit["timesteps"]))
        put_trial(trial, timesteps=fit["timesteps"], setting=settings.label())  # the label with its timesteps
        return settings

    def in_time(self) -> bool:
        """Whether the run's deadline is still ahead (the run sets it): a fit looks between its renders, the
        decision's races and confirmations between their chunks (:meth:`ClassRun.in_time`)."""
        return True

    def _enqueue_fresh(self, trial: optuna.Trial, trials: Sequence[FrozenTrial]) -> None:
        """A sampler that repeats itself has stopped exploring: the next trial tries a new setting."""
        fresh = fresh_params(trials, self.cfg.search, self.scorer.family, self.rng, self.scorer.scheduler_config)
        if fresh is None:
            put_study(self.study, exhausted=True)
        else:
            ledger.enqueue(self.study, fresh, fresh_after=trial.number)

    def _reuse(self, trial: optuna.Trial, earlier: FrozenTrial, trials: Sequence[FrozenTrial]) -> list[float]:
        """Spend nothing twice: a repeated setting takes the earlier trial's verdict."""
        put_trial(trial, reused_from=earlier.number)
        self._enqueue_fresh(trial, trials)
        if ledger.rough_cut(earlier):
            put_trial(trial, rough_dominated_by=trial_record(earlier).rough_dominated_by)
            raise optuna.TrialPruned(f"rough-first cut the same setting in trial {earlier.number}")
        if earlier.state == TrialState.FAIL:
            reason = f"same setting failed in trial {earlier.number}: {trial_record(earlier).fail_reason}"
            put_trial(trial, fail_reason=reason)
            raise TrialFailed(reason)
        kept = dataclasses.asdict(trial_record(earlier))
        put_trial(trial, values=kept["values"], **{k: kept[k] for k in _KEPT_FROM_EARLIER if kept[k] is not None})
        assert earlier.values is not None
        return list(earlier.values)

    def _record(self, trial: optuna.Trial, evaluation: Evaluation) -> list[float]:
        """Per-image values as user attributes, images as artifacts; the objectives' values for Optuna."""
        values = _values(evaluation)
        put_trial(
            trial,
            values={name: [round(x, 6) for x in v] for name, v in values.items()},  # quality: prompt-major; seconds
            model_calls=evaluation.model_calls,
            **({} if evaluation.guided_calls is None else {"guided_calls": evaluation.guided_calls}),
            render_seconds=round(evaluation.render_seconds, 6),
            images=len(self.prompts) * len(self.seeds),
            prompts_rendered=len(self.prompts),  # the class's first ones
            # each image's own generator seed, prompt-major like the values: any image re-renders from its prompt
            noise_seeds=[noise_seed(q, s) for q in self.prompts for s in self.seeds],
        )
        if self.artifacts is not None and evaluation.images is not None:
            try:
                if not is_bucket(self.cfg.artifacts):
                    Path(self.cfg.artifacts).mkdir(parents=True, exist_ok=True)
                self._upload(trial, evaluation.images)
            except Exception as e:  # the store failed: the images' metrics stay recorded above
                if write_failure(e):  # no room left: every next trial would fail alike (see run_one)
                    raise
                reason = f"storing the trial's images failed ({self.cfg.artifacts}): {_reason(e)}"
                put_trial(trial, fail_reason=reason, infrastructure=True)  # not the setting's fault: rendered again
                raise TrialFailed(reason) from e
        return [summarise(name, values[name]) for name in self.cfg.metrics.objectives]

    def _upload(self, trial: optuna.Trial, images: Any) -> None:
        """Every image of the trial as a PNG artifact, prompt-major like the render."""
        import tempfile

        from autotune.model.references import encode_png

        assert self.artifacts is not None
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            for i, image in enumerate(images):
                path = Path(tmp) / image_name(i // len(self.seeds), self.seeds[i % len(self.seeds)])
                path.write_bytes(encode_png(image))
                upload_artifact(
                    artifact_store=self.artifacts, file_path=str(path), study_or_trial=trial, mimetype="image/png"
                )

    def _render(self, trial: optuna.Trial, settings: Settings) -> Evaluation:
        """Every image of the setting; with ``rough_first``, the other seeds only when the first seed's
        images are not clearly dominated by a setting already rendered (compared on that seed)."""
        prompts, seeds, scorer = self.prompts, self.seeds, self.scorer
        if not self.cfg.search.rough_first or len(seeds) == 1:
            return scorer.evaluate(settings, prompts, seeds)
        first = scorer.evaluate(settings, prompts, seeds[:1])
        if not trial_record(trial).baseline:
            self._cut_if_dominated(trial, _values(first))
        rest = scorer.evaluate(settings, prompts, seeds[1:], timed=False)
        n = len(seeds)
        per_image = {m: _merge_seeds(first.per_image[m], rest.per_image[m], n) for m in first.per_image}
        images = None
        if first.images is not None and rest.images is not None:
            import torch

            images = torch.stack(_merge_seeds(list(first.images), list(rest.images), n))
        return Evaluation(
            per_image,
            first.model_calls,
            images,
            first.seconds,
            first.render_seconds + rest.render_seconds,
            first.guided_calls,
        )

    def _cut_if_dominated(self, trial: optuna.Trial, first: dict[str, list[float]]) -> None:
        objectives, n = self.cfg.metrics.objectives, len(self.seeds)
        done = [
            (t, values)
            for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if distinct(t) and set(objectives) <= set(values := trial_record(t).values)
        ]
        rendered = [
            {m: summarise(m, values[m][:: 1 if OBJECTIVES[m].cost else n]) for m in objectives} for _, values in done
        ]
        rough = {m: summarise(m, first[m]) for m in objectives}
        better = clearly_dominated(rough, rendered, {m: OBJECTIVES[m].higher_is_better for m in objectives})
        if better is not None:
            number = done[better][0].number
            put_trial(trial, rough=rough, rough_dominated_by=number)
            raise optuna.TrialPruned(f"rough-first: its first seed is clearly dominated by trial {number}")
