"""User activity |x_u| in a sweep: its spread, its quantile buckets, each method's metrics per bucket.

Each method's paired difference from the reference is also taken within each bucket."""

import math

import numpy as np
import pandas as pd

from recbole_beta.experiments import variance
from recbole_beta.experiments.per_user import USER_COLUMNS, main_first, load_per_user, run_key, user_key
from recbole_beta.experiments.stats import CONFIDENCE, adjust_pvalues
from recbole_beta.runs.record import is_ok, protocol_of

#: activity "barely varies" when its IQR / median or its coefficient of variation is below this
FLAT_ACTIVITY = 0.1

#: the smallest bucket of users: this many, or this share of the users if that is more
MIN_BUCKET_USERS, MIN_BUCKET_SHARE = 10, 0.05

#: what a user's activity |x_u| counts under each evaluation protocol
ACTIVITY_MEASURE = {"weak": "training interactions |x_u|", "strong": "fold-in size |x_u|"}


def eval_protocol(record):
    """A run's evaluation protocol, as its record says (:func:`~recbole_beta.runs.record.protocol_of`)."""
    return protocol_of(record)["eval_protocol"]


def activity_measure(runs):
    """What the activity |x_u| of the ok runs' users counts: training interactions under the weak
    protocol, a held-out user's fold-in size under the strong one."""
    protocols = list(dict.fromkeys(eval_protocol(r) for r in runs if is_ok(r))) or ["weak"]
    names = [ACTIVITY_MEASURE.get(p, f"activity |x_u| ({p} protocol)") for p in protocols]
    return names[0] if len(names) == 1 else " or ".join(f"{n} ({p})" for n, p in zip(names, protocols))


def min_bucket_users(n_users):
    """The fewest users a bucket may hold: :data:`MIN_BUCKET_USERS`, or :data:`MIN_BUCKET_SHARE` of them."""
    return max(MIN_BUCKET_USERS, math.ceil(MIN_BUCKET_SHARE * n_users))


def activity_bins(activity, quantiles=(0.25, 0.5, 0.75), min_users=None, n_runs=1):
    """Bucket edges for ``pd.cut`` (right-closed, outer edges -inf and inf) over activity values.

    The edges are the quantiles ``pd.qcut`` cuts at. Where several quantiles fall on one value (many
    users with the same activity), that value becomes a bucket of its own instead of collapsing the
    others into it; then every bucket under ``min_users`` users (default :func:`min_bucket_users`)
    is merged into its smaller neighbour, so each holds enough users to mean something. ``activity``
    holds every user of ``n_runs`` runs, so a bucket holds its count / ``n_runs`` users.
    """
    activity = pd.Series(np.asarray(activity, dtype=float))
    if activity.empty:
        return np.array([-np.inf, np.inf])
    edges = activity.quantile([0.0, *quantiles, 1.0]).to_numpy()
    values = np.unique(activity)
    inner = set(edges[1:-1].tolist())
    tied, counts = np.unique(edges, return_counts=True)
    for value in tied[counts > 1]:
        inner.add(value)  # (.., value]
        below = values[values < value]
        if len(below):
            inner.add((below[-1] + value) / 2)
    bins = np.array([-np.inf, *sorted(e for e in inner if values[0] <= e < values[-1]), np.inf])
    n_users = len(activity) / n_runs
    min_users = min_bucket_users(n_users) if min_users is None else min_users
    while len(bins) > 2:
        index = pd.cut(activity, bins, labels=False)
        sizes = np.bincount(index, minlength=len(bins) - 1) / n_runs
        i = int(np.argmin(sizes))
        if sizes[i] >= min_users:
            break
        if i == 0:
            merge = 1  # into the bucket above
        elif i == len(sizes) - 1:
            merge = i  # into the bucket below
        else:
            merge = i if sizes[i - 1] <= sizes[i + 1] else i + 1
        bins = np.delete(bins, merge)
    return bins


def _bucket_names(activity, bins):
    """``[lowest, highest]`` activity in each bucket."""
    activity = np.asarray(activity, dtype=float)
    index = pd.cut(activity, bins, labels=False)
    names = []
    for i in range(len(bins) - 1):
        members = activity[index == i]
        names.append(f"[{members.min():g}, {members.max():g}]" if len(members) else f"({bins[i]:g}, {bins[i + 1]:g}]")
    return names


def _activity_rows(out_dir, ok):
    """(user, activity) of every evaluated user of every run."""
    key = user_key(out_dir, ok)
    tables = [load_per_user(out_dir, r) for r in ok]
    return pd.concat([pd.DataFrame({"user": t[key], "activity": t["activity"]}) for t in tables], ignore_index=True)


def activity_summary(out_dir, runs):
    """How much activity varies over the ok runs' evaluated users.

    ``barely_varies`` when the IQR / median or the coefficient of variation (std / mean) is below
    :data:`FLAT_ACTIVITY`: a per-user scaled beta (gamma |x_u| / mean) is then nearly a constant.
    """
    ok = [r for r in runs if is_ok(r)]
    if not ok:
        return {}
    rows = _activity_rows(out_dir, ok)
    n_users = int(rows["user"].nunique())
    activity = rows["activity"].astype(float)
    q25, median, q75 = activity.quantile([0.25, 0.5, 0.75])
    mean = activity.mean()
    cv = float(activity.std(ddof=0) / mean) if mean > 0 else float("nan")
    iqr_over_median = float((q75 - q25) / median) if median > 0 else float("nan")
    return {
        "measure": activity_measure(ok),
        "n_users": n_users,
        "min_bucket_users": min_bucket_users(n_users),
        "min": float(activity.min()), "q25": float(q25), "median": float(median), "q75": float(q75),
        "max": float(activity.max()), "mean": float(mean), "cv": cv, "iqr_over_median": iqr_over_median,
        "barely_varies": bool(cv < FLAT_ACTIVITY or iqr_over_median < FLAT_ACTIVITY),
    }


def _bins(tables, quantiles, min_users, key):
    """Bucket edges and names over every evaluated user of the per-user ``tables`` (:func:`activity_bins`)."""
    tables = list(tables)
    activity = pd.concat([t["activity"] for t in tables], ignore_index=True).to_numpy()
    n_users = pd.concat([t[key] for t in tables], ignore_index=True).nunique()
    # every user appears this many times (once per run that evaluated it)
    bins = activity_bins(activity, quantiles, min_users, n_runs=len(activity) / n_users)
    return bins, _bucket_names(activity, bins)


def bucket_differences(out_dir, runs, reference, metric="ndcg@100", quantiles=(0.25, 0.5, 0.75), min_users=None):
    """Each group against the reference within each activity bucket (the buckets of :func:`activity_buckets`):
    the mean per-user difference of ``metric`` and its run-aware 95% interval and test (users within a run
    and runs within a fold, as :func:`~recbole_beta.experiments.analysis.significance` counts them), BH-adjusted
    over the table (``p_run_adj``). Users are paired as there (folds pooled, seeds averaged)."""
    ok = [r for r in runs if is_ok(r)]
    if not any(r["group"] == reference for r in ok):
        return pd.DataFrame()
    tables = {r["run_id"]: load_per_user(out_dir, r) for r in ok}
    if not any(metric in t for t in tables.values()):
        return pd.DataFrame()
    key = user_key(out_dir, ok)
    bins, names = _bins(tables.values(), quantiles, min_users, key)
    ref_runs = {run_key(r): r for r in ok if r["group"] == reference}
    rows = []
    for group in dict.fromkeys(r["group"] for r in ok):
        if group == reference:
            continue
        pairs = {run_key(r): (tables[r["run_id"]].set_index(key)[metric],
                              tables[ref_runs[run_key(r)]["run_id"]].set_index(key)[metric])
                 for r in ok if r["group"] == group and run_key(r) in ref_runs
                 and metric in tables[r["run_id"]] and metric in tables[ref_runs[run_key(r)]["run_id"]]}
        if not pairs:
            continue
        # each user's activity, as the reference's runs measured it (the same in every run of its fold)
        activity = pd.concat([tables[ref_runs[k]["run_id"]].set_index(key)["activity"] for k in pairs])
        activity = activity[~activity.index.duplicated()].astype(float)
        index = pd.Series(pd.cut(activity, bins, labels=False), index=activity.index)
        for i, name in enumerate(names):
            # a fold with one user of the bucket has no spread over users to estimate: left out of the cell
            folds = [t for t in variance.fold_tables(pairs, users=index.index[index == i]) if t.n_users > 1]
            if sum(t.n_users for t in folds) < 2:
                continue
            c = variance.components(folds)
            low, high = variance.interval(c, CONFIDENCE)
            rows.append({"label": group, "reference": reference, "metric": metric, "bucket": name, "bucket_index": i,
                         "n_users": c.n_users, "mean_diff": c.mean, "ci_low": low, "ci_high": high,
                         "p_run": variance.p_value(c), "sd_run": c.sd_run, "df": c.df,
                         "variance_sources": c.sources})
    table = pd.DataFrame(rows)
    if not table.empty:
        table["p_run_adj"] = adjust_pvalues(table["p_run"])
    return table


def activity_buckets(out_dir, runs, quantiles=(0.25, 0.5, 0.75), min_users=None):
    """Test metrics per bucket of user activity |x_u|, per group (mean over users and seeds).

    |x_u| is the training interactions under the weak protocol, the fold-in size under the strong
    one (column ``activity_measure``). Buckets are cut by :func:`activity_bins` over every evaluated
    user of every ok run: at the quantiles, a tied value its own bucket, none under ``min_users``.
    """
    ok = [r for r in runs if is_ok(r)]
    if not ok:
        return pd.DataFrame()
    tables = {r["run_id"]: load_per_user(out_dir, r) for r in ok}
    key = user_key(out_dir, ok)
    bins, names = _bins(tables.values(), quantiles, min_users, key)
    measure = activity_measure(ok)
    metrics = main_first(c for t in tables.values() for c in t.columns if c not in USER_COLUMNS)
    rows = []
    for group in dict.fromkeys(r["group"] for r in ok):
        members = [tables[r["run_id"]] for r in ok if r["group"] == group]
        table = pd.concat(members, ignore_index=True)
        index = pd.cut(table["activity"].astype(float), bins, labels=False).to_numpy()
        for i, name in enumerate(names):
            part = table[index == i]
            if part.empty:
                continue
            rows.append({"label": group, "bucket": name, "bucket_index": i,
                         "n_users": int(part[key].nunique()), "activity_measure": measure,
                         **{m: float(part[m].mean()) if m in part else float("nan") for m in metrics}})
    return pd.DataFrame(rows)
