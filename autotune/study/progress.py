"""The progress bar of ``autotune study``: settings rendered, Pareto front sizes, each class's current
pick, the unit of work under way (class and phase) and one estimate of the time left."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from typing import Any

import optuna
from optuna.trial import TrialState

from autotune.config import StudyConfig
from autotune.decision.evidence import distinct
from autotune.results.reader import front_of
from autotune.study import ledger
from autotune.study.decide import ClassRun

__all__ = ["Progress", "speedup_label"]


def speedup_label(rec: Any) -> str:
    """A class's current pick for the bar: its speed-up, or "base" while the baseline stands."""
    if rec is None or rec.chosen.number == rec.baseline.number or rec.speedup is None:
        return "base"
    return f"{rec.speedup:.1f}x"


class Progress:
    """A tqdm bar over all classes: settings rendered, Pareto front sizes, each class's current
    recommendation (its speed-up; "base": the baseline for now), the unit of work under way (its class and
    phase: baseline, search, racing, confirming, timing), and one estimate of the time left: the pace of
    the settings so far, never past the deadline (racing and confirming add no settings, so the pace is
    an estimate; the deadline is a promise)."""

    def __init__(
        self, cfg: StudyConfig, runs: dict[str, Any], target: int, deadline: float, enabled: bool,
        clock: Callable[[], float],
    ) -> None:  # fmt: skip
        from tqdm import tqdm

        self.now = clock

        self.runs, self.deadline, self.target = runs, deadline, target
        self.doing, self.post = "", dict[str, str]()
        self.began = self.now()
        self.studies: dict[str, optuna.Study] = {c: r.study for c, r in runs.items()}
        self.objectives = cfg.metrics.objectives
        self.bar = tqdm(
            total=target * len(runs),
            initial=self._done(),
            desc=f"autotune {cfg.name}",
            unit="trial",
            disable=not enabled,
            file=sys.stderr,
            dynamic_ncols=True,
            bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} settings [{elapsed}{postfix}]",
        )
        self.first = self.bar.n
        self.update()

    def now_doing(self, class_name: str, what: str) -> None:
        """A unit of work starts: show its class and phase at once (a confirmation can take minutes)."""
        self.doing = f"{class_name}: {what}"
        if not self.bar.disable:  # the rest of the line as the last update left it: no decision read again
            self.post["doing"] = self.doing
            if (left := self._left()) is not None:
                self.post["left"] = left
            self.bar.set_postfix(self.post)

    def _left(self) -> str | None:
        """The time left: the settings' pace so far (prefixed ~), at most the deadline's."""
        left = self.deadline - self.now()
        done = self.bar.n - self.first
        pace = (self.now() - self.began) / done * (self.bar.total - self.bar.n) if done > 0 else math.inf
        if min(left, pace) == math.inf:
            return None
        clock = time.strftime("%H:%M:%S", time.gmtime(max(0.0, min(left, pace))))
        return clock if left <= pace else f"~{clock}"

    def _done(self) -> int:
        """Settings rendered (or rendering) per class, up to the target: reused repeats do not move the bar."""
        return sum(min(ledger.claimed(s.get_trials(deepcopy=False)), self.target) for s in self.studies.values())

    def update(self, line: str | None = None) -> None:
        if line:
            self.bar.write(line, file=sys.stderr)
        if self.bar.disable:
            return
        fronts = {c: self._front(s) for c, s in self.studies.items()}
        post = {"front": " ".join(f"{c}:{n}" for c, n in fronts.items())}
        recs = {c: r.recommendation() for c, r in self.runs.items() if isinstance(r, ClassRun)}
        if recs:
            post["pick"] = " ".join(f"{c}:{speedup_label(rec)}" for c, rec in recs.items())
        if self.doing:
            post["doing"] = self.doing
        if (left := self._left()) is not None:
            post["left"] = left
        self.post = post
        self.bar.set_postfix(post, refresh=False)
        self.bar.update(self._done() - self.bar.n)

    def _front(self, study: optuna.Study) -> int:
        """Distinct rendered settings on the class's Pareto front: the front the outputs show."""
        done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if distinct(t)]
        return len(front_of(done, self.objectives))

    def close(self) -> None:
        self.bar.close()
