"""The decision stage, after the search: race the cheap candidates whose bound is undecided on more
seeds, then render the finalists and the baseline on confirmation seeds the search never used.

Every image it scores is stored in the class's study as ``renders.<trial>`` (``{seed: {metric:
[value per prompt]}}``), so a resumed study picks up where it stopped, ``autotune recommend``
reads the verdict without a model, and optuna-dashboard shows it among the study's attributes.
The evidence is built once from the stored trials and updated with each render, not reloaded.

Example:
    >>> settle(cfg, study, "portrait", evaluator)   # then recommend(cfg) reads the confirmed verdict
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import optuna
from optuna.trial import FrozenTrial

from autotune.config.resolve import ResolvedStudy
from autotune.decision.evidence import Evidence, distinct, renders_key
from autotune.decision.rule import Tolerance, finalists, next_to_race
from autotune.decision.tolerance import tolerance
from autotune.model.evaluate import Scorer
from autotune.space.settings import Settings

__all__ = ["race_seeds", "settle"]


def race_seeds(cfg: ResolvedStudy) -> list[int]:
    """Seeds racing adds, in order: the next after the search's, skipping the confirmation seeds."""
    used = {*cfg.search.seeds, *cfg.recommend.confirm_seeds}
    out: list[int] = []
    s = max(cfg.search.seeds) + 1
    while len(out) < cfg.recommend.race_seeds:
        if s not in used:
            out.append(s)
        s += 1
    return out


class _Renders:
    """The decision's renders of one class: scored, stored in the study, and added to the evidence."""

    def __init__(self, study: optuna.Study, scorer: Scorer, prompts: Sequence[str], evidence: Evidence) -> None:
        self.study, self.scorer, self.prompts, self.evidence = study, scorer, prompts, evidence
        attrs = study.user_attrs  # one read: each access is a storage query
        self.trials: dict[int, FrozenTrial] = {t.number: t for t in study.get_trials(deepcopy=False) if distinct(t)}
        self.stored = {n: dict(attrs.get(renders_key(n), {})) for n in self.trials}

    def __call__(self, number: int, seeds: Sequence[int]) -> int:
        """Render trial ``number``'s setting on the ``seeds`` it lacks; the images rendered."""
        have = self.stored[number]
        todo = [s for s in seeds if str(s) not in have]
        if not todo:
            return 0
        e = self.scorer.evaluate(Settings.from_params(self.trials[number].params), self.prompts, todo, timed=False)
        new = {str(s): {m: v[j :: len(todo)] for m, v in e.per_image.items()} for j, s in enumerate(todo)}
        have.update(new)
        self.study.set_user_attr(renders_key(number), have)
        self.evidence.add_renders(number, new)
        return len(todo) * len(self.prompts)


def settle(
    cfg: ResolvedStudy, study: optuna.Study, class_name: str, scorer: Scorer, log: Callable[[str], None] = print
) -> None:
    """Race, then confirm (see the module's docstring); racing stops at ``recommend.race_budget`` images."""
    r, prompts, objectives = cfg.recommend, cfg.classes[class_name], cfg.metrics.objectives
    attrs = study.user_attrs
    trials = study.get_trials(deepcopy=False)
    evidence = Evidence.of(trials, attrs, objectives, len(prompts), cfg.search.seeds, r.confirm_seeds)
    base = evidence.baseline
    if base is None:
        return
    render = _Renders(study, scorer, prompts, evidence)
    confirm = list(r.confirm_seeds)
    log(
        f"autotune: {class_name}: deciding: racing undecided candidates (at most {r.race_budget} images), "
        f"then the cheapest {r.finalists} that pass on {len(confirm)} fresh seeds"
    )

    def tol() -> Tolerance:
        assert evidence.baseline is not None
        return tolerance(r, objectives, evidence.baseline, attrs.get("seed_lpips"))[0]

    # the baseline on the confirmation seeds first: its seed-to-seed CLIP spread scales the tolerance
    n = render(base.number, confirm)
    spent = int(attrs.get("race_images", 0))
    seeds = race_seeds(cfg)
    while spent < r.race_budget:
        assert evidence.baseline is not None
        step = next_to_race(
            evidence.candidates, evidence.baseline, tol(), seeds, top=r.finalists, stochastic=r.stochastic
        )
        if step is None:
            break
        number, seed = step
        spent += render(number, [seed]) + render(base.number, [seed])
        study.set_user_attr("race_images", spent)
    assert evidence.baseline is not None
    final = finalists(evidence.candidates, evidence.baseline, tol(), top=r.finalists, stochastic=r.stochastic)
    n += sum(render(c.number, confirm) for c in final)
    if n:
        log(
            f"autotune: {class_name}: {len(final)} finalists and the baseline rendered on "
            f"{len(confirm)} fresh seeds ({n} images)"
        )
