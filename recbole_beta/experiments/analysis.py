"""From run records to tables: mean +- std over seeds, paired significance tests over users with
equivalence verdicts (TOST) and the minimum detectable effect, the corrected resampled t-test over
folds, and metrics per user-activity bucket.

Under cross-validated held-out users (runs with a ``fold``) every table pools the folds: a user's
metric comes from the fold that tested it, averaged over seeds.
"""

import json
import math
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.power import TTestPower
from statsmodels.stats.weightstats import ttost_paired

#: the metrics every table shows first (others the config names follow), and the ones the paired
#: tests run on by default, those of them the per-user tables hold: RecBole's NDCG and Recall, and
#: the paper's Recall (TruncatedRecall; RecBole lower-cases metric names)
MAIN_METRICS = ("ndcg@100", "recall@20", "recall@50", "truncatedrecall@20", "truncatedrecall@50")

#: the columns of a per-user table that are not metrics (``user_token``: the dataset's own user id,
#: the same in every fold; older tables have RecBole's internal ``user_id`` only)
USER_COLUMNS = ("user_id", "activity", "user_token")

#: the confidence level of the intervals of the mean per-user difference
CONFIDENCE = 0.95

#: the tests' alpha: "different" below it (BH-adjusted), "equivalent" when both one-sided tests are
#: below it (the 1 - 2 alpha = 90% interval inside the margin)
ALPHA = 1 - CONFIDENCE

#: the power at which the minimum detectable effect is given
POWER = 0.8

#: activity "barely varies" when its IQR / median or its coefficient of variation is below this
FLAT_ACTIVITY = 0.1

#: the smallest bucket of users: this many, or this share of the users if that is more
MIN_BUCKET_USERS, MIN_BUCKET_SHARE = 10, 0.05

#: what a user's activity |x_u| counts under each evaluation protocol
ACTIVITY_MEASURE = {"weak": "training interactions |x_u|", "strong": "fold-in size |x_u|"}


def load_runs(out_dir, problems=None):
    """Every run record of a sweep folder, in the spec's order (model, cell, seed).

    A record that cannot be read is left out, and an ok record whose per-user table cannot be read is
    marked ``status: unreadable``; each is named, with why, in ``problems`` (a list), so a report says what
    it skipped instead of failing on it (the next sweep moves such files aside and redoes the runs).
    """
    records = []
    for path in sorted((Path(out_dir) / "runs").glob("*.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(record, dict) or "run_id" not in record:
                raise ValueError("not a run record")
        except (OSError, ValueError) as error:
            if problems is not None:
                problems.append(f"{path}: cannot be read ({' '.join(str(error).split())[:200]})")
            continue
        if record.get("status") == "ok":
            table = Path(out_dir) / "runs" / f"{record['run_id']}.per_user.npz"
            try:
                with np.load(table) as data:
                    for key in data.files:
                        data[key]
            except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
                reason = " ".join(str(error).split())[:200] or type(error).__name__
                record.update(status="unreadable", error=f"{table.name} cannot be read: {reason}")
                if problems is not None:
                    problems.append(f"{table}: cannot be read ({reason})")
        records.append(record)
    return sorted(records, key=lambda r: (r.get("index", 0), r["run_id"]))


def load_per_user(out_dir, record):
    with np.load(Path(out_dir) / "runs" / f"{record['run_id']}.per_user.npz") as data:
        return pd.DataFrame({k: data[k] for k in data.files})


def user_key(out_dir, runs):
    """The column that names a user across the ok ``runs``, the same for every table of the sweep: the
    dataset's own id (``user_token``) when every table has it, else RecBole's internal ``user_id`` (tables
    written before ``user_token`` existed; without folds every run numbers the users alike). A fold sweep
    needs the tokens: RecBole renumbers users with each fold."""
    ok = [r for r in runs if r["status"] == "ok"]
    with_tokens = []
    for r in ok:
        with np.load(Path(out_dir) / "runs" / f"{r['run_id']}.per_user.npz") as data:
            with_tokens.append("user_token" in data.files)
    if all(with_tokens):
        return "user_token"
    if has_folds(ok):
        missing = next(r["run_id"] for r, has in zip(ok, with_tokens) if not has)
        raise ValueError(f"{missing}.per_user.npz has no user_token, which a fold sweep pairs users by (RecBole "
                         "renumbers users with each fold): rerun that run (delete its record)")
    return "user_id"


def run_key(record):
    """(fold, seed) of a run: what two methods' runs are paired on (fold None without folds)."""
    return record.get("fold"), record["seed"]


def has_folds(runs):
    return any(r.get("fold") is not None for r in runs)


def _ordered(names):
    """Metric names, the main ones first, the others in the order given."""
    names = list(dict.fromkeys(names))
    return [m for m in MAIN_METRICS if m in names] + [m for m in names if m not in MAIN_METRICS]


def per_user_metric_names(out_dir, runs):
    """The per-user metric columns any ok run's table holds, the main ones first."""
    names = []
    for record in runs:
        if record["status"] == "ok":
            with np.load(Path(out_dir) / "runs" / f"{record['run_id']}.per_user.npz") as data:
                names += [k for k in data.files if k not in USER_COLUMNS]
    return _ordered(names)


def metric_names(runs):
    """The test metrics the runs report, the main ones first."""
    names = []
    for record in runs:
        for name in (record.get("test_result") or {}):
            if name not in names:
                names.append(name)
    return [m for m in MAIN_METRICS if m in names] + [m for m in names if m not in MAIN_METRICS]


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
        metrics = _ordered(c for c in table.columns if "@" in c)
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


def _run_means(out_dir, members, metrics):
    """Each run's mean of the per-user metrics (over its test users): {(fold, seed): {metric: mean}}."""
    means = {}
    for r in members:
        table = load_per_user(out_dir, r)
        means[run_key(r)] = {m: float(table[m].mean()) if m in table else float("nan") for m in metrics}
    return means


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
        metrics = _ordered([*metrics, *margins])
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


def per_user_table(out_dir, runs, metrics=None):
    """Every evaluated user, one row per group: its test metrics averaged over seeds (under folds, the
    seeds of the fold that tested it), its activity and fold."""
    ok = [r for r in runs if r["status"] == "ok"]
    if not ok:
        return pd.DataFrame()
    metrics = metrics or per_user_metric_names(out_dir, ok)
    key = user_key(out_dir, ok)
    frames = []
    for r in ok:
        table = load_per_user(out_dir, r)
        frames.append(pd.DataFrame({"label": r["group"], "user": table[key].astype(str), "fold": r.get("fold"),
                                    "seed": r["seed"], "activity": table["activity"],
                                    **{m: table[m] if m in table else np.nan for m in metrics}}))
    rows = pd.concat(frames, ignore_index=True)
    order = {g: i for i, g in enumerate(dict.fromkeys(r["group"] for r in ok))}
    table = (rows.groupby(["label", "user"], sort=False)
             .agg(fold=("fold", "first"), n_seeds=("seed", "nunique"), activity=("activity", "mean"),
                  **{m: (m, "mean") for m in metrics})
             .reset_index())
    table["_order"] = table["label"].map(order)
    if not has_folds(ok):
        table = table.drop(columns="fold")
    return table.sort_values(["_order", "user"], kind="stable").drop(columns="_order").reset_index(drop=True)


def eval_protocol(record):
    """A run's evaluation protocol: the one it ran with, else its config's, else weak (the default)."""
    return record.get("eval_protocol") or (record.get("config") or {}).get("eval_protocol") or "weak"


def activity_measure(runs):
    """What the activity |x_u| of the ok runs' users counts: training interactions under the weak
    protocol, a held-out user's fold-in size under the strong one."""
    protocols = list(dict.fromkeys(eval_protocol(r) for r in runs if r["status"] == "ok")) or ["weak"]
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
    ok = [r for r in runs if r["status"] == "ok"]
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
    the mean per-user difference of ``metric``, its confidence interval and paired t-test, BH-adjusted over
    the table. Users are paired as in :func:`significance` (folds pooled, seeds averaged)."""
    ok = [r for r in runs if r["status"] == "ok"]
    if not any(r["group"] == reference for r in ok):
        return pd.DataFrame()
    tables = {r["run_id"]: load_per_user(out_dir, r) for r in ok}
    if not any(metric in t for t in tables.values()):
        return pd.DataFrame()
    key = user_key(out_dir, ok)
    bins, names = _bins(tables.values(), quantiles, min_users, key)
    ref_runs = [r for r in ok if r["group"] == reference]
    rows = []
    for group in dict.fromkeys(r["group"] for r in ok):
        if group == reference:
            continue
        members = [r for r in ok if r["group"] == group]
        shared = {run_key(r) for r in members} & {run_key(r) for r in ref_runs}  # as significance pairs them
        users = per_user_table(out_dir, [r for r in members + ref_runs if run_key(r) in shared], [metric])
        ref = users[users["label"] == reference].set_index("user")
        mine = users[users["label"] == group].set_index("user")
        pairs = ref[["activity", metric]].join(mine[[metric]], rsuffix="_method", how="inner").dropna()
        index = pd.cut(pairs["activity"].astype(float), bins, labels=False).to_numpy()
        for i, name in enumerate(names):
            part = pairs[index == i]
            if len(part) < 2:
                continue
            test = paired_tests(part[f"{metric}_method"].to_numpy(), part[metric].to_numpy())
            rows.append({"label": group, "reference": reference, "metric": metric, "bucket": name, "bucket_index": i,
                         "n_users": test["n_users"], "mean_diff": test["mean_diff"], "ci_low": test["ci_low"],
                         "ci_high": test["ci_high"], "p_t": test["p_t"]})
    table = pd.DataFrame(rows)
    if not table.empty:
        table["p_t_adj"] = adjust_pvalues(table["p_t"])
    return table


def activity_buckets(out_dir, runs, quantiles=(0.25, 0.5, 0.75), min_users=None):
    """Test metrics per bucket of user activity |x_u|, per group (mean over users and seeds).

    |x_u| is the training interactions under the weak protocol, the fold-in size under the strong
    one (column ``activity_measure``). Buckets are cut by :func:`activity_bins` over every evaluated
    user of every ok run: at the quantiles, a tied value its own bucket, none under ``min_users``.
    """
    ok = [r for r in runs if r["status"] == "ok"]
    if not ok:
        return pd.DataFrame()
    tables = {r["run_id"]: load_per_user(out_dir, r) for r in ok}
    key = user_key(out_dir, ok)
    bins, names = _bins(tables.values(), quantiles, min_users, key)
    measure = activity_measure(ok)
    metrics = _ordered(c for t in tables.values() for c in t.columns if c not in USER_COLUMNS)
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
