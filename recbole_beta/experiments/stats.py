"""The study's statistics on paired per-user metrics: tests, BH, TOST, power, verdicts.

The study's statistics on paired per-user metrics, files aside: paired t and Wilcoxon tests, Benjamini-Hochberg
adjustment, equivalence (TOST), the minimum detectable effect, the corrected resampled t-test over folds, and the
verdict that combines them. scipy.stats and statsmodels do the work."""

import numpy as np
from scipy import stats
from statsmodels.stats.power import TTestPower
from statsmodels.stats.weightstats import ttost_paired

#: the confidence level of the intervals of the mean per-user difference
CONFIDENCE = 0.95

#: the tests' alpha: "different" below it (BH-adjusted), "equivalent" when both one-sided tests are
#: below it (the 1 - 2 alpha = 90% interval inside the margin)
ALPHA = 1 - CONFIDENCE

#: the power at which the minimum detectable effect is given
POWER = 0.8


def tost_paired(a, b, margin):
    """Two one-sided paired t-tests (statsmodels' ``ttost_paired``) of |mean(a - b)| < ``margin``: the
    p-value (the larger of the two) and the (1 - 2 alpha) = 90% interval of the mean difference."""
    diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if len(diff) < 2:
        return {"p_tost": float("nan"), "ci90_low": float("nan"), "ci90_high": float("nan")}
    if np.ptp(diff) <= 1e-12 * max(1.0, abs(diff.mean())):  # no spread: the mean is the interval
        mean = float(diff.mean())
        return {"p_tost": 0.0 if abs(mean) < margin else 1.0, "ci90_low": mean, "ci90_high": mean}
    p = ttost_paired(np.asarray(a, dtype=float), np.asarray(b, dtype=float), -margin, margin)[0]
    ci = stats.ttest_1samp(diff, 0.0).confidence_interval(1 - 2 * ALPHA)
    return {"p_tost": float(p), "ci90_low": float(ci.low), "ci90_high": float(ci.high)}


def minimum_detectable_effect(sd, n_users, alpha=ALPHA, power=POWER):
    """The smallest mean paired difference a two-sided paired t-test at ``alpha`` detects with ``power``,
    given the differences' standard deviation ``sd`` over ``n_users`` users (statsmodels' TTestPower)."""
    if n_users < 2 or not np.isfinite(sd):
        return float("nan")
    if sd == 0:
        return 0.0
    effect = TTestPower().solve_power(effect_size=None, nobs=n_users, alpha=alpha, power=power,
                                      alternative="two-sided")
    return float(effect * sd)


def corrected_resampled_ttest(diffs, test_train_ratio):
    """Nadeau and Bengio's (2003) corrected resampled t-test over J paired differences ``diffs`` (one per
    fold, each averaged over the fold's seeds): t = mean / sqrt((1/J + n_test / n_train) var), J - 1 degrees
    of freedom. The folds share training users, so the plain t-test's variance 1/J var is too small."""
    d = np.asarray(diffs, dtype=float)
    j = len(d)
    if j < 2:
        return {"n_runs": j, "mean_diff_runs": float(d.mean()) if j else float("nan"), "t_nb": float("nan"),
                "p_nb": float("nan")}
    var = d.var(ddof=1)
    mean = float(d.mean())
    if var == 0:
        t = 0.0 if mean == 0 else float("inf") * np.sign(mean)
    else:
        t = mean / np.sqrt((1 / j + test_train_ratio) * var)
    return {"n_runs": j, "mean_diff_runs": mean, "t_nb": float(t), "p_nb": float(2 * stats.t.sf(abs(t), j - 1))}


def verdict(ci90_low, ci90_high, margin, p_adjusted, alpha=ALPHA):
    """``equivalent`` when the 90% interval lies inside (-margin, margin); else ``different`` when the
    BH-adjusted p-value is below ``alpha`` (the 95% interval excludes 0); else ``inconclusive``. An
    equivalent pair may also differ significantly: the difference is then real but inside the margin."""
    if margin is not None and np.isfinite(ci90_low) and -margin < ci90_low and ci90_high < margin:
        return "equivalent"
    if np.isfinite(p_adjusted) and p_adjusted < alpha:
        return "different"
    return "inconclusive"


def paired_tests(a, b):
    """Paired t-test and Wilcoxon signed-rank test of a - b over users (scipy.stats).

    Effect sizes: Cohen's d_z (mean difference / std of the differences) and the matched-pairs
    rank-biserial correlation r = (W+ - W-) / (W+ + W-), in [-1, 1]. ``ci_low``, ``ci_high``: the
    t-based confidence interval (:data:`CONFIDENCE`) of the mean difference, from the paired t-test;
    NaN with fewer than 2 users, the point itself when every difference is the same.
    """
    diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    mean = float(diff.mean()) if len(diff) else float("nan")
    out = {"n_users": int(len(diff)), "mean_diff": mean, "ci_low": float("nan"), "ci_high": float("nan")}
    nonzero = diff[diff != 0]
    if len(nonzero) == 0:
        if len(diff):
            out.update(ci_low=0.0, ci_high=0.0)
        return {**out, "t": 0.0, "p_t": 1.0, "d_z": 0.0, "W": 0.0, "p_wilcoxon": 1.0, "r_rb": 0.0}
    t = stats.ttest_rel(a, b)
    sd = diff.std(ddof=1) if len(diff) > 1 else float("nan")
    if len(diff) > 1 and np.ptp(diff) <= 1e-12 * max(1.0, abs(mean)):  # one value: no spread
        out.update(ci_low=mean, ci_high=mean)
    elif len(diff) > 1:
        ci = t.confidence_interval(CONFIDENCE)
        out.update(ci_low=float(ci.low), ci_high=float(ci.high))
    w = stats.wilcoxon(a, b, zero_method="wilcox")
    ranks = stats.rankdata(np.abs(nonzero))
    w_plus, w_minus = ranks[nonzero > 0].sum(), ranks[nonzero < 0].sum()
    return {
        **out,
        "t": float(t.statistic),
        "p_t": float(t.pvalue),
        "d_z": float(diff.mean() / sd) if sd > 0 else float("inf") * np.sign(diff.mean()),
        "W": float(w.statistic),
        "p_wilcoxon": float(w.pvalue),
        "r_rb": float((w_plus - w_minus) / (w_plus + w_minus)),
    }


def adjust_pvalues(pvalues):
    """Benjamini-Hochberg adjusted p-values (``scipy.stats.false_discovery_control``) of a family of
    tests; a NaN p-value stays NaN and is not counted in the family."""
    p = np.asarray(pvalues, dtype=float)
    adjusted = np.full(p.shape, np.nan)
    finite = np.isfinite(p)
    if finite.any():
        adjusted[finite] = stats.false_discovery_control(p[finite], method="bh")
    return adjusted
