"""Mixed precision (``enable_amp``, recbole_beta.precision): a bfloat16 step of every strategy's loss and
gradient against float32, on the dense and the sparse input path; the float32 parts stay float32;
checkpoints move between precisions; a CPU without bfloat16 instructions trains in float32 and says so."""

import copy
import logging

import pytest
import torch
from recbole.data.interaction import Interaction

from recbole_beta import precision
from recbole_beta.config import Config
from recbole_beta.model import BetaMultVAE
from recbole_beta.quick_start import prepare, run_recbole_beta

#: one of each strategy, and a product
STRATEGIES = {
    "constant": {"beta_strategy": "constant", "beta": 0.3},
    "annealed": {"beta_strategy": "annealed", "anneal_cap": 0.2, "total_anneal_steps": 10},
    "cyclical": {"beta_strategy": "cyclical", "beta_max": 0.3, "n_cycles": 2},
    "scaled": {"beta_strategy": "scaled", "gamma": 0.002},
    "controlled": {"beta_strategy": "controlled", "kl_target": 2.0, "kp": 0.05, "ki": 0.01},
    "scaled x cyclical": {"beta_strategy": ["scaled", "cyclical"], "gamma": 0.002, "n_cycles": 2},
}

#: bfloat16 keeps 8 significant bits (relative rounding 2^-9): the loss of a batch and each parameter's
#: gradient (as a whole, in L2) within 2% of float32's
TOLERANCE = 0.02


@pytest.fixture(scope="module")
def built(tmp_path_factory, module_workdir):
    """ml-100k's training split, and the config keys shared by every model here."""
    keys = {"state": "WARNING", "show_progress": False, "checkpoint_dir": str(tmp_path_factory.mktemp("saved"))}
    config = Config(model="BetaMultVAE", dataset="ml-100k", config_dict=keys, argv=[])
    _, (train, _, _), _, _ = prepare(config)
    return train, keys


def loss_and_grads(model, users, autocast):
    """One training step's loss (reconstruction + weighted KL) and gradients, with the same random draws."""
    model.train()
    model.zero_grad()
    torch.manual_seed(0)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16, enabled=autocast):
        recon, kl = model.calculate_loss(Interaction({"user_id": users}))
    assert recon.dtype == kl.dtype == torch.float32  # the likelihood and the KL term in float32
    (recon + kl).backward()
    return (recon + kl).item(), {n: p.grad.clone() for n, p in model.named_parameters()}, model.batch_beta[0]


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
@pytest.mark.parametrize("strategy", [s if s == "annealed" else pytest.param(s, marks=pytest.mark.slow)
                                      for s in STRATEGIES])
def test_a_bfloat16_step_is_float32s_within_tolerance(built, strategy, sparse):
    train, keys = built
    config = Config(model="BetaMultVAE", dataset="ml-100k", argv=[],
                    config_dict={**keys, **STRATEGIES[strategy], "sparse_input": sparse})
    full = BetaMultVAE(config, train._dataset)
    half = copy.deepcopy(full)  # the same weights and strategy state
    assert (full.sparse_input is not None) == sparse
    users = torch.arange(1, 257)
    loss32, grads32, beta32 = loss_and_grads(full, users, autocast=False)
    loss16, grads16, beta16 = loss_and_grads(half, users, autocast=True)
    assert abs(loss16 - loss32) <= TOLERANCE * abs(loss32), (loss16, loss32)
    for name, g32 in grads32.items():
        g16 = grads16[name]
        assert g16.dtype == torch.float32, name  # gradients land on float32 parameters
        error = (g16 - g32).norm() / g32.norm().clamp_min(1e-12)
        assert error <= TOLERANCE, (name, error.item())
    # the beta is float32's: the strategy reads the KL, computed in float32, and user activity only
    if torch.is_tensor(beta32):
        assert beta16.dtype == torch.float32 and torch.allclose(beta16, beta32, rtol=TOLERANCE)
    else:
        assert beta16 == pytest.approx(beta32, rel=TOLERANCE)
    # and autocast did run the products in bfloat16 (else this test compares float32 with itself)
    assert any((grads16[n] != grads32[n]).any() for n in grads32)


RUN = {"epochs": 2, "state": "INFO", "show_progress": False, "train_batch_size": 256}


@pytest.mark.slow
def test_checkpoints_move_between_precisions():
    """A checkpoint of a bfloat16 run resumes in float32 and one of a float32 run in bfloat16: the
    parameters and Adam's moments are float32 either way."""
    for first, second in ((True, False), (False, True)):
        saved = run_recbole_beta("AnnealedBetaMultVAE", "ml-100k", config_dict={**RUN, "enable_amp": first})
        state = torch.load(saved["checkpoint"], weights_only=True)
        assert all(v.dtype == torch.float32 for v in state["state_dict"].values())
        resumed = run_recbole_beta("AnnealedBetaMultVAE", "ml-100k", resume=saved["checkpoint"],
                                   config_dict={**RUN, "epochs": 3, "enable_amp": second})
        assert [h["epoch"] for h in resumed["history"]] == [0, 1, 2]
        assert resumed["history"][:2] == saved["history"]
        assert 0 < resumed["test_result"]["ndcg@100"] <= 1


@pytest.mark.slow
def test_without_bfloat16_instructions_the_run_stays_float32_and_says_so(monkeypatch, caplog):
    float32 = run_recbole_beta("AnnealedBetaMultVAE", "ml-100k", config_dict={**RUN, "enable_amp": False})
    if precision.cpu_has_bfloat16():  # here autocast changes the numbers: the run below would differ
        bfloat16 = run_recbole_beta("AnnealedBetaMultVAE", "ml-100k", config_dict={**RUN, "enable_amp": True})
        assert bfloat16["history"][0]["train_loss"] != float32["history"][0]["train_loss"]
    monkeypatch.setattr(precision, "cpu_has_bfloat16", lambda: False)
    with caplog.at_level(logging.WARNING):
        forced = run_recbole_beta("AnnealedBetaMultVAE", "ml-100k", config_dict={**RUN, "enable_amp": True})
    lines = [r.getMessage() for r in caplog.records if "no bfloat16 instructions" in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0] and "stay float32" in lines[0], lines
    untimed = [{k: v for k, v in h.items() if k != "train_time"} for h in forced["history"]]
    assert untimed == [{k: v for k, v in h.items() if k != "train_time"} for h in float32["history"]]
    assert forced["test_result"] == float32["test_result"]
