"""Tuned sweeps (issue 34 items 1-4): search spaces in the spec, a search per model and fold on the fold's
validation users (its test users never evaluated), one budget, ``tuning.csv`` and the report's Tuning section
with the expected maximum of n trials, resumed trial by trial; bad input refused in one line before any trial.
Live on ml-100k with tiny budgets."""

import json
import re
import shutil

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import SWEEP_FAST, drawn_text
from recbole_beta.experiments.cli import main
from recbole_beta.experiments.runner import run_sweep
from recbole_beta.experiments.spec import SpecError, load_spec
from recbole_beta.experiments.tuned import choose
from recbole_beta.experiments.tuned_report import expected_max

#: 3 folds of held-out users, 2 of them run; small validation folds; one metric at two cut-offs
PROTOCOL = {**SWEEP_FAST, "eval_protocol": "strong", "heldout_folds": 3, "heldout_users": 50,
            "metrics": ["NDCG", "Recall"], "topk": [10, 100], "valid_metric": "NDCG@100"}


def spec(**changes):
    raw = {"name": "tuned", "dataset": "ml-100k", "seeds": [2020], "folds": [0, 1], "config": dict(PROTOCOL),
           "tuning": {"algo": "random", "max_evals": 3, "seed": 7},
           "models": [{"model": "EASE", "search": {"reg_weight": "choice [5.0, 250.0, 2000.0]"}}, "Pop"]}
    raw.update(changes)
    return raw


def write_spec(path, raw):
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def trial_files(out):
    return sorted((out / "tuning").glob("*/*/trial*.json"))


def read(path):
    return json.loads(path.read_text(encoding="utf-8"))


# -------------------------------------------------------------------------------- the expected maximum

def test_expected_maximum_against_a_hand_computation():
    scores = [0.3, 0.1, 0.2]  # sorted: 0.1, 0.2, 0.3; N = 3
    assert expected_max(scores, 1) == pytest.approx(0.2)  # the mean
    # n = 2: 0.1 (1/9) + 0.2 (4/9 - 1/9) + 0.3 (1 - 4/9)
    assert expected_max(scores, 2) == pytest.approx(0.1 / 9 + 0.2 * 3 / 9 + 0.3 * 5 / 9)
    assert expected_max(scores, 50) == pytest.approx(0.3, abs=1e-6)  # many draws: the best
    # smaller is better: the expected minimum, 0.1 (1 - 4/9) + 0.2 (3/9) + 0.3 (1/9)
    assert expected_max(scores, 2, bigger=False) == pytest.approx(0.1 * 5 / 9 + 0.2 * 3 / 9 + 0.3 / 9)
    assert [expected_max(scores, n) for n in range(1, 6)] == sorted(expected_max(scores, n) for n in range(1, 6))


def test_chosen_is_the_best_validation_score_ties_to_the_earliest():
    records = [{"trial": 3, "status": "ok", "best_valid_score": 0.5, "valid_score_bigger": True},
               {"trial": 1, "status": "failed"},
               {"trial": 2, "status": "ok", "best_valid_score": 0.5, "valid_score_bigger": True},
               {"trial": 4, "status": "ok", "best_valid_score": 0.4, "valid_score_bigger": True}]
    assert choose(records)["trial"] == 2
    smaller = [{**r, "valid_score_bigger": False} for r in records]
    assert choose(smaller)["trial"] == 4
    assert choose([{"trial": 1, "status": "failed"}]) is None


def test_the_tuning_section_of_a_sweep_without_folds(tmp_path, monkeypatch):
    from recbole_beta.experiments import tuned_report
    from recbole_beta.experiments.tuned_report import tuning_section

    figures = []
    save = tuned_report._save
    monkeypatch.setattr(tuned_report, "_save", lambda fig, *args: figures.append(fig) or save(fig, *args))

    rows = [("EASE", "", 1, {"reg_weight": 10.0}, 0.30, False), ("EASE", "", 2, {"reg_weight": 500.0}, 0.40, True),
            ("EASE", "", 3, {"reg_weight": 50.0}, "", False)]
    pd.DataFrame([{"label": a, "fold": b, "trial": c, "params": json.dumps(d), "valid_score": e, "chosen": f,
                   "seconds": 1.0} for a, b, c, d, e, f in rows]).to_csv(tmp_path / "tuning.csv", index=False)
    spec_dict = {"config": {"valid_metric": "NDCG@100"}, "tuning": {"algo": "exhaustive", "max_evals": 5, "seed": 1},
                 "models": [{"label": "EASE", "search": {"reg_weight": "choice [10.0,50.0,500.0]"}}, {"label": "Pop"}]}
    written = []
    text = "\n".join(tuning_section(tmp_path, spec_dict, written))
    assert "| EASE | `reg_weight choice [10.0,50.0,500.0]` | the whole grid: 3 points (fewer than max_evals=5) | 2/3 " \
           "| the split: reg_weight=500 |" in text
    assert "- EASE `reg_weight`: 500 (1/1)" in text and "Untuned (run at their config): Pop." in text
    assert sorted(p.name for p in written) == ["tuning_curves.png", "tuning_curves.svg"]
    # a panel per tuned model: the best score reached after n trials on the split (the failed third keeps
    # it), and the expected best of n trials drawn from the two that finished
    (ax,) = [ax for ax in figures[0].axes if ax.get_visible()]
    assert (ax.get_title(), ax.get_xlabel(), ax.get_ylabel()) == ("EASE", "trials", "best NDCG@100")
    reached, expected = ax.get_lines()
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["the split", "expected max"]
    np.testing.assert_allclose(reached.get_ydata(), [0.30, 0.40, 0.40])
    np.testing.assert_allclose(expected.get_ydata(), [0.35, 0.30 / 4 + 0.40 * 3 / 4, 0.30 / 8 + 0.40 * 7 / 8])
    text = drawn_text(next(p for p in written if p.suffix == ".svg"))
    assert all(word in text for word in ("EASE", "trials", "best NDCG@100", "the split", "expected max"))
    assert "Pop" not in text  # untuned: no panel
    assert tuning_section(tmp_path, {**spec_dict, "tuning": None}) == []


# ---------------------------------------------------------------------------------------- bad input

BAD = [
    ("a search key the model does not read",
     {"models": [{"model": "EASE", "search": {"gamma": "uniform 0.1,0.5"}}]}, "EASE does not read 'gamma'"),
    ("an empty space", {"models": [{"model": "EASE", "search": {}}]}, "the space is empty"),
    ("a malformed expression", {"models": [{"model": "EASE", "search": {"reg_weight": "uniform 1"}}]},
     "needs 2 comma-separated numbers"),
    ("an unknown distribution", {"models": [{"model": "EASE", "search": {"reg_weight": "gaussian 1,2"}}]},
     "unknown distribution"),
    ("max_evals < 1", {"tuning": {"algo": "random", "max_evals": 0}}, "max_evals=0 is not allowed"),
    ("a key searched and fixed", {"models": [{"model": "EASE", "config": {"reg_weight": 10.0},
                                              "search": {"reg_weight": "choice [1.0,2.0]"}}]},
     "searched and also fixed"),
    ("search without tuning", {"tuning": None}, "has a search but the spec has no 'tuning' block"),
    ("an unknown algo", {"tuning": {"algo": "grid", "max_evals": 2}}, "algo='grid' is not allowed"),
    ("exhaustive over a continuous key", {"tuning": {"algo": "exhaustive", "max_evals": 2},
                                          "models": [{"model": "EASE", "search": {"reg_weight": "uniform 1,2"}}]},
     "every key must be a 'choice'"),
    ("a value the model refuses", {"models": [{"model": "EASE", "search": {"reg_weight": "uniform -1,10"}}]},
     "reg_weight uniform -1,10 reaches reg_weight=-1.0, which EASE refuses"),
    ("tuning with a grid", {"grid": {"epochs": [1, 2]}}, "no grid or cells"),
    ("a missing params file", {"models": [{"model": "EASE", "search": "nowhere.hyper"}]}, "is not a params file"),
    # found in review: each passed the check, or raised a traceback
    ("a training key of a model fitted without gradients",
     {"models": [{"model": "EASE", "search": {"learning_rate": "loguniform -9,-5"}}]},
     "EASE does not read 'learning_rate'; search keys of its own config .reg_weight."),
    ("loguniform bounds beyond a float", {"models": [{"model": "EASE", "search": {"reg_weight": "loguniform 1,1000"}}]},
     "reg_weight: loguniform 1,1000 reaches e.1000, beyond a float"),
    ("a key that moves the split", {"models": [{"model": "EASE", "search": {"split_seed": "choice [1,2]"}}]},
     "split_seed cannot be searched: the study fixes it"),
    ("a key that moves the held-out users",
     {"models": [{"model": "EASE", "search": {"heldout_users": "choice [40,50]"}}]},
     "heldout_users cannot be searched"),
    ("the metric trials are ranked by",
     {"models": [{"model": "EASE", "search": {"valid_metric": "choice ['NDCG@10']"}}]},
     "valid_metric cannot be searched"),
    ("the weak protocol", {"folds": None, "config": {**SWEEP_FAST, "metrics": ["NDCG"], "topk": [10],
                                                     "valid_metric": "NDCG@10"}},
     "tuning needs eval_protocol: strong"),
    ("a value checked against the spec's own config, not the defaults",
     {"config": {**PROTOCOL, "pretrain_epochs": 20},
      "models": [{"model": "RaCT", "search": {"save_step": "choice [3,10]"}}]},
     "reaches save_step=3, which RaCT refuses: save_step=3 is not allowed: must divide pretrain_epochs=20"),
]


@pytest.mark.parametrize("what, changes, message", BAD, ids=[b[0] for b in BAD])
def test_bad_tuning_input_is_one_line_before_any_trial(tmp_path, capsys, what, changes, message):
    raw = spec(**changes)
    for field in ("tuning", "folds"):
        if raw[field] is None:
            del raw[field]
    with pytest.raises(SpecError, match=message) as error:
        load_spec(raw)
    assert "\n" not in str(error.value)
    out = tmp_path / "out"
    assert main(["run", str(write_spec(tmp_path / "s.yaml", raw)), "--out", str(out), "--quiet"]) != 0
    assert not (out / "tuning").exists() and not (out / "runs").exists()
    assert re.search(message, capsys.readouterr().err)  # the message is a pattern, as for pytest.raises


def test_the_spec_s_own_config_is_what_the_ends_of_a_space_are_checked_against():
    """RaCT with pretrain_epochs 20 in the spec: save_step 4 and 5 divide it (refused before, against the default
    150), and valid_metric NDCG@10 is among what the spec computes."""
    raw = spec(config={**PROTOCOL, "pretrain_epochs": 20},
               models=[{"model": "RaCT", "search": {"save_step": "choice [4,5]"}}])
    assert load_spec(raw).tuning["search"] == {"RaCT": {"save_step": "choice [4,5]"}}


def test_a_params_file_is_a_search_and_the_spec_round_trips(tmp_path):
    params = tmp_path / "ease.hyper"
    params.write_text("# EASE's one knob\nreg_weight loguniform 2.3,7.6\n", encoding="utf-8")
    loaded = load_spec(spec(models=[{"model": "EASE", "search": str(params)}, "Pop"]))
    assert loaded.tuning["search"] == {"EASE": {"reg_weight": "loguniform 2.3,7.6"}}
    again = load_spec(json.loads(json.dumps(loaded.to_dict())))  # spec.json reads back as a spec
    assert again.tuning == loaded.tuning and again.models == loaded.models


def test_run_recbole_beta_can_skip_the_test_users():
    from recbole_beta.quick_start import run_recbole_beta

    result = run_recbole_beta("EASE", "ml-100k", config_dict={**PROTOCOL, "show_progress": False}, saved=False,
                              per_user=True, test=False)
    assert result["test_result"] is None and "per_user" not in result and result["best_valid_score"] > 0


# ------------------------------------------------------------------------------------- end to end

@pytest.fixture(scope="module")
def tuned_sweep(module_workdir):
    """EASE tuned (3 random trials a fold, two folds) beside an untuned Pop; one seed."""
    path = write_spec(module_workdir / "tuned.yaml", spec())
    out = module_workdir / "out"
    assert main(["run", str(path), "--out", str(out), "--quiet"]) == 0
    return out


def test_tuning_csv_holds_every_trial_and_one_chosen_per_fold(tuned_sweep):
    table = pd.read_csv(tuned_sweep / "tuning.csv")
    assert list(table.columns) == ["label", "fold", "trial", "params", "valid_score", "chosen", "seconds"]
    assert sorted(zip(table["fold"], table["trial"])) == [(f, t) for f in (0, 1) for t in (1, 2, 3)]
    assert set(table["label"]) == {"EASE"}
    records = {(r["fold"], r["trial"]): r for r in map(read, trial_files(tuned_sweep))}
    assert len(records) == 6
    for row in table.itertuples():
        record = records[(row.fold, row.trial)]
        assert row.valid_score == record["best_valid_score"] and json.loads(row.params) == record["params"]
        assert record["config"]["fold"] == row.fold and record["protocol"]["fold"] == row.fold
    for _, trials in table.groupby("fold"):
        assert trials["chosen"].sum() == 1
        best = trials["valid_score"].max()
        first_best = trials[trials["valid_score"] == best]["trial"].min()
        assert trials.loc[trials["chosen"], "trial"].item() == first_best


def test_the_runs_carry_the_chosen_values_and_no_trial_saw_a_test_user(tuned_sweep):
    table = pd.read_csv(tuned_sweep / "tuning.csv")
    chosen = {row.fold: json.loads(row.params) for row in table[table["chosen"]].itertuples()}
    runs = [read(p) for p in (tuned_sweep / "runs").glob("*.json")]
    ease = [r for r in runs if r["label"] == "EASE"]
    assert sorted(r["fold"] for r in ease) == [0, 1]
    for run in ease:
        assert run["config"]["reg_weight"] == chosen[run["fold"]]["reg_weight"] and run["test_result"]
    assert all("reg_weight" not in r["config"] for r in runs if r["label"] == "Pop")
    for path in trial_files(tuned_sweep):
        text = path.read_text(encoding="utf-8")
        record = json.loads(text)
        assert "test_result" not in record and "per_user" not in record
        assert record["status"] == "ok" and record["best_valid_result"]
        assert "test" not in json.dumps(record.get("best_valid_result")) + json.dumps(record.get("history"))
    assert not list((tuned_sweep / "tuning").glob("*/*/scratch*"))


def test_the_report_shows_the_tuning(tuned_sweep):
    report = (tuned_sweep / "report.md").read_text(encoding="utf-8")
    section = report[report.index("## Tuning"):]
    assert "| EASE | `reg_weight choice [5.0, 250.0, 2000.0]` | 3 trials (random) | 6/6 |" in section
    assert "Untuned (run at their config): Pop." in section
    assert "- EASE `reg_weight`:" in section and "/2)" in section  # how often each value was chosen
    assert "![tuning_curves](figures/tuning_curves.png)" in section
    assert (tuned_sweep / "figures" / "tuning_curves.png").stat().st_size > 0
    # the figure: one panel, the tuned EASE, a curve per fold and the expected maximum; no panel for Pop
    text = drawn_text(tuned_sweep / "figures" / "tuning_curves.svg")
    for word in ("EASE", "trials", "best NDCG@100", "fold 0", "fold 1", "expected max"):
        assert text.count(word) == 1, word
    assert "Pop" not in text and "the split" not in text


def test_a_rerun_redoes_exactly_the_deleted_trials(tuned_sweep, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(tuned_sweep, out)
    files = trial_files(out)
    deleted = [files[1], files[5]]
    kept = {p: p.stat().st_mtime_ns for p in files if p not in deleted}
    before = {p: read(p) for p in deleted}
    for path in deleted:
        path.unlink()
    ran, failed = run_sweep(load_spec(spec()), out, progress=False)
    assert (ran, failed) == (0, 0)  # the same points chosen again: every run is still finished
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # no other trial redone
    for path in deleted:
        again = read(path)
        assert again["params"] == before[path]["params"]
        assert again["best_valid_score"] == before[path]["best_valid_score"]
    columns = ["label", "fold", "trial", "params", "valid_score", "chosen"]
    assert pd.read_csv(out / "tuning.csv")[columns].equals(pd.read_csv(tuned_sweep / "tuning.csv")[columns])
    # a raised budget keeps the trials it has: one more a fold
    stamps = {p: p.stat().st_mtime_ns for p in trial_files(out)}
    run_sweep(load_spec(spec(tuning={"algo": "random", "max_evals": 4, "seed": 7})), out, progress=False)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert sorted(p.name for p in set(trial_files(out)) - set(stamps)) == ["trial0004.json"] * 2
    assert len(pd.read_csv(out / "tuning.csv")) == 8


def test_a_new_chosen_point_sets_the_old_runs_aside(tuned_sweep, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(tuned_sweep, out)
    table = pd.read_csv(out / "tuning.csv")
    fold0 = table[table["fold"] == 0]
    chosen = fold0[fold0["chosen"]]["params"].item()
    other = fold0[fold0["params"] != chosen]
    assert not other.empty  # seed 7 draws more than one value on fold 0
    name = f"trial{other['trial'].iloc[0]:04d}.json"
    path = next(p for p in trial_files(out) if p.parent.name == "fold0" and p.name == name)
    record = read(path)
    record["best_valid_score"] = 0.99  # as if this point had been the best: the record decides the choice
    path.write_text(json.dumps(record), encoding="utf-8")
    assert run_sweep(load_spec(spec()), out, progress=False) == (1, 0)  # fold 0's EASE run, at the new point
    ease = [r for r in map(read, (out / "runs").glob("*.json")) if r["label"] == "EASE"]
    assert sorted(r["fold"] for r in ease) == [0, 1]
    assert next(r for r in ease if r["fold"] == 0)["config"]["reg_weight"] == record["params"]["reg_weight"]
    assert len(list((out / "runs").glob("*.superseded"))) == 2  # the old run's record and per-user table


# --------------------------------------------------------------------------- bayes and the grid (slow)

@pytest.mark.slow
def test_a_bayes_search_of_a_mult_vae_resumes_by_replaying_its_trials(tmp_path):
    raw = spec(tuning={"algo": "bayes", "max_evals": 3, "seed": 11, "config": {"epochs": 1}},
               models=[{"model": "ScaledBetaMultVAE", "label": "Scaled",
                        "search": {"gamma": "uniform 0.05,0.5", "learning_rate": "loguniform -7,-5"}}])
    out = tmp_path / "out"
    assert run_sweep(load_spec(raw), out, progress=False) == (2, 0)
    files = trial_files(out)
    assert len(files) == 6
    first = {p: read(p) for p in files}
    assert all(r["config"]["epochs"] == 1 for r in first.values())  # tuning.config: the trials' only
    assert all(read(p)["config"]["epochs"] == 2 for p in (out / "runs").glob("*.json"))
    for path in files[1:3]:  # fold 0's second and third trials
        path.unlink()
    kept = {p: p.stat().st_mtime_ns for p in files[:1] + files[3:]}
    assert run_sweep(load_spec(raw), out, progress=False) == (0, 0)
    assert {p: p.stat().st_mtime_ns for p in kept} == kept
    for path in files[1:3]:  # hyperopt proposed the same points again, from the same seed and history
        assert read(path)["params"] == first[path]["params"]
    chosen = pd.read_csv(out / "tuning.csv").query("chosen")
    for run in map(read, (out / "runs").glob("*.json")):
        params = json.loads(chosen[chosen["fold"] == run["fold"]]["params"].item())
        assert run["config"]["gamma"] == params["gamma"]


@pytest.mark.slow
def test_an_exhaustive_grid_smaller_than_the_budget_runs_whole_on_jobs(tmp_path):
    raw = spec(tuning={"algo": "exhaustive", "max_evals": 5, "seed": 1},
               models=[{"model": "EASE", "search": {"reg_weight": "choice [10.0, 500.0]"}}])
    out = tmp_path / "out"
    assert run_sweep(load_spec(raw), out, progress=False, jobs=2) == (2, 0)
    table = pd.read_csv(out / "tuning.csv")
    assert len(table) == 4 and sorted(table["params"].map(lambda p: json.loads(p)["reg_weight"])) == [
        10.0, 10.0, 500.0, 500.0]
    assert main(["report", str(out), "--no-figures"]) == 0
    assert "the whole grid: 2 points (fewer than max_evals=5)" in (out / "report.md").read_text(encoding="utf-8")
    assert np.isfinite(table["valid_score"]).all()


def test_a_config_file_changed_under_finished_trials_is_said(tmp_path, monkeypatch, capsys):
    """A run and a trial are known by the spec's settings, not by its config files' content: changing the
    ranking metric in a config file and running again silently reused every finished trial, ranked by the old
    metric. They are still kept (a rerun after a failure fixed in a config file wants that), but one line says
    so, once, and how to retrain them."""
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "cf.yaml"
    config.write_text("valid_metric: NDCG@100\n", encoding="utf-8")
    raw = spec(folds=[0], tuning={"algo": "random", "max_evals": 1, "seed": 7}, config_files=["cf.yaml"],
               config={k: v for k, v in PROTOCOL.items() if k != "valid_metric"},
               models=[{"model": "EASE", "search": {"reg_weight": "choice [250.0]"}}])
    path, out = write_spec(tmp_path / "s.yaml", raw), tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), "--quiet"]) == 0
    files = trial_files(out) + sorted((out / "runs").glob("*.json"))
    stamps = {p: p.stat().st_mtime_ns for p in files}
    assert len(files) == 2 and "warning" not in capsys.readouterr().err

    config.write_text("valid_metric: Recall@100\n", encoding="utf-8")
    assert main(["run", str(path), "--out", str(out), "--quiet"]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert warnings == ["recbole-beta: warning: cf.yaml changed since this sweep's 2 finished runs and trials were "
                        "trained with it; they are kept (a run is known by the spec's settings, not by the files' "
                        "content): to retrain them, delete them or give another --out"]
    assert {p: p.stat().st_mtime_ns for p in files} == stamps
    assert main(["run", str(path), "--out", str(out), "--quiet"]) == 0  # said once: spec.json has the new digest
    assert "warning" not in capsys.readouterr().err
