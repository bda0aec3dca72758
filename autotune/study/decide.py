"""The decision stage, after the search: race the cheap candidates whose bound is undecided on more
seeds, then render the finalists and the baseline on confirmation seeds the search never used.

Every image it scores is stored in the class's study as ``renders.<trial>`` (``{seed: {metric:
[value per prompt]}}``), so a resumed study picks up where it stopped, ``autotune recommend``
reads the verdict without a model, and optuna-dashboard shows it among the study's attributes.

Example:
    >>> settle(cfg, study, "portrait", evaluator)   # then recommend(cfg) reads the confirmed verdict
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from autotune.decision import Candidate, finalists, next_to_race
from autotune.evaluate import Scorer
from autotune.families import ResolvedStudy
from autotune.study.ledger import is_baseline
from autotune.study.results import candidates, cost_fit, settings_of, tolerance

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


def _render(study: optuna.Study, scorer: Scorer, prompts: Sequence[str], t: FrozenTrial, seeds: Sequence[int]) -> int:
    """Render and score trial ``t``'s setting on ``seeds`` it lacks, store them; the images rendered."""
    key = f"renders.{t.number}"
    have = dict(study.user_attrs.get(key, {}))
    todo = [s for s in seeds if str(s) not in have]
    if not todo:
        return 0
    e = scorer.evaluate(settings_of(t), prompts, todo, timed=False)
    for j, s in enumerate(todo):
        have[str(s)] = {m: v[j :: len(todo)] for m, v in e.per_image.items()}
    study.set_user_attr(key, have)
    return len(todo) * len(prompts)


def settle(
    cfg: ResolvedStudy, study: optuna.Study, class_name: str, scorer: Scorer, log: Callable[[str], None] = print
) -> None:
    """Race, then confirm (see the module's docstring); racing stops at ``recommend.race_budget`` images."""
    r, prompts = cfg.recommend, cfg.classes[class_name]
    objectives = cfg.metrics.objectives
    seeds = race_seeds(cfg)

    def state() -> tuple[list[Candidate], Candidate | None, dict[int, FrozenTrial]]:
        done = [
            t
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if "reused_from" not in t.user_attrs
        ]
        cands = candidates(cfg, class_name, study, done, cost_fit(done, objectives))
        base = next((c for c, t in zip(cands, done, strict=True) if is_baseline(t)), None)
        return cands, base, {t.number: t for t in done}

    cands, base, trials = state()
    if base is None:
        return
    confirm = list(r.confirm_seeds)
    log(
        f"autotune: {class_name}: deciding: racing undecided candidates (at most {r.race_budget} images), "
        f"then the cheapest {r.finalists} that pass on {len(confirm)} fresh seeds"
    )
    # the baseline on the confirmation seeds first: its seed-to-seed CLIP spread scales the tolerance
    n = _render(study, scorer, prompts, trials[base.number], confirm)
    cands, base, trials = state()
    assert base is not None
    spent = int(study.user_attrs.get("race_images", 0))
    while spent < r.race_budget:
        tol, _ = tolerance(cfg, base, study.user_attrs.get("seed_lpips"))
        step = next_to_race(cands, base, tol, seeds, top=r.finalists, stochastic=r.stochastic)
        if step is None:
            break
        number, seed = step
        spent += _render(study, scorer, prompts, trials[number], [seed])
        spent += _render(study, scorer, prompts, trials[base.number], [seed])
        study.set_user_attr("race_images", spent)
        cands, base, trials = state()
        assert base is not None
    tol, _ = tolerance(cfg, base, study.user_attrs.get("seed_lpips"))
    final = finalists(cands, base, tol, top=r.finalists, stochastic=r.stochastic)
    n += sum(_render(study, scorer, prompts, trials[c.number], confirm) for c in final)
    if n:
        log(
            f"autotune: {class_name}: {len(final)} finalists and the baseline rendered on "
            f"{len(confirm)} fresh seeds ({n} images)"
        )
