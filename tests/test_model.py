"""BetaMultVAE's loss against a hand computation, and the ablation knobs, on a tiny real dataset."""


import numpy as np
import pytest
import torch
from recbole.data import create_dataset

from conftest import run_python, source_copy, write_tiny_dataset
from recbole_beta.beta import StrategyContext
from recbole_beta.config import Config
from recbole_beta.model import MODELS, BetaMultVAE, ControlledBetaMultVAE, ScaledBetaMultVAE


def build(model_class, tmp_path, **overrides):
    config_dict = write_tiny_dataset(tmp_path)
    config_dict.update({"mlp_hidden_size": [5], "latent_dimension": 4, "state": "WARNING", **overrides})
    config = Config(model=model_class, dataset="tiny", config_dict=config_dict)
    dataset = create_dataset(config)
    train, _, _ = dataset.build()
    torch.manual_seed(0)
    return config, train, model_class(config, train)


def numpy_loss(model, dataset, users, beta_of):
    """recon_u + beta_u * KL_u averaged over the batch, computed with numpy from the model's weights."""
    n_items = dataset.item_num
    x = np.zeros((len(users), n_items))
    uid, iid = dataset.inter_feat["user_id"].numpy(), dataset.inter_feat["item_id"].numpy()
    for row, u in enumerate(users):
        x[row, iid[uid == u]] = 1.0
    counts = x.sum(1)
    weights = [(m.weight.detach().double().numpy(), m.bias.detach().double().numpy()) for m in model.modules()
               if isinstance(m, torch.nn.Linear)]
    (w1, b1), (w2, b2), (w3, b3), (w4, b4) = weights
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    h = np.tanh((x / np.maximum(norm, 1e-12)) @ w1.T + b1) @ w2.T + b2
    half = h.shape[1] // 2
    mu, logvar = h[:, :half], h[:, half:]
    logits = np.tanh(mu @ w3.T + b3) @ w4.T + b4  # noise_std = 0: z = mu
    log_softmax = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True)) - logits.max(
        1, keepdims=True
    )
    recon = -(log_softmax * x).sum(1)
    kl = 0.5 * (mu**2 + np.exp(logvar) - 1 - logvar).sum(1)
    beta = beta_of(counts)
    return recon.mean(), (beta * kl).mean(), counts


@pytest.mark.parametrize("gamma", [0.0, 0.1, 2.0])
def test_per_user_loss_matches_hand_computation(tmp_path, gamma):
    config, train, model = build(
        ScaledBetaMultVAE, tmp_path, gamma=gamma, dropout_prob=0.0, noise_std=0.0
    )
    users = torch.tensor([1, 2, 3, 4])
    model.train()
    recon, kl = model.calculate_loss({"user_id": users})
    exp_recon, exp_kl, counts = numpy_loss(model, train, users.numpy(), lambda c: gamma * c)
    assert sorted(counts) == [3, 4, 5, 6]  # |x_u| of the four users, all in training
    assert torch.allclose(model.user_activity[users], torch.tensor(counts, dtype=torch.float))
    assert recon.item() == pytest.approx(exp_recon, rel=1e-5)
    assert kl.item() == pytest.approx(exp_kl, rel=1e-5, abs=1e-9)
    beta, rows = model.batch_beta  # what the trainer tallies into the epoch's mean beta
    assert rows == 4 and beta.sum().item() / rows == pytest.approx(gamma * counts.mean())


def test_scalar_beta_loss_and_step_counting(tmp_path):
    config, train, model = build(
        BetaMultVAE, tmp_path, beta_strategy="annealed", anneal_cap=1.0, total_anneal_steps=4,
        dropout_prob=0.0, noise_std=0.0,
    )
    users = torch.tensor([1, 2, 3, 4])
    model.train()
    for step in (1, 2):
        recon, kl = model.calculate_loss({"user_id": users})
        exp_recon, exp_kl, _ = numpy_loss(model, train, users.numpy(), lambda c, step=step: step / 4)
        assert model.beta_strategy.step_count == step
        assert recon.item() == pytest.approx(exp_recon, rel=1e-5)
        assert kl.item() == pytest.approx(exp_kl, rel=1e-5)


def test_normalised_scaling_uses_mean_training_activity(tmp_path):
    _, _, model = build(ScaledBetaMultVAE, tmp_path, gamma=0.2, normalize_activity=True)
    assert model.beta_strategy.mean_activity == pytest.approx((5 + 3 + 4 + 6) / 4)
    w = model.beta_strategy.weights(model.user_activity[torch.tensor([1, 2, 3, 4])])
    assert w.mean().item() == pytest.approx(0.2)


def test_architecture_knobs(tmp_path):
    _, train, model = build(
        BetaMultVAE, tmp_path, mlp_hidden_size=[7, 5], latent_dimension=6, activation="relu"
    )
    linears = [m for m in model.encoder if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(train.item_num, 7), (7, 5), (5, 6)]
    assert [type(m).__name__ for m in model.encoder] == ["Linear", "ReLU", "Linear", "ReLU", "Linear"]
    decoder = [m for m in model.decoder if isinstance(m, torch.nn.Linear)]
    assert decoder[0].in_features == 3  # latent code = latent_dimension / 2
    assert not any(isinstance(m, torch.nn.Tanh) for m in model.modules())


@pytest.mark.parametrize("std", [0.01, 1.0])
def test_noise_std(tmp_path, std):
    _, _, model = build(BetaMultVAE, tmp_path, noise_std=std)
    model.train()
    mu, logvar = torch.zeros(20000, 2), torch.zeros(20000, 2)
    z = model.reparameterize(mu, logvar)
    assert z.std().item() == pytest.approx(std, rel=0.05)
    model.eval()
    assert torch.equal(model.reparameterize(mu, logvar), mu)


def controller_of(model_class, config):
    return model_class.build_beta_strategy(config, StrategyContext())


@pytest.mark.parametrize("given", [{}, {"controller_beta_max": 0.4, "beta_min": 0.1, "beta_max": 0.7}])
def test_the_controller_has_one_bound_whichever_model_runs_it(given):
    """controller_beta_max bounds the controller, in BetaMultVAE as in ControlledBetaMultVAE; beta_max
    (the cyclical peak, 0.2 by default) does not reach it."""
    bounds = []
    for model_class, strategy in ((BetaMultVAE, {"beta_strategy": "controlled"}), (ControlledBetaMultVAE, {})):
        config = Config(model=model_class.__name__, dataset="ml-100k", config_dict={**strategy, **given}, argv=[])
        plain = {**strategy, **given}  # a sweep spec's dict: the rest from properties/
        for source in (config, plain):
            controller = controller_of(model_class, source)
            bounds.append((controller.beta_min, controller.beta_max))
    expected = (given.get("beta_min", 0.0), given.get("controller_beta_max", 1.0))
    assert bounds == [expected] * 4


def test_named_models_take_their_defaults_from_betamultvae_yaml():
    """Each named model's Config holds BetaMultVAE.yaml's defaults and its own beta_strategy."""
    base = Config(model="BetaMultVAE", dataset="ml-100k", argv=[])
    keys = ["noise_std", "mlp_hidden_size", "latent_dimension", "dropout_prob", "activation", "anneal_cap",
            "beta", "beta_max", "gamma", "kl_target", "controller_beta_max", "train_neg_sample_args"]
    for name, model_class in MODELS.items():
        config = Config(model=name, dataset="ml-100k", argv=[])
        assert {k: config[k] for k in keys} == {k: base[k] for k in keys}, name
        assert config["beta_strategy"] == (model_class.strategy or "annealed"), name


@pytest.mark.parametrize("alpha, beta_of", [(0.5, lambda c: 0.1 * np.sqrt(c)), (2.0, lambda c: 0.1 * c**2)])
def test_activity_exponent_loss_matches_hand_computation(tmp_path, alpha, beta_of):
    _, train, model = build(ScaledBetaMultVAE, tmp_path, gamma=0.1, activity_exponent=alpha, dropout_prob=0.0,
                            noise_std=0.0)
    users = torch.tensor([1, 2, 3, 4])
    model.train()
    recon, kl = model.calculate_loss({"user_id": users})
    exp_recon, exp_kl, _ = numpy_loss(model, train, users.numpy(), beta_of)
    assert recon.item() == pytest.approx(exp_recon, rel=1e-5)
    assert kl.item() == pytest.approx(exp_kl, rel=1e-5)


@pytest.mark.slow
def test_activity_exponent_zero_trains_as_a_constant_beta(fast):
    """Same seed, same losses and metrics: alpha = 0 is ConstantBetaMultVAE with beta = gamma."""
    from recbole_beta.quick_start import run_recbole_beta

    scaled = run_recbole_beta("ScaledBetaMultVAE", "ml-100k", config_dict={**fast, "gamma": 0.2,
                                                                           "activity_exponent": 0.0}, saved=False)
    constant = run_recbole_beta("ConstantBetaMultVAE", "ml-100k", config_dict={**fast, "beta": 0.2}, saved=False)
    for mine, theirs in zip(scaled["history"], constant["history"]):
        assert mine["train_loss"] == pytest.approx(theirs["train_loss"], rel=1e-6)
        assert mine["beta"] == pytest.approx(0.2)
    assert scaled["test_result"] == pytest.approx(constant["test_result"], abs=1e-4)


NAMED_MODEL = '''r"""
ProbeBetaMultVAE
################################################
Reference:
    Dawen Liang et al. "Variational Autoencoders for Collaborative Filtering." in WWW 2018.

A named model added as one module and its YAML.
"""

from recbole_beta.model.beta_multvae import BetaMultVAE


class ProbeBetaMultVAE(BetaMultVAE):
    r"""Mult-VAE with a constant beta."""

    strategy = "constant"
'''

NAMED_MODEL_PROBE = '''
import sys
import recbole_beta
assert recbole_beta.__file__.startswith(sys.argv[1]), recbole_beta.__file__  # the copy, not the checkout
from recbole_beta.quick_start import run_recbole_beta
from recbole_beta.registry import get_model
assert get_model("ProbeBetaMultVAE").__name__ == "ProbeBetaMultVAE"
result = run_recbole_beta("ProbeBetaMultVAE", "ml-100k", config_dict={"epochs": 1, "state": "ERROR",
                          "show_progress": False, "results_dir": None, "checkpoint_dir": "saved"})
print("beta", result["history"][0]["beta"])
'''


@pytest.mark.slow
def test_a_named_model_is_one_module_and_its_yaml(tmp_path):
    """A BetaMultVAE subclass dropped into recbole_beta/model/ with its properties/model/<Model>.yaml is a
    model the lookup finds and RecBole runs, its YAML read (before, model/__init__.py listed every model).
    Dropped into a copy of the package and its properties/ under tmp_path, first on the probe's path: the
    checkout is never written."""
    root = source_copy(tmp_path / "src")
    (root / "recbole_beta" / "model" / "probe_beta_multvae.py").write_text(NAMED_MODEL)
    (root / "properties" / "model" / "ProbeBetaMultVAE.yaml").write_text(
        "beta_strategy: constant   # (str) fixed by the model\nbeta: 0.25                # (float)\n")
    done = run_python(NAMED_MODEL_PROBE, cwd=tmp_path, path_first=[root], args=[str(root)], timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "beta 0.25"  # the model's YAML was read
