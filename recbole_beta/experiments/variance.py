"""Run-aware variance of a paired difference: users within a run, and runs (training seeds) within a fold.

A user's paired difference in one run is ``d[u, s] = mu + b_u + r_fs + e_us``: ``b_u`` the user, ``r_fs``
the run that seed ``s`` trained for fold ``f`` (all of the fold's users share it) and ``e_us`` what is
left. The estimate is the mean over users of each user's seed-averaged difference; its variance is
``sum_f w_f^2 (sigma_b^2 / N_f + sigma_r^2 / S_f + sigma_e^2 / (N_f S_f))``, ``w_f = N_f / N``. A per-user
test keeps the user terms only: the run term shrinks with seeds, never with users.

Why method-of-moments components and a Satterthwaite t, not the alternatives:

- a two-level (seed x user) bootstrap underestimates the run variance by (S - 1) / S with few seeds
  (two thirds at S = 3) unless corrected, and costs thousands of resamples a comparison;
- statsmodels' ``MixedLM`` with crossed seed and user effects is slow on 10^4-10^5 rows and its
  intervals are z-based, too narrow with 3-5 seeds;
- the two-way ANOVA mean squares of each fold's user x seed table give the components in closed form,
  and a t reference on Satterthwaite's degrees of freedom (the run part has ``sum_f (S_f - 1)``) keeps
  95% intervals at 95% in simulation (``tests/test_run_aware_variance.py``).

scipy.stats gives the t quantiles; the rest is arithmetic on the mean squares.
"""

from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

#: what a row says when one seed per fold leaves the run variance unestimable
USERS_ONLY = "users only: training variance not estimated"

#: what a row says when both sources are in its interval
USERS_AND_RUNS = "users and runs"


@dataclass(frozen=True)
class FoldTable:
    """One fold's paired differences: ``values[u, s]`` for its users (rows) and shared seeds (columns)."""

    values: np.ndarray

    @property
    def n_users(self):
        return self.values.shape[0]

    @property
    def n_seeds(self):
        return self.values.shape[1]

    def mean_squares(self):
        """(var over users of the seed-averaged d, var over seeds of the fold mean, residual mean square)."""
        d = self.values
        user_means = d.mean(axis=1)
        seed_means = d.mean(axis=0)
        var_users = float(np.var(user_means, ddof=1)) if self.n_users > 1 else float("nan")
        if self.n_seeds < 2:
            return var_users, float("nan"), float("nan")
        var_seeds = float(np.var(seed_means, ddof=1))
        resid = d - user_means[:, None] - seed_means[None, :] + d.mean()
        df = (self.n_users - 1) * (self.n_seeds - 1)
        ms_resid = float((resid ** 2).sum() / df) if df > 0 else float("nan")
        return var_users, var_seeds, ms_resid


@dataclass(frozen=True)
class Components:
    """The variance components of a paired comparison and the run-aware standard error of its mean.

    ``sd_user``: of a user's seed-averaged difference as the pilot's seeds averaged it (sigma_b^2 +
    sigma_e^2 / S); ``sd_run``: of a run's effect shared by its fold's users (sigma_r, NaN with one seed
    per fold); ``sd_resid``: sigma_e. ``df``: Satterthwaite's degrees of freedom of ``se``.
    """

    mean: float
    se: float
    df: float
    se_users: float
    sd_user: float
    sd_run: float
    sd_resid: float
    sd_user_alone: float
    n_users: int
    n_folds: int
    n_seeds: int
    df_runs: int
    fold_users: tuple
    fold_seeds: tuple

    @property
    def runs_estimated(self):
        return self.df_runs > 0

    @property
    def sources(self):
        return USERS_AND_RUNS if self.runs_estimated else USERS_ONLY

    def as_row(self):
        """The columns a significance table adds."""
        row = asdict(self)
        for key in ("fold_users", "fold_seeds", "sd_user_alone", "mean", "n_users", "n_seeds", "n_folds"):
            row.pop(key)
        return {**row, "variance_sources": self.sources}


def components(folds):
    """The run-aware :class:`Components` of the mean difference over the :class:`FoldTable` s ``folds``.

    The point estimate is the mean over every user of its seed-averaged difference. The run variance is
    pooled over folds (each fold's ``var over seeds of its mean - sigma_e^2 / N_f``, weighted by its
    ``S_f - 1`` degrees of freedom) and clipped at 0; with one seed per fold it is not estimable, and the
    standard error is the users' alone (:data:`USERS_ONLY`).
    """
    folds = [f for f in folds if f.n_users > 0 and f.n_seeds > 0]
    n = sum(f.n_users for f in folds)
    if n == 0:
        raise ValueError("no paired users")
    weights = [f.n_users / n for f in folds]
    mean = float(sum(w * f.values.mean() for w, f in zip(weights, folds)))
    squares = [f.mean_squares() for f in folds]
    # users: each fold's variance of the seed-averaged differences over its users (N_f - 1 df each)
    var_user_part = sum(w ** 2 * vu / f.n_users for w, f, (vu, _, _) in zip(weights, folds, squares))
    df_users = sum(f.n_users - 1 for f in folds)
    df_runs = sum(f.n_seeds - 1 for f in folds)
    if df_runs > 0:
        pieces = [(f.n_seeds - 1, vs - ms / f.n_users, ms) for f, (_, vs, ms) in zip(folds, squares) if f.n_seeds > 1]
        var_run = max(0.0, sum(df * v for df, v, _ in pieces) / df_runs)
        var_resid = sum(df * ms for df, _, ms in pieces) / df_runs
        run_part = var_run * sum(w ** 2 / f.n_seeds for w, f in zip(weights, folds))
    else:
        var_run = var_resid = float("nan")
        run_part = 0.0
    variance = var_user_part + run_part
    df = _satterthwaite([(var_user_part, df_users), (run_part, df_runs)])
    pooled_user = sum((f.n_users - 1) * vu for f, (vu, _, _) in zip(folds, squares)) / max(df_users, 1)
    sd_alone = np.sqrt(max(0.0, pooled_user - var_resid / np.mean([f.n_seeds for f in folds]))) \
        if np.isfinite(var_resid) else np.sqrt(pooled_user)
    return Components(
        mean=mean, se=float(np.sqrt(variance)), df=df, se_users=float(np.sqrt(var_user_part)),
        sd_user=float(np.sqrt(pooled_user)), sd_run=float(np.sqrt(var_run)), sd_resid=float(np.sqrt(var_resid)),
        sd_user_alone=float(sd_alone), n_users=n, n_folds=len(folds), n_seeds=min(f.n_seeds for f in folds),
        df_runs=df_runs, fold_users=tuple(f.n_users for f in folds), fold_seeds=tuple(f.n_seeds for f in folds),
    )


def _satterthwaite(parts):
    """Welch-Satterthwaite degrees of freedom of a sum of independent variance estimates (value, df)."""
    parts = [(v, df) for v, df in parts if df > 0 and v > 0]
    if not parts:
        return float("inf")
    return float(sum(v for v, _ in parts) ** 2 / sum(v ** 2 / df for v, df in parts))


def interval(c, level):
    """The ``level`` two-sided interval of the mean difference, on ``c.df`` degrees of freedom."""
    if not np.isfinite(c.se):
        return float("nan"), float("nan")
    half = stats.t.ppf(0.5 + level / 2, c.df) * c.se
    return c.mean - half, c.mean + half


def p_value(c):
    """Two-sided p of mean difference 0 on the run-aware t."""
    if c.se == 0:
        return 0.0 if c.mean != 0 else 1.0
    return float(2 * stats.t.sf(abs(c.mean / c.se), c.df))


def p_tost(c, margin):
    """Two one-sided tests of |mean| < margin on the run-aware t: the larger of the two p-values."""
    if c.se == 0:
        return 0.0 if abs(c.mean) < margin else 1.0
    lower = stats.t.sf((c.mean + margin) / c.se, c.df)
    upper = stats.t.cdf((c.mean - margin) / c.se, c.df)
    return float(max(lower, upper))


def minimum_detectable_effect(c, alpha, power):
    """The smallest true difference the run-aware two-sided test at ``alpha`` detects with ``power``."""
    return float((stats.t.ppf(1 - alpha / 2, c.df) + stats.t.ppf(power, c.df)) * c.se)


def projected(c, seeds):
    """The standard error and degrees of freedom the same folds and users would give with ``seeds`` per fold.

    sigma_b^2 and sigma_e^2 come from the pilot's mean squares; needs the run variance estimated."""
    n = c.n_users
    var_resid = c.sd_resid ** 2
    sigma_b2 = c.sd_user_alone ** 2
    user_part = sum((nf / n) ** 2 * (sigma_b2 + var_resid / seeds) / nf for nf in c.fold_users)
    run_part = c.sd_run ** 2 * sum((nf / n) ** 2 / seeds for nf in c.fold_users)
    df = _satterthwaite([(user_part, sum(nf - 1 for nf in c.fold_users)),
                         (run_part, c.n_folds * (seeds - 1))])
    return float(np.sqrt(user_part + run_part)), df


def seeds_needed(c, margin, alpha, power, goal, most=200):
    """Seeds per fold for which a study like the pilot ``c`` (same folds and users) reaches ``power``:

    ``goal`` ``"equivalence"``: the 90% interval inside +-``margin`` when the true difference is 0
    (se <= margin / (t_{1-alpha} + t_{1-beta/2})); ``"difference"``: the two-sided test at ``alpha``
    detects a true difference of ``margin`` (se <= margin / (t_{1-alpha/2} + t_{power})).
    None when ``most`` seeds do not reach it (the users' part alone is too large)."""
    for seeds in range(2, most + 1):
        se, df = projected(c, seeds)
        if goal == "equivalence":
            needed = stats.t.ppf(1 - alpha, df) + stats.t.ppf(1 - (1 - power) / 2, df)
        else:
            needed = stats.t.ppf(1 - alpha / 2, df) + stats.t.ppf(power, df)
        if se * needed <= margin:
            return seeds
    return None


def fold_tables(pairs, users=None):
    """:class:`FoldTable` s from ``pairs``: (fold, seed) -> (a, b), two per-user Series indexed by user.

    Each fold keeps the users with both values in every one of its seeds (``users``: only these), so a
    fold's table is complete, users x seeds."""
    by_fold = {}
    for (fold, seed), (a, b) in pairs.items():
        by_fold.setdefault(fold, {})[seed] = (a - b).dropna()
    tables = []
    for fold in sorted(by_fold, key=lambda f: (f is None, f)):
        seeds = sorted(by_fold[fold])
        columns = [by_fold[fold][s] for s in seeds]
        common = columns[0].index
        for column in columns[1:]:
            common = common.intersection(column.index)
        if users is not None:
            common = common.intersection(users)
        common = common.sort_values()
        tables.append(FoldTable(np.column_stack([c.loc[common].to_numpy(dtype=float) for c in columns])
                                if len(common) else np.empty((0, len(seeds)))))
    return tables
