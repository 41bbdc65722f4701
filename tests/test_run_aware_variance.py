"""Run-aware intervals: the variance of a cross-validated mean difference counts users and training runs."""

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from recbole_beta.experiments import variance
from recbole_beta.experiments.analysis import run_aware_columns, significance
from recbole_beta.experiments.stats import paired_tests


def _study(rng, folds=5, seeds=3, users=150, sd_run=0.006, sd_user=0.08, sd_resid=0.02, mu=0.003):
    """One simulated study's paired differences d[u, s] = mu + b_u + r_fs + e_us, fold by fold."""
    return [mu + rng.normal(0, sd_user, (users, 1)) + rng.normal(0, sd_run, (1, seeds))
            + rng.normal(0, sd_resid, (users, seeds)) for _ in range(folds)]


def test_the_run_aware_95_interval_covers_the_true_difference_95_times_in_100():
    rng = np.random.default_rng(20261207)
    covered, covered_users = [], []
    for _ in range(1000):
        tables = _study(rng)
        row = run_aware_columns([variance.FoldTable(t) for t in tables])
        covered.append(row["ci_low"] <= 0.003 <= row["ci_high"])
        # the per-user test: each user's seed-averaged difference, users as if independent
        per_user = np.concatenate([t.mean(axis=1) for t in tables])
        test = paired_tests(per_user, np.zeros_like(per_user))
        covered_users.append(test["ci_low"] <= 0.003 <= test["ci_high"])
    assert 0.93 <= np.mean(covered) <= 0.97
    # the per-user interval loses the run term: about 92-93% here
    assert np.mean(covered_users) <= np.mean(covered) - 0.015


def test_with_the_run_part_dominating_the_interval_stays_calibrated():
    rng = np.random.default_rng(7)
    covered = []
    for _ in range(600):
        tables = _study(rng, folds=5, seeds=3, users=150, sd_run=0.02, sd_user=0.05)
        row = run_aware_columns([variance.FoldTable(t) for t in tables])
        covered.append(row["ci_low"] <= 0.003 <= row["ci_high"])
    assert 0.93 <= np.mean(covered) <= 0.97


def test_components_by_hand():
    # fold 0: 3 users x 2 seeds; fold 1: 2 users x 2 seeds
    f0 = np.array([[0.10, 0.20], [0.00, 0.20], [0.20, 0.50]])
    f1 = np.array([[0.30, 0.10], [0.10, 0.10]])
    c = variance.components([variance.FoldTable(f0), variance.FoldTable(f1)])
    # the mean over the 5 users of each user's seed average: (0.15 + 0.10 + 0.35 + 0.20 + 0.10) / 5
    assert c.mean == pytest.approx(0.18)
    # fold 0: user means 0.15, 0.10, 0.35 (var 0.0175); seed means 0.10, 0.30 (var 0.02);
    # residuals +-0.05, +-0.00, -+0.05 ... residual SS = 4 * 0.05^2 = 0.01 on 2 df: MS 0.005
    vu0, vs0, ms0 = variance.FoldTable(f0).mean_squares()
    assert (vu0, vs0, ms0) == pytest.approx((0.0175, 0.02, 0.005))
    # fold 1: user means 0.20, 0.10 (var 0.005); seed means 0.20, 0.10 (var 0.005); residual SS 0.01 on 1 df
    vu1, vs1, ms1 = variance.FoldTable(f1).mean_squares()
    assert (vu1, vs1, ms1) == pytest.approx((0.005, 0.005, 0.01))
    # sigma_r^2 pooled over 1 + 1 df: ((0.02 - 0.005/3) + (0.005 - 0.01/2)) / 2 = 0.0091667
    assert c.sd_run ** 2 == pytest.approx((0.02 - 0.005 / 3 + 0.0) / 2)
    # variance: w = 3/5, 2/5: w^2 var_u / N + sigma_r^2 w^2 / S
    users = 0.36 * 0.0175 / 3 + 0.16 * 0.005 / 2
    runs = c.sd_run ** 2 * (0.36 / 2 + 0.16 / 2)
    assert c.se ** 2 == pytest.approx(users + runs)
    # Satterthwaite: (users + runs)^2 / (users^2 / 3 + runs^2 / 2)
    assert c.df == pytest.approx((users + runs) ** 2 / (users ** 2 / 3 + runs ** 2 / 2))
    low, high = variance.interval(c, 0.95)
    assert high - c.mean == pytest.approx(stats.t.ppf(0.975, c.df) * c.se)


def test_one_seed_per_fold_says_the_training_variance_is_not_estimated():
    rng = np.random.default_rng(1)
    row = run_aware_columns([variance.FoldTable(rng.normal(0, 0.1, (50, 1))) for _ in range(3)])
    assert row["variance_sources"] == variance.USERS_ONLY == "users only: training variance not estimated"
    assert row["df_runs"] == 0 and np.isnan(row["sd_run"])


def test_the_planner_needs_more_seeds_for_a_larger_run_variance_and_none_when_users_dominate():
    rng = np.random.default_rng(3)
    small = variance.components([variance.FoldTable(t) for t in _study(rng, sd_run=0.002, sd_user=0.03, mu=0.0)])
    large = variance.components([variance.FoldTable(t) for t in _study(rng, sd_run=0.01, sd_user=0.03, mu=0.0)])
    s_small = variance.seeds_needed(small, 0.005, 0.05, 0.8, "equivalence")
    s_large = variance.seeds_needed(large, 0.005, 0.05, 0.8, "equivalence")
    assert s_small is not None and s_large is not None and s_small < s_large
    se, df = variance.projected(large, s_large)
    assert se * (stats.t.ppf(0.95, df) + stats.t.ppf(0.9, df)) <= 0.005
    se, df = variance.projected(large, s_large - 1)
    assert se * (stats.t.ppf(0.95, df) + stats.t.ppf(0.9, df)) > 0.005
    # a margin below what the users alone allow is never reached
    assert variance.seeds_needed(large, 0.0005, 0.05, 0.8, "equivalence") is None


def _write_sweep(root, d_by_fold, base=0.4):
    """A sweep folder of two groups (B the reference) whose per-user differences are ``d_by_fold``."""
    runs = root / "runs"
    runs.mkdir(parents=True)
    for fold, d in enumerate(d_by_fold):
        users, seeds = d.shape
        for s in range(seeds):
            for group, values in (("A", base + d[:, s]), ("B", np.full(users, base))):
                run_id = f"{group}__fold{fold}__seed{s}"
                record = {"run_id": run_id, "index": 0, "label": group, "group": group, "model": "X", "seed": s,
                          "cell": {}, "fold": fold, "status": "ok", "test_result": {},
                          "protocol_users": {"test": users, "train": 4 * users}, "history": [], "train_seconds": 1.0}
                (runs / f"{run_id}.json").write_text(json.dumps(record))
                np.savez(runs / f"{run_id}.per_user.npz", user_id=np.arange(users),
                         user_token=np.array([f"u{fold}_{u}" for u in range(users)]),
                         activity=np.arange(users) + 5, **{"ndcg@100": values})
    (root / "spec.json").write_text(json.dumps({"name": "fake", "dataset": "fake", "reference": "B"}))
    return [json.loads(p.read_text()) for p in sorted(runs.glob("*.json"))]


def test_significance_reports_the_run_aware_interval_and_verdict(tmp_path):
    rng = np.random.default_rng(11)
    d = [0.002 + rng.normal(0, 0.05, (40, 1)) + rng.normal(0, 0.01, (1, 4)) + rng.normal(0, 0.01, (40, 4))
         for _ in range(3)]
    records = _write_sweep(tmp_path, d)
    table = significance(tmp_path, records, "B", margins={"ndcg@100": 0.005})
    row = table.iloc[0]
    c = variance.components([variance.FoldTable(x) for x in d])
    assert row["mean_diff"] == pytest.approx(np.mean([x.mean(axis=1) for x in d]))
    assert (row["ci_low"], row["ci_high"]) == pytest.approx(variance.interval(c, 0.95))
    assert row["sd_run"] == pytest.approx(c.sd_run) and row["df"] == pytest.approx(c.df)
    # the per-user interval is narrower: it leaves the runs out
    assert row["ci_high"] - row["ci_low"] > row["ci_high_users"] - row["ci_low_users"]
    low90, high90 = variance.interval(c, 0.90)
    expected = "equivalent" if -0.005 < low90 and high90 < 0.005 else (
        "different" if variance.p_value(c) < 0.05 else "inconclusive")
    assert row["verdict"] == expected
    assert list(table.columns[:9]) == ["label", "reference", "metric", "n_seeds", "n_users", "n_folds", "mean_diff",
                                       "ci_low", "ci_high"]
    assert row["variance_sources"] == variance.USERS_AND_RUNS


def test_a_verdict_from_users_only_would_be_equivalent_but_the_runs_make_it_inconclusive(tmp_path):
    # a large shared run effect: users agree closely, seeds disagree
    rng = np.random.default_rng(5)
    d = [rng.normal(0, 0.01, (200, 1)) + np.array([[0.008, -0.009, 0.007]]) * (1 if f % 2 else -1)
         + rng.normal(0, 0.001, (200, 3)) for f in range(3)]
    records = _write_sweep(tmp_path, d)
    row = significance(tmp_path, records, "B", margins={"ndcg@100": 0.005}).iloc[0]
    frame = pd.DataFrame({"u": np.concatenate([x.mean(axis=1) for x in d])})
    users_only = stats.ttest_1samp(frame["u"], 0).confidence_interval(0.90)
    assert -0.005 < users_only.low and users_only.high < 0.005  # the old verdict: equivalent
    assert row["verdict"] == "inconclusive"
    assert row["ci90_low"] < -0.005 or row["ci90_high"] > 0.005


def test_plan_prints_the_seeds_each_comparison_needs(tmp_path, capsys):
    from recbole_beta.experiments.cli import main

    rng = np.random.default_rng(2)
    d = [rng.normal(0, 0.03, (150, 1)) + rng.normal(0, 0.006, (1, 3)) + rng.normal(0, 0.01, (150, 3))
         for _ in range(5)]
    _write_sweep(tmp_path / "pilot", d)
    code = main(["plan", str(tmp_path / "pilot"), "--margin", "0.005", "--metric", "NDCG@100",
                 "--csv", str(tmp_path / "plan.csv")])
    out = capsys.readouterr().out
    assert code == 0
    c = variance.components([variance.FoldTable(x) for x in d])
    equivalence = variance.seeds_needed(c, 0.005, 0.05, 0.8, "equivalence")
    difference = variance.seeds_needed(c, 0.005, 0.05, 0.8, "difference")
    # 5 folds x seeds x 1 s a run (the records' train_seconds)
    hours = max(equivalence, difference) * 5 / 3600
    assert (f"A vs B, ndcg@100 at margin 0.005: equivalence {equivalence}, difference {difference} "
            f"(pilot: 3 seeds, sd run {c.sd_run:.4f}, sd user {c.sd_user:.4f}; {hours:.1f} h") in out
    table = pd.read_csv(tmp_path / "plan.csv")
    assert table.loc[0, "seeds_equivalence"] == equivalence and table.loc[0, "folds"] == 5


def test_plan_refuses_a_pilot_with_one_seed_and_a_bad_margin_in_one_line(tmp_path, capsys):
    from recbole_beta.experiments.cli import main

    rng = np.random.default_rng(4)
    _write_sweep(tmp_path / "one", [rng.normal(0, 0.05, (30, 1)) for _ in range(3)])
    assert main(["plan", str(tmp_path / "one"), "--margin", "0.005"]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "one seed per fold" in err
    assert main(["plan", str(tmp_path / "one"), "--margin", "-1"]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--margin '-1' is not allowed" in err


def test_the_report_repeats_the_plan_the_spec_was_run_under(tmp_path):
    from recbole_beta.experiments.report import write_report

    rng = np.random.default_rng(8)
    _write_sweep(tmp_path, [rng.normal(0, 0.05, (30, 2)) for _ in range(2)])
    spec = {"name": "fake", "dataset": "fake", "seeds": [0, 1], "reference": "B",
            "plan": {"pilot": "docs/results/cv-ml-100k", "margin": {"NDCG@100": 0.005}, "power": 0.8}}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    write_report(tmp_path, figures=False)
    report = (tmp_path / "report.md").read_text()
    assert ("Seeds fixed before the runs by the planner (`python -m recbole_beta.experiments plan`) on the pilot "
            "`docs/results/cv-ml-100k`, at margin NDCG@100 ±0.005 and power 0.8") in report
