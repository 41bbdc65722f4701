"""Every config value is checked before any data is read, by the one check that the run script, a sweep spec's
check and a search's fixed settings all go through (the plugin's Config, against properties/checks.yaml):
each bad value is one line naming the key and what it accepts, and a spec that passes its check does not then
fail in every run. A GPU asked for on a machine without it is said, once."""

import sys

import pytest
import yaml

from conftest import FAST, run_cli
from recbole_beta.config import Config
from recbole_beta.errors import ConfigError
from recbole_beta.experiments.cli import main as experiments_main
from recbole_beta.experiments.spec import SpecError, load_spec
from recbole_beta.fold_in import FOLD_IN
from recbole_beta.tuning import prepare_search

#: (command-line arguments, what the one line says); each failed today with a traceback, or trained
#: (silently ignoring the value, or failing after training)
CLI_CASES = [
    # issue 31, item 3
    (["--model=MultiVAE", "--valid_metric=ndcg@7"],
     "valid_metric='ndcg@7' is not allowed: must be one of the metrics the run computes (metrics x topk): "
     "recall@20, recall@50, recall@100, ndcg@20, ndcg@50, ndcg@100"),
    (["--enable_amp=maybe"], "enable_amp='maybe' is not allowed: must be True or False"),
    (["--epochs=2.0"], "epochs=2.0 is not allowed: must be an integer >= 0"),
    (["--metrics=['Foo']"], "metrics=['Foo'] is not allowed: 'Foo' is not a metric RecBole knows; it knows AUC, "),
    (["--epochs=2", "--epochs=3"], "epochs='3' is not allowed: --epochs is given twice on the command line (as 2 and "
                                   "as 3); give each key once"),
    (["--model=ItemKNN", "--k=0"], "k=0 is not allowed: must be an integer >= 1"),
    (["--model=EASE", "--reg_weight=-10"], "reg_weight=-10 is not allowed: must be a number > 0"),
    # beyond the list: what a new user might type
    (["--topk=20.5"], "topk=20.5 is not allowed: must be an integer >= 1 or a non-empty list of them"),
    (["--topk=(10,20)"], "topk=(10, 20) is not allowed: must be an integer >= 1 or a non-empty list of them"),
    (["--model=MultiVAE", "--mlp_hidden_size=abc"],
     "mlp_hidden_size='abc' is not allowed: must be a non-empty list, each an integer >= 1"),
    (["--model=MultiVAE", "--latent_dimension=7"], "latent_dimension=7 is not allowed: must be an even integer >= 2"),
    (["--model=MultiVAE", "--dropout_prob=2"], "dropout_prob=2 is not allowed: must be a number >= 0 and <= 1"),
    (["--model=MultiVAE", "--anneal_cap=-1"], "anneal_cap=-1 is not allowed: must be a number >= 0"),
    (["--model=MultiVAE", "--total_anneal_steps=-1"], "total_anneal_steps=-1 is not allowed: must be an integer >= 0"),
    (["--model=RecVAE", "--n_enc_epochs=0"], "n_enc_epochs=0 is not allowed: must be an integer >= 1"),
    (["--model=CDAE", "--hid_activation=swish"],
     "hid_activation='swish' is not allowed: must be one of sigmoid, relu, tanh"),
    (["--model=ItemKNN", "--knn_method=items"],
     "knn_method='items' is not allowed: must be one of item, user (did you mean 'item'?)"),
    (["--model=ItemKNN", "--shrink=-1"], "shrink=-1 is not allowed: must be a number >= 0"),
    (["--model=EASE", "--reg_weight=abc"], "reg_weight='abc' is not allowed: must be a number > 0"),
    (["--learner=adamx"], "learner='adamx' is not allowed: must be one of adam, adamw, sgd, adagrad, rmsprop, "
                          "sparse_adam (did you mean 'adam'?)"),
    (["--metric_decimal_place=-1"], "metric_decimal_place=-1 is not allowed: must be an integer >= 0"),
    (["--loss_decimal_place=-1"], "loss_decimal_place=-1 is not allowed: must be an integer >= 0"),
    (["--reproducibility=maybe"], "reproducibility='maybe' is not allowed: must be True or False"),
    (["--worker=-1"], "worker=-1 is not allowed: must be an integer >= 0"),
    (["--checkpoint_dir=5"], "checkpoint_dir=5 is not allowed: must be a folder path"),
    (["--valid_metric=Recall"], "valid_metric='Recall' is not allowed: must be one of the metrics the run computes"),
    (["--valid_metric=5"], "valid_metric=5 is not allowed: must be one of the metrics the run computes"),
    (["--metrics=Recall"], "valid_metric='NDCG@100' is not allowed: must be one of the metrics the run computes "
                           "(metrics x topk): recall@20, recall@50, recall@100"),
    (["--metrics=['Recall','RMSE']"], "metrics=['Recall', 'RMSE'] is not allowed: ranking metrics (Recall) and value "
                                      "metrics (RMSE) cannot be mixed"),
    (["--metrics=['RMSE']", "--valid_metric=RMSE"],
     "metrics=['RMSE'] is not allowed: RMSE scores predicted values, and eval_args.mode is full ranking"),
]


def _cli_args(args):
    return [*args, *([] if any(a.startswith("--epochs=") for a in args) else ["--epochs=1"])]


@pytest.mark.parametrize("args,message", CLI_CASES, ids=[" ".join(a) for a, _ in CLI_CASES])
def test_bad_value_is_one_line_before_anything_trains(monkeypatch, capsys, tmp_path, args, message):
    code, err, _ = run_cli(monkeypatch, capsys, *_cli_args(args))
    assert err.startswith("recbole-beta: ") and message in err, err
    assert code == 2 and "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "saved").exists() and not (tmp_path / "results").exists()  # nothing trained


@pytest.mark.parametrize("args,message", CLI_CASES, ids=[" ".join(a) for a, _ in CLI_CASES])
def test_bad_value_is_refused_before_the_data_is_looked_for(monkeypatch, capsys, tmp_path, args, message):
    """With the dataset's files missing, each bad value still gives its own line, not the missing dataset's."""
    code, err, _ = run_cli(monkeypatch, capsys, *_cli_args(args), "--dataset=nowhere",
                           f"--data_path={tmp_path}/no-data")
    assert code == 2 and message in err and "not found" not in err, err


# --------------------------------------------------------------------------------------------------
# The spec's check: what fails in every run fails the check, with the message the run would give.


def _spec(**extra):
    return {"name": "checks", "dataset": "ml-100k", "seeds": [2020], "config": dict(FAST), "models": ["MultiVAE"],
            **extra}


def test_a_spec_value_every_run_refuses_fails_the_spec_check_in_one_line(tmp_path, capsys, monkeypatch):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(_spec(config={**FAST, "epochs": 1.5})))
    monkeypatch.setattr(sys, "argv", ["x"])
    assert experiments_main(["run", str(path), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "recbole-beta: config: epochs=1.5 is not allowed: must be an integer >= 0"
    assert not (tmp_path / "out").exists()


STRONG_FOLDS = {**FAST, "eval_protocol": "strong", "heldout_folds": 5}

SPEC_CASES = [
    (_spec(config={**STRONG_FOLDS, "fold": 3}, folds=[1]),
     "config: fold=3 is not allowed with folds=[1]: each run's test fold comes from folds; drop fold"),
    (_spec(config=STRONG_FOLDS, folds="all", models=[{"model": "MultiVAE", "config": {"fold": 0}}]),
     "models: MultiVAE: fold=0 is not allowed with folds='all': each run's test fold comes from folds; drop fold"),
    (_spec(config=STRONG_FOLDS, folds=[0], grid={"fold": [1, 2]}),
     "grid/cells: fold=1 is not allowed with folds=[0]: each run's test fold comes from folds; drop fold"),
    (_spec(models=[{"model": "EASE", "config": {"reg_weight": -10}}]),
     "models: EASE: reg_weight=-10 is not allowed: must be a number > 0"),
    (_spec(models=["ItemKNN"], grid={"k": [10, 0]}),
     "models: ItemKNN [k=0]: k=0 is not allowed: must be an integer >= 1"),
    (_spec(config={**FAST, "metrics": ["Recall"], "valid_metric": "NDCG@100"}),
     "config: valid_metric='NDCG@100' is not allowed: must be one of the metrics the run computes"),
    (_spec(config={**FAST, "enable_amp": "maybe"}), "config: enable_amp='maybe' is not allowed: must be True or False"),
    (_spec(grid={"learning_rate": [0.001, -1]}),
     "models: MultiVAE [learning_rate=-1]: learning_rate=-1 is not allowed: must be a number > 0"),
    (_spec(seeds=[2020, -1]), "seeds: seed=-1 is not allowed: must be an integer >= 0 and <= 4294967295"),
]


@pytest.mark.parametrize("raw,message", SPEC_CASES, ids=[m for _, m in SPEC_CASES])
def test_the_spec_check_refuses_what_every_run_would(raw, message):
    with pytest.raises(SpecError) as caught:
        load_spec(raw)
    assert str(caught.value) == message or str(caught.value).startswith(message), str(caught.value)


def test_a_bad_value_in_the_specs_config_file_fails_the_check(tmp_path):
    settings = tmp_path / "settings.yaml"
    settings.write_text("learning_rate: -1.0\n")
    message = r"^models: MultiVAE: learning_rate=-1\.0 is not allowed: must be a number > 0$"
    with pytest.raises(SpecError, match=message):
        load_spec(_spec(config_files=[str(settings)]))


def test_a_fold_in_a_config_file_and_folds_fail_the_check(tmp_path):
    settings = tmp_path / "settings.yaml"
    settings.write_text("fold: 2\n")
    with pytest.raises(SpecError, match=r"^config_files: fold=2 is not allowed with folds=\[1\]"):
        load_spec(_spec(config=STRONG_FOLDS, config_files=[str(settings)], folds=[1]))


# --------------------------------------------------------------------------------------------------
# One check for the three: the run script, the spec's check and a search's fixed settings say the same.

SAME = [{"epochs": 2.0}, {"valid_metric": "ndcg@7"}, {"enable_amp": "maybe"}, {"learning_rate": -0.1}]


@pytest.mark.parametrize("bad", SAME, ids=[str(b) for b in SAME])
def test_run_spec_and_search_give_the_same_line(monkeypatch, capsys, tmp_path, bad):
    ((key, value),) = bad.items()
    code, err, _ = run_cli(monkeypatch, capsys, "--model=ScaledBetaMultVAE", f"--{key}={value}")
    assert code == 2
    line = err[len("recbole-beta: "):]
    with pytest.raises(SpecError) as spec_error:
        load_spec(_spec(models=["ScaledBetaMultVAE"], config={**FAST, key: value}))
    assert str(spec_error.value) == f"config: {line}"
    with pytest.raises(ConfigError) as search_error:
        prepare_search("ScaledBetaMultVAE", "ml-100k", fixed={**FAST, **bad})
    assert str(search_error.value) == line


# --------------------------------------------------------------------------------------------------
# The table itself


def test_every_models_defaults_pass_the_table():
    """No model the table names is refused with its own (RecBole's or the plugin's) defaults."""
    from recbole_beta.defaults import value_checks

    for model in value_checks()["models"]:
        Config(model=model, dataset="ml-100k", argv=[])


def test_the_table_covers_every_key_the_strong_protocol_checks():
    """fold_in.FOLD_IN's key checks ran under eval_protocol=strong only; the table holds each of them, so they
    hold under every protocol."""
    from recbole_beta.defaults import value_checks

    models = value_checks()["models"]
    missing = [f"{name}.{key}" for name, entry in FOLD_IN.items() for key in entry.keys
               if key not in models.get(name, {})]
    assert missing == []


def test_check_values_checks_the_keys_it_is_given():
    from recbole_beta.config_checks import check_values

    check_values({"seed": 5, "epochs": 3})  # keys left out are not asked for
    with pytest.raises(ConfigError, match=r"^k=0 is not allowed: must be an integer >= 1$"):
        check_values({"k": 0}, "ItemKNN")
    check_values({"k": 0})  # another model's k means something else


# --------------------------------------------------------------------------------------------------
# A GPU asked for on a machine without it (this machine has none)


@pytest.mark.parametrize("arg,asked", [("--device=cuda", "device='cuda'"), ("--gpu_id=3", "gpu_id=3")])
def test_a_gpu_that_is_not_there_is_said_once_and_the_run_goes_to_the_cpu(monkeypatch, capsys, caplog, arg, asked):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    code, err, out = run_cli(monkeypatch, capsys, "--model=Pop", "--epochs=1", arg)
    assert code == 0 and "test result" in out
    line = f"{asked} asks for a GPU, but torch finds none"
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and line in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert warnings[0].endswith("the run goes to the CPU") and "\n" not in warnings[0]
    assert err.count(line) == 1


def test_no_word_about_the_device_when_no_gpu_is_asked_for(monkeypatch, capsys, caplog):
    code, err, _ = run_cli(monkeypatch, capsys, "--model=Pop", "--epochs=1")
    assert code == 0 and "asks for a GPU" not in err
    assert not [r for r in caplog.records if "asks for a GPU" in r.getMessage()]


def test_a_key_given_twice_to_run_hyper_is_the_run_scripts_line(monkeypatch, capsys, tmp_path):
    """``run_hyper.py --epochs=2 --epochs=3`` searched with epochs 3 (a plain dict kept the last): now the line
    the run script gives, before any trial, and nothing written."""
    from recbole_beta.tuning.cli import main as hyper_main

    monkeypatch.chdir(tmp_path)
    code, err, _ = run_cli(monkeypatch, capsys, "--epochs=2", "--epochs=3")
    assert code == 2
    assert hyper_main(["--model=ScaledBetaMultVAE", "--epochs=2", "--epochs=3", "--max_evals=1",
                       f"--output_dir={tmp_path / 'hyper'}"]) == 2
    assert capsys.readouterr().err.strip() == err.strip()
    assert not (tmp_path / "hyper").exists()
    # the same value twice is one value, as the run script reads it
    assert hyper_main(["--model=ScaledBetaMultVAE", "--epochs=2", "--epochs=2", "--max_evals=0"]) == 2
    assert "epochs" not in capsys.readouterr().err
