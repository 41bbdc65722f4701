"""Hyperparameter search on the real ml-100k: hyperopt (random, bayes, exhaustive) through RecBole's
HyperTuning and Ray Tune on a local instance, the results files, and bad params files refused first."""

import csv
import json
import math

import pytest

from conftest import SEARCH_FAST as FAST
from conftest import SERIAL, as_args, drawn_text
from recbole_beta.errors import RecBoleBetaError, UnknownModelError
from recbole_beta.tuning import (
    ParamsFileError,
    SearchParam,
    TuningError,
    default_params_file,
    prepare_search,
    read_params_file,
    run_search,
)
from recbole_beta.tuning.cli import main

#: one epoch, quiet, the whole evaluation in a few batches: a trial takes seconds
FAST_ARGS = as_args(FAST)

PLUGIN_MODELS = ["AnnealedBetaMultVAE", "ConstantBetaMultVAE", "CyclicalBetaMultVAE", "ScaledBetaMultVAE",
                 "ControlledBetaMultVAE", "BetaMultVAE"]

SCALED_SPACE = """\
learning_rate loguniform -7.6,-5.3
gamma loguniform -9.2,-2.3
mlp_hidden_size choice ['[64]','[128,64]']
"""

RECORD_KEYS = {"trial", "status", "params", "best_valid_score", "valid_score_bigger", "best_valid_result",
               "test_result", "seconds", "checkpoint", "result_file", "trial_dir"}
METRICS = {f"{m}@{k}" for m in ("recall", "ndcg") for k in (20, 50, 100)}


def write(path, text):
    path.write_text(text)
    return path


def check_results(out, n_trials, names):
    """The results files of a finished search; returns its trial records."""
    lines = (out / "trials.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == n_trials
    assert [r["trial"] for r in records] == list(range(1, n_trials + 1))
    for r in records:
        assert r["status"] == "ok", r
        assert RECORD_KEYS <= set(r), set(r)
        assert list(r["params"]) == names
        assert set(r["best_valid_result"]) == METRICS and set(r["test_result"]) == METRICS
        assert r["best_valid_score"] == r["best_valid_result"]["ndcg@100"]  # valid_metric: NDCG@100
        assert r["valid_score_bigger"] is True and r["seconds"] > 0

    with open(out / "trials.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == n_trials
    assert {"trial", "status", "best_valid_score", *names, "valid_ndcg@100", "test_ndcg@100"} <= set(rows[0])
    assert [float(row["best_valid_score"]) for row in rows] == [r["best_valid_score"] for r in records]

    best = json.loads((out / "best.json").read_text())
    top = max(r["best_valid_score"] for r in records)
    expected = next(r for r in records if r["best_valid_score"] == top)  # the first to reach it
    for key in ("trial", "params", "best_valid_score", "best_valid_result", "test_result"):
        assert best[key] == expected[key], key
    assert best["n_trials"] == n_trials and best["n_failed"] == 0

    for ext, magic in (("png", b"\x89PNG"), ("svg", b"<?xml")):
        data = (out / f"trials.{ext}").read_bytes()
        assert data.startswith(magic) and len(data) > 5000
    return records


def check_fixed_and_params_used(record):
    """The trial's run got the fixed settings and the trial's parameters (its result JSON holds its config)."""
    config = json.loads(open(record["result_file"]).read())["config"]
    assert config["epochs"] == 1 and config["eval_batch_size"] == 1 << 20
    for key, value in record["params"].items():
        assert config[key] == value, key


# ---------------------------------------------------------------------------------------------- searches


@pytest.mark.slow
def test_random_search_with_hyperopt(isolated_run):
    space = write(isolated_run / "scaled.hyper", SCALED_SPACE)
    out = isolated_run / "random"
    best = run_search("ScaledBetaMultVAE", "ml-100k", params_file=space, algo="random", max_evals=3,
                      fixed=FAST, output_dir=out, seed=0)
    records = check_results(out, 3, ["learning_rate", "gamma", "mlp_hidden_size"])
    assert best["trial"] == json.loads((out / "best.json").read_text())["trial"]
    assert len(best["trials"]) == 3 and best["engine"] == "hyperopt" and best["algo"] == "random"
    for r in records:
        p = r["params"]
        assert math.exp(-7.6) <= p["learning_rate"] <= math.exp(-5.3)
        assert math.exp(-9.2) <= p["gamma"] <= math.exp(-2.3)
        assert p["mlp_hidden_size"] in ([64], [128, 64])  # RecBole's conversion of the choice's strings
        check_fixed_and_params_used(r)
    # keep_checkpoints="best": only the best trial's checkpoint is left
    assert [r["trial"] for r in records if r["checkpoint"]] == [best["trial"]]
    assert all(p.name.endswith(".pth") for p in (out / "trials" / f"{best['trial']:04d}" / "saved").iterdir())
    assert sum(1 for _ in (out / "trials").rglob("*.pth")) == 1


@pytest.mark.slow
def test_bayes_search_of_a_recbole_model(isolated_run):
    space = write(isolated_run / "multivae.hyper",
                  "learning_rate loguniform -7.6,-5.3\ndropout_prob uniform 0.2,0.6\n")
    out = isolated_run / "bayes"
    best = run_search("MultiVAE", "ml-100k", params_file=space, algo="bayes", max_evals=3, fixed=FAST,
                      output_dir=out, seed=1)
    records = check_results(out, 3, ["learning_rate", "dropout_prob"])
    assert best["model"] == "MultiVAE" and best["algo"] == "bayes"
    check_fixed_and_params_used(records[0])
    assert len({r["params"]["learning_rate"] for r in records}) == 3


def test_exhaustive_search_from_the_command_line(isolated_run, capsys):
    space = write(isolated_run / "grid.hyper", "mlp_hidden_size choice ['[64]','[128]']\n")
    out = isolated_run / "grid"
    code = main(["--model=AnnealedBetaMultVAE", f"--params_file={space}", "--algo=exhaustive",
                 f"--output_dir={out}", "--keep_checkpoints=all", "--search_seed=3", *FAST_ARGS])
    assert code == 0
    records = check_results(out, 2, ["mlp_hidden_size"])
    assert sorted(r["params"]["mlp_hidden_size"] for r in records) == [[64], [128]]
    assert all(r["checkpoint"] and (out / "trials").joinpath(f"{r['trial']:04d}").is_dir() for r in records)
    check_fixed_and_params_used(records[1])
    printed = capsys.readouterr().out
    assert "best params" in printed and str(out) in printed


@pytest.mark.slow
def test_the_search_stops_early_without_improvement(isolated_run):
    # the console log level changes nothing in training: every trial scores the same
    space = write(isolated_run / "same.hyper", "state choice ['WARNING','ERROR','CRITICAL']\n")
    fixed = {k: v for k, v in FAST.items() if k != "state"}
    best = run_search("AnnealedBetaMultVAE", params_file=space, algo="exhaustive", early_stop=1, fixed=fixed,
                      output_dir=isolated_run / "early", seed=0)
    assert best["n_trials"] == 2 and best["trial"] == 1  # the second trial did not improve: stop
    assert len((isolated_run / "early" / "trials.jsonl").read_text().splitlines()) == 2
    # patience 2 stops there too, on the grid and under fmin alike: hyperopt's no_progress_loss (RecBole's
    # early_stop) counts the first trial as one without progress
    for algo in ("exhaustive", "random"):
        best = run_search("AnnealedBetaMultVAE", params_file=space, algo=algo, max_evals=None if algo == "exhaustive"
                          else 3, early_stop=2, fixed=fixed, output_dir=isolated_run / f"early-{algo}", seed=0)
        assert best["n_trials"] == 2 and best["trial"] == 1, algo


@pytest.mark.slow
def test_a_failed_trial_is_recorded_and_the_search_goes_on(isolated_run):
    # each end of the space is allowed alone; together, beta_min 0.5 > controller_beta_max 0.1 is not
    space = write(isolated_run / "ctl.hyper", "beta_min choice [0.5]\ncontroller_beta_max choice [0.1,1.0]\n")
    out = isolated_run / "fail"
    best = run_search("ControlledBetaMultVAE", params_file=space, algo="exhaustive", fixed=FAST,
                      output_dir=out, seed=0)
    records = [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]
    assert sorted(r["status"] for r in records) == ["failed", "ok"]  # the states of every run (runs.training)
    failed = next(r for r in records if r["status"] == "failed")
    assert failed["params"] == {"beta_min": 0.5, "controller_beta_max": 0.1}
    assert "controller_beta_max" in failed["error"]
    assert best["n_failed"] == 1 and best["params"] == {"beta_min": 0.5, "controller_beta_max": 1.0}
    assert (out / "trials.png").is_file() and (out / "trials.csv").read_text().count("\n") == 3
    # the figure marks the failed trial and has a panel per searched parameter, its values the ticks
    text = drawn_text(out / "trials.svg")
    assert {"trial", "best so far", "failed", "best", "beta_min (choice)", "controller_beta_max (choice)", "0.1",
            "1.0"} <= set(text)


@pytest.mark.slow
@SERIAL
def test_ray_tune_on_a_local_instance(isolated_run):
    import ray  # a hard dependency: a ray that fails to import fails here, it is not skipped
    space = write(isolated_run / "scaled.hyper", SCALED_SPACE)
    out = isolated_run / "ray"
    try:
        best = run_search("ScaledBetaMultVAE", "ml-100k", params_file=space, algo="random", max_evals=2,
                          fixed=FAST, output_dir=out, engine="ray", cpus=2, seed=0, verbose=0)
        assert not ray.is_initialized()  # the search shut down the instance it started
    finally:
        ray.shutdown()
    records = check_results(out, 2, ["learning_rate", "gamma", "mlp_hidden_size"])
    assert best["engine"] == "ray"
    assert len({r["ray_trial_id"] for r in records}) == 2
    for r in records:
        assert r["trial_dir"].startswith(str(out / "ray"))  # each trial ran in its own directory
        check_fixed_and_params_used(r)
    assert [r["trial"] for r in records if r["checkpoint"]] == [best["trial"]]


# ---------------------------------------------------------------------------------------------- params files


BAD_FILES = [
    ("lerning_rate loguniform -9.2,-4.6\n", ":1: unknown config key 'lerning_rate'; did you mean 'learning_rate'?"),
    ("learning_rate loguniform -9.2,-4.6\nlatent_dimension choice [64,128\n",
     ":2: latent_dimension choice needs a non-empty list"),
    ("learning_rate loguniform -9.2\n", ":1: learning_rate loguniform needs 2 comma-separated numbers"),
    ("learning_rate loguniform -4.6,-9.2\n", ":1: learning_rate loguniform needs low < high"),
    ("n_cycles quniform 1,8\n", ":1: n_cycles quniform needs 3 comma-separated numbers"),
    ("n_cycles quniform 1,8,0\n", ":1: n_cycles quniform needs a step q > 0"),
    ("dropout_prob uniform a,b\n", ":1: dropout_prob uniform needs 2 comma-separated numbers"),
    ("learning_rate normal 0,1\n", ":1: unknown distribution 'normal' for learning_rate"),
    ("learning_rate loguniform -9.2,-4.6\ndropout_prob 0.5\n", ":2: expected '<key> <distribution> <values>'"),
    ("gamma uniform 0.1,0.2\ngamma uniform 0.2,0.3\n", ":2: gamma is already searched on line 1"),
    ("# nothing but a comment\n\n", ": no parameters to search"),
    ("", ": no parameters to search"),
    ("dataset choice ['ml-100k','ml-1m']\n", ":1: dataset cannot be searched"),
    ("ratio uniform 0.2,1.5\n", ":1: ratio uniform 0.2,1.5 reaches ratio=1.5, which the model refuses: "
                                "ratio=1.5 is not allowed"),
    ("latent_dimension choice [64,65]\n", ":1: latent_dimension choice [64,65] reaches latent_dimension=65"),
]


@pytest.mark.parametrize("text, message", BAD_FILES)
def test_bad_params_files_fail_before_any_trial(isolated_run, text, message):
    path = write(isolated_run / "bad.hyper", text)
    out = isolated_run / "out"
    with pytest.raises(ParamsFileError) as caught:
        run_search("CyclicalBetaMultVAE", params_file=path, fixed=FAST, output_dir=out)
    assert str(caught.value).startswith(f"{path}{message}"), str(caught.value)
    assert "\n" not in str(caught.value) and isinstance(caught.value, RecBoleBetaError)
    assert not out.exists() and not (isolated_run / "log").exists()  # nothing ran


def test_a_missing_params_file(isolated_run):
    with pytest.raises(ParamsFileError, match=r"nope\.hyper: params file not found"):
        run_search("ScaledBetaMultVAE", params_file=isolated_run / "nope.hyper", fixed=FAST)


def test_bad_input_on_the_command_line_is_one_line_and_exit_2(isolated_run, capsys):
    path = write(isolated_run / "bad.hyper", "learning_rate loguniform -9.2,-4.6\ndropout_prob uniform 0.7\n")
    assert main(["--model=ScaledBetaMultVAE", f"--params_file={path}", *FAST_ARGS]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"recbole-beta: {path}:2: dropout_prob uniform needs 2 comma-separated numbers (low,high), not '0.7'"

    grid = write(isolated_run / "range.hyper", "mlp_hidden_size choice ['[64]']\nlearning_rate uniform 0.001,0.01\n")
    assert main(["--model=ScaledBetaMultVAE", f"--params_file={grid}", "--algo=exhaustive", *FAST_ARGS]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"recbole-beta: {grid}:2: --algo exhaustive searches a grid") and "\n" not in err

    assert main(["--model=MultVAE", *FAST_ARGS]) == 2
    assert "did you mean MultiVAE" in capsys.readouterr().err
    assert main(["--model=MultiVAE", *FAST_ARGS]) == 2  # RecBole's models need --params_file
    assert "no params file for MultiVAE" in capsys.readouterr().err
    assert main(["--model=ScaledBetaMultVAE", "--epochs", "2"]) == 2
    assert "config keys are given as --key=value" in capsys.readouterr().err
    assert main(["--model=ScaledBetaMultVAE", f"--params_file={path}", "--lerning_rate=0.1", *FAST_ARGS]) == 2
    err = capsys.readouterr().err
    assert ("warning: lerning_rate is not a config key RecBole or the plugin knows "
            "(did you mean 'learning_rate'?)") in err


def test_other_bad_searches_fail_before_any_trial(isolated_run):
    grid = write(isolated_run / "grid.hyper",
                 "mlp_hidden_size choice ['[64]','[128]']\nlatent_dimension choice [32,64]\n")
    with pytest.raises(TuningError, match="runs all 4 combinations .* max_evals=3"):
        run_search("ScaledBetaMultVAE", params_file=grid, algo="exhaustive", max_evals=3, fixed=FAST)
    with pytest.raises(ParamsFileError, match=r"grid.hyper:2: latent_dimension is searched here and also fixed"):
        run_search("ScaledBetaMultVAE", params_file=grid, fixed={**FAST, "latent_dimension": 64})
    with pytest.raises(TuningError, match="algo='grid' is not allowed"):
        run_search("ScaledBetaMultVAE", params_file=grid, algo="grid", fixed=FAST)
    with pytest.raises(UnknownModelError):
        run_search("NoSuchModel", params_file=grid, fixed=FAST)
    (isolated_run / "used").mkdir()
    (isolated_run / "used" / "trials.jsonl").write_text("")
    with pytest.raises(TuningError, match="already holds a search"):
        run_search("ScaledBetaMultVAE", params_file=grid, fixed=FAST, output_dir=isolated_run / "used")
    assert not (isolated_run / "log").exists()


def test_keys_of_a_config_file_may_be_searched(isolated_run):
    # a key no property file knows (a strategy of your own, say) is searchable once a config file sets it
    space = write(isolated_run / "own.hyper", "my_rate uniform 0.1,0.2\n")
    with pytest.raises(ParamsFileError, match="unknown config key 'my_rate'"):
        prepare_search("ScaledBetaMultVAE", params_file=space, fixed=FAST)
    config = write(isolated_run / "own.yaml", "my_rate: 0.1\n")
    ctx = prepare_search("ScaledBetaMultVAE", params_file=space, config_file_list=[str(config)], fixed=FAST)
    assert ctx["space"].names == ["my_rate"] and ctx["max_evals"] == 20


def test_params_file_lines_are_read_as_recbole_reads_them(isolated_run):
    path = write(isolated_run / "ok.hyper", "# a comment of several words\n\n"
                 "learning_rate loguniform -9.2, -4.6\n"
                 "mlp_hidden_size choice ['[600]', '[600, 200]']\n"
                 "n_cycles quniform 1,8,1\n")
    space = read_params_file(path)
    assert space.names == ["learning_rate", "mlp_hidden_size", "n_cycles"]
    assert [p.line for p in space.params] == [3, 4, 5]
    assert space["learning_rate"].values == (-9.2, -4.6)
    assert space["mlp_hidden_size"].values == ("[600]", "[600,200]")  # the values' spaces dropped, as RecBole does
    assert space["n_cycles"].integer and not space.is_grid()
    assert set(space.hyperopt_space()) == set(space.names)


# ---------------------------------------------------------------------------------------------- shipped spaces


@pytest.mark.parametrize("model", PLUGIN_MODELS)
def test_every_plugin_model_ships_a_valid_params_file(model):
    from recbole.trainer import HyperTuning

    path = default_params_file(model)
    assert path is not None and path.parent.name == "hyper"
    ctx = prepare_search(model, fixed=FAST)  # the default file, every reachable value checked by the model
    space = ctx["space"]
    assert {"learning_rate", "dropout_prob", "latent_dimension", "mlp_hidden_size"} <= set(space.names)
    assert space["learning_rate"].distribution == "loguniform"
    assert space["mlp_hidden_size"].convert("[600,200]") == [600, 200]
    # RecBole's own parser reads the same file to the same keys (no syntax of the plugin's own)
    assert list(HyperTuning._build_space_from_file(str(path))) == space.names
    beta_keys = {"anneal_cap", "beta", "beta_max", "n_cycles", "ratio", "gamma", "kl_target", "kp", "ki",
                 "beta_strategy"}
    assert beta_keys & set(space.names)


def test_params_translate_to_ray_tune():
    from ray import tune  # a hard dependency: not skipped
    from ray.tune.search.sample import Categorical, Float, LogUniform, Quantized

    log = SearchParam("gamma", "loguniform", (-9.2, -2.3)).ray()
    assert isinstance(log, Float) and isinstance(log.get_sampler(), LogUniform)
    assert math.isclose(log.lower, math.exp(-9.2)) and math.isclose(log.upper, math.exp(-2.3))
    q = SearchParam("n_cycles", "quniform", (1.0, 8.0, 1.0))
    assert isinstance(q.ray().get_sampler(), Quantized) and q.convert(4.0) == 4 and isinstance(q.convert(4.0), int)
    assert SearchParam("ratio", "quniform", (0.1, 0.9, 0.2)).convert(0.3) == 0.3
    choice = SearchParam("mlp_hidden_size", "choice", ("[600]", "[600,200]"))
    assert isinstance(choice.ray(), Categorical) and choice.ray().categories == ["[600]", "[600,200]"]
    assert choice.ray(grid=True) == tune.grid_search(["[600]", "[600,200]"])
    assert SearchParam("dropout_prob", "uniform", (0.2, 0.7)).ray().lower == 0.2
