"""Small gaps (issue 31, item 5): ``python -m recbole_beta.tuning`` is run_hyper.py, and RaCT says that its
pre-training runs ``pretrain_epochs``, not ``epochs`` (real ml-100k runs)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import run_cli

REPO = Path(__file__).resolve().parent.parent


def module(*args, cwd):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow
def test_python_m_recbole_beta_tuning_is_run_hyper(tmp_path):
    helped = module("recbole_beta.tuning", "--help", cwd=tmp_path)
    assert helped.returncode == 0, helped.stderr
    assert "--max_evals" in helped.stdout and "--params_file" in helped.stdout

    bad = module("recbole_beta.tuning", "--model=NoSuchModel", cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.startswith("recbole-beta: ") and bad.stderr.count("\n") == 1, bad.stderr

    (tmp_path / "space.hyper").write_text("learning_rate choice [0.001]\n")
    searched = module("recbole_beta.tuning", "--model=ConstantBetaMultVAE", "--params_file=space.hyper",
                      "--max_evals=1", "--output_dir=hyper", "--epochs=1", "--state=WARNING", "--show_progress=False",
                      cwd=tmp_path)
    assert searched.returncode == 0, searched.stderr[-2000:]
    assert "trials: 1 (0 failed)" in searched.stdout
    assert json.loads((tmp_path / "hyper" / "best.json").read_text())["params"] == {"learning_rate": 0.001}


@pytest.mark.slow
def test_ract_says_its_pre_training_runs_pretrain_epochs(monkeypatch, capsys):
    code, err, _ = run_cli(monkeypatch, capsys, "--model=RaCT", "--epochs=5", "--pretrain_epochs=2", "--save_step=1")
    assert code == 0, err
    lines = [line for line in err.splitlines() if "pretrain_epochs=2" in line]
    assert len(lines) == 1, err
    assert "epochs=5" in lines[0] and "train_stage=actor_pretrain" in lines[0], lines[0]


@pytest.mark.slow
def test_ract_without_epochs_given_says_nothing_of_them(monkeypatch, capsys):
    code, err, _ = run_cli(monkeypatch, capsys, "--model=RaCT", "--pretrain_epochs=2", "--save_step=1")
    assert code == 0, err
    assert "pretrain_epochs=2" not in err, err


@pytest.mark.parametrize("protocol", ["weak", "strong"])
@pytest.mark.parametrize("pretrain,step", [(5, 10), (5, 2)])
def test_ract_save_step_must_divide_pretrain_epochs_under_every_protocol(monkeypatch, capsys, tmp_path, protocol,
                                                                          pretrain, step):
    """RaCT's pretraining saves every save_step epochs and the last file saved is tested: with save_step=10 and
    pretrain_epochs=5 none was saved (the run trained, then ended in a misleading "cannot write saved/..."
    line), with save_step=2 the epoch-4 model was tested as if it were the last. One line before any data."""
    monkeypatch.chdir(tmp_path)
    code, err, _ = run_cli(monkeypatch, capsys, "--model=RaCT", f"--pretrain_epochs={pretrain}",
                           f"--save_step={step}", f"--eval_protocol={protocol}", f"--data_path={tmp_path / 'none'}")
    assert code == 2
    assert err.strip() == (f"recbole-beta: save_step={step} is not allowed: must divide pretrain_epochs={pretrain}: "
                           "pretraining saves the model every save_step epochs and the last file saved is the one "
                           "tested")
    assert not (tmp_path / "saved").exists()
