"""Each image its own noise, and no more broken images than the baseline: the collapsed-image gate on
constructed numbers, and the generator seeds a real tiny study records."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import optuna
import pytest

import autotune
from autotune.config import ConfigError, load_config
from autotune.decision.bounds import BROKEN, Tolerance
from autotune.decision.evidence import Candidate
from autotune.decision.rule import decide, excess, overall, unconfirmed, verdicts

# CLIP tolerance 1 point; an image 5 points worse than the baseline's has collapsed; 8 % more allowed: what 40
# clean images can show (the exact 95 % bound of 0 in 40 is 7.2 %)
TOL = Tolerance({"clip_score": 1.0}, collapse={"clip_score": 5.0}, broken_share=0.08)
PROMPTS = 40


def images(diffs: dict[int, float], base: float = 30.0, seed: int = 0) -> dict:
    """One image per prompt: the baseline's score plus ``diffs[prompt]`` (0.1 either way elsewhere)."""
    return {(p, seed): {"clip_score": base + diffs.get(p, 0.1 if p % 2 else -0.1)} for p in range(PROMPTS)}


FLAT = {p: 0.0 for p in range(PROMPTS)}
BASE = Candidate(0, images(FLAT), images(FLAT, seed=1000), seconds=(1.0, 1.0, 1.0), label="baseline")


def by_metric(c: Candidate, base: Candidate = BASE, tol: Tolerance = TOL) -> dict:
    return {b.metric: b for b in verdicts(c, base, tol)}


def test_a_candidate_whose_mean_holds_but_whose_images_collapse_is_not_recommended() -> None:
    broken = Candidate(1, images(diffs := {3: -70.0, 17: -70.0}), images(diffs, seed=1000), seconds=(0.4,) * 3)
    sound = Candidate(2, images({}), images({}, seed=1000), seconds=(0.6, 0.6, 0.6), label="sound")
    got = by_metric(broken)
    assert got["clip_score"].verdict == "pass"  # each difference counts at most 5 points: the mean holds
    assert got["clip_score"].collapse == 5.0 and got["clip_score"].mean == pytest.approx(
        (-5 * 2 + 0.1 * 18 - 0.1 * 20) / PROMPTS
    )
    assert got[BROKEN].collapsed == (2, 0) and got[BROKEN].mean == pytest.approx(2 / PROMPTS)
    assert got[BROKEN].verdict == "undecided" and got[BROKEN].worst > 0.08 > got[BROKEN].best
    assert "collapsed images 2 of 40 (the baseline's: 0)" in got[BROKEN].describe()
    assert by_metric(sound)[BROKEN].verdict == "pass" and by_metric(sound)[BROKEN].collapsed == (0, 0)
    rec = decide([broken, sound], BASE, TOL)
    assert rec.chosen.number == 2  # the cheaper one breaks 5 % of its images: passed over
    assert any("collapsed images 2 of 40" in b for b in rec.stages[0]["search_bounds"])  # type: ignore[attr-defined]


def test_the_walks_excess_reads_the_means_not_the_collapsed_share() -> None:
    awful = Candidate(1, images({p: -70.0 for p in range(0, PROMPTS, 2)}), seconds=(0.4,))  # half broken
    bounds = verdicts(awful, BASE, TOL)
    share = next(b for b in bounds if b.metric == BROKEN)
    assert share.mean / share.tolerance > 6  # 50 % against 8 %: 6.25 "tolerances"
    assert excess(bounds) == pytest.approx((20 * 5 - 20 * 0.1) / PROMPTS)  # the mean, each image at most 5 points


def test_a_candidate_whose_fresh_images_collapse_says_why_it_is_not_confirmed() -> None:
    few = 20  # one collapse in 20 prompts x 1 image: 5 %, its bound (21.6 %) beyond the 8 % allowed
    fresh = {(p, 1000): v for (p, _), v in images({3: -70.0}, seed=1000).items() if p < few}
    close = Candidate(1, images({}), fresh, seconds=(0.4,) * 3)
    assert overall(verdicts(close, BASE, TOL)) == "pass"  # on its search images
    assert unconfirmed(close, BASE, TOL) == "undecided on its 20 fresh images: not confirmed"
    assert unconfirmed(replace(close, confirm={}), BASE, TOL) == ""  # never rendered on fresh seeds


def test_many_collapses_fail_outright() -> None:
    awful = Candidate(1, images({p: -70.0 for p in range(0, PROMPTS, 4)}), seconds=(0.4,))  # a quarter broken
    assert by_metric(awful)[BROKEN].verdict == "fail"


def test_images_the_baseline_breaks_too_do_not_count_against_a_candidate() -> None:
    weak = {3: -60.0, 17: -60.0}  # the baseline's own broken images
    base = Candidate(0, images(weak | {p: 0.0 for p in range(PROMPTS) if p not in weak}), seconds=(1.0,))
    same = Candidate(1, images({3: -61.0, 17: -59.0}), seconds=(0.5,))  # breaks the same two, no others
    got = by_metric(same, base)
    assert got[BROKEN].collapsed == (0, 0) and got[BROKEN].verdict == "pass"
    fixes = Candidate(2, images({}), seconds=(0.5,))  # renders the baseline's broken noises well
    assert by_metric(fixes, base)[BROKEN].collapsed == (0, 2) and by_metric(fixes, base)[BROKEN].verdict == "pass"


def test_without_a_collapse_threshold_no_image_is_judged_broken() -> None:
    c = Candidate(1, images({3: -4.0}), seconds=(0.5,))
    assert BROKEN not in by_metric(c, tol=Tolerance({"clip_score": 1.0}))
    assert overall(verdicts(c, BASE, Tolerance({"clip_score": 1.0}))) == "pass"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("clip_collapse = 1.0", "recommend.clip_collapse: expected a number of tolerances > 1, got 1"),
        ("lpips_collapse = 0.5", "recommend.lpips_collapse: expected a number of tolerances > 1, got 0.5"),
        ("broken_share = 1.0", "recommend.broken_share: expected a share >= 0 and < 1, got 1"),
        ("broken_share = -0.1", "recommend.broken_share: expected a share >= 0 and < 1, got -0.1"),
    ],
)
def test_collapse_settings_are_checked(study_file: Callable[..., Path], text: str, message: str) -> None:
    path = study_file()
    own = "\n".join(line for line in path.read_text().splitlines() if not line.startswith(text.split()[0]))
    path.write_text(own.replace("[recommend]", f"[recommend]\n{text}", 1))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == f"{path}: {message}"


def test_noise_seed_is_per_prompt_stable_and_31_bit() -> None:
    a, b = "a studio portrait of an old fisherman", "a misty mountain lake at dawn"
    assert autotune.noise_seed(a, 0) == 534347645  # pinned: stored studies and re-renders rely on it
    seeds = {autotune.noise_seed(q, s) for q in (a, b) for s in range(4)}
    assert len(seeds) == 8 and all(0 <= x < 2**31 for x in seeds)


TWO_PROMPTS = '[classes.portrait]\nprompts = ["a studio portrait of an old fisherman", "a red apple on a table"]\n'


def test_a_study_gives_each_image_its_own_recorded_noise_and_refuses_a_shared_noise_study(
    study_file: Callable[..., Path],
) -> None:
    from autotune.results.reader import recommend
    from autotune.store.storage import open_storage
    from autotune.study.run import run_study

    path = study_file(name="noisy", n_trials=1, classes=TWO_PROMPTS)
    path.write_text(path.read_text().replace("seeds = [0]", "seeds = [0, 1]"))
    cfg = load_config(path)
    out = run_study(cfg, progress=False, decide=False)["portrait"]
    prompts = cfg.classes["portrait"]
    (trial,) = out.load_study().trials
    expected = [autotune.noise_seed(q, s) for q in prompts for s in (0, 1)]
    assert trial.user_attrs["noise_seeds"] == expected and len(set(expected)) == 4  # no two images share one
    assert len(trial.user_attrs["clip_score_values"]) == 4  # aligned with the scores, prompt-major

    # a study stored when every prompt shared the noise of its seed is another version: one line, no verdict
    study = optuna.load_study(study_name=out.study_name, storage=open_storage(cfg.default_storage))
    old = {k: v for k, v in study.user_attrs["fingerprint"].items() if k != "noise"}
    study.set_user_attr("fingerprint", old)
    with pytest.raises(ConfigError) as err:
        recommend(load_config(path))
    message = str(err.value)
    assert "noise: stored when every prompt shared one noise per seed; each image now draws its own" in message
    assert "\n" not in message


def test_the_table_json_and_report_show_the_recommendations_collapsed_images(finished_study) -> None:  # type: ignore[no-untyped-def]
    import json

    from autotune.report.table import format_table

    cfg, outcomes = finished_study
    data = json.loads((cfg.output_dir / "recommendations.json").read_text())["classes"]
    report = (cfg.output_dir / "report.html").read_text()
    assert "collapsed images (search and confirmation)" in report
    for c, o in outcomes.items():
        rec = o.recommendation
        search, confirmation = data[c]["collapsed"]["search"], data[c]["collapsed"]["confirmation"]
        assert search["images"] == len(rec.chosen.images) and (search["recommended"], search["baseline"]) == (0, 0)
        assert confirmation["images"] == len(rec.chosen.confirm) == 8  # a pick, confirmed: 2 prompts x 4 fresh seeds
        assert data[c]["tolerance"]["collapse"]["lpips"] == pytest.approx(5 * data[c]["tolerance"]["lpips"])
        row = next(line for line in format_table(outcomes.cfg, outcomes).splitlines() if line.startswith(f"{c} "))
        assert f"0/{search['images'] + 8} (baseline 0)" in row
