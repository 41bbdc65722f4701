"""Sweeps on the real ml-100k: per-user metrics, tables, significance, buckets, skip-and-resume,
failures recorded, determinism, and bad specs rejected before anything runs."""

import json
import sys

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from recbole_beta.experiments import analysis
from recbole_beta.experiments.cli import main
from recbole_beta.experiments.report import write_report
from recbole_beta.experiments.runner import run_sweep
from recbole_beta.experiments.spec import load_spec
from recbole_beta.quick_start import run_recbole_beta

FAST = {"epochs": 2, "state": "WARNING"}


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
        "config": FAST,
        "models": ["AnnealedBetaMultVAE", {"model": "ScaledBetaMultVAE", "label": "Scaled", "config": {"gamma": 0.001}},
                   "Pop"],
        "reference": "AnnealedBetaMultVAE",
        **extra,
    }


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    spec = load_spec(spec_dict())
    ran, failed = run_sweep(spec, out, progress=False)
    assert (ran, failed) == (6, 0)
    write_report(out, spec, figures=True)
    return out, spec


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

    report = (out / "report.md").read_text()
    assert "| Scaled | 2 |" in report and "Paired tests against AnnealedBetaMultVAE" in report
    assert json.loads((out / "summary.json").read_text())["failed"] == []
    for stem in ("metrics", "training_curves", "activity_buckets", "beta_schedules"):
        assert (out / "figures" / f"{stem}.png").stat().st_size > 0 and (out / "figures" / f"{stem}.svg").is_file()
        assert f"figures/{stem}.png" in report


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
    assert -1 <= row["r_rb"] <= 1


def test_paired_tests_by_hand():
    a, b = np.array([0.5, 0.4, 0.3, 0.9]), np.array([0.4, 0.4, 0.1, 0.6])
    result = analysis.paired_tests(a, b)
    diff = a - b  # 0.1, 0, 0.2, 0.3: three non-zero, all positive
    assert result["mean_diff"] == pytest.approx(0.15)
    assert result["d_z"] == pytest.approx(0.15 / np.std(diff, ddof=1))
    assert result["r_rb"] == pytest.approx(1.0)
    assert analysis.paired_tests(a, a)["p_t"] == 1.0


def test_activity_buckets_partition_the_users(sweep):
    out, spec = sweep
    buckets = pd.read_csv(out / "activity_buckets.csv")
    assert sorted(buckets["bucket_index"].unique()) == [0, 1, 2, 3]
    for label, part in buckets.groupby("label"):
        assert part["n_users"].sum() == pytest.approx(943, abs=4)
    # the bucket means, weighted by users, give back the overall mean
    runs = [r for r in analysis.load_runs(out) if r["label"] == "Scaled"]
    overall = np.mean([analysis.load_per_user(out, r)["ndcg@100"].mean() for r in runs])
    part = buckets[buckets["label"] == "Scaled"]
    assert (part["ndcg@100"] * part["n_users"]).sum() / part["n_users"].sum() == pytest.approx(overall, rel=0.01)


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
        {"model": "BetaMultVAE", "label": "broken", "config": {"topk": [5000]}}, "Pop"]))
    assert run_sweep(spec, tmp_path, progress=False) == (2, 1)
    runs = {r["label"]: r for r in analysis.load_runs(tmp_path)}
    assert runs["broken"]["status"] == "failed" and "topk=[5000] is not allowed" in runs["broken"]["error"]
    assert runs["Pop"]["status"] == "ok"
    write_report(tmp_path, spec, figures=False)
    assert "## Failed runs" in (tmp_path / "report.md").read_text()


def test_same_seed_same_numbers(tmp_path):
    spec = load_spec(spec_dict(seeds=[7], models=["CyclicalBetaMultVAE"], reference=None))
    run_sweep(spec, tmp_path / "a", progress=False)
    run_sweep(spec, tmp_path / "b", progress=False)
    (a,), (b,) = analysis.load_runs(tmp_path / "a"), analysis.load_runs(tmp_path / "b")
    assert a["test_result"] == b["test_result"] and a["history"][-1]["beta"] == b["history"][-1]["beta"]
    pa, pb = analysis.load_per_user(tmp_path / "a", a), analysis.load_per_user(tmp_path / "b", b)
    pd.testing.assert_frame_equal(pa, pb)


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
    ({"models": [{"model": "ScaledBetaMultVAE", "config": {"gamma": -1}}]}, "models: ScaledBetaMultVAE: gamma=-1 is not allowed"),
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
