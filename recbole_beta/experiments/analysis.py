"""From run records to tables: the summary over seeds and the paired tests against the reference.

Mean +- std over seeds, and paired significance tests over users against a reference with equivalence
verdicts, the minimum detectable effect and, under folds, the corrected resampled t-test. Under
cross-validated held-out users (runs with a ``fold``) every table pools the folds: a user's metric comes
from the fold that tested it, averaged over seeds.

The pieces live by concern: :mod:`~recbole_beta.experiments.per_user` (reading a sweep's files),
:mod:`~recbole_beta.experiments.stats` (the tests themselves) and :mod:`~recbole_beta.experiments.buckets`
(user activity); their public names are importable from here too, the analysis API in one place.
"""

import numpy as np
import pandas as pd

from recbole_beta.experiments import variance
from recbole_beta.runs.record import is_ok

from recbole_beta.experiments.buckets import (  # noqa: F401  (the analysis API in one place)
    ACTIVITY_MEASURE, FLAT_ACTIVITY, MIN_BUCKET_SHARE, MIN_BUCKET_USERS, activity_bins, activity_buckets,
    activity_measure, activity_summary, bucket_differences, eval_protocol, min_bucket_users,
)
from recbole_beta.experiments.per_user import (  # noqa: F401
    MAIN_METRICS, USER_COLUMNS, main_first, has_folds, load_per_user, load_runs, metric_names, per_user_metric_names,
    per_user_table, run_key, user_key,
)
from recbole_beta.experiments.stats import (  # noqa: F401
    ALPHA, CONFIDENCE, POWER, adjust_pvalues, corrected_resampled_ttest, minimum_detectable_effect, paired_tests,
    tost_paired, verdict,
)


def _mean(values):
    return float(np.mean(values.to_numpy(dtype=float)))


def _std(values):
    # numpy's two-pass std (pandas' groupby std, Welford's, differs in the last digits from the
    # committed reports); 0 for one seed
    return float(np.std(values.to_numpy(dtype=float), ddof=1)) if len(values) > 1 else 0.0


def _pooled_results(out_dir, ok, key):
    """Under folds: per group and seed, each metric over every user its folds tested (one row each), from
    the per-user tables (exact: RecBole's results are rounded); train seconds and epochs summed and
    averaged over the folds."""
    rows = []
    keys = list(dict.fromkeys((r["group"], r["seed"]) for r in ok))
    for group, seed in keys:
        members = [r for r in ok if (r["group"], r["seed"]) == (group, seed)]
        table = pd.concat([load_per_user(out_dir, r) for r in members], ignore_index=True)
        metrics = [c for c in table.columns if c not in USER_COLUMNS]
        rows.append({"label": group, "model": members[0]["model"], "seed": seed,
                     "folds": sorted(r["fold"] for r in members), "n_users": int(table[key].nunique()),
                     **{m: float(table[m].mean()) for m in metrics},
                     "train_seconds": float(np.mean([r["train_seconds"] for r in members])),
                     "epochs": float(np.mean([len(r["history"]) for r in members]))})
    return pd.DataFrame(rows)


def summarize(runs, out_dir=None):
    """One row per group (model label plus cell): mean and std (ddof 1; 0 for one seed) over seeds of
    every test metric.

    Under folds (``out_dir`` needed) a seed's metric pools its folds: the mean over every user they
    tested; ``n_folds`` and ``n_users`` say how many, and train seconds and epochs are per fold.
    """
    ok = [r for r in runs if is_ok(r)]
    if not ok:
        return pd.DataFrame()
    if has_folds(ok):
        table = _pooled_results(out_dir, ok, user_key(out_dir, ok))
        metrics = main_first(c for c in table.columns if "@" in c)
        # a seed missing a fold pools fewer users: the minimum says so (the report flags it)
        summary = table.groupby("label", sort=False).agg(
            model=("model", "first"), n_seeds=("seed", "size"), seeds=("seed", sorted),
            n_folds=("folds", lambda f: len(set().union(*map(set, f)))), n_users=("n_users", "min"),
            **{f"{m}_{name}": (m, stat) for m in metrics for name, stat in (("mean", _mean), ("std", _std))},
            train_seconds_mean=("train_seconds", _mean), epochs_mean=("epochs", _mean),
        )
        cells = [next(r["cell"] for r in ok if r["group"] == g) for g in summary.index]
        summary = pd.concat([summary.reset_index(), pd.DataFrame(cells)], axis=1)
        return summary
    metrics = metric_names(ok)
    table = pd.DataFrame([{"label": r["group"], "model": r["model"], "seed": r["seed"], **r["test_result"],
                           "train_seconds": r["train_seconds"], "epochs": len(r["history"])} for r in ok])
    summary = table.groupby("label", sort=False).agg(
        model=("model", "first"),
        n_seeds=("seed", "size"),
        seeds=("seed", sorted),
        **{f"{m}_{name}": (m, stat) for m in metrics for name, stat in (("mean", _mean), ("std", _std))},
        train_seconds_mean=("train_seconds", _mean),
        epochs_mean=("epochs", _mean),
    )
    cells = [next(r["cell"] for r in ok if r["group"] == g) for g in summary.index]
    summary = pd.concat([summary.reset_index(), pd.DataFrame(cells)], axis=1)
    # columns in the order the rows name them: each group's cell keys after its seeds, the first time seen
    head = ["label", "model", "n_seeds", "seeds"]
    tail = [c for c in summary.columns if c not in head and not any(c in cell for cell in cells)]
    return summary[list(dict.fromkeys(c for cell in cells for c in (*head, *cell, *tail)))]


def _user_means(out_dir, members, metrics, key):
    """Per-user metrics averaged over the runs given (seeds; under folds, each user's runs are those of the
    fold that tested it), indexed by user (column ``key``; NaN: a table lacks the metric)."""
    tables = [load_per_user(out_dir, r).set_index(key).reindex(columns=list(metrics)) for r in members]
    return pd.concat(tables).groupby(level=0).mean()


def paired_runs(tables, ours_runs, ref_runs, metric, key):
    """(fold, seed) -> (ours, reference): the two runs' per-user ``metric`` as Series indexed by user."""
    ref = {run_key(r): r for r in ref_runs}
    pairs = {}
    for r in ours_runs:
        mine, theirs = tables[r["run_id"]], tables[ref[run_key(r)]["run_id"]]
        if metric in mine and metric in theirs:
            pairs[run_key(r)] = (mine.set_index(key)[metric], theirs.set_index(key)[metric])
    return pairs


def run_aware_columns(folds, margin=None):
    """The run-aware columns of one comparison from its :class:`~recbole_beta.experiments.variance.FoldTable` s:
    the mean difference, its 95% interval, the two-sided p, and with a ``margin`` the TOST p and the 90%
    interval; the minimum detectable effect and the variance components (users, runs, degrees of freedom)."""
    c = variance.components(folds)
    low, high = variance.interval(c, CONFIDENCE)
    low90, high90 = variance.interval(c, 1 - 2 * ALPHA)
    return {"mean_diff": c.mean, "ci_low": low, "ci_high": high, "p_run": variance.p_value(c),
            "margin": margin if margin is not None else float("nan"),
            "p_tost": variance.p_tost(c, margin) if margin is not None else float("nan"),
            "ci90_low": low90, "ci90_high": high90,
            "mde": variance.minimum_detectable_effect(c, ALPHA, POWER), **c.as_row()}


def _users_only_columns(a, b):
    """The secondary per-user test (users as if independent): its interval, tests and MDE."""
    test = paired_tests(a, b)
    sd = float(np.std(a - b, ddof=1)) if len(a) > 1 else float("nan")
    return {"n_users": test.pop("n_users"), "ci_low_users": test.pop("ci_low"), "ci_high_users": test.pop("ci_high"),
            **{k: v for k, v in test.items() if k != "mean_diff"},
            "mde_users": minimum_detectable_effect(sd, len(a))}


def _comparison_rows(out_dir, tables, members, ref_runs, reference, metrics, margins, key, folds):
    """The rows of one group against the reference, a metric each (see :func:`significance`)."""
    shared = {run_key(r) for r in members} & {run_key(r) for r in ref_runs}
    if not shared:
        return []
    ours_runs = [r for r in members if run_key(r) in shared]
    ref_shared = [r for r in ref_runs if run_key(r) in shared]
    ours = _user_means(out_dir, ours_runs, metrics, key)
    theirs = _user_means(out_dir, ref_shared, metrics, key)
    if folds:
        # n_test / n_train of the corrected resampled t-test: the folds' own user counts
        ratio = np.mean([r["protocol_users"]["test"] / r["protocol_users"]["train"]
                         for r in ref_shared if r.get("protocol_users")] or [float("nan")])
    rows = []
    for metric in metrics:
        paired = pd.concat([ours[metric], theirs[metric]], axis=1, join="inner").dropna()
        if paired.empty:  # a metric one side's tables lack
            continue
        a, b = paired.iloc[:, 0].to_numpy(), paired.iloc[:, 1].to_numpy()
        fold_tables = variance.fold_tables(paired_runs(tables, ours_runs, ref_shared, metric, key))
        row = {"label": members[0]["group"], "reference": reference, "metric": metric,
               "n_seeds": len({seed for _, seed in shared}),
               **run_aware_columns(fold_tables, margins.get(metric)), **_users_only_columns(a, b)}
        if folds:
            row["n_folds"] = len({fold for fold, _ in shared})
            # the corrected resampled t-test over the K fold means, each fold's seeds averaged
            row.update(corrected_resampled_ttest([t.values.mean() for t in fold_tables], ratio))
        rows.append(row)
    return rows


#: significance.csv's leading columns, in this order (the rest follow as computed)
SIGNIFICANCE_HEAD = ("label", "reference", "metric", "n_seeds", "n_users", "n_folds", "mean_diff", "ci_low", "ci_high",
                     "margin", "verdict", "p_run", "p_run_adj", "p_tost", "ci90_low", "ci90_high", "mde", "se", "df",
                     "sd_user", "sd_run", "sd_resid", "df_runs", "variance_sources")


def significance(out_dir, runs, reference, metrics=None, margins=None):
    """Each group against the reference label, per metric, on the (fold, seed) runs both have.

    The point estimate ``mean_diff`` is the mean over users of each user's seed-averaged difference (under
    folds each user's pair comes from the fold that tested it). Its interval ``ci_low``-``ci_high`` (95%),
    ``p_run`` and, with ``margins``, ``p_tost``, the 90% interval and the ``verdict`` count both sources
    of variance: users within a run and runs (training seeds within a fold), from
    :mod:`~recbole_beta.experiments.variance` (``se``, ``df``, ``sd_user``, ``sd_run``); ``mde`` is the
    minimum detectable effect from the same variance. With one seed per fold the run variance is not
    estimable: ``variance_sources`` says so (:data:`~recbole_beta.experiments.variance.USERS_ONLY`).

    Secondary columns: the per-user paired t and Wilcoxon tests (users as if independent: ``ci_low_users``,
    ``p_t``, ``mde_users``, ...) and, under folds, the corrected resampled t-test over the fold means
    (``t_nb``, ``p_nb``). Every ``*_adj`` is Benjamini-Hochberg adjusted over the table's comparisons.
    ``metrics``: by default those of :data:`MAIN_METRICS` the per-user tables hold (every per-user metric if
    they hold none of them), and every metric ``margins`` names; one asked for that no table holds is an error.
    """
    margins = dict(margins or {})
    ok = [r for r in runs if is_ok(r)]
    ref_runs = [r for r in ok if r["group"] == reference]
    if not ref_runs:
        return pd.DataFrame()
    metrics = _metrics_asked(out_dir, ok, metrics, margins)
    key = user_key(out_dir, ok)
    tables = {r["run_id"]: load_per_user(out_dir, r) for r in ok}
    rows = []
    for group in dict.fromkeys(r["group"] for r in ok):
        if group != reference:
            members = [r for r in ok if r["group"] == group]
            rows += _comparison_rows(out_dir, tables, members, ref_runs, reference, metrics, margins, key,
                                     has_folds(ok))
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    for column in ("p_run", "p_t", "p_wilcoxon", "p_nb"):
        if column in table:
            table.insert(table.columns.get_loc(column) + 1, f"{column}_adj", adjust_pvalues(table[column]))
    table["verdict"] = [verdict(row.ci90_low, row.ci90_high, None if pd.isna(row.margin) else row.margin, row.p_run_adj)
                        for row in table.itertuples()]
    head = [c for c in SIGNIFICANCE_HEAD if c in table]
    return table[head + [c for c in table.columns if c not in head]]


def _metrics_asked(out_dir, ok, metrics, margins):
    """The metrics :func:`significance` compares (see there), each one the per-user tables hold."""
    available = per_user_metric_names(out_dir, ok)
    if metrics is None:
        missing = [m for m in margins if m not in available]
        if missing:
            raise ValueError(f"no per-user {', '.join(missing)} in the runs' tables for its equivalence margin; "
                             f"they hold {', '.join(available)}")
        return main_first([*([m for m in MAIN_METRICS if m in available] or available), *margins])
    missing = [m for m in metrics if m not in available]
    if missing:
        raise ValueError(f"no per-user {', '.join(missing)} in the runs' tables; they hold {', '.join(available)}")
    return list(metrics)
