"""What each look at a candidate's images may spend of the error, and the exact quantiles the bounds use.
Pure math, no I/O.

A candidate is judged again and again: after its trial's own images, after each racing chunk, after
each chunk of its confirmation. Every look that can pass it is a chance to pass a truly worse setting:
at five looks a nominal 5 % test passes one about three times as often (repeated significance testing,
Armitage, McPherson & Rowe 1969). So a stage states its looks in advance (the images at which a pass is
allowed, :class:`autotune.decision.panel.Panel`) and its error ``alpha``, and look j of K is tested at
level ``alpha_j = alpha * ((n_j / n_K) ** RHO - (n_{j-1} / n_K) ** RHO)``: the power family of spending
functions (Lan & DeMets 1983; Jennison & Turnbull 2000, ch. 7.3), ``RHO = 2`` spending little early
where a bound over few prompts is wide anyway. The levels sum to ``alpha``, so by the union bound the
stage passes a setting truly worse than the tolerance with probability at most ``alpha``, whatever the
looks' correlation and whatever the spread of the images. Looks that can only *fail* a candidate (a
futility stop after any chunk) cost nothing: stopping early for failure never passes a worse setting.
Racing fails a candidate once its mean lies beyond the tolerance (the better side's ``1 - FUTILITY``
bound, 50 %: the mean itself): such a candidate could pass a later look only if its images so far were
worse than its truth by more than the later bound's whole width. Measured on the procedure's simulator
(``benchmarks/procedure.py``, 100 studies per class) against the 80 % bound it replaced: the same kept
median on the glyphs world with 12 % fewer images, 25 % fewer where every cheaper setting sits just
beyond the tolerance, and where cheap settings break too many images the baseline kept in 14 % and 5 %
of studies where it was 17 % and 13 %: the images no longer spent racing hopeless candidates reach
the cheaper settings that hold.

Confirmation carries the procedure's guarantee: a class confirms at most ``slots`` candidates (its
``finalists``), each on the fresh noise of the confirmation panel, and the k-th is tested at
``alpha / slots`` over its confirmation's looks, so together they spend at most ``alpha``: a truly worse
setting becomes the recommendation in at most ``alpha`` of studies, whatever the search proposed.

Example:
    >>> [round(a, 5) for a in spend((8, 40, 80, 120))]
    [0.00022, 0.00533, 0.01667, 0.02778]
    >>> round(confirmation_alpha(1, 3), 4), confirmation_alpha(4, 3)
    (0.0167, 0.0)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = [
    "ALPHA",
    "FUTILITY",
    "RHO",
    "binomial_lower",
    "binomial_upper",
    "clean_images_needed",
    "confirmation_alpha",
    "spend",
    "t_quantile",
]

ALPHA = 0.05  # the error of a stage's whole look schedule (one-sided)
RHO = 2.0  # the spending function's power: alpha * t ** RHO spent by information share t
FUTILITY = 0.5  # racing stops a candidate whose better side's 50 % bound (its mean) lies beyond the tolerance


def spend(sizes: Sequence[int], alpha: float = ALPHA, rho: float = RHO) -> tuple[float, ...]:
    """The level of each look of a schedule that looks at ``sizes`` images (increasing), summing to ``alpha``."""
    if not sizes:
        return ()
    last = float(sizes[-1])
    spent = [alpha * (n / last) ** rho for n in sizes]
    return tuple(b - a for a, b in zip([0.0, *spent[:-1]], spent, strict=True))


def confirmation_alpha(k: int, slots: int, alpha: float = ALPHA) -> float:
    """The error the k-th confirmation of a class may spend over its looks (k = 1, 2, ...; 0 past ``slots``):
    all of them together spend at most ``alpha``."""
    return alpha / slots if 1 <= k <= slots else 0.0


def clean_images_needed(alpha: float, share: float) -> int:
    """How many images without a collapse it takes for the exact ``1 - alpha`` bound to lie within ``share``."""
    if share <= 0 or alpha <= 0:
        return math.inf  # type: ignore[return-value]
    return math.ceil(math.log(alpha) / math.log1p(-share)) if share < 1 else 1


def t_quantile(df: int, alpha: float) -> float:
    """The one-sided ``1 - alpha`` quantile of Student's t on ``df`` degrees of freedom (inf: below 1)."""
    from scipy.special import stdtrit

    if df < 1 or alpha <= 0:
        return math.inf
    return float(stdtrit(df, 1.0 - alpha))


def binomial_upper(k: int, n: int, alpha: float) -> float:
    """Clopper-Pearson: the exact one-sided ``1 - alpha`` upper bound of a share seen ``k`` times in ``n``
    (with none seen: ``1 - alpha ** (1 / n)``)."""
    from scipy.special import betaincinv

    if n <= 0 or k >= n:
        return 1.0
    return float(betaincinv(k + 1, n - k, 1.0 - alpha))


def binomial_lower(k: int, n: int, alpha: float) -> float:
    """Clopper-Pearson: the exact one-sided ``1 - alpha`` lower bound of a share seen ``k`` times in ``n``."""
    from scipy.special import betaincinv

    if n <= 0 or k <= 0:
        return 0.0
    return float(betaincinv(k, n - k + 1, alpha))
