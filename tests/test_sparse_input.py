"""The sparse-input path (sparse_input: True) computes what the dense path computes."""

import pytest
import torch
from recbole.utils import init_seed
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


def model_loss(model, user, mask):
    """The model's own loss terms on its configured path, with the given dropout mask."""
    mu, logvar, recon = model._encode_batch(user, dropout_mask=mask)
    kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1)
    beta = model.beta_strategy.weights(model.user_activity[user])
    return recon.mean(), (beta * kl).mean()


def sparse_loss(model, user, mask):
    assert model.sparse_input
    return model_loss(model, user, mask)


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

    # the sparse path's first layer holds W^T, and ``weight`` is a view of it: an in-place update
    # through that view (as code written for nn.Linear makes) is what the sparse path computes with
    with torch.no_grad():
        model.encoder[0].weight.mul_(1.5)
        updated = model.full_sort_predict({"user_id": user})
        model.sparse_input = False
        expected = model.full_sort_predict({"user_id": user})
        model.sparse_input = True
        model.encoder[0].weight.div_(1.5)
    assert not torch.allclose(updated, sparse_scores, rtol=1e-3, atol=1e-3)
    assert torch.allclose(updated, expected, rtol=1e-5, atol=1e-5)


def test_the_reconstruction_backward_runs_once():
    from recbole_beta.model.sparse import multinomial_nll

    logits = torch.randn(2, 3, requires_grad=True)
    nll = multinomial_nll(logits, torch.tensor([0, 1]), torch.tensor([2, 0]), torch.ones(2)).sum()
    nll.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="runs once per forward"):
        nll.backward()


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
    inter = train.inter_feat
    assert ((inter["user_id"] == u1) & (inter["item_id"] == i1)).sum() == 3  # RecBole kept the duplicate rows
    assert model.user_activity[u1] == (inter["user_id"] == u1).sum()  # |x_u| counts rows, as RecBole's history

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


def test_multinomial_nll_by_hand_and_its_gradient():
    """The sparse reconstruction term equals -sum_i x_ui log softmax(z_u)_i, and its hand-written
    backward equals autograd's through log_softmax (float64)."""
    from recbole_beta.model.sparse import multinomial_nll

    # one row worked out by hand: z = (0, ln 2, ln 3) -> softmax (1/6, 2/6, 3/6); x = (2, 0, 1)
    z = torch.tensor([[0.0, 0.6931471805599453, 1.0986122886681098]], dtype=torch.float64)
    rows, cols, values = torch.tensor([0, 0]), torch.tensor([0, 2]), torch.tensor([2.0, 1.0], dtype=torch.float64)
    expected = -(2 * torch.log(torch.tensor(1 / 6, dtype=torch.float64)) + torch.log(torch.tensor(0.5, dtype=torch.float64)))
    assert multinomial_nll(z, rows, cols, values).item() == pytest.approx(expected.item(), rel=1e-12)

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 7, dtype=torch.float64, generator=generator, requires_grad=True)
    rows = torch.tensor([0, 0, 1, 3, 3, 3, 4])  # row 2 has no entries: its term is 0
    cols = torch.tensor([1, 4, 0, 2, 5, 6, 3])
    values = torch.tensor([1.0, 2.0, 1.0, 0.5, 1.0, 3.0, 1.0], dtype=torch.float64)
    dense = torch.zeros(5, 7, dtype=torch.float64).index_put_((rows, cols), values)
    assert torch.allclose(multinomial_nll(logits, rows, cols, values), -(F.log_softmax(logits, 1) * dense).sum(1))
    # the hand-written backward against autograd through log_softmax, for an arbitrary upstream gradient
    upstream = torch.randn(5, dtype=torch.float64, generator=generator)
    (sparse_grad,) = torch.autograd.grad((multinomial_nll(logits, rows, cols, values) * upstream).sum(), logits)
    (dense_grad,) = torch.autograd.grad((-(F.log_softmax(logits, 1) * dense).sum(1) * upstream).sum(), logits)
    assert torch.allclose(sparse_grad, dense_grad, rtol=1e-12, atol=1e-12)


def test_history_is_a_csr_matrix_with_recbole_rows(ml100k):
    """The model keeps the users' interactions as a CSR matrix, not RecBole's padded (users x
    longest history) matrices, and its dense rows are the rows RecBole's MultiVAE builds."""
    from recbole.model.general_recommender import MultiVAE

    config, train, model = ml100k
    assert not hasattr(model, "history_item_id") and not hasattr(model, "history_item_value")
    history = model.history
    inter = train._dataset.inter_feat
    assert history.nnz == len(set(zip(inter["user_id"].tolist(), inter["item_id"].tolist())))
    assert history.crow.shape == (train._dataset.user_num + 1,)
    # nothing but the CSR arrays and the per-user counts: no user x longest-history block
    held = sum(buffer.numel() for buffer in history.buffers())
    assert held == history.nnz + 2 * train._dataset.user_num + 1

    recbole = MultiVAE(Config(model="MultiVAE", dataset="ml-100k", config_dict={"state": "WARNING"}), train._dataset)
    user = torch.arange(0, train._dataset.user_num)
    assert torch.equal(model.get_rating_matrix(user), recbole.get_rating_matrix(user))
    assert torch.equal(model.user_activity, (recbole.history_item_id > 0).sum(1).float())


def test_auto_takes_the_sparse_path_on_sparse_data_only(tmp_path):
    from recbole_beta.model import BetaMultVAE
    from recbole_beta.model.sparse import UserItemCSR

    dense_data = UserItemCSR([1, 1, 2], [1, 2, 1], n_users=3, n_items=3)  # 3 of 9 cells: 33%
    sparse_data = UserItemCSR([1, 1, 2], [1, 2, 1], n_users=3, n_items=100)  # 1%
    assert BetaMultVAE.choose_sparse_input("auto", dense_data, 3) is False
    assert BetaMultVAE.choose_sparse_input("auto", sparse_data, 100) is True
    assert BetaMultVAE.choose_sparse_input(False, sparse_data, 100) is False
    assert BetaMultVAE.choose_sparse_input(True, dense_data, 3) is True

    # the default is auto: ml-100k (6.3% of its cells) keeps RecBole's dense path
    config = Config(model=ScaledBetaMultVAE, dataset="ml-100k", config_dict={"state": "WARNING"})
    assert config["sparse_input"] == "auto"
    _, _, model, _ = prepare(config)
    assert model.sparse_input is False


def test_sparse_path_trains_under_autocast(ml100k):
    """enable_amp: RecBole runs calculate_loss under autocast; the decoder's logits come in half
    precision, and the sparse reconstruction is still computed (in float32) and differentiated."""
    _, _, model = ml100k
    model.train()
    user = torch.arange(1, 300)
    torch.manual_seed(5)
    full = model.calculate_loss({"user_id": user})
    torch.manual_seed(5)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        recon, kl = model.calculate_loss({"user_id": user})
    assert recon.dtype == torch.float32
    assert recon.item() == pytest.approx(full[0].item(), rel=0.02)
    model.zero_grad()
    (recon + kl).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_the_sparse_path_steps_with_fused_adam_as_recboles_loop_does():
    """The sparse path's trainer takes torch's fused Adam: the same update as the loop RecBole
    builds (to float rounding); the dense path keeps RecBole's loop."""
    import copy

    config = Config(model=ScaledBetaMultVAE, dataset="ml-100k",
                    config_dict={"state": "WARNING", "sparse_input": True, "gamma": 0.01})
    _, _, model, trainer = prepare(config)
    assert trainer.optimizer.param_groups[0]["fused"] is True
    reference = copy.deepcopy(model)
    loop = torch.optim.Adam(reference.parameters(), lr=config["learning_rate"], weight_decay=config["weight_decay"])
    assert not loop.param_groups[0]["fused"]
    model.train(), reference.train()
    for step in range(3):
        user = torch.arange(1 + 300 * step, 300 * (step + 1))
        for m, optimizer in ((model, trainer.optimizer), (reference, loop)):
            torch.manual_seed(step)
            optimizer.zero_grad()
            sum(m.calculate_loss({"user_id": user})).backward()
            optimizer.step()
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        # float rounding only: within 1% of one step's size (lr 1e-3)
        assert torch.allclose(p, q, rtol=1e-4, atol=1e-5), name
    assert not torch.equal(model.encoder[0].weight, prepare(config)[2].encoder[0].weight)  # it did train

    dense = Config(model=ScaledBetaMultVAE, dataset="ml-100k", config_dict={"state": "WARNING", "sparse_input": False})
    assert not prepare(dense)[3].optimizer.param_groups[0]["fused"]


@pytest.mark.parametrize("first,then,hidden", [
    (False, True, [600]),
    (True, False, [600]),
    (True, False, [1683]),  # a square first layer (ml-100k's 1,683 item ids): its shape cannot tell
])
def test_a_checkpoint_resumes_on_the_other_input_path(fast, first, then, hidden):
    """The sparse path holds its first layer's weight transposed (TransposedLinear), Adam's moments
    with it: a checkpoint of one path resumes on the other, its moments transposed to fit."""
    from recbole_beta.checkpoint import load_checkpoint

    fast = {**fast, "mlp_hidden_size": hidden}
    saved = run_recbole_beta("BetaMultVAE", "ml-100k", config_dict={**fast, "epochs": 1, "sparse_input": first})
    checkpoint = load_checkpoint(saved["checkpoint"])  # the resumed run below saves over the file
    resumed = run_recbole_beta("BetaMultVAE", "ml-100k", resume=saved["checkpoint"],
                               config_dict={**fast, "epochs": 3, "sparse_input": then})
    assert [h["epoch"] for h in resumed["history"]] == [0, 1, 2]
    assert resumed["history"][0] == saved["history"][0]
    assert 0.05 < resumed["test_result"]["ndcg@100"] <= 1

    # each moment lands on its own weight: the moments saved for W^T, read on the path holding W,
    # are their transpose (and the other way round). torch's fused Adam steps on moments of the
    # wrong shape but the right size without a word, so the run above alone would not show it.
    torch.save(checkpoint, "first.pth")
    config = Config(model="BetaMultVAE", dataset="ml-100k", config_dict={**fast, "sparse_input": then})
    # seeded as run_recbole_beta seeds before the split: RecBole's split shuffles with the seed, and a
    # resume onto another split is refused (the checkpoint's split fingerprint)
    init_seed(config["seed"], config["reproducibility"])
    model, trainer = prepare(config)[2:]
    trainer.resume_checkpoint("first.pth")
    saved_moments = checkpoint["optimizers"]["optimizer"]["state"][0]
    first_layer = next(model.encoder[0].parameters())
    for key in ("exp_avg", "exp_avg_sq"):
        moment = trainer.optimizer.state[first_layer][key]
        assert moment.shape == first_layer.shape
        assert torch.equal(moment, saved_moments[key].t())
    # and it steps with the kernel of its own path, not the checkpoint's
    assert bool(trainer.optimizer.param_groups[0]["fused"]) is then
