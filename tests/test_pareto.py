from __future__ import annotations

import pytest

from autotune.decision.cost import fit_seconds
from autotune.decision.pareto import clearly_dominated, dominates, pareto_front
from autotune.report.figures import hypervolume_history
from autotune.store.optuna_api import hypervolume

UP = {"clip_score": True, "lpips": False, "seconds": False}


class P:
    def __init__(self, n: int, clip: float, lp: float, s: float) -> None:
        self.values = {"clip_score": clip, "lpips": lp, "seconds": s}


def c(n: int, clip: float, lp: float, s: float) -> P:
    return P(n, clip, lp, s)


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


def test_pareto_module_imports_no_torch() -> None:
    import subprocess
    import sys

    code = "import sys, autotune.decision.rule, autotune.decision.evidence; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


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


def test_seconds_fit_never_makes_guidance_cheaper_or_seconds_negative() -> None:
    """Noisy timings where unconstrained least squares fits c < 0 and a < 0 (issue 13's 62-trial study)."""
    import numpy as np

    rng = np.random.default_rng(3)
    calls = [int(n) for n in rng.integers(2, 40, 40)]
    guided = [bool(g) for g in rng.integers(0, 2, 40)]
    seconds = [
        0.02 * n * (1.02 if g else 1.0) * float(rng.uniform(0.6, 1.4)) for n, g in zip(calls, guided, strict=True)
    ]
    x = np.array([[1.0, n, n * g] for n, g in zip(calls, guided, strict=True)])
    free = np.linalg.lstsq(x, np.array(seconds), rcond=None)[0]
    assert free[0] < 0 or free[2] < 0  # the data make the unconstrained fit unphysical
    fit = fit_seconds(calls, guided, seconds)
    assert fit is not None and min(fit.a, fit.b, fit.c) >= 0
    for n in range(1, 60):
        assert fit(n, False) >= 0 and fit(n, True) >= fit(n, False) and fit(n + 1, False) >= fit(n, False)
