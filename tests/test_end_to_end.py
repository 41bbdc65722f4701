"""Every plugin model trains and evaluates on the real ml-100k through the CLI, RecBole's trainer and
its full-ranking evaluator; the beta it used is in the log, TensorBoard and the result file."""

import json
import sys

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from recbole_beta.cli import main
from recbole_beta.model import MODELS

METRICS = {f"{m}@{k}" for m in ("recall", "ndcg") for k in (20, 50, 100)}


# one model end to end in the fast tier, every model in the full suite
@pytest.mark.parametrize("model", [m if m == "ScaledBetaMultVAE" else pytest.param(m, marks=pytest.mark.slow)
                                   for m in MODELS])
def test_model_runs_end_to_end(model, monkeypatch, capsys, tmp_path):
    argv = [f"--model={model}", "--dataset=ml-100k", "--epochs=3", "--show_progress=False", "--state=INFO"]
    monkeypatch.setattr(sys, "argv", ["run_recbole_beta.py", *argv])
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "best valid: {" in out and "test result: {" in out

    (result_file,) = list((tmp_path / "results").glob(f"{model}-ml-100k-*.json"))
    result = json.loads(result_file.read_text())
    assert set(result["test_result"]) == METRICS and set(result["best_valid_result"]) == METRICS
    assert all(0 <= v <= 1 for v in result["test_result"].values())
    assert result["test_result"]["ndcg@100"] > 0.05
    assert [h["epoch"] for h in result["history"]] == [0, 1, 2]
    assert all(h["beta"] >= 0 and "train_loss1" in h and "train_loss2" in h for h in result["history"])
    assert all("ndcg@100" in h["valid"] for h in result["history"])

    (log_file,) = list((tmp_path / "log" / model).glob("*.log"))
    epoch_lines = [line for line in log_file.read_text().splitlines() if "training [time" in line]
    assert len(epoch_lines) == 3 and all("beta: " in line for line in epoch_lines)

    (events,) = list((tmp_path / "log_tensorboard").glob(f"{model}-ml-100k-*"))
    accumulator = EventAccumulator(str(events))
    accumulator.Reload()
    betas = [e.value for e in accumulator.Scalars("Beta/Train")]
    assert betas == pytest.approx([h["beta"] for h in result["history"]], rel=1e-6)


@pytest.mark.slow
def test_strategies_give_the_betas_they_promise(tmp_path):
    """On real data: constant is constant, scaled is gamma times the mean row activity, cyclical
    rises and falls back within the run."""
    from recbole.data import create_dataset

    from recbole_beta.config import Config
    from recbole_beta.quick_start import run_recbole_beta

    fast = {"epochs": 4, "show_progress": False, "state": "WARNING", "train_batch_size": 256}
    constant = run_recbole_beta("ConstantBetaMultVAE", "ml-100k", config_dict={**fast, "beta": 0.3})
    assert [h["beta"] for h in constant["history"]] == pytest.approx([0.3] * 4)

    scaled = run_recbole_beta("ScaledBetaMultVAE", "ml-100k", config_dict={**fast, "gamma": 0.001})
    # the mean row's beta: gamma x the training interactions / 944 user ids (padding included)
    config = Config(model="ScaledBetaMultVAE", dataset="ml-100k", config_dict=fast)
    train, _, _ = create_dataset(config).build()
    assert 79000 < train.inter_num < 81000 and train.user_num == 944
    assert scaled["history"][0]["beta"] == pytest.approx(0.001 * train.inter_num / 944, rel=1e-6)

    cyclical = run_recbole_beta(
        "CyclicalBetaMultVAE", "ml-100k", config_dict={**fast, "n_cycles": 2, "ratio": 0.5, "beta_max": 0.4}
    )
    betas = [h["beta"] for h in cyclical["history"]]
    # 16 steps, 2 cycles of 8, rising over 4 steps: epoch 0 = steps 1-4 (rising), epoch 1 holds
    assert betas[0] < betas[1] == pytest.approx(0.4) and betas[2] < betas[1]
