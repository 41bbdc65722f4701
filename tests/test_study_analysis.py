"""The study's analysis under cross-validated held-out users: folds pooled per user, TOST verdicts, the
minimum detectable effect and the corrected resampled t-test against computations by hand; spec checks;
and a live 3-fold sweep on ml-100k whose report is read back."""

import json

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats

from conftest import plain_tables
from recbole_beta.experiments import analysis
from recbole_beta.experiments.cli import main
from recbole_beta.experiments.report import write_report
from recbole_beta.experiments.spec import SpecError, load_spec

N_FOLDS, SEEDS, PER_FOLD = 3, (1, 2), 40
USERS = [f"u{i}" for i in range(N_FOLDS * PER_FOLD)]


def fold_sweep(out, shifts, margins=None, spread=0.2, seed=0):
    """Run records and per-user tables as a fold sweep writes them: label -> shift of its metrics over Ref's.

    Fold k tests users k*40 .. k*40+39 (tokens ``u<i>``; internal ids renumbered per fold, as RecBole's
    are); 100 training users a fold.
    """
    rng = np.random.default_rng(seed)
    (out / "runs").mkdir(parents=True)
    base = {(u, s): rng.uniform(0.2, 0.6) for u in USERS for s in SEEDS}
    labels = ["Ref", *shifts]
    index = 0
    for fold in range(N_FOLDS):
        tested = USERS[fold * PER_FOLD:(fold + 1) * PER_FOLD]
        for seed in SEEDS:
            for label in labels:
                shift = shifts.get(label, 0.0)
                noise = rng.normal(0, spread, len(tested)) if label != "Ref" else np.zeros(len(tested))
                ndcg = np.array([base[u, seed] for u in tested]) + shift + noise
                table = {"user_id": np.arange(1, len(tested) + 1) + fold,  # not the same user across folds
                         "activity": np.array([5 + int(u[1:]) for u in tested]), "user_token": np.array(tested),
                         "ndcg@100": ndcg, "recall@50": ndcg / 2}
                run_id = f"{label}__fold{fold}__seed{seed}"
                np.savez_compressed(out / "runs" / f"{run_id}.per_user.npz", **table)
                record = {"run_id": run_id, "index": index, "label": label, "group": label, "model": "Pop",
                          "seed": seed, "fold": fold, "cell": {}, "config": {"eval_protocol": "strong", "fold": fold},
                          "dataset": "fake", "status": "ok", "eval_protocol": "strong", "best_valid_score": 0.1,
                          "best_valid_result": {}, "test_result": {"ndcg@100": round(float(ndcg.mean()), 4)},
                          "protocol_users": {"train": 100, "valid": 10, "test": PER_FOLD},
                          "history": [{"epoch": 0, "train_loss": 1.0}], "train_seconds": 1.0, "wall_seconds": 1.0}
                (out / "runs" / f"{run_id}.json").write_text(json.dumps(record))
                index += 1
    spec = {"name": "fake", "dataset": "fake", "seeds": list(SEEDS), "config": {"heldout_folds": N_FOLDS},
            "config_files": [], "models": [{"label": label, "model": "Pop", "config": {}} for label in labels],
            "cells": [{}], "reference": "Ref", "activity_quantiles": [0.25, 0.5, 0.75], "folds": list(range(N_FOLDS)),
            "equivalence_margin": margins or {"ndcg@100": 0.05}}
    (out / "spec.json").write_text(json.dumps(spec))
    return analysis.load_runs(out)


def user_means(out, runs, label, metric="ndcg@100"):
    """By hand: each user's metric averaged over the seeds of its fold, from the run files."""
    values = {}
    for r in runs:
        if r["label"] == label:
            with np.load(out / "runs" / f"{r['run_id']}.per_user.npz") as data:
                for user, value in zip(data["user_token"], data[metric]):
                    values.setdefault(str(user), []).append(value)
    return pd.Series({u: np.mean(v) for u, v in values.items()})


@pytest.fixture
def sweep(tmp_path):
    runs = fold_sweep(tmp_path, {"Same": 0.0, "Better": 0.08, "Noisy": 0.0}, margins={"ndcg@100": 0.05})
    return tmp_path, runs


def test_folds_pool_into_one_row_per_user(sweep):
    out, runs = sweep
    write_report(out, figures=False)
    table = pd.read_csv(out / "per_user.csv", dtype={"user": str})
    ref = table[table["label"] == "Ref"].set_index("user")
    assert sorted(ref.index) == sorted(USERS)  # every user once
    for user in ("u0", "u57", "u119"):
        assert ref.loc[user, "fold"] == int(user[1:]) // PER_FOLD
        assert ref.loc[user, "n_seeds"] == 2
        assert ref.loc[user, "ndcg@100"] == pytest.approx(user_means(out, runs, "Ref")[user])
        better = table[(table["label"] == "Better") & (table["user"] == user)].iloc[0]
        assert better["ndcg@100"] == pytest.approx(user_means(out, runs, "Better")[user])
    summary = pd.read_csv(out / "summary.csv").set_index("label")
    per_seed = [np.mean([v for r in runs if r["label"] == "Better" and r["seed"] == s
                         for v in np.load(out / "runs" / f"{r['run_id']}.per_user.npz")["ndcg@100"]]) for s in SEEDS]
    assert summary.loc["Better", "ndcg@100_mean"] == pytest.approx(np.mean(per_seed))
    assert summary.loc["Better", "ndcg@100_std"] == pytest.approx(np.std(per_seed, ddof=1))
    assert (summary.loc["Better", "n_folds"], summary.loc["Better", "n_users"], summary.loc["Better", "n_seeds"]) \
        == (3, 120, 2)


def fold_matrices(out, runs, label, metric="ndcg@100"):
    """By hand: per fold, the users x seeds table of label - Ref."""
    def values(lab, fold, seed):
        record = next(r for r in runs if (r["label"], r["fold"], r["seed"]) == (lab, fold, seed))
        with np.load(out / "runs" / f"{record['run_id']}.per_user.npz") as data:
            return pd.Series(data[metric], index=data["user_token"])
    return [np.column_stack([(values(label, f, s) - values("Ref", f, s)).sort_index().to_numpy() for s in SEEDS])
            for f in range(N_FOLDS)]


def run_aware_by_hand(tables):
    """The run-aware mean, standard error and Satterthwaite df, from the two-way mean squares of each fold."""
    n = sum(len(t) for t in tables)
    users_part, run_pieces = 0.0, []
    for t in tables:
        n_f, s_f = t.shape
        user_means, seed_means = t.mean(axis=1), t.mean(axis=0)
        resid = t - user_means[:, None] - seed_means[None, :] + t.mean()
        ms_resid = (resid ** 2).sum() / ((n_f - 1) * (s_f - 1))
        users_part += (n_f / n) ** 2 * user_means.var(ddof=1) / n_f
        run_pieces.append(seed_means.var(ddof=1) - ms_resid / n_f)  # each on S - 1 = 1 df
    sigma_r2 = max(0.0, np.mean(run_pieces))
    runs_part = sigma_r2 * sum((len(t) / n) ** 2 / t.shape[1] for t in tables)
    df_users, df_runs = n - len(tables), len(tables) * (len(SEEDS) - 1)
    parts = [(v, df) for v, df in ((users_part, df_users), (runs_part, df_runs)) if v > 0]
    df = sum(v for v, _ in parts) ** 2 / sum(v ** 2 / d for v, d in parts)
    mean = np.mean(np.concatenate([t.mean(axis=1) for t in tables]))
    return mean, np.sqrt(users_part + runs_part), df


def test_paired_tests_tost_and_mde_by_hand(sweep):
    out, runs = sweep
    sig = analysis.significance(out, runs, "Ref", metrics=["ndcg@100"], margins={"ndcg@100": 0.05})
    ref = user_means(out, runs, "Ref")
    expected = {}
    for label in ("Same", "Better", "Noisy"):
        d = (user_means(out, runs, label) - ref).reindex(USERS).to_numpy()
        n, mean, sd = len(d), d.mean(), d.std(ddof=1)
        row = sig[sig["label"] == label].iloc[0]
        assert row["n_users"] == 120 and row["n_folds"] == 3 and row["n_seeds"] == 2
        assert row["mean_diff"] == pytest.approx(mean)
        # the secondary per-user test: users as if independent
        assert row["p_t"] == pytest.approx(2 * stats.t.sf(abs(mean / (sd / np.sqrt(n))), n - 1))
        # the run-aware test: users within a run and runs within a fold
        mean_r, se, df = run_aware_by_hand(fold_matrices(out, runs, label))
        assert mean_r == pytest.approx(mean)
        assert (row["se"], row["df"]) == (pytest.approx(se), pytest.approx(df))
        assert row["p_run"] == pytest.approx(2 * stats.t.sf(abs(mean / se), df))
        # TOST: the larger of the two one-sided p-values against -0.05 and +0.05
        p_low = stats.t.sf((mean + 0.05) / se, df)
        p_high = stats.t.cdf((mean - 0.05) / se, df)
        assert row["p_tost"] == pytest.approx(max(p_low, p_high))
        half = stats.t.ppf(0.95, df) * se  # the 90% interval
        assert (row["ci90_low"], row["ci90_high"]) == (pytest.approx(mean - half), pytest.approx(mean + half))
        half95 = stats.t.ppf(0.975, df) * se
        assert (row["ci_low"], row["ci_high"]) == (pytest.approx(mean - half95), pytest.approx(mean + half95))
        # MDE: (t_{0.975} + t_{0.8}) on the same df, times the same standard error
        assert row["mde"] == pytest.approx((stats.t.ppf(0.975, df) + stats.t.ppf(0.8, df)) * se)
        expected[label] = (mean - half, mean + half, 2 * stats.t.sf(abs(mean / se), df))
    adjusted = dict(zip(expected, stats.false_discovery_control([p for _, _, p in expected.values()])))
    for label, (low, high, _) in expected.items():
        verdict = ("equivalent" if -0.05 < low and high < 0.05 else
                   "different" if adjusted[label] < 0.05 else "inconclusive")
        assert sig.set_index("label").loc[label, "verdict"] == verdict
    verdicts = sig.set_index("label")["verdict"]
    assert (verdicts["Same"], verdicts["Better"]) == ("equivalent", "different")


def test_verdicts_by_their_rules():
    assert analysis.verdict(-0.004, 0.004, 0.005, 0.9) == "equivalent"
    assert analysis.verdict(0.001, 0.004, 0.005, 0.01) == "equivalent"  # real, but inside the margin
    assert analysis.verdict(0.002, 0.009, 0.005, 0.01) == "different"
    assert analysis.verdict(-0.008, 0.007, 0.005, 0.3) == "inconclusive"
    assert analysis.verdict(float("nan"), float("nan"), None, 0.01) == "different"  # no margin: no equivalence
    assert analysis.verdict(float("nan"), float("nan"), None, 0.2) == "inconclusive"


def test_corrected_resampled_ttest_by_hand(sweep):
    out, runs = sweep
    sig = analysis.significance(out, runs, "Ref", metrics=["ndcg@100"], margins={"ndcg@100": 0.05})

    def run_mean(label, fold, seed):
        record = next(r for r in runs if (r["label"], r["fold"], r["seed"]) == (label, fold, seed))
        return np.load(out / "runs" / f"{record['run_id']}.per_user.npz")["ndcg@100"].mean()

    # the seeds retrain on the same folds: averaged within each fold, the test runs over the 3 fold means
    d = np.array([np.mean([run_mean("Better", f, s) - run_mean("Ref", f, s) for s in SEEDS]) for f in range(N_FOLDS)])
    j = len(d)
    t = d.mean() / np.sqrt((1 / j + PER_FOLD / 100) * d.var(ddof=1))  # n_test / n_train = 40 / 100
    row = sig[sig["label"] == "Better"].iloc[0]
    assert row["n_runs"] == 3
    assert row["t_nb"] == pytest.approx(t)
    assert row["p_nb"] == pytest.approx(2 * stats.t.sf(abs(t), j - 1))
    # smaller than the naive t over the same three differences: the correction widens the variance
    assert abs(row["t_nb"]) < abs(stats.ttest_1samp(d, 0).statistic)
    np.testing.assert_allclose(sig["p_nb_adj"], stats.false_discovery_control(sig["p_nb"]))


def test_pairs_only_the_folds_and_seeds_both_ran(tmp_path):
    runs = fold_sweep(tmp_path, {"A": 0.01})
    partial = [r for r in runs if not (r["label"] == "A" and r["fold"] == 2)]
    sig = analysis.significance(tmp_path, partial, "Ref", metrics=["ndcg@100"])
    row = sig.iloc[0]
    assert (row["n_users"], row["n_folds"], row["n_runs"]) == (80, 2, 2)


@pytest.mark.slow
def test_report_shows_verdicts_and_the_resampled_test(sweep):
    out, _ = sweep
    write_report(out, figures=True)
    report = plain_tables((out / "report.md").read_text())
    assert "120 users tested, each in one fold" in report
    assert ("| method | metric | users | seeds | Δ | 95% CI of Δ | 90% CI of Δ | margin | p (BH) | verdict | MDE | "
            "sd user | sd run | df |") in report
    assert "| Same | NDCG@100 | 120 |" in report and "**equivalent**" in report and "**different**" in report
    assert "Corrected resampled t-test against Ref" in report and "| Better | NDCG@100 | 3 |" in report
    buckets = pd.read_csv(out / "activity_buckets.csv")
    assert buckets.drop_duplicates("bucket_index")["n_users"].sum() == 120  # users, not rows of runs
    sig = pd.read_csv(out / "significance.csv")
    assert {"p_tost", "verdict", "mde", "t_nb", "p_nb", "p_nb_adj", "margin", "sd_user", "sd_run", "df",
            "variance_sources", "p_run_adj", "ci_low_users"} <= set(sig.columns)


# ------------------------------------------------------------------------------------------ specs

def spec(**extra):
    return {"name": "s", "dataset": "ml-100k", "seeds": [2020], "models": ["Pop", "EASE"], "reference": "Pop",
            "config": {"eval_protocol": "strong", "heldout_folds": 3, "heldout_users": 50,
                       "metrics": ["NDCG", "Recall"], "topk": [20, 100]}, **extra}


def test_folds_all_runs_every_fold_seed_and_model():
    loaded = load_spec(spec(folds="all", equivalence_margin={"NDCG@100": 0.005}))
    runs = loaded.runs()
    assert [(r.fold, r.label) for r in runs] == [(f, m) for f in range(3) for m in ("Pop", "EASE")]
    assert all(r.config["fold"] == r.fold for r in runs) and "fold1" in runs[2].run_id
    assert loaded.equivalence_margin == {"ndcg@100": 0.005}
    assert [r.fold for r in load_spec(spec(folds=[2, 0])).runs()] == [2, 2, 0, 0]
    seeded = load_spec(spec(folds="all", seeds=[1, 2])).runs()  # seed by seed first: a stopped sweep has every user
    assert [(r.seed, r.fold, r.label) for r in seeded] == [(s, f, m) for s in (1, 2) for f in range(3)
                                                             for m in ("Pop", "EASE")]
    single = spec(config={"eval_protocol": "strong", "heldout_users": 50})
    assert load_spec(single).runs()[0].fold is None  # no folds: one split, run ids as before


@pytest.mark.parametrize("extra, message", [
    ({"folds": "all", "config": {"eval_protocol": "strong"}}, "folds='all' needs config keys eval_protocol: strong "
                                                               "and heldout_folds: K"),
    ({"folds": [0, 3]}, "folds=[0, 3] is not allowed: give 'all' or a list of distinct fold numbers in [0, 3)"),
    ({"folds": "some"}, "folds='some' is not allowed"),
    ({"folds": "all", "equivalence_margin": {"NDCG@50": 0.01}},
     "equivalence_margin: NDCG@50 is not a per-user top-k metric the runs compute; they compute ndcg@100, ndcg@20, "
     "recall@100, recall@20"),
    ({"folds": "all", "equivalence_margin": {"ItemCoverage@20": 0.01},
      "config": {"eval_protocol": "strong", "heldout_folds": 3, "metrics": ["NDCG", "ItemCoverage"], "topk": [20]}},
     "equivalence_margin: ItemCoverage@20 is not a per-user top-k metric the runs compute; they compute ndcg@20"),
    ({"folds": "all", "equivalence_margin": {"NDCG@100": -0.01}}, "equivalence_margin: NDCG@100=-0.01 is not allowed"),
    ({"folds": "all", "equivalence_margin": {"NDCG@100": float("inf")}},
     "equivalence_margin: NDCG@100=inf is not allowed"),
    ({"folds": "all", "equivalence_margin": [0.01]},
     "equivalence_margin=[0.01] is not allowed: give a mapping of metrics to margins"),
    ({}, "heldout_folds is set but the spec has no 'folds': give folds: all"),
])
def test_bad_fold_and_margin_specs_fail_before_anything_runs(tmp_path, capsys, extra, message):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec(**extra)))
    assert main(["run", str(path), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert not (tmp_path / "out").exists()
    with pytest.raises(SpecError):
        load_spec(path)


# ------------------------------------------------------------------------------------- live check

@pytest.mark.slow
def test_a_three_fold_sweep_on_ml_100k_reaches_verdicts(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec(folds="all", equivalence_margin={"NDCG@100": 0.02, "Recall@20": 0.02},
                                        config={**spec()["config"], "state": "WARNING"})))
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), "--quiet", "--no-figures"]) == 0
    records = analysis.load_runs(out)
    assert sorted((r["fold"], r["label"]) for r in records) == [(f, m) for f in range(3) for m in ("EASE", "Pop")]
    table = pd.read_csv(out / "per_user.csv", dtype={"user": str})
    pop = table[table["label"] == "Pop"]
    assert pop["user"].is_unique and 900 < len(pop) <= 943  # every user with targets, once
    sig = pd.read_csv(out / "significance.csv").set_index("metric")
    # EASE beats Pop by far more than the margin on ml-100k
    assert sig.loc["ndcg@100", "verdict"] == "different" and sig.loc["ndcg@100", "mean_diff"] > 0.1
    assert sig.loc["recall@20", "verdict"] == "different"
    assert sig.loc["ndcg@100", "n_runs"] == 3 and np.isfinite(sig.loc["ndcg@100", "p_nb"])
    report = plain_tables((out / "report.md").read_text())
    assert "## Verdicts against Pop" in report and "| EASE | NDCG@100 |" in report


def test_a_fold_sweep_needs_every_table_to_name_its_users(tmp_path):
    """RecBole renumbers users with each fold: tables without the dataset's own ids cannot be paired."""
    from recbole_beta.experiments.report import ReportError

    runs = fold_sweep(tmp_path, {"A": 0.01})
    old = next(r for r in runs if r["label"] == "A" and r["fold"] == 1)
    path = tmp_path / "runs" / f"{old['run_id']}.per_user.npz"
    with np.load(path) as data:
        table = {k: data[k] for k in data.files if k != "user_token"}
    np.savez_compressed(path, **table)
    with pytest.raises(ReportError, match=f"{old['run_id']}.per_user.npz has no user_token"):
        write_report(tmp_path, figures=False)


def test_without_folds_old_and_new_tables_pair_by_recboles_ids(tmp_path):
    """A sweep of one split extended with new runs (tables with user_token) beside old ones (without):
    every table is read by RecBole's ids, the same in every run of one split, so no user is counted twice."""
    runs = fold_sweep(tmp_path, {"A": 0.01})
    ref_runs = [r for r in runs if r["fold"] == 0]
    for r in ref_runs:  # one split: keep fold 0's runs, without their fold
        path = tmp_path / "runs" / f"{r['run_id']}.json"
        record = json.loads(path.read_text())
        record.pop("fold")
        path.write_text(json.dumps(record))
        if r["seed"] == 1:  # an old table
            npz = tmp_path / "runs" / f"{r['run_id']}.per_user.npz"
            with np.load(npz) as data:
                table = {k: data[k] for k in data.files if k != "user_token"}
            np.savez_compressed(npz, **table)
    for r in runs:
        if r["fold"] != 0:
            (tmp_path / "runs" / f"{r['run_id']}.json").unlink()
    runs = analysis.load_runs(tmp_path)
    sig = analysis.significance(tmp_path, runs, "Ref", metrics=["ndcg@100"])
    assert sig.iloc[0]["n_users"] == PER_FOLD
    assert analysis.per_user_table(tmp_path, runs)["user"].nunique() == PER_FOLD


def test_an_incomplete_fold_sweep_is_flagged_and_its_buckets_pair_shared_runs(tmp_path):
    runs = fold_sweep(tmp_path, {"A": 0.01})
    missing = next(r for r in runs if (r["label"], r["fold"], r["seed"]) == ("A", 2, 1))
    (tmp_path / "runs" / f"{missing['run_id']}.json").unlink()
    runs = analysis.load_runs(tmp_path)
    write_report(tmp_path, figures=False)
    report = (tmp_path / "report.md").read_text()
    assert "**Incomplete sweep:** A lack runs" in report
    summary = pd.read_csv(tmp_path / "summary.csv").set_index("label")
    assert summary.loc["A", "n_users"] == 2 * PER_FOLD and summary.loc["Ref", "n_users"] == 3 * PER_FOLD
    # within the buckets, as in the paired tests, only the (fold, seed) runs both have count: fold 2 of
    # A has seed 2 alone, so its users pair on seed 2's runs of Ref only
    diffs = analysis.bucket_differences(tmp_path, runs, "Ref", "ndcg@100")
    sig = analysis.significance(tmp_path, runs, "Ref", metrics=["ndcg@100"]).iloc[0]
    assert diffs["n_users"].sum() == sig["n_users"] == 3 * PER_FOLD
    shared = [r for r in runs if not (r["fold"] == 2 and r["seed"] == 1)]
    users = analysis.per_user_table(tmp_path, shared, ["ndcg@100"])
    d = (users[users["label"] == "A"].set_index("user")["ndcg@100"]
         - users[users["label"] == "Ref"].set_index("user")["ndcg@100"])
    assert sig["mean_diff"] == pytest.approx(d.mean())
    weighted = (diffs["mean_diff"] * diffs["n_users"]).sum() / diffs["n_users"].sum()
    assert weighted == pytest.approx(d.mean())
