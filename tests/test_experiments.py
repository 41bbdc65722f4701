"""Sweeps on the real ml-100k: per-user metrics, tables, significance, buckets, skip-and-resume,
failures recorded, determinism, and bad specs rejected before anything runs."""

import json
import sys

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from conftest import SWEEP_FAST, drawn_text, plain_tables
from recbole_beta.experiments import analysis
from recbole_beta.experiments.cli import main
from recbole_beta.experiments.report import write_report
from recbole_beta.experiments.runner import run_sweep
from recbole_beta.experiments.spec import load_spec
from recbole_beta.quick_start import run_recbole_beta


@pytest.mark.slow
def test_per_user_means_are_recboles_metrics(fast):
    result = run_recbole_beta("ScaledBetaMultVAE", "ml-100k", config_dict=fast, per_user=True)
    table = result["per_user"]
    assert len(table["user_id"]) == 943 and len(set(table["user_id"].tolist())) == 943
    assert set(result["test_result"]) <= set(table)
    for metric, value in result["test_result"].items():
        assert round(float(np.mean(table[metric])), 4) == value, metric
    assert (table["activity"] > 0).all()


def spec_dict(**extra):
    return {
        "name": "tiny",
        "dataset": "ml-100k",
        "seeds": [2020, 2021],
        "config": SWEEP_FAST,
        "models": ["AnnealedBetaMultVAE", {"model": "ScaledBetaMultVAE", "label": "Scaled", "config": {"gamma": 0.001}},
                   "Pop"],
        "reference": "AnnealedBetaMultVAE",
        **extra,
    }


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, module_workdir):
    out = tmp_path_factory.mktemp("sweep")
    spec = load_spec(spec_dict())
    ran, failed = run_sweep(spec, out, progress=False)
    assert (ran, failed) == (6, 0)
    write_report(out, spec, figures=True)
    return out, spec


@pytest.mark.slow
def test_sweep_writes_every_run_and_the_tables(sweep):
    out, spec = sweep
    runs = analysis.load_runs(out)
    assert len(runs) == 6 and all(r["status"] == "ok" for r in runs)
    assert all(r["history"] and r["train_seconds"] > 0 and "ndcg@100" in r["test_result"] for r in runs)
    assert all((out / "runs" / f"{r['run_id']}.per_user.npz").is_file() for r in runs)

    summary = pd.read_csv(out / "summary.csv")
    assert list(summary["label"]) == ["AnnealedBetaMultVAE", "Scaled", "Pop"]
    scaled = [r["test_result"]["ndcg@100"] for r in runs if r["label"] == "Scaled"]
    row = summary.set_index("label").loc["Scaled"]
    assert row["ndcg@100_mean"] == pytest.approx(np.mean(scaled))
    assert row["ndcg@100_std"] == pytest.approx(np.std(scaled, ddof=1))
    assert row["n_seeds"] == 2

    report = plain_tables((out / "report.md").read_text())
    assert "| Scaled | 2 |" in report and "Verdicts against AnnealedBetaMultVAE" in report
    assert json.loads((out / "summary.json").read_text())["failed"] == []
    text = {}
    for stem in ("metrics", "paired_differences", "training_curves", "activity_buckets", "beta_schedules"):
        assert (out / "figures" / f"{stem}.png").stat().st_size > 0
        text[stem] = drawn_text(out / "figures" / f"{stem}.svg")
        assert f"figures/{stem}.png" in report
    # each figure draws this sweep: its labels, its reference, what it is of
    assert {"AnnealedBetaMultVAE", "Scaled", "Pop", "ndcg@100", "recall@20"} <= set(text["metrics"])
    assert {"Scaled", "Pop", "ndcg@100", "Δ (method - AnnealedBetaMultVAE), 95% CI"} <= set(text["paired_differences"])
    assert {"AnnealedBetaMultVAE", "Scaled", "reconstruction loss", "mean beta"} <= set(text["training_curves"])
    assert {"AnnealedBetaMultVAE", "Scaled", "Pop", "Test ndcg@100 per user-activity bucket"} <= set(
        text["activity_buckets"])
    titles = [t.split(":")[0] for t in text["beta_schedules"] if ":" in t]
    assert [t for t in titles if t in ("annealed", "cyclical", "controlled (PI)")] == [
        "annealed", "cyclical", "controlled (PI)"]


@pytest.mark.slow
def test_significance_is_scipys_paired_tests_over_users(sweep):
    out, _ = sweep
    sig = pd.read_csv(out / "significance.csv")
    assert set(sig["label"]) == {"Scaled", "Pop"} and set(sig["metric"]) == {"ndcg@100", "recall@20", "recall@50"}
    runs = analysis.load_runs(out)

    def user_means(label):
        tables = [analysis.load_per_user(out, r).set_index("user_id") for r in runs if r["label"] == label]
        return pd.concat(tables).groupby(level=0)["ndcg@100"].mean()

    pop, ref = user_means("Pop"), user_means("AnnealedBetaMultVAE")
    row = sig[(sig["label"] == "Pop") & (sig["metric"] == "ndcg@100")].iloc[0]
    assert row["n_users"] == 943
    assert row["p_t"] == pytest.approx(stats.ttest_rel(pop, ref.loc[pop.index]).pvalue)
    assert row["p_wilcoxon"] == pytest.approx(stats.wilcoxon(pop, ref.loc[pop.index]).pvalue)
    assert row["mean_diff"] == pytest.approx((pop - ref.loc[pop.index]).mean())
    # the matched-pairs rank-biserial correlation from its definition: (W+ - W-) / (W+ + W-), zeros dropped
    diff = (pop - ref.loc[pop.index]).to_numpy()
    nonzero = diff[diff != 0]
    ranks = stats.rankdata(np.abs(nonzero))
    assert row["r_rb"] == pytest.approx((ranks[nonzero > 0].sum() - ranks[nonzero < 0].sum()) / ranks.sum())
    ci = stats.ttest_rel(pop, ref.loc[pop.index]).confidence_interval(0.95)
    # the per-user interval is the secondary one; ci_low/ci_high count the training runs too
    assert (row["ci_low_users"], row["ci_high_users"]) == (pytest.approx(ci.low), pytest.approx(ci.high))
    assert row["ci_high"] - row["ci_low"] >= row["ci_high_users"] - row["ci_low_users"] - 1e-12
    # Benjamini-Hochberg over every comparison in the table, each test on its own
    np.testing.assert_allclose(sig["p_t_adj"], stats.false_discovery_control(sig["p_t"]))
    np.testing.assert_allclose(sig["p_wilcoxon_adj"], stats.false_discovery_control(sig["p_wilcoxon"]))


def test_paired_tests_by_hand():
    a, b = np.array([0.5, 0.4, 0.3, 0.9]), np.array([0.4, 0.4, 0.1, 0.6])
    result = analysis.paired_tests(a, b)
    diff = a - b  # 0.1, 0, 0.2, 0.3: three non-zero, all positive
    assert result["mean_diff"] == pytest.approx(0.15)
    assert result["d_z"] == pytest.approx(0.15 / np.std(diff, ddof=1))
    assert result["r_rb"] == pytest.approx(1.0)
    half = stats.t.ppf(0.975, df=3) * np.std(diff, ddof=1) / np.sqrt(4)
    assert (result["ci_low"], result["ci_high"]) == (pytest.approx(0.15 - half), pytest.approx(0.15 + half))
    same = analysis.paired_tests(a, a)
    assert same["p_t"] == 1.0 and (same["ci_low"], same["ci_high"]) == (0.0, 0.0)
    # every difference the same: no spread, the interval is the point
    shifted = analysis.paired_tests(a + 0.01, a)
    assert shifted["ci_low"] == pytest.approx(0.01) and shifted["ci_high"] == pytest.approx(0.01)


@pytest.mark.slow
def test_activity_buckets_partition_the_users(sweep):
    out, spec = sweep
    buckets = pd.read_csv(out / "activity_buckets.csv")
    assert sorted(buckets["bucket_index"].unique()) == [0, 1, 2, 3]
    runs = analysis.load_runs(out)
    for label, part in buckets.groupby("label", sort=False):
        part = part.sort_values("bucket_index")
        # every (user, run) row of the method's runs, and the activity range each bucket names: [lowest, highest]
        rows = pd.concat([analysis.load_per_user(out, r) for r in runs if r["label"] == label], ignore_index=True)
        ranges = [tuple(float(v) for v in name.strip("[]").split(", ")) for name in part["bucket"]]
        assert all(high < next_low for (_, high), (next_low, _) in zip(ranges, ranges[1:])), ranges
        members = [rows[(rows["activity"] >= low) & (rows["activity"] <= high)] for low, high in ranges]
        assert sum(len(m) for m in members) == len(rows) == 2 * 943  # each row in exactly one bucket
        assert part["n_users"].tolist() == [m["user_id"].nunique() for m in members]
        assert part["ndcg@100"].tolist() == pytest.approx([m["ndcg@100"].mean() for m in members], rel=1e-12)
        # the bucket means, weighted by their rows, give back the overall mean
        sizes = np.array([len(m) for m in members])
        assert (part["ndcg@100"] * sizes).sum() / sizes.sum() == pytest.approx(rows["ndcg@100"].mean(), rel=1e-12)


@pytest.mark.slow
def test_rerun_skips_finished_runs_and_retries_missing_ones(sweep):
    out, spec = sweep
    assert run_sweep(spec, out, progress=False) == (0, 0)
    victim = sorted((out / "runs").glob("Pop*seed2021*.json"))[0]
    before = json.loads(victim.read_text())["test_result"]
    victim.unlink()
    assert run_sweep(spec, out, progress=False) == (1, 0)
    assert json.loads(victim.read_text())["test_result"] == before  # same seed, same numbers


def test_a_failing_run_is_recorded_and_the_sweep_goes_on(tmp_path):
    spec = load_spec(spec_dict(seeds=[2020], reference="Pop", models=[
        {"model": "BetaMultVAE", "label": "broken", "config": {"topk": [100, 5000]}}, "Pop"]))
    assert run_sweep(spec, tmp_path, progress=False) == (2, 1)
    runs = {r["label"]: r for r in analysis.load_runs(tmp_path)}
    assert runs["broken"]["status"] == "failed" and "topk=[100, 5000] is not allowed" in runs["broken"]["error"]
    assert runs["Pop"]["status"] == "ok"
    write_report(tmp_path, spec, figures=False)
    assert "## Failed runs" in (tmp_path / "report.md").read_text()


@pytest.mark.slow
def test_same_seed_same_numbers(tmp_path):
    spec = load_spec(spec_dict(seeds=[7], models=["CyclicalBetaMultVAE"], reference=None))
    run_sweep(spec, tmp_path / "a", progress=False)
    run_sweep(spec, tmp_path / "b", progress=False)
    (a,), (b,) = analysis.load_runs(tmp_path / "a"), analysis.load_runs(tmp_path / "b")
    assert a["test_result"] == b["test_result"] and a["history"][-1]["beta"] == b["history"][-1]["beta"]
    pa, pb = analysis.load_per_user(tmp_path / "a", a), analysis.load_per_user(tmp_path / "b", b)
    pd.testing.assert_frame_equal(pa, pb)


@pytest.mark.slow
def test_ablation_grid_runs_every_cell(tmp_path):
    spec = load_spec(spec_dict(seeds=[2020], models=["BetaMultVAE"], reference=None,
                               grid={"activation": ["tanh", "relu"], "latent_dimension": [16, 32]}))
    assert len(spec.runs()) == 4
    run_sweep(spec, tmp_path, progress=False)
    write_report(tmp_path, spec, figures=False)
    summary = pd.read_csv(tmp_path / "summary.csv")
    assert sorted(zip(summary["activation"], summary["latent_dimension"])) == [
        ("relu", 16), ("relu", 32), ("tanh", 16), ("tanh", 32)]


BAD_SPECS = [
    ({"models": ["MultVAE"]}, "model='MultVAE' is not a recbole-beta or RecBole model; did you mean MultiVAE"),
    ({"config": {"epoch": 3}}, "config: unknown config key 'epoch'; did you mean 'epochs'?"),
    ({"grid": {"activation": []}}, "grid: 'activation' has no values"),
    ({"grid": {"hiden_size": [1, 2]}}, "grid: unknown config key 'hiden_size'"),
    ({"seeds": 0}, "seeds=0 is not allowed"),
    ({"models": []}, "models: give a non-empty list"),
    ({"reference": "EASE"}, "reference='EASE' is not one of the model labels"),
    ({"models": [{"model": "ScaledBetaMultVAE", "config": {"gamma": -1}}]},
     "models: ScaledBetaMultVAE: gamma=-1 is not allowed"),
]


@pytest.mark.parametrize("change,message", BAD_SPECS, ids=[m for _, m in BAD_SPECS])
def test_bad_spec_fails_before_anything_runs(tmp_path, capsys, monkeypatch, change, message):
    import yaml

    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec_dict(**change)))
    monkeypatch.setattr(sys, "argv", ["x"])
    assert main(["run", str(path), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("recbole-beta: ") and message in err and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_ablation_command_needs_a_grid(tmp_path, capsys):
    import yaml

    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec_dict()))
    assert main(["ablation", str(path), "--out", str(tmp_path / "out")]) == 2
    assert "needs a 'grid' or 'cells'" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# Analysis and report on sweep folders written by hand (no training): any per-user metric, confidence
# intervals and adjusted p-values, buckets of nearly constant activity, the protocol's activity.

MAIN = ("ndcg@100", "recall@20", "recall@50")


def fake_sweep(out, activity, labels=("Ref", "A", "B"), seeds=(1, 2), metrics=MAIN, protocol=None):
    """Run records and per-user tables as run_sweep writes them; metrics random, A a little better."""
    rng = np.random.default_rng(0)
    activity = np.asarray(activity)
    (out / "runs").mkdir(parents=True)
    for index, label in enumerate(labels):
        for seed in seeds:
            table = {"user_id": np.arange(1, len(activity) + 1), "activity": activity}
            for metric in metrics:
                table[metric] = np.clip(rng.uniform(0, 0.8, len(activity)) + 0.02 * (label == "A"), 0, 1)
            run_id = f"{label}__seed{seed}"
            np.savez_compressed(out / "runs" / f"{run_id}.per_user.npz", **table)
            config = {"epochs": 1, **({"eval_protocol": protocol} if protocol else {})}
            record = {"run_id": run_id, "index": index, "label": label, "group": label, "model": "Pop", "seed": seed,
                      "cell": {}, "config": config, "dataset": "fake", "status": "ok", "best_valid_score": 0.1,
                      "best_valid_result": {}, "test_result": {m: float(table[m].mean()) for m in metrics},
                      "history": [{"epoch": 0, "train_loss": 1.0}], "train_seconds": 1.0, "wall_seconds": 1.0}
            (out / "runs" / f"{run_id}.json").write_text(json.dumps(record))
    spec = {"name": "fake", "dataset": "fake", "seeds": list(seeds), "config": {}, "config_files": [],
            "models": [{"label": label, "model": "Pop", "config": {}} for label in labels], "cells": [{}],
            "reference": labels[0], "activity_quantiles": [0.25, 0.5, 0.75]}
    (out / "spec.json").write_text(json.dumps(spec))
    return analysis.load_runs(out)


def test_significance_covers_every_per_user_metric(tmp_path):
    metrics = (*MAIN, "truncatedrecall@20", "truncatedrecall@50", "mrr@10")
    runs = fake_sweep(tmp_path, np.arange(5, 305), metrics=metrics)
    sig = analysis.significance(tmp_path, runs, "Ref")
    # the main metrics and the paper's Recall by default; others when asked for
    assert list(dict.fromkeys(sig["metric"])) == [*MAIN, "truncatedrecall@20", "truncatedrecall@50"]
    assert set(analysis.significance(tmp_path, runs, "Ref", metrics=["mrr@10"])["metric"]) == {"mrr@10"}
    with pytest.raises(ValueError, match="hit@5"):  # not dropped without a word
        analysis.significance(tmp_path, runs, "Ref", metrics=["ndcg@100", "hit@5"])
    buckets = analysis.activity_buckets(tmp_path, runs)
    assert {"truncatedrecall@20", "truncatedrecall@50", "mrr@10"} <= set(buckets.columns)
    write_report(tmp_path, figures=False)
    assert "| A | truncatedrecall@50 | 300 |" in plain_tables((tmp_path / "report.md").read_text())


def test_significance_on_metrics_other_than_the_main_ones(tmp_path):
    runs = fake_sweep(tmp_path, np.arange(5, 105), metrics=("ndcg@10", "hit@10"))
    sig = analysis.significance(tmp_path, runs, "Ref")
    assert set(sig["metric"]) == {"ndcg@10", "hit@10"} and len(sig) == 4


@pytest.mark.slow
def test_confidence_intervals_and_adjusted_p_values_in_the_report(tmp_path):
    runs = fake_sweep(tmp_path, np.arange(5, 405))
    write_report(tmp_path, figures=True)
    sig = pd.read_csv(tmp_path / "significance.csv")
    assert len(sig) == 6  # 2 methods x 3 metrics
    np.testing.assert_allclose(sig["p_t_adj"], stats.false_discovery_control(sig["p_t"]))
    np.testing.assert_allclose(sig["p_wilcoxon_adj"], stats.false_discovery_control(sig["p_wilcoxon"]))
    assert (sig["p_t_adj"] >= sig["p_t"]).all() and (sig["p_wilcoxon_adj"] >= sig["p_wilcoxon"]).all()
    assert ((sig["ci_low"] <= sig["mean_diff"]) & (sig["mean_diff"] <= sig["ci_high"])).all()

    def user_means(label):
        tables = [analysis.load_per_user(tmp_path, r).set_index("user_id") for r in runs if r["label"] == label]
        return pd.concat(tables).groupby(level=0)["recall@20"].mean()

    ci = stats.ttest_rel(user_means("A"), user_means("Ref")).confidence_interval(0.95)
    row = sig[(sig["label"] == "A") & (sig["metric"] == "recall@20")].iloc[0]
    assert (row["ci_low_users"], row["ci_high_users"]) == (pytest.approx(ci.low), pytest.approx(ci.high))

    report = plain_tables((tmp_path / "report.md").read_text())
    assert ("| method | metric | users | Δ | 95% CI of Δ (users) | p_t | p_t (BH) | d_z | p_W | p_W (BH) | r | "
            "MDE (users) |") in report
    assert f"[{row['ci_low_users']:+.4f}, {row['ci_high_users']:+.4f}]" in report
    assert f"[{row['ci_low']:+.4f}, {row['ci_high']:+.4f}]" in report
    assert "Benjamini-Hochberg" in report
    assert "over the 6 comparisons (2 methods x 3 metrics)" in report
    assert (tmp_path / "figures" / "paired_differences.png").stat().st_size > 0
    assert "figures/paired_differences.png" in report
    # the figure: a row per method, a panel per metric, the level of the intervals it draws
    text = drawn_text(tmp_path / "figures" / "paired_differences.svg")
    assert {"A", "B"} <= set(text) and text.count("Δ (method - Ref), 95% CI") == 3
    assert all(metric in text for metric in sig["metric"].unique())


def nearly_constant(n_low=0):
    """1,875 users who kept their 50 most-played items, 2 with 51, and n_low lighter users (10 to 49)."""
    low = np.linspace(10, 49, n_low).round() if n_low else np.array([])
    return np.concatenate([np.full(1875, 50), [51, 51], low]).astype(int)


@pytest.mark.slow
def test_buckets_of_nearly_constant_activity_hold_enough_users(tmp_path):
    runs = fake_sweep(tmp_path, nearly_constant(), labels=("Ref", "A"))
    buckets = analysis.activity_buckets(tmp_path, runs)
    sizes = buckets.drop_duplicates("bucket_index")["n_users"]
    assert sizes.sum() == 1877 and sizes.min() >= 94  # 5% of the users: no bucket of 2
    assert list(buckets["bucket"].unique()) == ["[50, 51]"]
    stats_ = analysis.activity_summary(tmp_path, runs)
    assert stats_["barely_varies"] and stats_["iqr_over_median"] == 0 and stats_["cv"] < 0.01
    write_report(tmp_path, figures=True)
    report = plain_tables((tmp_path / "report.md").read_text())
    assert "Activity barely varies" in report and "per-user scaled beta is then nearly a constant" in report
    assert "| [50, 51] (1877 users) |" in report


def test_a_tied_quantile_gets_a_bucket_of_its_own(tmp_path):
    runs = fake_sweep(tmp_path, nearly_constant(n_low=120), labels=("Ref", "A"))
    buckets = analysis.activity_buckets(tmp_path, runs).drop_duplicates("bucket_index")
    # the lighter users are not lost in the mass at 50; the 2 users at 51 join it
    assert list(zip(buckets["bucket"], buckets["n_users"])) == [("[10, 49]", 120), ("[50, 51]", 1877)]


def test_buckets_of_varied_activity_are_the_quantiles(tmp_path):
    activity = np.random.default_rng(1).integers(16, 500, 800)
    runs = fake_sweep(tmp_path, activity, labels=("Ref", "A"))
    buckets = analysis.activity_buckets(tmp_path, runs).drop_duplicates("bucket_index")
    assert len(buckets) == 4 and (buckets["n_users"] - 200).abs().max() <= 3
    assert not analysis.activity_summary(tmp_path, runs)["barely_varies"]


@pytest.mark.parametrize("protocol,measure", [(None, "training interactions |x_u|"),
                                              ("weak", "training interactions |x_u|"),
                                              ("strong", "fold-in size |x_u|")])
def test_activity_is_named_after_the_protocol(tmp_path, protocol, measure):
    runs = fake_sweep(tmp_path, np.arange(5, 305), labels=("Ref", "A"), protocol=protocol)
    buckets = analysis.activity_buckets(tmp_path, runs)
    assert set(buckets["activity_measure"]) == {measure}
    write_report(tmp_path, figures=False)
    assert f"## ndcg@100 by {measure}" in (tmp_path / "report.md").read_text()
    other = {"training interactions |x_u|", "fold-in size |x_u|"} - {measure}
    assert other.pop() not in (tmp_path / "report.md").read_text()


# --------------------------------------------------------------------------------------------------
# A failed run is retried when the sweep runs again, and its ok record replaces the failed one.


def test_a_failed_run_is_retried_and_replaced_when_it_succeeds(tmp_path):
    settings = tmp_path / "settings.yaml"
    settings.write_text("topk: [100, 5000]\n")  # more than ml-100k's items: the run fails after loading the data
    spec = load_spec(spec_dict(seeds=[2020], reference=None, models=["Pop"], config_files=[str(settings)]))
    out = tmp_path / "out"
    assert run_sweep(spec, out, progress=False) == (1, 1)
    (failed,) = analysis.load_runs(out)
    assert failed["status"] == "failed" and "topk=[100, 5000] is not allowed" in failed["error"]

    settings.write_text("topk: [10, 20, 50, 100]\n")  # the environment fixed, the spec the same
    assert run_sweep(spec, out, progress=False) == (1, 0)
    (record,) = analysis.load_runs(out)
    assert record["run_id"] == failed["run_id"] and record["status"] == "ok" and "error" not in record
    assert (out / "runs" / f"{record['run_id']}.per_user.npz").is_file()
    assert run_sweep(spec, out, progress=False) == (0, 0)  # finished now: skipped


def test_a_failed_run_fixed_in_the_spec_leaves_no_stale_failure(tmp_path):
    broken = load_spec(spec_dict(seeds=[2020], reference=None,
                                 models=[{"model": "Pop", "label": "Pop", "config": {"topk": [100, 5000]}}]))
    assert run_sweep(broken, tmp_path, progress=False) == (1, 1)
    fixed = load_spec(spec_dict(seeds=[2020], reference=None, models=[{"model": "Pop", "label": "Pop"}]))
    assert run_sweep(fixed, tmp_path, progress=False) == (1, 0)
    (record,) = analysis.load_runs(tmp_path)  # the failure of the old settings is gone
    assert record["status"] == "ok" and record["run_id"] == fixed.runs()[0].run_id
    write_report(tmp_path, fixed, figures=False)
    report = (tmp_path / "report.md").read_text()
    assert "1 runs finished, 0 failed" in report and "## Failed runs" not in report
