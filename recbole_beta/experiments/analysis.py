"""From run records to tables: mean +- std over seeds, paired significance tests over users, and
metrics per user-activity bucket."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

#: the metrics every table shows first (others the config names follow)
MAIN_METRICS = ("ndcg@100", "recall@20", "recall@50")


def load_runs(out_dir):
    """Every run record of a sweep folder, in the spec's order (model, cell, seed)."""
    records = [json.loads(p.read_text(encoding="utf-8")) for p in (Path(out_dir) / "runs").glob("*.json")]
    return sorted(records, key=lambda r: (r.get("index", 0), r["run_id"]))


def load_per_user(out_dir, record):
    with np.load(Path(out_dir) / "runs" / f"{record['run_id']}.per_user.npz") as data:
        return pd.DataFrame({k: data[k] for k in data.files})


def metric_names(runs):
    """The test metrics the runs report, the main ones first."""
    names = []
    for record in runs:
        for name in (record.get("test_result") or {}):
            if name not in names:
                names.append(name)
    return [m for m in MAIN_METRICS if m in names] + [m for m in names if m not in MAIN_METRICS]


def summarize(runs):
    """One row per group (model label plus cell): mean and std over seeds of every test metric."""
    ok = [r for r in runs if r["status"] == "ok"]
    metrics = metric_names(ok)
    rows = []
    for group in dict.fromkeys(r["group"] for r in ok):
        members = [r for r in ok if r["group"] == group]
        row = {"label": group, "model": members[0]["model"], "n_seeds": len(members),
               "seeds": sorted(r["seed"] for r in members), **members[0]["cell"]}
        for metric in metrics:
            values = np.array([r["test_result"][metric] for r in members], dtype=float)
            row[f"{metric}_mean"] = values.mean()
            row[f"{metric}_std"] = values.std(ddof=1) if len(values) > 1 else 0.0
        row["train_seconds_mean"] = float(np.mean([r["train_seconds"] for r in members]))
        row["epochs_mean"] = float(np.mean([len(r["history"]) for r in members]))
        rows.append(row)
    return pd.DataFrame(rows)


def _user_means(out_dir, members, metrics):
    """Per-user metrics averaged over the seeds given, indexed by user id."""
    tables = [load_per_user(out_dir, r).set_index("user_id")[list(metrics)] for r in members]
    return pd.concat(tables).groupby(level=0).mean()


def paired_tests(a, b):
    """Paired t-test and Wilcoxon signed-rank test of a - b over users (scipy.stats).

    Effect sizes: Cohen's d_z (mean difference / std of the differences) and the matched-pairs
    rank-biserial correlation r = (W+ - W-) / (W+ + W-), in [-1, 1].
    """
    diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    out = {"n_users": int(len(diff)), "mean_diff": float(diff.mean()) if len(diff) else float("nan")}
    nonzero = diff[diff != 0]
    if len(nonzero) == 0:
        return {**out, "t": 0.0, "p_t": 1.0, "d_z": 0.0, "W": 0.0, "p_wilcoxon": 1.0, "r_rb": 0.0}
    t = stats.ttest_rel(a, b)
    sd = diff.std(ddof=1)
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


def significance(out_dir, runs, reference, metrics=MAIN_METRICS):
    """Each group against the reference label, per metric, on the seeds both ran.

    Per-user metrics are first averaged over those seeds, so each user is one pair.
    """
    ok = [r for r in runs if r["status"] == "ok"]
    groups = list(dict.fromkeys(r["group"] for r in ok))
    ref_runs = [r for r in ok if r["group"] == reference]
    if not ref_runs:
        return pd.DataFrame()
    metrics = [m for m in metrics if m in metric_names(ok)]
    rows = []
    for group in groups:
        if group == reference:
            continue
        members = [r for r in ok if r["group"] == group]
        seeds = sorted({r["seed"] for r in members} & {r["seed"] for r in ref_runs})
        if not seeds:
            continue
        ours = _user_means(out_dir, [r for r in members if r["seed"] in seeds], metrics)
        theirs = _user_means(out_dir, [r for r in ref_runs if r["seed"] in seeds], metrics)
        users = ours.index.intersection(theirs.index)
        for metric in metrics:
            test = paired_tests(ours.loc[users, metric].to_numpy(), theirs.loc[users, metric].to_numpy())
            rows.append({"label": group, "reference": reference, "metric": metric, "n_seeds": len(seeds), **test})
    return pd.DataFrame(rows)


def bucket_edges(out_dir, runs, quantiles):
    """Activity values at the given quantiles over every evaluated user of every run."""
    activity = np.concatenate([load_per_user(out_dir, r)["activity"].to_numpy() for r in runs if r["status"] == "ok"])
    return np.unique(np.quantile(activity, quantiles, method="lower")).tolist(), activity


def activity_buckets(out_dir, runs, quantiles=(0.25, 0.5, 0.75)):
    """Test metrics per bucket of training activity |x_u|, per group (mean over users and seeds).

    Buckets are cut at the quantiles of |x_u| over the evaluated users: (-inf, q1], (q1, q2], ...
    """
    ok = [r for r in runs if r["status"] == "ok"]
    if not ok:
        return pd.DataFrame()
    edges, activity = bucket_edges(out_dir, ok, quantiles)
    bounds = [int(activity.min()) - 1] + [int(e) for e in edges] + [int(activity.max())]
    labels = [f"[{lo + 1}, {hi}]" for lo, hi in zip(bounds[:-1], bounds[1:])]
    metrics = metric_names(ok)
    rows = []
    for group in dict.fromkeys(r["group"] for r in ok):
        tables = [load_per_user(out_dir, r) for r in ok if r["group"] == group]
        table = pd.concat(tables)
        index = np.searchsorted(np.asarray(edges), table["activity"].to_numpy(), side="left")
        n_seeds = len(tables)
        for i, label in enumerate(labels):
            part = table[index == i]
            if part.empty:
                continue
            rows.append({"label": group, "bucket": label, "bucket_index": i,
                         "n_users": int(round(len(part) / n_seeds)),
                         **{m: float(part[m].mean()) for m in metrics}})
    return pd.DataFrame(rows)
