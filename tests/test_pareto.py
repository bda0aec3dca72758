from __future__ import annotations

import pytest

from autotune.pareto import (
    Candidate,
    clearly_dominated,
    dominates,
    fit_seconds,
    hypervolume,
    hypervolume_history,
    match_baseline,
    pareto_front,
)

UP = {"clip_score": True, "lpips": False, "seconds": False}


def c(n: int, clip: float, lp: float, s: float) -> Candidate:
    return Candidate(n, {"clip_score": clip, "lpips": lp, "seconds": s})


def test_dominates_needs_one_strict_improvement() -> None:
    a, b = c(0, 30, 0.1, 1.0).values, c(1, 30, 0.1, 1.0).values
    assert not dominates(a, b, UP)
    assert dominates(c(0, 31, 0.1, 1.0).values, b, UP)
    assert not dominates(c(0, 31, 0.2, 1.0).values, b, UP)


def test_pareto_front_on_hand_made_points() -> None:
    pts = [c(0, 30, 0.10, 1.0), c(1, 29, 0.10, 0.5), c(2, 28, 0.20, 0.6), c(3, 31, 0.05, 2.0), c(4, 30, 0.10, 1.0)]
    # 2 is dominated by 1; 0 and 4 are equal, so neither dominates the other
    assert pareto_front([p.values for p in pts], UP) == [0, 1, 3, 4]


def test_two_objective_front() -> None:
    up = {"q": True, "s": False}
    pts = [{"q": 1.0, "s": 2.0}, {"q": 2.0, "s": 3.0}, {"q": 0.5, "s": 3.0}, {"q": 2.0, "s": 2.5}]
    assert pareto_front(pts, up) == [0, 3]


def test_match_baseline_takes_the_cheapest_within_tolerance() -> None:
    base = c(0, 30.0, 0.010, 1.0)
    cands = [base, c(1, 29.6, 0.012, 0.4), c(2, 29.0, 0.011, 0.2), c(3, 30.5, 0.030, 0.1), c(4, 29.8, 0.013, 0.5)]
    rec = match_baseline(cands, base, clip_tolerance=0.5, lpips_tolerance=0.1, seed_lpips=0.05)
    # allowed: clip >= 29.5, lpips <= 0.010 + 0.005 = 0.015 -> 1 (0.4 s) and 4 (0.5 s); 2 fails clip, 3 lpips
    assert rec.chosen.number == 1 and rec.met_tolerance
    assert rec.speedup == pytest.approx(2.5)


def test_lpips_tolerance_scales_with_seed_to_seed_lpips() -> None:
    base = c(0, 30.0, 0.010, 1.0)
    cands = [base, c(1, 30.0, 0.030, 0.5)]
    tight = match_baseline(cands, base, clip_tolerance=0.5, lpips_tolerance=0.1, seed_lpips=0.1)
    loose = match_baseline(cands, base, clip_tolerance=0.5, lpips_tolerance=0.1, seed_lpips=0.3)
    assert tight.chosen.number == 0 and loose.chosen.number == 1


def test_nothing_within_tolerance_falls_back_to_baseline_and_says_so() -> None:
    base = c(0, 30.0, 0.010, 1.0)
    rec = match_baseline([base, c(1, 20.0, 0.5, 0.1)], base, clip_tolerance=0.5, lpips_tolerance=0.1, seed_lpips=0.1)
    assert rec.chosen == base and not rec.met_tolerance
    assert "keeping the baseline" in rec.reason
    assert rec.speedup == 1.0


def test_seconds_tie_goes_to_better_quality() -> None:
    base = c(0, 30.0, 0.010, 1.0)
    rec = match_baseline(
        [base, c(1, 30.0, 0.01, 0.5), c(2, 30.2, 0.01, 0.5)],
        base,
        clip_tolerance=0.5,
        lpips_tolerance=0.1,
        seed_lpips=0.1,
    )
    assert rec.chosen.number == 2


def test_pareto_module_imports_no_torch() -> None:
    import subprocess
    import sys

    code = "import sys, autotune.pareto; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_ancestral_candidates_are_not_judged_on_lpips_against_deterministic_ones() -> None:
    base = c(0, 30.0, 0.001, 1.0)
    ancestral_ok = Candidate(1, {"clip_score": 30.0, "lpips": 0.09, "seconds": 0.3}, deterministic=False)
    ancestral_far = Candidate(2, {"clip_score": 30.0, "lpips": 0.2, "seconds": 0.2}, deterministic=False)
    rec = match_baseline(
        [base, ancestral_ok, ancestral_far], base, clip_tolerance=0.5, lpips_tolerance=0.1, seed_lpips=0.1
    )
    # 0.09 would fail the deterministic limit (0.001 + 0.01) but is within a seed's distance (0.11); 0.2 is not
    assert rec.chosen.number == 1


def test_hypervolume_of_hand_made_fronts() -> None:
    assert hypervolume([[0.5]], [1.0]) == pytest.approx(0.5)
    # two points of an L-shape: 1x0.5 + 0.5x0.5 - overlap counted once
    assert hypervolume([[0.0, 0.5], [0.5, 0.0]], [1.0, 1.0]) == pytest.approx(0.75)
    assert hypervolume([[0.0, 0.0, 0.0]], [1.0, 2.0, 3.0]) == pytest.approx(6.0)
    # a dominated point and one outside the reference add nothing
    assert hypervolume([[0.0, 0.5], [0.5, 0.0], [0.6, 0.6], [2.0, 0.0]], [1.0, 1.0]) == pytest.approx(0.75)
    # 3-D, by inclusion-exclusion: 0.5 + 0.5 - the 0.5 x 0.5 x 1 overlap
    a, b = [0.0, 0.5, 0.0], [0.5, 0.0, 0.0]
    assert hypervolume([a, b], [1.0, 1.0, 1.0]) == pytest.approx(0.5 + 0.5 - 0.25)


def test_hypervolume_history_never_falls_and_reaches_the_ideal_point() -> None:
    up = {"clip_score": True, "seconds": False}
    pts = [
        {"clip_score": 20.0, "seconds": 2.0},  # scaled to (1, 0.5): clip ranges 20..30, seconds 1..3
        {"clip_score": 25.0, "seconds": 1.5},  # (0.5, 0.25) dominates it
        {"clip_score": 22.0, "seconds": 3.0},  # dominated, adds nothing
        {"clip_score": 30.0, "seconds": 1.0},  # best on both: scaled (0, 0)
    ]
    h = hypervolume_history(pts, up)
    assert h[0] == pytest.approx(0.1 * 0.6)
    assert h[1] == pytest.approx(0.6 * 0.85)
    assert h[2] == h[1]
    assert h[3] == pytest.approx(1.1 * 1.1)


def test_clearly_dominated_needs_a_margin_on_every_metric() -> None:
    def v(clip: float, lp: float, s: float) -> dict[str, float]:
        return {"clip_score": clip, "lpips": lp, "seconds": s}

    rendered = [v(30.0, 0.10, 1.0), v(20.0, 0.50, 0.2), v(25.0, 0.30, 2.0)]  # spreads 10, 0.4, 1.8
    assert clearly_dominated(v(29.0, 0.20, 1.5), rendered, UP) == 0  # worse by 1, 0.1, 0.5: all above 5 %
    assert clearly_dominated(v(29.8, 0.20, 1.5), rendered, UP) is None  # CLIP within 5 % of its spread
    assert clearly_dominated(v(19.0, 0.60, 0.3), rendered, UP) == 1
    assert clearly_dominated(v(31.0, 0.60, 3.0), rendered, UP) is None  # best CLIP: not dominated
    assert clearly_dominated(v(0.0, 1.0, 9.0), rendered[:2], UP) is None  # too few points to judge


def test_seconds_fit_recovers_the_line_and_flags_an_outlier() -> None:
    calls = [4, 8, 12, 16, 20, 24, 8, 16, 24, 12]
    guided = [True] * 6 + [False] * 4
    seconds = [0.1 + 0.02 * n + 0.02 * n * g for n, g in zip(calls, guided, strict=True)]
    seconds[3] *= 1.4  # one timing disturbed by another job on the machine
    fit = fit_seconds(calls, guided, seconds)
    assert fit is not None
    assert (fit.a, fit.b, fit.c) == pytest.approx((0.1, 0.02, 0.02), abs=1e-9)
    flagged = [i for i in range(len(calls)) if fit.outlier(calls[i], guided[i], seconds[i])]
    assert flagged == [3]
    assert fit(16, True) == pytest.approx(0.74)
    assert fit_seconds(calls[:4], guided[:4], seconds[:4]) is None  # too few trials to fit
