"""minigpt_jax.stats: the numbers a sweep report claims, against formulas written out here and
against scipy.stats."""

import math
import warnings

import pytest
from scipy import stats as sp

from minigpt_jax import stats

A = [1.9056, 1.9123, 1.8987]  # three seeds' final losses
B = [1.8801, 1.8702, 1.8890, 1.8755]


def test_describe_gives_the_mean_std_and_t_interval():
    d = stats.describe(A)
    mean = sum(A) / 3
    std = math.sqrt(sum((x - mean) ** 2 for x in A) / 2)
    assert d["n"] == 3 and d["mean"] == pytest.approx(mean, abs=1e-15)
    assert d["std"] == pytest.approx(std, rel=1e-12)
    # t(0.975, df=2) = 4.302652729911275: the interval is mean +- t * std / sqrt(n).
    half = 4.302652729911275 * std / math.sqrt(3)
    assert (d["ci_low"], d["ci_high"]) == pytest.approx((mean - half, mean + half), rel=1e-12)
    low, high = sp.t.interval(0.95, 2, loc=mean, scale=sp.sem(A))
    assert (d["ci_low"], d["ci_high"]) == pytest.approx((low, high), rel=1e-12)


def test_describe_of_one_or_no_value_has_no_spread():
    assert stats.describe([2.0]) == {"n": 1, "mean": 2.0, "std": None, "ci_low": None,
                                     "ci_high": None}  # fmt: skip
    assert stats.describe([])["mean"] is None


def test_welch_matches_its_formula_and_scipy():
    w = stats.welch(A, B)
    ma, mb = sum(A) / len(A), sum(B) / len(B)
    va = sum((x - ma) ** 2 for x in A) / (len(A) - 1) / len(A)
    vb = sum((x - mb) ** 2 for x in B) / (len(B) - 1) / len(B)
    t = (ma - mb) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(A) - 1) + vb**2 / (len(B) - 1))
    p = 2 * sp.t.sf(abs(t), df)
    assert w["diff"] == pytest.approx(ma - mb, rel=1e-12)
    assert (w["t"], w["df"], w["p"]) == pytest.approx((t, df, p), rel=1e-9)
    ref = sp.ttest_ind(A, B, equal_var=False)
    assert (w["t"], w["p"]) == pytest.approx((ref.statistic, ref.pvalue), rel=1e-12)
    assert w["p"] < 0.05  # these two groups differ


def test_welch_with_one_side_all_equal_is_scipys_number_without_its_warning(recwarn):
    a, b = [1250.0, 1250.0, 1250.0], [1500.0, 1750.0, 1750.0]
    w = stats.welch(a, b)
    assert not [x for x in recwarn if issubclass(x.category, RuntimeWarning)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy's precision-loss warning
        ref = sp.ttest_ind(a, b, equal_var=False)
    assert (w["t"], w["p"]) == pytest.approx((ref.statistic, ref.pvalue), rel=1e-9)


def test_welch_is_undefined_with_one_value_or_no_spread():
    assert stats.welch([1.0], B)["p"] is None and stats.welch([1.0], B)["diff"] is not None
    assert stats.welch([1.0, 1.0], [1.0, 1.0])["p"] is None
    assert stats.welch([], B)["diff"] is None


@pytest.mark.parametrize(
    "a, b, lower, expected",
    [
        (B, A, True, "better"),  # lower loss than the baseline, p < 0.05
        (A, B, True, "worse"),
        (A, B, False, "better"),  # a metric where higher is better (tokens/s)
        ([1.0, 3.0, 2.0], [2.1, 1.2, 2.9], True, "no difference detected at n=3"),
        ([1.0], B, True, "too few runs to test (n=1)"),
        ([1.0, 1.0], [1.0, 1.0], True, "no spread: cannot test"),
        ([], B, True, "no runs to compare"),
    ],
)
def test_verdicts_in_plain_words(a, b, lower, expected):
    n = min(len(a), len(b))
    assert stats.verdict(stats.welch(a, b), n, lower_is_better=lower) == expected
