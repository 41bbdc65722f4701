"""The sparse-input path (sparse_input: True) computes what the dense path computes."""

import contextlib

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from recbole.utils import init_seed

from recbole_beta.config import Config
from recbole_beta.data.user_items import UserItemCSR
from recbole_beta.errors import ConfigError
from recbole_beta.model import BetaMultVAE, ScaledBetaMultVAE
from recbole_beta.model.sparse_input import takes_sparse_path
from recbole_beta.quick_start import prepare, run_recbole_beta


@pytest.fixture(scope="module")
def ml100k(module_workdir):
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


class FixedDropout(nn.Module):
    """Dropout that keeps the non-zeros ``keep`` marks (0/1 each, in the batch's order), scaled as
    ``F.dropout`` scales: what the test swaps in for the sparse path's own dropout, so the two paths
    see one mask."""

    def __init__(self, keep, p):
        super().__init__()
        self.keep, self.p = keep, p

    def forward(self, values):
        return values * self.keep / (1 - self.p) if self.training else values


def sparse_loss(model, user, mask):
    """The model's training loss (calculate_loss) on its sparse path, its dropout keeping the
    non-zeros that ``mask`` (batch x n_items, 0/1) keeps."""
    path = model.sparse_input
    assert path is not None
    batch = model.history.batch(user)  # the non-zeros, in the order the path reads them
    own = path.dropout
    path.dropout = FixedDropout(mask[batch.rows, batch.cols], own.p)
    try:
        return model.calculate_loss({"user_id": user})
    finally:
        path.dropout = own


@contextlib.contextmanager
def on_the_dense_path(model):
    """The model reads RecBole's dense rows (MultiVAE's code) within the block, with the same weights."""
    path, model.sparse_input = model.sparse_input, None
    try:
        yield
    finally:
        model.sparse_input = path


def assert_sparse_batch_is_the_dense_rows(model, user):
    """The sparse batch the path reads: valid, coalesced (row-major, items sorted) and the dense rows' values."""
    batch = model.history.batch(user)
    indices = torch.stack([batch.rows, batch.cols])
    coo = torch.sparse_coo_tensor(indices, batch.values, (len(user), model.n_items), check_invariants=True).coalesce()
    assert torch.equal(coo.indices(), indices)
    assert torch.equal(batch.crow[1:] - batch.crow[:-1], torch.bincount(batch.rows, minlength=len(user)))
    assert torch.equal(coo.to_dense(), model.get_rating_matrix(user))


def grads(model, loss):
    model.zero_grad()
    loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()}


def test_sparse_matrix_holds_the_dense_values(ml100k):
    _, _, model = ml100k
    assert_sparse_batch_is_the_dense_rows(model, torch.arange(1, 300))


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
        with on_the_dense_path(model):
            dense_scores = model.full_sort_predict({"user_id": user})
    assert torch.allclose(sparse_scores, dense_scores, rtol=1e-5, atol=1e-5)

    # the sparse path's first layer holds W^T, and ``weight`` is a view of it: an in-place update
    # through that view (as code written for nn.Linear makes) is what the sparse path computes with
    with torch.no_grad():
        model.encoder[0].weight.mul_(1.5)
        updated = model.full_sort_predict({"user_id": user})
        with on_the_dense_path(model):
            expected = model.full_sort_predict({"user_id": user})
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


@pytest.mark.slow
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
        with on_the_dense_path(model):
            dense_scores = model.full_sort_predict({"user_id": user})
    assert torch.allclose(sparse_scores, dense_scores, rtol=1e-6, atol=1e-6)
    assert model.get_rating_matrix(user).max() == 1  # RecBole's dense matrix: 1 for a duplicated item too
    assert_sparse_batch_is_the_dense_rows(model, user)


def test_multinomial_nll_by_hand_and_its_gradient():
    """The sparse reconstruction term equals -sum_i x_ui log softmax(z_u)_i, and its hand-written
    backward equals autograd's through log_softmax (float64)."""
    from recbole_beta.model.sparse import multinomial_nll

    # one row worked out by hand: z = (0, ln 2, ln 3) -> softmax (1/6, 2/6, 3/6); x = (2, 0, 1)
    z = torch.tensor([[0.0, 0.6931471805599453, 1.0986122886681098]], dtype=torch.float64)
    rows, cols, values = torch.tensor([0, 0]), torch.tensor([0, 2]), torch.tensor([2.0, 1.0], dtype=torch.float64)
    expected = -(2 * torch.log(torch.tensor(1 / 6, dtype=torch.float64))
                 + torch.log(torch.tensor(0.5, dtype=torch.float64)))
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
    dense_data = UserItemCSR([1, 1, 2], [1, 2, 1], n_users=3, n_items=3)  # 3 of 9 cells: 33%
    sparse_data = UserItemCSR([1, 1, 2], [1, 2, 1], n_users=3, n_items=100)  # 1%
    assert takes_sparse_path("auto", dense_data, 0.04) is False
    assert takes_sparse_path("auto", sparse_data, 0.04) is True
    assert takes_sparse_path("auto", dense_data, 0.5) is True  # the threshold is the density key's
    assert takes_sparse_path("auto", sparse_data, 0.01) is False  # below, not at
    assert takes_sparse_path(False, sparse_data, 0.04) is False
    assert takes_sparse_path(True, dense_data, 0.04) is True

    # the default is auto: ml-100k (5.1% of its training split's cells) keeps RecBole's dense path
    config = Config(model=ScaledBetaMultVAE, dataset="ml-100k", config_dict={"state": "WARNING"})
    assert config["sparse_input"] == "auto"
    _, _, model, _ = prepare(config)
    assert model.sparse_input is None
    # ... unless the threshold is raised above it
    config = Config(model=ScaledBetaMultVAE, dataset="ml-100k", config_dict={"state": "WARNING",
                                                                            "sparse_input_density": 0.1})
    _, _, model, _ = prepare(config)
    assert model.sparse_input is not None


@pytest.mark.parametrize("key,value,message", [
    ("sparse_input_density", 1.5, "sparse_input_density=1.5 is not allowed: must be a number >= 0 and <= 1"),
    ("sparse_input_density", "low", "sparse_input_density='low' is not allowed: must be a number >= 0 and <= 1"),
    ("sparse_cpu_column_block", 0, "sparse_cpu_column_block=0 is not allowed: must be an integer >= 1"),
    ("sparse_cpu_column_block", 2.5, "sparse_cpu_column_block=2.5 is not allowed: must be an integer >= 1"),
    ("sparse_input", "yes", "sparse_input='yes' is not allowed: must be True, False or auto"),
])
def test_the_sparse_keys_are_checked(key, value, message):
    with pytest.raises(ConfigError) as error:
        BetaMultVAE.validate_config({key: value})
    assert str(error.value) == message


def test_the_sparse_path_drops_out_the_non_zeros_and_leaves_the_state_dict_recboles(ml100k):
    """The path's own dropout acts on the normalised non-zeros as F.dropout on MultiVAE's input, in
    training only; the path adds no parameter or saved buffer: the state dict is MultiVAE's."""
    from recbole.model.general_recommender import MultiVAE

    config, train, model = ml100k
    seen = []
    hook = model.sparse_input.dropout.register_forward_hook(lambda _, args, out: seen.append((args[0], out)))
    try:
        user = torch.arange(1, 944, 2)
        model.train()
        model.calculate_loss({"user_id": user})
        model.eval()
        with torch.no_grad():
            model.full_sort_predict({"user_id": user})
    finally:
        hook.remove()
    (given, kept), (evaluated, passed) = seen
    assert len(given) == model.history.batch(user).rows.numel()
    dropped = kept == 0
    assert torch.allclose(kept[~dropped], given[~dropped] / (1 - model.drop_out))
    assert abs(dropped.float().mean().item() - model.drop_out) < 0.02  # ~50,000 non-zeros
    assert torch.equal(passed, evaluated)

    recbole = MultiVAE(Config(model="MultiVAE", dataset="ml-100k", config_dict={"state": "WARNING"}), train._dataset)
    shapes = {name: value.shape for name, value in model.state_dict().items()}
    assert shapes == {name: value.shape for name, value in recbole.state_dict().items()}


def test_the_column_block_is_a_key(tmp_path):
    """sparse_cpu_column_block reaches the output layer: other blocks, the same loss and gradients up
    to rounding (tests/test_sparse_ops.py checks the blocks against nn.Linear)."""
    from recbole.data import create_dataset

    from conftest import write_tiny_dataset

    keys = write_tiny_dataset(tmp_path, "blocks")
    results = []
    for block in (1024, 4):  # 7 item ids: one product, or two
        config = Config(model=BetaMultVAE, dataset="blocks", config_dict={
            **keys, "state": "WARNING", "sparse_input": True, "sparse_cpu_column_block": block,
            "mlp_hidden_size": [8], "latent_dimension": 6})
        train, _, _ = create_dataset(config).build()
        torch.manual_seed(0)
        model = BetaMultVAE(config, train)
        assert model.sparse_input.cpu_column_block == block
        model.train()
        torch.manual_seed(1)
        loss = model.calculate_loss({"user_id": torch.arange(0, 5)})
        results.append((torch.stack(loss).detach(), grads(model, sum(loss))))
    (loss_one, grads_one), (loss_two, grads_two) = results
    assert torch.allclose(loss_one, loss_two, rtol=1e-6)
    for name, grad in grads_one.items():
        assert torch.allclose(grads_two[name], grad, rtol=1e-5, atol=1e-7), name


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


@pytest.mark.slow
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


@pytest.mark.slow
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


def test_ranking_scores_are_full_sort_predicts_in_one_reused_buffer(ml100k):
    """What the trainer ranks: full_sort_predict's scores, written into one buffer from batch to
    batch; under autocast (enable_amp) the output layer's weight is cast once, and again after it
    changed."""
    _, _, model = ml100k
    model.eval()
    user = {"user_id": torch.arange(1, 944, 5)}
    few = {"user_id": torch.arange(1, 11)}

    def expected(users):
        return model.full_sort_predict(users).view(len(users["user_id"]), -1)

    with torch.no_grad():
        first = model.ranking_scores(user)
        assert torch.equal(first, expected(user))  # float32: the same numbers in either layout
        assert first.t().is_contiguous()  # item-major, as the collector's top-k reads it
        assert model.ranking_scores(few).data_ptr() == first.data_ptr()  # the same buffer, overwritten
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model.ranking_scores(user).clone()  # the next call writes over the buffer
            assert low.dtype == torch.bfloat16
            # autocast's own nn.Linear, the same product in the other layout: within bfloat16's rounding
            assert torch.allclose(low.float(), expected(user).float(), rtol=2**-7, atol=1e-4)
        model.decoder[-1].weight.mul_(-2)  # as an optimizer step or load_state_dict changes it
        try:
            # a new autocast region: autocast's own cache of casts would also hold the old weight
            with torch.autocast("cpu", dtype=torch.bfloat16):
                changed = model.ranking_scores(user)
                assert torch.allclose(changed.float(), expected(user).float(), rtol=2**-7, atol=1e-4)
            assert not torch.equal(changed, low)
        finally:
            model.decoder[-1].weight.div_(-2)
    # a step of torch's fused Adam (the sparse path's optimizer) changes the weights without moving
    # their version counter: the copy must not outlive the evaluation pass
    saved = {name: value.clone() for name, value in model.state_dict().items()}
    try:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            before = model.ranking_scores(user).clone()  # the copy made for the weights as they are
        model.train()
        assert model.sparse_input._scores._buffer is None  # training does not keep evaluation's buffer
        optimizer = torch.optim.Adam(model.parameters(), lr=0.05, fused=True)
        for parameter in model.parameters():
            parameter.grad = torch.ones_like(parameter)
        version = model.decoder[-1].weight._version
        optimizer.step()
        assert model.decoder[-1].weight._version == version  # what makes the version no key here
        model.eval()  # as RecBole's evaluate does before each pass
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            stepped = model.ranking_scores(user)
            assert torch.allclose(stepped.float(), expected(user).float(), rtol=2**-7, atol=1e-4)
            assert not torch.allclose(stepped.float(), before.float(), rtol=2**-7, atol=1e-4)
    finally:
        model.load_state_dict(saved)
        model.eval()
