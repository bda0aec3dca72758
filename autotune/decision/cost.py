"""The cost line: seconds per image as a non-negative line in the denoiser calls. Pure math, no I/O.

Example:
    >>> fit = fit_seconds([10, 20, 30, 40, 60], [True] * 5, [0.11, 0.21, 0.30, 0.41, 0.60])
    >>> round(fit(50, True), 2)
    0.5
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from autotune.space.settings import Settings

__all__ = ["SecondsFit", "evaluations", "fit_seconds", "guided_share", "priced"]


@dataclass(frozen=True)
class SecondsFit:
    """Seconds per image as a line in the denoiser calls: ``a + b * calls + c * calls * guided``, where
    ``guided`` is the share of the calls that ran with guidance (1 or 0, a fraction where it stops part-way).

    One noisy timing per setting makes a front of seconds unstable (the same render timed twice
    differs by ~10 %, up to 40 %, on a shared machine); the line, fitted to every trial of the
    model, averages that noise away. ``guided`` (classifier-free guidance on) doubles the batch.
    """

    a: float
    b: float
    c: float
    mad: float  # median absolute deviation of the residuals of the points kept

    def __call__(self, calls: float, guided: float) -> float:
        return self.a + self.b * calls + self.c * calls * guided

    def outlier(self, calls: float, guided: float, seconds: float) -> bool:
        """Further from the line than 3 robust standard deviations and 10 % of the fitted value."""
        fitted = self(calls, guided)
        return abs(seconds - fitted) > max(3 * 1.4826 * self.mad, 0.1 * abs(fitted))


def guided_share(calls: float | None, guided_calls: float | None, setting: Settings) -> float:
    """The share of a render's denoiser calls that ran with classifier-free guidance (a doubled batch):
    as counted (``guided_calls``), else as the setting says (:meth:`Settings.guided_share`, its cutoff
    included): the one definition the fitted cost, the tables and ``validate`` use."""
    if guided_calls is not None and calls:
        return float(guided_calls) / float(calls)
    return setting.guided_share()


def evaluations(calls: float | None, guided_calls: float | None, setting: Settings) -> float | None:
    """Model evaluations per image: each denoiser call, twice where it ran with guidance (None: unknown)."""
    return None if not calls else priced(None, float(calls), guided_share(calls, guided_calls, setting))


def priced(fit: SecondsFit | None, calls: float, guided: float) -> float:
    """A setting's cost in one unit for rendered and untried settings alike: seconds on the fitted line
    where there is one, else model evaluations (each denoiser call, twice for the ``guided`` share)."""
    return fit(calls, guided) if fit is not None else calls * (1.0 + guided)


def _nonnegative_lstsq(x: Any, y: Any) -> Any:
    """Least squares with every coefficient >= 0: the best of the fits on each subset of the columns
    whose coefficients come out non-negative (three columns: seven small solves)."""
    import itertools

    import numpy as np

    best, best_sse = np.zeros(x.shape[1]), float(np.sum(y**2))
    for k in range(1, x.shape[1] + 1):
        for cols in itertools.combinations(range(x.shape[1]), k):
            coef = np.linalg.lstsq(x[:, cols], y, rcond=None)[0]
            if (coef < 0).any():
                continue
            sse = float(np.sum((y - x[:, cols] @ coef) ** 2))
            if sse < best_sse:
                best, best_sse = np.zeros(x.shape[1]), sse
                best[list(cols)] = coef
    return best


def fit_seconds(
    calls: Sequence[float], guided: Sequence[float], seconds: Sequence[float], min_points: int = 5
) -> SecondsFit | None:
    """Non-negative least squares, then again without the points further than 3 robust deviations
    (None: too few points). Non-negative: no setting costs negative seconds, more calls never cost
    less, guidance never costs less than none, however noisy the timings."""
    import numpy as np

    if len(seconds) < min_points:
        return None
    x = np.array([[1.0, c, c * g] for c, g in zip(calls, guided, strict=True)])
    y = np.asarray(seconds, dtype=float)
    keep = np.ones(len(y), dtype=bool)
    for _ in range(2):
        coef = _nonnegative_lstsq(x[keep], y[keep])
        resid = y - x @ coef
        mad = float(np.median(np.abs(resid[keep] - np.median(resid[keep]))))
        keep = np.abs(resid) <= max(3 * 1.4826 * mad, 1e-12)
        if keep.sum() < min_points:
            break
    return SecondsFit(float(coef[0]), float(coef[1]), float(coef[2]), mad)
