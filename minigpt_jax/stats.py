"""Statistics over seeds: mean, std, a t confidence interval, Welch's t-test against a baseline,
and a verdict in plain words. scipy does the distributions; nothing here knows about runs."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

CONFIDENCE = 0.95
ALPHA = 0.05  # a difference is called real when Welch's two-sided p is below this


def describe(values: Sequence[float], confidence: float = CONFIDENCE) -> dict[str, Any]:
    """n, mean, sample std (ddof=1) and the t-interval of the mean; None where n is too small."""
    from scipy import stats

    xs = [float(v) for v in values]
    n = len(xs)
    out: dict[str, Any] = {"n": n, "mean": None, "std": None, "ci_low": None, "ci_high": None}
    if n == 0:
        return out
    mean = math.fsum(xs) / n
    out["mean"] = mean
    if n < 2:
        return out
    std = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))
    half = stats.t.ppf(0.5 + confidence / 2, n - 1) * std / math.sqrt(n)
    out.update(std=std, ci_low=mean - half, ci_high=mean + half)
    return out


def welch(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """Welch's unequal-variance t-test of mean(a) - mean(b): the difference, t, df and the
    two-sided p-value (scipy.stats.ttest_ind's with equal_var=False). p is None when either side
    has fewer than 2 values, or both have no spread (the test is undefined)."""
    from scipy import stats

    a, b = [float(x) for x in a], [float(x) for x in b]
    out: dict[str, Any] = {"diff": None, "t": None, "df": None, "p": None}
    if a and b:
        out["diff"] = math.fsum(a) / len(a) - math.fsum(b) / len(b)
    if len(a) < 2 or len(b) < 2:
        return out
    va, vb = (describe(x)["std"] ** 2 / len(x) for x in (a, b))
    if va + vb == 0:
        return out
    # Welch's t and df written out (scipy.stats.ttest_ind(equal_var=False) gives the same, see
    # tests/stats_test.py, but warns of precision loss when one side's values are all equal,
    # as steps to a target often are); scipy gives the t distribution's tail.
    t = out["diff"] / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    out.update(t=t, df=df, p=float(2 * stats.t.sf(abs(t), df)))
    return out


def verdict(
    test: dict[str, Any], n: int, lower_is_better: bool = True, alpha: float = ALPHA
) -> str:
    """'better', 'worse', or why no difference is claimed ('no difference detected at n=3')."""
    if test["p"] is None:
        if test["diff"] is None:
            return "no runs to compare"
        return f"too few runs to test (n={n})" if n < 2 else "no spread: cannot test"
    if test["p"] >= alpha:
        return f"no difference detected at n={n}"
    better = (test["diff"] < 0) == lower_is_better
    return "better" if better else "worse"
