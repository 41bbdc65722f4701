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
    ok = [r for r in runs if r["status"] == "ok"]
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


def _run_means(out_dir, members, metrics):
    """Each run's mean of the per-user metrics (over its test users): {(fold, seed): {metric: mean}}."""
    means = {}
    for r in members:
        table = load_per_user(out_dir, r)
        means[run_key(r)] = {m: float(table[m].mean()) if m in table else float("nan") for m in metrics}
    return means


def significance(out_dir, runs, reference, metrics=None, margins=None):
    """Each group against the reference label, per metric, on the (fold, seed) runs both have.

    Per-user metrics are first averaged over those seeds, so each user is one pair; under folds each
    user's pair comes from the fold that tested it. ``metrics``: by default those of
    :data:`MAIN_METRICS` the per-user tables hold (every per-user metric if they hold none of them),
    and every metric ``margins`` names; a metric asked for that no table holds is an error, not left out.

    ``p_t_adj``, ``p_wilcoxon_adj`` (and ``p_nb_adj``) are adjusted (Benjamini-Hochberg) over the family of
    every comparison in the table, i.e. every method x metric against the reference, each test on its own.

    ``margins`` (metric -> margin) adds ``p_tost`` (two one-sided tests) and a ``verdict`` (:func:`verdict`);
    every row has ``mde``, the minimum detectable effect at :data:`POWER` and :data:`ALPHA` from the
    observed spread of the paired differences. Under folds, ``t_nb`` and ``p_nb`` are the corrected
    resampled t-test over the fold means, each fold's seeds averaged (:func:`corrected_resampled_ttest`).
    """
    margins = dict(margins or {})
    ok = [r for r in runs if r["status"] == "ok"]
    groups = list(dict.fromkeys(r["group"] for r in ok))
    ref_runs = [r for r in ok if r["group"] == reference]
    if not ref_runs:
        return pd.DataFrame()
    available = per_user_metric_names(out_dir, ok)
    if metrics is None:
        metrics = [m for m in MAIN_METRICS if m in available] or available
        metrics = main_first([*metrics, *margins])
        missing = [m for m in margins if m not in available]
        if missing:
            raise ValueError(f"no per-user {', '.join(missing)} in the runs' tables for its equivalence margin; "
                             f"they hold {', '.join(available)}")
    else:
        missing = [m for m in metrics if m not in available]
        if missing:
            raise ValueError(f"no per-user {', '.join(missing)} in the runs' tables; they hold {', '.join(available)}")
    folds = has_folds(ok)
    key = user_key(out_dir, ok)
    rows = []
    for group in groups:
        if group == reference:
            continue
        members = [r for r in ok if r["group"] == group]
        shared = {run_key(r) for r in members} & {run_key(r) for r in ref_runs}
        if not shared:
            continue
        ours_runs = [r for r in members if run_key(r) in shared]
        ref_shared = [r for r in ref_runs if run_key(r) in shared]
        ours = _user_means(out_dir, ours_runs, metrics, key)
        theirs = _user_means(out_dir, ref_shared, metrics, key)
        if folds:
            mine, ref = _run_means(out_dir, ours_runs, metrics), _run_means(out_dir, ref_shared, metrics)
            # n_test / n_train of the corrected resampled t-test: the folds' own user counts
            ratio = np.mean([r["protocol_users"]["test"] / r["protocol_users"]["train"]
                             for r in ref_shared if r.get("protocol_users")] or [float("nan")])
        for metric in metrics:
            pairs = pd.concat([ours[metric], theirs[metric]], axis=1, join="inner").dropna()
            if pairs.empty:  # a metric one side's tables lack
                continue
            a, b = pairs.iloc[:, 0].to_numpy(), pairs.iloc[:, 1].to_numpy()
            test = paired_tests(a, b)
            sd = float(np.std(a - b, ddof=1)) if len(a) > 1 else float("nan")
            row = {"label": group, "reference": reference, "metric": metric,
                   "n_seeds": len({seed for _, seed in shared}), **test}
            if folds:
                row["n_folds"] = len({fold for fold, _ in shared})
            margin = margins.get(metric)
            row.update(margin=margin if margin is not None else float("nan"),
                       **(tost_paired(a, b, margin) if margin is not None
                          else {"p_tost": float("nan"), "ci90_low": float("nan"), "ci90_high": float("nan")}),
                       mde=minimum_detectable_effect(sd, len(a)))
            if folds:
                # the seeds retrain on the same folds: they are averaged within each fold, and the test runs
                # over the K fold means (the folds are the resamples; the seeds are not)
                by_fold = {}
                for fold, seed in shared:
                    by_fold.setdefault(fold, []).append(mine[fold, seed][metric] - ref[fold, seed][metric])
                row.update(corrected_resampled_ttest([np.mean(by_fold[f]) for f in sorted(by_fold)], ratio))
            rows.append(row)
    table = pd.DataFrame(rows)
    if not table.empty:
        table.insert(table.columns.get_loc("p_t") + 1, "p_t_adj", adjust_pvalues(table["p_t"]))
        table.insert(table.columns.get_loc("p_wilcoxon") + 1, "p_wilcoxon_adj", adjust_pvalues(table["p_wilcoxon"]))
        if "p_nb" in table:
            table.insert(table.columns.get_loc("p_nb") + 1, "p_nb_adj", adjust_pvalues(table["p_nb"]))
        table["verdict"] = [
            verdict(row.ci90_low, row.ci90_high, None if pd.isna(row.margin) else row.margin, row.p_t_adj)
            for row in table.itertuples()
        ]
    return table
