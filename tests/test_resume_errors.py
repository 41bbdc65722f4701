"""--resume with a file it cannot use fails with one line naming the file and why, before the dataset
is loaded, never advising to switch torch's safe loader off; RecBole's own checkpoints convert
explicitly (``python -m recbole_beta convert-checkpoint IN OUT``), tampered files never run."""

import os
import pickle
import subprocess
import sys

import pytest
import torch

from conftest import FAST, as_args, refuse_data
from recbole_beta.checkpoint import convert_checkpoint, load_checkpoint
from recbole_beta.cli import main
from recbole_beta.cli import main as cli_main
from recbole_beta.compat import init_logger
from recbole_beta.errors import CheckpointError
from recbole_beta.quick_start import run_recbole_beta

FAST_ARGS = as_args({**FAST, "epochs": 1})


class RunsACommand:
    """A pickled object whose unpickling would run a shell command (what a tampered checkpoint holds)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A folder for the module's runs (RecBole writes log/ and saved/ into the working directory)."""
    folder = tmp_path_factory.mktemp("resume_errors")
    here, argv = os.getcwd(), sys.argv
    os.chdir(folder)
    sys.argv = ["pytest"]
    try:
        yield folder
    finally:
        os.chdir(here)
        sys.argv = argv


@pytest.fixture(scope="module")
def plugin_checkpoint(workdir):
    """A checkpoint of the plugin's BetaMultVAE on ml-100k, one epoch."""
    result = run_recbole_beta("BetaMultVAE", "ml-100k", config_dict={"epochs": 1, "state": "WARNING",
                                                                      "show_progress": False, "results_dir": None})
    return os.path.abspath(result["checkpoint"])


@pytest.fixture(scope="module")
def recbole_checkpoint(workdir):
    """A checkpoint RecBole 1.2.1 writes itself: its MultiVAE trained one epoch by its own Trainer."""
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.model.general_recommender import MultiVAE
    from recbole.trainer import Trainer
    from recbole.utils import init_seed

    config = Config(model="MultiVAE", dataset="ml-100k", config_dict={
        "epochs": 1, "train_neg_sample_args": None, "state": "WARNING", "show_progress": False,
        "checkpoint_dir": str(workdir / "recbole-saved"), "eval_batch_size": 1 << 22,
    })
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    train, valid, _ = data_preparation(config, create_dataset(config))
    trainer = Trainer(config, MultiVAE(config, train._dataset))
    trainer.fit(train, valid, saved=True, show_progress=False)  # saving is RecBole's own code
    return trainer.saved_model_file


def edited(source, target, **config):
    """A copy of a plugin checkpoint whose config says other things (another model or dataset)."""
    state = torch.load(source, weights_only=True)
    state["config"].update(config)
    torch.save(state, target)
    return target


def resume_cli(monkeypatch, capsys, path, model="BetaMultVAE"):
    """``run_recbole_beta.py --model=MODEL --resume=PATH``, with reading the dataset made to fail."""

    refuse_data(monkeypatch, "the dataset was read before the checkpoint was checked")
    argv = [f"--model={model}", f"--resume={path}", *FAST_ARGS]
    monkeypatch.setattr(sys, "argv", ["run_recbole_beta.py", *argv])
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.err.strip()


def one_line(err, path):
    assert err.startswith(f"recbole-beta: cannot resume from {path}: "), err
    assert "\n" not in err and "Traceback" not in err
    assert "weights_only" not in err and "TORCH_FORCE" not in err  # never: switch the safe loader off


def test_missing_file(monkeypatch, capsys, tmp_path):
    code, err = resume_cli(monkeypatch, capsys, tmp_path / "nope.pth")
    assert code == 2
    one_line(err, tmp_path / "nope.pth")
    assert err.endswith("no such file")


def test_a_folder(monkeypatch, capsys, tmp_path):
    code, err = resume_cli(monkeypatch, capsys, tmp_path)
    assert code == 2
    one_line(err, tmp_path)
    assert "not a file" in err


@pytest.mark.parametrize("content", [b"", b"model: BetaMultVAE\n", b"PK\x03\x04 not really a zip", "tensor"])
def test_files_that_are_not_checkpoints(monkeypatch, capsys, tmp_path, content):
    path = tmp_path / "not-a-checkpoint.pth"
    if content == "tensor":
        torch.save(torch.zeros(3), path)  # a torch file, but no run's checkpoint
    else:
        path.write_bytes(content)
    code, err = resume_cli(monkeypatch, capsys, path)
    assert code == 2
    one_line(err, path)
    assert "not a checkpoint" in err


def test_recboles_own_checkpoint_is_refused_with_the_conversion_named(monkeypatch, capsys, recbole_checkpoint):
    code, err = resume_cli(monkeypatch, capsys, recbole_checkpoint, model="MultiVAE")
    assert code == 2
    one_line(err, recbole_checkpoint)
    assert "RecBole 1.2.1" in err
    assert f"python -m recbole_beta convert-checkpoint {recbole_checkpoint} OUT.pth" in err


@pytest.mark.parametrize("layout", ["pickle", "torch"])
def test_a_tampered_file_is_refused_and_nothing_runs(monkeypatch, capsys, tmp_path, layout):
    marker = tmp_path / "it-ran"
    path = tmp_path / "tampered.pth"
    payload = {"config": {"model": "BetaMultVAE", "dataset": "ml-100k"}, "epoch": 0, "state_dict": RunsACommand(marker)}
    if layout == "pickle":
        path.write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, path)
    code, err = resume_cli(monkeypatch, capsys, path)
    assert code == 2
    one_line(err, path)
    assert f"{os.system.__module__}.system" in err and "tampered" in err and "convert" not in err
    assert not marker.exists()

    # the explicit conversion refuses it too, before anything in it runs
    out = tmp_path / "converted.pth"
    assert cli_main(["convert-checkpoint", str(path), str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"recbole-beta: cannot convert {path}: it would import {os.system.__module__}.system")
    assert "\n" not in err
    assert not marker.exists() and not out.exists()


@pytest.mark.parametrize("change,message", [
    ({"model": "MultiVAE"}, "it is a checkpoint of MultiVAE on ml-100k, not of BetaMultVAE on ml-100k"),
    ({"dataset": "ml-1m"}, "it is a checkpoint of BetaMultVAE on ml-1m, not of BetaMultVAE on ml-100k"),
])
def test_a_checkpoint_of_another_model_or_dataset(monkeypatch, capsys, tmp_path, plugin_checkpoint, change, message):
    path = edited(plugin_checkpoint, tmp_path / "other.pth", **change)
    code, err = resume_cli(monkeypatch, capsys, path)
    assert code == 2
    one_line(err, path)
    assert err.endswith(message)


def test_a_checkpoint_of_another_architecture(plugin_checkpoint, fast):
    """Known only once the model is built: still one line, naming the file."""
    with pytest.raises(CheckpointError, match=f"cannot resume from {plugin_checkpoint}: it does not fit this "
                                              "BetaMultVAE .*size mismatch"):
        run_recbole_beta("BetaMultVAE", "ml-100k", config_dict={**fast, "mlp_hidden_size": [64]},
                         resume=plugin_checkpoint)


@pytest.mark.slow
def test_convert_recboles_checkpoint_then_resume_it(tmp_path, recbole_checkpoint, fast):
    out = tmp_path / "converted.pth"
    done = subprocess.run(
        [sys.executable, "-m", "recbole_beta", "convert-checkpoint", recbole_checkpoint, str(out)],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert f"wrote {out}: MultiVAE on ml-100k, after epoch 0" in done.stdout
    state = load_checkpoint(out)  # torch's safe loader reads it
    assert state["config"]["model"] == "MultiVAE" and state["epoch"] == 0
    original = torch.load(recbole_checkpoint, weights_only=False)  # the test's own file: trusted
    for name, tensor in original["state_dict"].items():
        assert torch.equal(state["state_dict"][name], tensor)

    resumed = run_recbole_beta("MultiVAE", "ml-100k", config_dict={**fast, "epochs": 3}, resume=str(out))
    assert [h["epoch"] for h in resumed["history"]] == [1, 2]
    assert 0 < resumed["test_result"]["ndcg@100"] <= 1

    with pytest.raises(CheckpointError, match="already a recbole-beta checkpoint"):
        convert_checkpoint(out, tmp_path / "again.pth")
