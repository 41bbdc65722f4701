"""Bad input fails before any training with one line naming the key, the value and what is allowed."""

import math
import sys

import pytest

from conftest import refuse_data, run_cli
from recbole_beta.beta import STRATEGIES, BetaStrategy, register_strategy
from recbole_beta.checkpoint import load_checkpoint
from recbole_beta.cli import main

cli = run_cli


CASES = [
    (["--model=ScaledBetaMultVae"], "model='ScaledBetaMultVae' is not a recbole-beta or RecBole model; did you mean ScaledBetaMultVAE"),
    (["--model=MultVAE"], "did you mean MultiVAE"),
    (["--model=BetaMultVAE", "--beta_strategy=cyclic"], "beta_strategy='cyclic' is not allowed: 'cyclic' is unknown; choose from ['annealed', 'constant', 'controlled', 'cyclical', 'scaled']"),
    (["--model=CyclicalBetaMultVAE", "--cycle_shape=square"], "cycle_shape='square' is not allowed: must be one of ['cosine', 'linear', 'sigmoid']"),
    (["--model=BetaMultVAE", "--activation=swish"], "activation='swish' is not allowed: must be one of"),
    (["--model=ScaledBetaMultVAE", "--gamma=-0.1"], "gamma=-0.1 is not allowed: must be a number >= 0"),
    (["--model=CyclicalBetaMultVAE", "--n_cycles=0"], "n_cycles=0 is not allowed: must be an integer >= 1"),
    (["--model=CyclicalBetaMultVAE", "--ratio=0"], "ratio=0 is not allowed: must be a number > 0 and <= 1"),
    (["--model=CyclicalBetaMultVAE", "--ratio=1.5"], "ratio=1.5 is not allowed: must be a number > 0 and <= 1"),
    (["--model=CyclicalBetaMultVAE", "--beta_max=-1"], "beta_max=-1 is not allowed: must be a number >= 0"),
    (["--model=AnnealedBetaMultVAE", "--anneal_cap=-0.2"], "anneal_cap=-0.2 is not allowed: must be a number >= 0"),
    (["--model=AnnealedBetaMultVAE", "--total_anneal_steps=-5"], "total_anneal_steps=-5 is not allowed: must be an integer >= 0"),
    (["--model=ControlledBetaMultVAE", "--beta_min=0.5", "--controller_beta_max=0.1"], "controller_beta_max=0.1 is not allowed: must be >= beta_min (0.5)"),
    (["--model=BetaMultVAE", "--beta_strategy=controlled", "--controller_beta_max=-1"], "controller_beta_max=-1 is not allowed: must be a number >= 0"),
    (["--model=BetaMultVAE", "--latent_dimension=7"], "latent_dimension=7 is not allowed: must be an even integer"),
    (["--model=CyclicalBetaMultVAE", "--beta_strategy=annealed"], "CyclicalBetaMultVAE always uses 'cyclical'"),
    (["--model=BetaMultVAE", "--beta_strategy=['annealed','cyclical']"], "at most one schedule"),
    # every other key of the README's configuration table
    (["--model=ConstantBetaMultVAE", "--beta=-0.5"], "beta=-0.5 is not allowed: must be a number >= 0"),
    (["--model=ConstantBetaMultVAE", "--beta=1e999"], "beta=inf is not allowed: must be a finite number >= 0"),
    (["--model=BetaMultVAE", "--dropout_prob=1.5"], "dropout_prob=1.5 is not allowed: must be a number >= 0 and <= 1"),
    (["--model=BetaMultVAE", "--dropout_prob=-0.1"], "dropout_prob=-0.1 is not allowed: must be a number >= 0 and <= 1"),
    (["--model=BetaMultVAE", "--noise_std=-1"], "noise_std=-1 is not allowed: must be a number >= 0"),
    (["--model=BetaMultVAE", "--noise_std=1e999"], "noise_std=inf is not allowed: must be a finite number >= 0"),
    (["--model=BetaMultVAE", "--mlp_hidden_size=[600,-1]"], "mlp_hidden_size=[600, -1] is not allowed: must be a list of positive integers"),
    (["--model=BetaMultVAE", "--mlp_hidden_size=600"], "mlp_hidden_size=600 is not allowed: must be a list of positive integers"),
    (["--model=BetaMultVAE", "--mlp_hidden_size=[True]"], "mlp_hidden_size=[True] is not allowed: must be a list of positive integers"),
    (["--model=BetaMultVAE", "--sparse_input=yes"], "sparse_input='yes' is not allowed: must be True, False or auto"),
    (["--model=BetaMultVAE", "--sparse_input=1"], "sparse_input=1 is not allowed: must be True, False or auto"),
    (["--model=ScaledBetaMultVAE", "--normalize_activity=1"], "normalize_activity=1 is not allowed: must be True or False"),
    (["--model=ControlledBetaMultVAE", "--kl_target=-1"], "kl_target=-1 is not allowed: must be a number >= 0"),
    (["--model=ControlledBetaMultVAE", "--kl_target=1e999"], "kl_target=inf is not allowed: must be a finite number >= 0"),
    (["--model=ControlledBetaMultVAE", "--kp=-0.01"], "kp=-0.01 is not allowed: must be a number >= 0"),
    (["--model=ControlledBetaMultVAE", "--ki=-0.0001"], "ki=-0.0001 is not allowed: must be a number >= 0"),
    (["--model=CyclicalBetaMultVAE", "--cycle_length=-1"], "cycle_length=-1 is not allowed: must be an integer >= 0"),
    (["--model=CyclicalBetaMultVAE", "--cycle_length=2.5"], "cycle_length=2.5 is not allowed: must be an integer >= 0"),
]


@pytest.mark.parametrize("args,message", CASES, ids=[" ".join(a) for a, _ in CASES])
def test_bad_config_is_one_clear_line(monkeypatch, capsys, tmp_path, args, message):
    code, err, _ = cli(monkeypatch, capsys, *args)
    assert code == 2
    assert err.startswith("recbole-beta: ") and message in err
    assert "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "saved").exists()  # nothing trained


@pytest.mark.parametrize("args,message", CASES, ids=[" ".join(a) for a, _ in CASES])
def test_bad_values_fail_before_any_data_is_read(monkeypatch, capsys, tmp_path, args, message):
    """Validation happens as the config is built: with the dataset's files missing and RecBole's loader
    made to fail, each bad value still gives its own line, not the missing dataset's."""
    refuse_data(monkeypatch, "the dataset was read before the config was validated")
    code, err, _ = cli(monkeypatch, capsys, *args, "--dataset=nowhere", f"--data_path={tmp_path}/no-data")
    assert code == 2
    assert message in err and "not found" not in err


def test_missing_dataset_says_where_files_go(monkeypatch, capsys, tmp_path):
    code, err, _ = cli(monkeypatch, capsys, "--model=ScaledBetaMultVAE", "--dataset=ml-20m", f"--data_path={tmp_path}/data")
    assert code == 2
    assert "dataset='ml-20m' not found" in err
    assert f"{tmp_path}/data/ml-20m/ml-20m.inter does not exist" in err
    assert "dataset/README.md" in err and "python -m recbole_beta data convert" in err
    assert "\n" not in err


def test_missing_dataset_fails_before_the_config_dump(monkeypatch, capsys, tmp_path):
    """The one useful line is the first thing a user reads: RecBole's config dump (logged at INFO) never
    comes before it, on the console or in the log file."""
    argv = ["--model=ScaledBetaMultVAE", "--dataset=ml-20m", f"--data_path={tmp_path}/data", "--state=INFO"]
    monkeypatch.setattr(sys, "argv", ["run_recbole_beta.py", *argv])
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert "dataset='ml-20m' not found" in captured.err
    for text in (captured.out, captured.err, *(f.read_text() for f in (tmp_path / "log").rglob("*.log"))):
        assert "General Hyper Parameters" not in text and "Training Hyper Parameters" not in text


class ExplodingBeta(BetaStrategy):
    """A user-defined strategy whose beta overflows after 8 steps (2 epochs of 4 batches)."""

    @classmethod
    def from_config(cls, config, context):
        return cls()

    def value_at(self, step):
        return 0.01 if step <= 8 else math.inf


@pytest.fixture
def exploding_strategy():
    register_strategy("explode_after_8_steps")(ExplodingBeta)  # how users add their own strategies
    yield
    STRATEGIES.pop("explode_after_8_steps", None)


@pytest.mark.slow
def test_infinite_loss_stops_with_a_message_and_keeps_the_checkpoint(monkeypatch, capsys, tmp_path, exploding_strategy):
    code, err, _ = cli(
        monkeypatch, capsys, "--model=BetaMultVAE", "--beta_strategy=explode_after_8_steps",
        "--train_batch_size=256", "--epochs=5",
    )
    assert code == 1
    assert "training loss became" in err and "in epoch 2" in err and "the last good checkpoint" in err
    (checkpoint,) = list((tmp_path / "saved").glob("*.pth"))
    assert checkpoint.name in err
    assert not list((tmp_path / "saved").glob("*.tmp*"))
    state = load_checkpoint(checkpoint)
    assert state["epoch"] in (0, 1)
    assert state["other_parameter"]["beta_strategy"]["step_count"] == 4 * (state["epoch"] + 1)
    assert all(t.isfinite().all() for t in state["state_dict"].values())


def test_topk_beyond_the_item_count_is_caught_after_loading(tmp_path):
    from conftest import write_tiny_dataset
    from recbole_beta.errors import ConfigError
    from recbole_beta.quick_start import run_recbole_beta

    config = {**write_tiny_dataset(tmp_path), "state": "WARNING"}
    with pytest.raises(ConfigError, match=r"topk=\[20, 50, 100\] is not allowed: every k must be <= the number of items \(6\)"):
        run_recbole_beta("BetaMultVAE", "tiny", config_dict=config)


@pytest.mark.parametrize("old,new", [
    ("recbole_beta.data", "python -m recbole_beta data ..."),
    ("recbole_beta.checkpoint", "python -m recbole_beta convert-checkpoint IN OUT"),
    ("recbole_beta.compat", "python -m recbole_beta convert-checkpoint IN OUT"),
])
def test_the_old_names_of_moved_commands_say_where_they_went(tmp_path, old, new):
    """The data tools and the conversion moved to ``python -m recbole_beta`` (the top layer's command line): the
    old names stop with one line naming the new one, and do nothing else."""
    import subprocess

    done = subprocess.run([sys.executable, "-m", old, "convert", "x"], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [f"recbole-beta: `python -m {old}{' ...' if old.endswith('data') else ''}` "
                                                f"is now `{new}`" + (" (the same sub-commands and options)"
                                                                     if old.endswith("data") else "")]
    assert list(tmp_path.iterdir()) == []


def test_the_sub_commands_of_the_top_command_line(capsys, tmp_path):
    """``python -m recbole_beta data ...`` reaches the data tools and ``convert-checkpoint`` the conversion,
    before the run's own arguments are read."""
    assert main(["data", "synthetic", "--users", "50", "--items", "40", "--density", "0.2", "--name", "toy",
                 "--seed", "1", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "toy" / "toy.inter").is_file()
    assert main(["convert-checkpoint", str(tmp_path / "none.pth"), str(tmp_path / "out.pth")]) == 2
    assert capsys.readouterr().err.strip() == f"recbole-beta: cannot convert {tmp_path / 'none.pth'}: no such file"
