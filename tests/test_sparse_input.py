"""The sparse-input path (sparse_input: True) computes what the dense path computes."""

import pytest
import torch
import torch.nn.functional as F

from recbole_beta.config import Config
from recbole_beta.model import ScaledBetaMultVAE
from recbole_beta.quick_start import prepare, run_recbole_beta


@pytest.fixture(scope="module")
def ml100k():
    config = Config(model=ScaledBetaMultVAE, dataset="ml-100k",
                    config_dict={"state": "WARNING", "sparse_input": True, "gamma": 0.01, "dropout_prob": 0.5})
    _, (train, _, _), model, _ = prepare(config)
    return config, train, model


def dense_loss(model, user, mask):
    """RecBole's dense path, written out, with a given dropout mask."""
    x = model.get_rating_matrix(user)
    h = F.normalize(x) * mask / (1 - model.drop_out)
    h = model.encoder(h)
    half = model.lat_dim // 2
    mu, logvar = h[:, :half], h[:, half:]
    z = model.decoder(model.reparameterize(mu, logvar))
    recon = -(F.log_softmax(z, 1) * x).sum(1)
    kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1)
    beta = model.beta_strategy.weights(model.user_activity[user])
    return recon.mean(), (beta * kl).mean()


def sparse_loss(model, user, mask):
    x = model.get_sparse_rating_matrix(user)
    rows, cols = x.indices()
    z, mu, logvar = model.forward_sparse(x, dropout_mask=mask[rows, cols])
    recon = -torch.zeros(len(user)).index_add_(0, rows, F.log_softmax(z, 1)[rows, cols] * x.values())
    kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1)
    beta = model.beta_strategy.weights(model.user_activity[user])
    return recon.mean(), (beta * kl).mean()


def grads(model, loss):
    model.zero_grad()
    loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()}


def test_sparse_matrix_holds_the_dense_values(ml100k):
    _, _, model = ml100k
    user = torch.arange(1, 300)
    assert torch.equal(model.get_sparse_rating_matrix(user).to_dense(), model.get_rating_matrix(user))


def test_loss_and_gradients_match_the_dense_path_on_the_same_mask(ml100k):
    _, _, model = ml100k
    model.train()
    user = torch.arange(0, 944, 3)  # the padding user 0 included, as in training batches
    generator = torch.Generator().manual_seed(1)
    mask = (torch.rand(len(user), model.n_items, generator=generator) > model.drop_out).float()

    torch.manual_seed(5)  # the same reparameterisation noise for both
    dense = dense_loss(model, user, mask)
    dense_grads = grads(model, sum(dense))
    torch.manual_seed(5)
    sparse = sparse_loss(model, user, mask)
    sparse_grads = grads(model, sum(sparse))

    assert sparse[0].item() == pytest.approx(dense[0].item(), rel=1e-5)
    assert sparse[1].item() == pytest.approx(dense[1].item(), rel=1e-5)
    for name, grad in dense_grads.items():
        assert torch.allclose(sparse_grads[name], grad, rtol=1e-4, atol=1e-7), name


def test_calculate_loss_and_predictions_agree_in_eval_mode(ml100k):
    _, _, model = ml100k
    model.eval()
    user = torch.arange(1, 944, 7)
    with torch.no_grad():
        sparse_scores = model.full_sort_predict({"user_id": user})
        model.sparse_input = False
        dense_scores = model.full_sort_predict({"user_id": user})
        model.sparse_input = True
    assert torch.allclose(sparse_scores, dense_scores, rtol=1e-5, atol=1e-5)


def test_trains_end_to_end_to_metrics_like_the_dense_path(fast):
    config = {**fast, "epochs": 10, "train_batch_size": 256}
    dense = run_recbole_beta("BetaMultVAE", "ml-100k", config_dict=dict(config))
    sparse = run_recbole_beta("BetaMultVAE", "ml-100k", config_dict={**config, "sparse_input": True})
    # different random draws (dropout on the non-zeros only), so equal within seed noise, not bitwise
    for metric in ("ndcg@100", "recall@20"):
        assert sparse["test_result"][metric] == pytest.approx(dense["test_result"][metric], abs=0.03)
    assert sparse["test_result"]["ndcg@100"] > 0.2


def test_duplicate_rows_give_the_dense_values_loss_and_scores(tmp_path):
    """RecBole keeps duplicate (user, item) rows unless rm_dup_inter is set, and its dense rating
    matrix holds 1 for such an item; the sparse path must see the same data, not a coalesced 2."""
    from recbole.data import create_dataset

    from conftest import write_tiny_dataset
    from recbole_beta.model import BetaMultVAE

    keys = write_tiny_dataset(tmp_path, "dups")
    inter = tmp_path / "dups" / "dups.inter"
    inter.write_text(inter.read_text() + "u1\ti1\nu1\ti1\nu2\ti3\nu4\ti6\n")  # u1 has i1 three times
    config = Config(model=BetaMultVAE, dataset="dups", config_dict={
        **keys, "state": "WARNING", "sparse_input": True, "beta_strategy": ["scaled", "annealed"], "gamma": 0.01,
        "total_anneal_steps": 0, "mlp_hidden_size": [8], "latent_dimension": 6, "dropout_prob": 0.5,
    })
    train, _, _ = create_dataset(config).build()
    torch.manual_seed(0)
    model = BetaMultVAE(config, train)
    user = torch.arange(0, 5)  # the padding user 0 and the four users
    u1, i1 = train.token2id("user_id", "u1"), train.token2id("item_id", "i1")
    assert (model.history_item_id[u1] == i1).sum() == 3  # RecBole kept the duplicate rows

    model.train()
    mask = (torch.rand(len(user), model.n_items, generator=torch.Generator().manual_seed(3)) > model.drop_out).float()
    torch.manual_seed(5)
    dense = dense_loss(model, user, mask)
    torch.manual_seed(5)
    sparse = sparse_loss(model, user, mask)
    assert sparse[0].item() == pytest.approx(dense[0].item(), rel=1e-6)
    assert sparse[1].item() == pytest.approx(dense[1].item(), rel=1e-6)

    model.eval()
    with torch.no_grad():
        sparse_scores = model.full_sort_predict({"user_id": user})
        model.sparse_input = False
        dense_scores = model.full_sort_predict({"user_id": user})
    assert torch.allclose(sparse_scores, dense_scores, rtol=1e-6, atol=1e-6)
    dense_x = model.get_rating_matrix(user)
    assert dense_x.max() == 1  # RecBole's dense matrix: 1 for a duplicated item too
    assert torch.equal(model.get_sparse_rating_matrix(user).to_dense(), dense_x)
