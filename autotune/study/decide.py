"""One class's study while it runs: deciding while searching, one unit of work at a time.

Each :meth:`ClassRun.step` does what the decision needs most (:mod:`autotune.decision.agenda`):
confirm a candidate that would become the recommendation, race one whose bound is undecided, render
the recommendation's neighbours; else a new setting, the decision's proposal (:mod:`autotune.decision.
propose`) or, for a share ``search.front_share``, the optimiser's, which maps the Pareto front. The
evidence is built once from the stored trials and kept up to date with each render.

Every image the decision scores is stored in the class's study, a chunk at a time (``renders.<trial>.<chunk>``:
``{"prompt:seed": {metric: value, "noise_seed": its generator seed}}``), so a resumed study picks up where it stopped
and ``autotune recommend`` reads the verdict without a model. The study's ``decision`` attribute says
whether the decision finished (``settled``) or is still under way (``deciding``; ``stopped`` says why
it is not running).

Example:
    >>> run = ClassRun(cfg, study, "portrait", evaluator, objective)
    >>> while run.step():
    ...     pass
"""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from autotune.config import ConfigError
from autotune.config.resolve import ResolvedStudy
from autotune.decision.agenda import Action, neighbours, next_action
from autotune.decision.bounds import Tolerance
from autotune.decision.cost import priced
from autotune.decision.evidence import NOISE_SEED, Evidence, reused, unit_key
from autotune.decision.looks import clean_images_needed, confirmation_alpha
from autotune.decision.panel import Panel
from autotune.decision.propose import Proposer, Tried, lines_of
from autotune.decision.rule import Recommendation, Schedule, decide, excess, margin, overall, timed_together, verdicts
from autotune.decision.tolerance import tolerance
from autotune.model.evaluate import Scorer, in_turn
from autotune.noise import noise_seed
from autotune.process import signals_kept
from autotune.records import put_study, study_record, trial_record
from autotune.space import schedulers
from autotune.space.settings import Settings, searched_params
from autotune.study import ledger
from autotune.study.trials import TrialRunner

__all__ = ["ClassRun", "Snapshot", "check_reach"]

PHASES = {"race": "racing", "confirm": "confirming"}  # an agenda Action's kind


def check_reach(cfg: ResolvedStudy) -> None:
    """Refuse a study whose panels are too small for a clean candidate to pass the broken-image gate: its
    exact bound needs that many images without a collapse (search and confirmation together), and a class
    with fewer could never recommend anything."""
    r = cfg.recommend
    needed = clean_images_needed(confirmation_alpha(1, r.finalists), r.broken_share)
    for c, prompts in cfg.classes.items():
        panel = Panel.of(len(prompts), cfg.search, r)
        most = panel.search_sizes[-1] + (panel.confirm_sizes[-1] if panel.confirm_sizes else 0)
        if most < needed:
            raise ConfigError(
                f"{cfg.path}: recommend.broken_share: {r.broken_share:g} needs {needed} images of a candidate without "
                f"a collapse; classes.{c} gives at most {most} (prompts: {len(prompts)}; seeds: "
                f"{len(cfg.search.seeds)} search, {r.race_seeds} racing, {len(r.confirm_seeds)} confirmation): "
                "add prompts, race_seeds or "
                "confirm_seeds, or raise broken_share"
            )


class Snapshot:
    """The decision for a class as its evidence stands: the tolerances, the look schedule, the recommendation
    (its speed-up as the outputs state it, from the pick and the baseline timed in turn) and every rendered
    setting's verdict as the proposer walks by them. Built once for each state of the evidence
    (:attr:`ClassRun.now`) and read by the step, the agenda, the proposer, the settling and the progress bar."""

    def __init__(self, run: ClassRun) -> None:
        self._run = run
        base = run.evidence.baseline
        r = run.cfg.recommend
        self.looks = Schedule(run.panel, tuple(run.evidence.confirmed), r.finalists)
        self.tol: Tolerance | None = None
        self.rec: Recommendation | None = None
        if base is not None:  # the first trial queued: everything is compared with it
            self.tol = tol = run.tolerance()
            rec = decide(run.evidence.candidates, base, tol, stochastic=r.stochastic, looks=self.looks)
            self.rec = timed_together(rec, run.timed)

    @functools.cached_property
    def tried(self) -> dict[str, Tried]:
        """Each rendered (or failed) setting's verdict, margin and excess, by setting key: the proposer's map."""
        run, base, tol, looks = self._run, self._run.evidence.baseline, self.tol, self.looks
        assert base is not None and tol is not None
        out = {k: Tried("error") for k in run.errors}
        for n, t in run.trials.items():
            c = run.evidence.by_number[n]
            bounds = verdicts(c, base, tol, looks=looks)
            verdict = overall(bounds)
            fresh = verdicts(c, base, tol, confirm=True, looks=looks) if verdict == "pass" and c.confirm else []
            if fresh and overall(fresh) != "pass":
                # a pass the fresh images did not bear out holds the walk no more: the rungs above come next
                verdict, bounds = overall(fresh), fresh
            out[str(trial_record(t).setting_key)] = Tried(verdict, margin(bounds), excess(bounds))
        return out


class ClassRun:
    """A class's study, its evidence, and the next unit of work."""

    def __init__(
        self, cfg: ResolvedStudy, study: optuna.Study, class_name: str, scorer: Scorer, objective: TrialRunner
    ):
        self.cfg, self.study, self.class_name, self.scorer, self.objective = cfg, study, class_name, scorer, objective
        r = cfg.recommend
        self.prompts = cfg.classes[class_name]
        self.panel = Panel.of(len(self.prompts), cfg.search, r)
        stored = study_record(study.user_attrs)  # one read: each access is a storage query
        self.seed_lpips = stored.seed_lpips
        self.race_spent = int(stored.race_images)
        self.evidence = Evidence(cfg.metrics.objectives, len(self.prompts), cfg.search.seeds, r.confirm_seeds)
        self.evidence.confirmed = [int(n) for n in stored.confirmations]
        self.trials: dict[int, FrozenTrial] = {}
        self.stored: dict[int, dict[str, Any]] = {}
        self.errors: set[str] = set()  # setting keys whose trial failed on its own or was cut by rough-first
        self._stored = stored
        self.timed = stored.timed_together  # the pick and the baseline timed in turn (see _time_together)
        self._now: Snapshot | None = None
        self._tol: tuple[Any, Tolerance] | None = None
        base = scorer.scheduler_config
        self.key = functools.cache(lambda s: s.key(base))  # the walk asks for every line's rungs at each step
        g = cfg.baseline.guidance

        @functools.cache
        def same(s: Settings) -> str:  # one line per schedule: two names for one would be rendered twice
            try:
                return self.key(s) if s.ays or s.fitted else schedulers.signature(s.scheduler, base, dict(s.options))
            except Exception:  # a schedule that needs more than steps to set (a flow shift's mu)
                return self.key(s)

        s = cfg.search
        lines = lines_of(s.schedulers, s.variants, cfg.family, g, same, r.stochastic, s.fitted_schedules)
        walk = s.n_trials * (1 - s.front_share)  # the settings the walk may propose (the rest are the optimiser's)
        self.proposer = Proposer(
            lines, s.steps, s.steps_step, self._cost, key=self.key, guidance=s.guidance,
            guidance_step=s.guidance_step, budget=walk,
        )  # fmt: skip
        self.settled = False
        self.last: FrozenTrial | None = None  # the last trial this run rendered (for the progress line)
        self.refresh()

    # the evidence, kept up to date ------------------------------------------------------------------
    def refresh(self) -> None:
        """Add the trials completed since the last look (this worker's and any other's)."""
        for t in self.study.get_trials(
            deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)
        ):
            if t.number in self.trials or reused(t):
                continue
            if t.state != TrialState.COMPLETE:  # failed on its own, or cut by rough-first: not proposed again
                r = trial_record(t)
                failed = ledger.rough_cut(t) or (r.fail_reason is not None and not ledger.interrupted(t))
                if failed and (r.setting_key or "") not in self.errors:
                    self.errors.add(r.setting_key or "")
                    self._now = None  # the proposer's map moved
                continue
            self._now = None  # the evidence moved: the decision is read again
            self.trials[t.number] = t
            self.evidence.add_trial(t, refit=False)
            stored = dict(self._stored.renders.get(t.number, {}))
            self.stored[t.number] = stored
            self.evidence.add_renders(t.number, stored)
        self.evidence.refit()

    def settings(self) -> dict[int, Settings]:
        return {n: Settings.of_trial(t) for n, t in self.trials.items()}

    def tolerance(self) -> Tolerance:
        """The tolerances, from the baseline's images as they stand (the same object while they do)."""
        base = self.evidence.baseline
        assert base is not None
        if self._tol is None or self._tol[0] is not base:
            self._tol = (base, tolerance(self.cfg.recommend, self.cfg.metrics.objectives, base, self.seed_lpips)[0])
        return self._tol[1]

    @property
    def now(self) -> Snapshot:
        """The decision as the evidence stands (built again only after the evidence moved)."""
        if self._now is None:
            self._now = Snapshot(self)
        return self._now

    def recommendation(self) -> Recommendation | None:
        return self.now.rec

    # cost in one unit for rendered and untried settings ----------------------------------------------
    def _cost(self, s: Settings) -> float:
        return priced(self.evidence.fit, s.calls, s.guided_share(self.cfg.family))

    def _best_cost(self, chosen: Any) -> float:
        return math.inf if chosen.calls is None else priced(self.evidence.fit, chosen.calls, chosen.guided)

    # one unit of work ---------------------------------------------------------------------------------
    def announce(self, doing: str) -> None:
        """Called as each unit of work starts, with what it is (the study's progress bar shows it)."""

    def in_time(self) -> bool:
        """Whether the run's deadline is still ahead (the trial runner's: the run sets it there): a long unit
        of work looks between its chunks, and stops there; what it rendered is kept, the rest waits."""
        return self.objective.in_time()

    def step(self) -> bool:
        """Do the next unit of work; False when the class has nothing left to do."""
        self.refresh()
        base = self.evidence.baseline  # the first trial queued: everything is compared with it
        rec = self.now.rec  # the decision as the evidence stands: this step's one reading of it
        action = self._action(base, rec) if base is not None else None
        if action is not None:
            self.announce(f"{PHASES[action.kind]} trial {action.number} on {len(action.units)} more images")
            self._render(action)
            return True
        trials = self.study.get_trials(deepcopy=False)
        if base is None and any(ledger.is_baseline(t) and t.state == TrialState.WAITING for t in trials):
            self.announce("baseline")  # a retry of one that failed: rendered whatever the count
            return self._trial(None)
        full = ledger.claimed(trials) >= self.objective.target
        if full or study_record(self.study.user_attrs).exhausted:
            self.announce("settling")
            return self._settle()
        self.announce("baseline" if base is None else "search: a new setting")
        return self._trial(self._next_setting(rec) if base is not None else None)

    def _action(self, base: Any, rec: Any) -> Action | None:
        margin_of = self._margin_numbers(rec.chosen.number) if rec.chosen.number != base.number else []
        tol = self.now.tol
        assert tol is not None
        return next_action(
            self.evidence, tol, self.panel, self.settings(), self.cfg.recommend,
            race_spent=self.race_spent, margin_of=margin_of, frontier=self._frontier,
        )  # fmt: skip

    def _frontier(self, c: Any) -> bool:
        """Nothing cheaper than ``c`` is left for the search to try: its trials are spent, or the walk has no
        cheaper setting to propose (a confirmation slot is then spent on the cheapest it found)."""
        if ledger.claimed(self.study.get_trials(deepcopy=False)) >= self.objective.target:
            return True
        return self.proposer.propose(self.now.tried, self._best_cost(c)) is None

    def _settle(self) -> bool:
        self._time_together()
        self.settled = True
        put_study(self.study, decision={"state": "settled"})
        return False

    def _time_together(self) -> None:
        """Time the recommendation and the baseline again, one serving call of each in turn
        (``[serving] repeats`` of each): the baseline's own timing is the study's first, and a slow spell
        of the machine then (another job, a cold start) would sit in every speed-up of the class. The
        speed-up the outputs state is read from these (:func:`autotune.decision.rule.timed_together`)."""
        rec = self.now.rec
        if rec is None or rec.chosen.number == rec.baseline.number or not rec.chosen.seconds:
            return
        pair = [rec.baseline.number, rec.chosen.number]
        if (self.timed or {}).get("trials") == pair:  # timed in turn before (a resumed run)
            return
        self.announce("timing the pick and the baseline in turn")
        settings, prompt, seed = self.settings(), self.prompts[0], self.cfg.search.seeds[0]
        try:
            with signals_kept():  # a stop, not a failed timing, whatever a library made of it
                seconds = in_turn(self.scorer, [settings[n] for n in pair], prompt, seed, self.cfg.serving.repeats)
        except Exception as e:  # out of memory, say: the decision stands, its speed-up reads the trials' timings
            why = f"{type(e).__name__}: {e}"
            print(
                f"autotune: warning: {self.class_name}: timing the recommendation and the baseline again failed "
                f"({why}); the speed-up reads their trials' own timings",
                file=sys.stderr,
            )
            return
        self.timed = {"trials": pair, "seconds": seconds}
        self._now = None  # its speed-up is read from these now
        put_study(self.study, timed_together=self.timed)

    def _margin_numbers(self, chosen: int) -> list[int]:
        """Trial numbers of the recommendation's neighbours already rendered."""
        by_key = {trial_record(t).setting_key: n for n, t in self.trials.items()}
        return [by_key[k] for k in map(self.key, self._neighbours(chosen)) if k in by_key]

    def _neighbours(self, chosen: int) -> list[Settings]:
        return neighbours(self.settings()[chosen], self.cfg.search)

    def _next_setting(self, rec: Any) -> Settings | None:
        """The decision's next setting (its proposal, or a neighbour of the recommendation), or None: a trial
        is queued already (a retry, a fresh draw after a repeat, another process's), it is the optimiser's
        turn (``search.front_share`` of the new settings), or the decision has none."""
        done = self.study.get_trials(deepcopy=False)
        if any(t.state == TrialState.WAITING for t in done):
            return None
        records = [trial_record(t) for t in done]
        rendered = [r for t, r in zip(done, records, strict=True) if r.setting_key is not None and not reused(t)]
        ours = sum(r.proposed for r in rendered)
        if ours >= (1 - self.cfg.search.front_share) * len(rendered):  # the baseline is the optimiser's
            return None
        base = self.evidence.baseline
        assert base is not None
        if rec.chosen.number != base.number:
            tried = {r.setting_key for r in records}
            for s in self._neighbours(rec.chosen.number):
                if self.key(s) not in tried:
                    return s
        return self.proposer.propose(self.now.tried, self._best_cost(rec.chosen))

    def _trial(self, proposal: Settings | None) -> bool:
        """Render a new setting: the proposal (enqueued, so that its trial draws it), or the optimiser's."""
        if proposal is not None:
            searched = searched_params(proposal.scheduler, self.cfg.search, self.cfg.family)
            ledger.enqueue(self.study, proposal.params(searched), proposed=True)
        self.last = self.objective.run_one()
        return True

    def _render(self, action: Action) -> None:
        """The action's units for its trial; first, as a unit of work of its own, the baseline's where it
        lacks them (the two are compared on the same images)."""
        base = self.evidence.baseline
        assert base is not None
        lacking = [u for u in action.units if u not in base.images and u not in base.confirm]
        spent = self._render_units(base.number if lacking else action.number, action.units)
        if action.kind == "race":
            self.race_spent += spent
            put_study(self.study, race_images=self.race_spent)

    def _render_units(self, number: int, units: Sequence[tuple[int, int]]) -> int:
        have = self.stored[number]
        c = self.evidence.by_number[number]
        todo = [u for u in units if unit_key(*u) not in have and u not in c.images and u not in c.confirm]
        by_prompts: dict[tuple[int, ...], list[int]] = {}
        for seed in dict.fromkeys(s for _, s in todo):
            by_prompts.setdefault(tuple(p for p, s in todo if s == seed), []).append(seed)
        new: dict[str, dict[str, float]] = {}
        settings = Settings.of_trial(self.trials[number])
        chunks = [(prompts, [seed]) for prompts, seeds in by_prompts.items() for seed in seeds]  # a seed each
        for prompts, seeds in chunks:
            if new and not self.in_time():
                break
            e = self.scorer.evaluate(settings, [self.prompts[p] for p in prompts], seeds, timed=False)
            for i, (p, s) in enumerate((p, s) for p in prompts for s in seeds):
                new[unit_key(p, s)] = {m: v[i] for m, v in e.per_image.items()}
                new[unit_key(p, s)][NOISE_SEED] = noise_seed(self.prompts[p], s)  # re-renders from prompt and this
        if new:
            have.update(new)
            self._now = None  # the evidence moved: the decision is read again
            put_study(self.study, renders={number: new})  # a chunk of its own: stored ones stay as they are
            begun = len(self.evidence.confirmed)
            self.evidence.add_renders(number, new)
            if len(self.evidence.confirmed) > begun:  # a confirmation began: its place sets the error it may spend
                put_study(self.study, confirmations=self.evidence.confirmed)
        return len(new)
