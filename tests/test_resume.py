"""A run stopped after k epochs and resumed follows the same beta trajectory and reaches the same
metrics as one never stopped; checkpoints load with torch's weights-only loader for every trainer."""

import pytest
import torch
from recbole.utils import init_seed

from recbole_beta.checkpoint import load_checkpoint
from recbole_beta.compat import init_logger
from recbole_beta.config import Config
from recbole_beta.quick_start import prepare, run_recbole_beta


class Stop(Exception):
    """Stands for a crash or a kill between two epochs."""


def interrupted_run(model, config_dict, stop_after):
    """Train as run_recbole_beta does, but die after `stop_after` epochs; return the checkpoint path."""
    config = Config(model=model, dataset="ml-100k", config_dict=config_dict)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    _, (train_data, valid_data, _), _, trainer = prepare(config)

    def stop(epoch_idx, valid_score):
        if epoch_idx + 1 == stop_after:
            raise Stop

    with pytest.raises(Stop):
        trainer.fit(train_data, valid_data, saved=True, show_progress=False, callback_fn=stop)
    return trainer.saved_model_file


CASES = {
    # 4 batches an epoch; the cycle and the controller both carry state across the stop
    "CyclicalBetaMultVAE": {"n_cycles": 2, "ratio": 0.5, "beta_max": 0.3},
    "ControlledBetaMultVAE": {"kl_target": 2.0, "kp": 0.05, "ki": 0.01, "controller_beta_max": 0.5},
    "BetaMultVAE": {"beta_strategy": ["scaled", "cyclical"], "gamma": 0.002, "n_cycles": 3},
}


@pytest.mark.slow
@pytest.mark.parametrize("model", list(CASES))
def test_resume_reproduces_the_uninterrupted_run(model, fast):
    config = {**fast, "epochs": 6, "train_batch_size": 256, **CASES[model]}
    whole = run_recbole_beta(model, "ml-100k", config_dict=dict(config))

    checkpoint = interrupted_run(model, dict(config), stop_after=3)
    state = load_checkpoint(checkpoint)
    assert state["other_parameter"]["beta_strategy"]["step_count"] == 4 * (state["epoch"] + 1)

    resumed = run_recbole_beta(model, "ml-100k", config_dict=dict(config), resume=checkpoint)
    start = state["epoch"] + 1
    assert [h["epoch"] for h in resumed["history"]] == list(range(6))
    for a, b in zip(whole["history"][start:], resumed["history"][start:]):
        assert a["beta"] == pytest.approx(b["beta"], rel=1e-12)
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-9)
        assert a["valid"] == b["valid"]
    assert resumed["best_valid_result"] == whole["best_valid_result"]
    assert resumed["test_result"] == whole["test_result"]


@pytest.mark.slow
def test_resumed_run_that_never_improves_reports_the_checkpoints_best(fast):
    """RecBole's fit writes the checkpoint before it sets best_valid_result, so the checkpoint must
    hold the result of the evaluation it saves: else a run resumed from it that never improves
    again reports the best before it (or none) beside the right score."""
    config = {**fast, "epochs": 3, "learning_rate": 0.03}  # the best epoch comes before the last
    whole = run_recbole_beta("BetaMultVAE", "ml-100k", config_dict=dict(config))
    scores = [h["valid_score"] for h in whole["history"]]
    best = scores.index(max(scores))
    assert 0 < best < len(scores) - 1  # improves once, then never again: the case under test
    state = load_checkpoint(whole["checkpoint"])
    assert state["epoch"] == best
    assert state["best_valid_result"] == whole["history"][best]["valid"] == dict(whole["best_valid_result"])

    resumed = run_recbole_beta("BetaMultVAE", "ml-100k", config_dict=dict(config), resume=whole["checkpoint"])
    assert [h["epoch"] for h in resumed["history"]] == list(range(len(scores)))  # it trained on, no better
    assert resumed["best_valid_score"] == whole["best_valid_score"]
    assert resumed["best_valid_result"] == whole["best_valid_result"]
    assert resumed["test_result"] == whole["test_result"]


@pytest.mark.parametrize("model", [*(pytest.param(m, marks=pytest.mark.slow) for m in ("MultiVAE", "RecVAE")),
                                   *(pytest.param(m, marks=pytest.mark.slow) for m in ("EASE", "ItemKNN")), "Pop",
                                   pytest.param("BPR", marks=pytest.mark.slow)])
def test_recbole_trainers_fit_evaluate_and_resume_with_safe_checkpoints(model, fast):
    """RecBole's Trainer, RecVAETrainer and TraditionalTrainer (EASE and ItemKNN keep numpy and
    scipy matrices in their checkpoints) under torch >= 2.6's safe loader."""
    result = run_recbole_beta(model, "ml-100k", config_dict={**fast, "epochs": 2})
    assert 0 < result["test_result"]["ndcg@100"] <= 1
    checkpoint = load_checkpoint(result["checkpoint"])  # weights_only=True
    assert checkpoint["config"]["model"] == model
    resumed = run_recbole_beta(model, "ml-100k", config_dict={**fast, "epochs": 3}, resume=result["checkpoint"])
    # the checkpoint's epochs are restored, not trained again: their timings too are the first run's
    assert resumed["history"][: len(result["history"])] == result["history"]
    if model in ("EASE", "ItemKNN", "Pop"):  # TraditionalTrainer: its one epoch is done, nothing to add
        assert resumed["history"] == result["history"]
        assert resumed["test_result"] == result["test_result"]
    else:  # and the epoch trained after the resume is the uninterrupted run's
        whole = run_recbole_beta(model, "ml-100k", config_dict={**fast, "epochs": 3})
        assert without_timings(resumed["history"]) == without_timings(whole["history"])
        assert [h["epoch"] for h in resumed["history"]] == [0, 1, 2]
        assert resumed["best_valid_result"] == whole["best_valid_result"]
        assert resumed["test_result"] == whole["test_result"]


def without_timings(history):
    return [{key: value for key, value in epoch.items() if key != "train_time"} for epoch in history]


def test_checkpoint_refuses_arbitrary_objects(tmp_path):
    """The loader stays the safe one: a pickled object that is not plain data is rejected."""
    torch.save({"config": Config}, tmp_path / "evil.pth")
    with pytest.raises(Exception, match="[Ww]eights only"):
        load_checkpoint(tmp_path / "evil.pth")
