"""RecBole's models under eval_protocol: strong (recbole_beta.fold_in): the item-item models' scores of
held-out users against numpy/scipy from the training users' matrix and the fold-in rows (real ml-100k);
for every supported model, no held-out interaction reaches what it fits, and its metrics are finite and
above Random's; the refusals, one line each, before any data is read."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from recbole.data.interaction import Interaction
from recbole.utils import init_seed
from sklearn.utils.extmath import randomized_svd

from conftest import ease_weights
from recbole_beta.config import Config
from recbole_beta.data.heldout import TEST_IN, TEST_TARGET, TRAIN, VALID_IN, VALID_TARGET
from recbole_beta.errors import ConfigError
from recbole_beta.fold_in import FOLD_IN
from recbole_beta.quick_start import prepare, run_recbole_beta

STRONG = {"eval_protocol": "strong", "heldout_users": 0.1, "state": "WARNING", "show_progress": False}


def fold_in_rows(dataset, role):
    """(user ids, their fold-in rows as a dense 0/1 matrix) of the held-out users with targets."""
    users, items, roles = dataset.inter_feat["user_id"].numpy(), dataset.inter_feat["item_id"].numpy(), dataset._roles
    ids = np.unique(users[roles == (TEST_TARGET if role == TEST_IN else VALID_TARGET)])
    rows = np.zeros((len(ids), dataset.item_num), dtype=np.float32)
    for row, user in enumerate(ids):
        rows[row, items[(users == user) & (roles == role)]] = 1
    return ids, rows


def training_matrix(dataset):
    """The training users' rows in the dataset's id space (a held-out user: an empty row)."""
    keep = dataset._roles == TRAIN
    users, items = dataset.inter_feat["user_id"].numpy()[keep], dataset.inter_feat["item_id"].numpy()[keep]
    return sp.csr_matrix((np.ones(len(users), dtype=np.float32), (users, items)),
                         shape=(dataset.user_num, dataset.item_num))


def model_scores(model, ids):
    scores = model.full_sort_predict(Interaction({"user_id": torch.as_tensor(ids)}))
    return np.asarray(scores.detach().cpu().double()).reshape(len(ids), -1)


# numpy and scipy from the definitions (the papers' formulas, as RecBole 1.2.1 states them)

def item_cosine(X):
    """Every neighbour kept (k >= items): cos(i, j) with 1e-6 in the denominator, no self-similarity."""
    G = (X.T @ X).toarray()
    norms = np.sqrt(np.asarray(X.power(2).sum(axis=0)).ravel())
    S = G / (np.outer(norms, norms) + 1e-6)
    np.fill_diagonal(S, 0.0)
    return S


def admm_slim(X, lambda1, lambda2, alpha, rho, iterations):
    """Steck's ADMM for SLIM (2020), positive weights, no centring."""
    G = (X.T @ X).toarray().astype(np.float64)
    means = np.asarray(X.mean(axis=0)).ravel()
    P = np.linalg.inv(G + np.diag(lambda2 * np.power(means, alpha)) + rho * np.eye(len(means)))
    B_aux, C, Gamma = P @ G, np.zeros_like(G), np.zeros_like(G)
    for _ in range(iterations):
        B_tilde = B_aux + P @ (rho * C - Gamma)
        B = B_tilde - P * (np.diag(B_tilde) / (np.diag(P) + 1e-7))
        C = np.maximum(np.abs(B + Gamma / rho) - lambda1 / rho, 0) * np.sign(B + Gamma / rho)
        C = (C > 0) * C
        Gamma += rho * (B - C)
    return C


def nce_plrec(X, beta, rank, reg, seed):
    """The item basis V* and weights W of NCE-PLRec (Wu et al. 2019), as RecBole fits them."""
    n_users = X.shape[0]
    popularity = np.asarray(X.sum(axis=0)).ravel()  # float32, as RecBole's weights are computed
    coo = X.tocoo()
    weights = np.maximum(np.log(n_users / np.power(popularity[coo.col], beta)), 0)
    D = sp.csr_matrix((weights.astype(np.float64), (coo.row, coo.col)), shape=X.shape)  # stored as float64
    _, sigma, Vt = randomized_svd(D, n_components=rank, n_iter="auto", power_iteration_normalizer="QR",
                                  random_state=seed)
    V = Vt.T @ np.diag(np.sqrt(sigma))
    Q = X @ V
    W = np.linalg.inv(Q.T @ Q + reg * np.eye(rank)) @ Q.T @ X
    return V, W


def slim_elastic(X, alpha, l1_ratio, seed):
    """One elastic net per item on the others (RecBole's settings: positive, no intercept, random coordinate
    order from numpy's global generator, which RecBole seeds before building the model)."""
    from sklearn.linear_model import ElasticNet

    init_seed(seed, True)
    X = X.tolil(copy=True)
    net = ElasticNet(alpha=alpha, l1_ratio=l1_ratio, positive=True, fit_intercept=False, copy_X=False,
                     precompute=True, selection="random", max_iter=100, tol=1e-4)
    columns = []
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=ConvergenceWarning)
        for j in range(X.shape[1]):
            target = X[:, j]
            X[:, j] = 0
            net.fit(X, target.todense().getA1())
            columns.append(net.sparse_coef_)
            X[:, j] = target
    return sp.vstack(columns).T.toarray()


ITEM_ITEM = {
    "EASE": ({"reg_weight": 250.0}, lambda X, c: ease_weights(X, 250.0), None),
    "ItemKNN": ({"k": 5000}, lambda X, c: item_cosine(X), None),
    "ADMMSLIM": ({"k": 10}, lambda X, c: admm_slim(X, 3.0, 200.0, 0.5, 4000.0, 10), None),
    "NCEPLRec": ({"rank": 100, "epochs": 1}, None, lambda X, c: nce_plrec(X, 1.0, 100, 100.0, c["seed"])),
    "SLIMElastic": ({}, lambda X, c: slim_elastic(X, 0.2, 0.02, c["seed"]), None),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ITEM_ITEM))
def test_item_item_scores_of_held_out_users_are_numpy_from_training_users(name, isolated_run):
    keys, weights, projection = ITEM_ITEM[name]
    config = Config(model=name, dataset="ml-100k", config_dict={**STRONG, **keys}, argv=[])
    dataset, _, model, _ = prepare(config)  # fitted on training users, given the fold-in rows
    X = training_matrix(dataset)
    for role in (VALID_IN, TEST_IN):
        ids, rows = fold_in_rows(dataset, role)
        if projection is not None:
            V, W = projection(X, config)
            expected = (rows @ V) @ W
        else:
            expected = rows @ weights(X, config)
        actual = model_scores(model, ids)
        scale = np.abs(expected).max()
        assert scale > 0
        np.testing.assert_allclose(actual / scale, expected / scale, rtol=0, atol=1e-4, err_msg=name)  # 4 places


# -------------------------------------------------------------- every supported model: no leak, finite, above Random

N_USERS, N_ITEMS = 300, 60


def synthetic_rows(seed=0):
    """Users with 8-30 items each, popularity-skewed, in two taste groups (so models beat Random)."""
    rng = np.random.default_rng(seed)
    popularity = 1 / np.arange(1, N_ITEMS + 1) ** 0.8
    rows = []
    for u in range(N_USERS):
        group = np.arange(N_ITEMS) % 2 == u % 2
        weights = popularity * np.where(group, 4.0, 1.0)
        n = rng.integers(8, 31)
        for i in rng.choice(N_ITEMS, size=n, replace=False, p=weights / weights.sum()):
            rows.append((f"u{u}", f"i{i}"))
    return rows


def write_dataset(root, name, rows):
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.inter").write_text("user_id:token\titem_id:token\n" + "".join(f"{u}\t{i}\n" for u, i in rows))
    return {"data_path": str(root), "load_col": {"inter": ["user_id", "item_id"]}}


#: per model, enough training on the small data to beat Random, and the keys that keep it small
TRAINING = {
    "MultiVAE": {"epochs": 10}, "MultiDAE": {"epochs": 10}, "RecVAE": {"epochs": 5},
    "MacridVAE": {"epochs": 10, "kfac": 2, "embedding_size": 16, "encoder_hidden_size": [32]},
    "RaCT": {"pretrain_epochs": 10, "save_step": 10},
    "DiffRec": {"epochs": 10, "dims_dnn": [64]}, "LDiffRec": {"epochs": 10, "in_dims": [32], "dims_dnn": [64]},
    "FISM": {"epochs": 5, "embedding_size": 16}, "NAIS": {"epochs": 5, "embedding_size": 16, "weight_size": 16},
    "ItemKNN": {"k": 20}, "AsymKNN": {"k": 20}, "NCEPLRec": {"epochs": 1, "rank": 20}, "ADMMSLIM": {"k": 20},
    "EASE": {}, "SLIMElastic": {}, "Pop": {"epochs": 1}, "Random": {},
}


def fitted_state(model):
    """What the model fitted or learned: its tensors, and what RecBole's closed forms keep outside them."""
    state = {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}
    for name in ("w", "item_similarity", "item_projection", "item_embeddings", "item_means", "item_cnt"):
        value = getattr(model, name, None)
        if value is None:
            continue
        if sp.issparse(value):
            value = value.toarray()
        elif torch.is_tensor(value):
            value = value.detach().cpu().numpy()
        state[f"attribute {name}"] = np.array(value, copy=True)
    return state


@pytest.fixture(scope="module")
def two_datasets(tmp_path_factory, module_workdir):
    """Two datasets alike in everything but the held-out users' items: training rows first, so RecBole numbers
    items and users alike in both (every item is some training user's), and the same number of rows per user
    in the same order, so the split draws the same roles."""
    root = tmp_path_factory.mktemp("foldin")
    rows = synthetic_rows()
    config = Config(model="Pop", dataset="first",
                    config_dict={**STRONG, **write_dataset(root, "first", rows), "topk": [10],
                                 "valid_metric": "NDCG@10"},
                    argv=[])
    dataset, _, _, _ = prepare(config)
    tokens = dataset.field2id_token["user_id"]
    heldout = set(tokens[np.concatenate([dataset.protocol_users["valid"], dataset.protocol_users["test"]])])
    ordered = [r for r in rows if r[0] not in heldout] + [r for r in rows if r[0] in heldout]
    training_items = sorted({i for u, i in ordered if u not in heldout})
    assert len(training_items) == N_ITEMS
    rng = np.random.default_rng(1)
    changed, user_items = [], {}
    for u, i in ordered:
        if u in heldout:  # another item the user has not got yet
            taken = user_items.setdefault(u, set())
            i = rng.choice([t for t in training_items if t not in taken])
            taken.add(i)
        changed.append((u, i))
    assert changed != ordered
    return {"A": write_dataset(root, "A", ordered), "B": write_dataset(root, "B", changed)}, heldout


def run_strong(name, dataset_name, data_keys, extra=None):
    config = Config(model=name, dataset=dataset_name,
                    config_dict={**STRONG, **data_keys, **TRAINING[name], "seed": 7, "topk": [10],
                                 "metrics": ["NDCG", "Recall"], "valid_metric": "NDCG@10", **(extra or {})},
                    argv=[])
    dataset, (train, valid, test), model, trainer = prepare(config)
    trainer.fit(train, valid, saved=name == "RaCT", show_progress=False)  # RaCT is tested from its saved actor
    return dataset, model, trainer.evaluate(valid, load_best_model=False), trainer.evaluate(test, load_best_model=False)


@pytest.fixture(scope="module")
def random_ndcg(two_datasets, tmp_path_factory):
    data, _ = two_datasets
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path_factory.mktemp("random"))
        _, _, valid, test = run_strong("Random", "A", data["A"])
    return valid["ndcg@10"], test["ndcg@10"]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(FOLD_IN))
def test_no_held_out_interaction_reaches_the_fit_and_the_metrics_beat_random(name, two_datasets, random_ndcg,
                                                                             isolated_run):
    """Changing only the held-out users' items changes nothing the model fits (it would if any reached it),
    and the model ranks held-out users better than Random does."""
    data, heldout = two_datasets
    first, model_a, valid, test = run_strong(name, "A", data["A"])
    second, model_b, _, test_b = run_strong(name, "B", data["B"])
    assert set(first.field2id_token["user_id"][first.protocol_users["train"]]).isdisjoint(heldout)
    state_a, state_b = fitted_state(model_a), fitted_state(model_b)
    assert state_a.keys() == state_b.keys() and state_a, name
    for key in state_a:
        np.testing.assert_array_equal(state_a[key], state_b[key], err_msg=f"{name}: {key}")
    for result in (valid, test):
        assert all(np.isfinite(v) for v in result.values()), result
    if name != "Random":
        assert valid["ndcg@10"] > random_ndcg[0] and test["ndcg@10"] > random_ndcg[1], (name, valid, test, random_ndcg)
    assert test != test_b or name == "Random"  # the held-out users' items did change what it was scored on


# ---------------------------------------------------------------------------------------------- refusals

@pytest.mark.parametrize("model", ["BPR", "LightGCN", "CDAE"])
def test_a_model_with_per_user_parameters_is_refused_in_one_line(model, tmp_path):
    with pytest.raises(ConfigError) as error:
        run_recbole_beta(model, "absent", config_dict={**STRONG, "data_path": str(tmp_path)})  # no data: not read
    text = str(error.value)
    assert "\n" not in text and "eval_protocol=strong" in text
    assert f"{model} holds a parameter per user, which cannot be folded in" in text
    assert "ItemKNN" in text and "SLIMElastic" in text and "MultiVAE" in text  # the models that can


@pytest.mark.parametrize("model,keys,message", [
    ("ItemKNN", {"knn_method": "user"}, "knn_method='user' is not allowed: ItemKNN under eval_protocol=strong: "
                                        "a user-user similarity has no row for a held-out user"),
    ("AsymKNN", {"knn_method": "user"}, "a user-user similarity has no row"),
    ("ADMMSLIM", {"center_columns": True}, "use center_columns=False"),
    ("RaCT", {"train_stage": "finetune"}, "use train_stage=actor_pretrain"),
    ("RaCT", {"pretrain_epochs": 15, "save_step": 10}, "save_step=10 is not allowed: must divide pretrain_epochs=15"),
    ("LDiffRec", {"n_cate": 2}, "use n_cate=1"),
    ("NAIS", {"pretrain_path": "fism.pth"}, "unset it"),
    ("ItemKNN", {"k": 0}, "k=0 is not allowed"),
    ("SLIMElastic", {"l1_ratio": 1.5}, "l1_ratio=1.5 is not allowed"),
    ("EASE", {"reg_weight": -1}, "reg_weight=-1 is not allowed"),
])
def test_values_the_protocol_cannot_run_are_refused_before_the_data(model, keys, message, tmp_path):
    with pytest.raises(ConfigError) as error:
        run_recbole_beta(model, "absent", config_dict={**STRONG, **keys, "data_path": str(tmp_path)})
    assert message in str(error.value) and "\n" not in str(error.value)


@pytest.mark.slow
def test_nceplrec_keeps_its_item_basis_and_is_recboles_to_the_bit():
    """The plugin's NCEPLRec (which keeps V*) fits what RecBole's does, and V* projects RecBole's user rows
    to its user embeddings."""
    from recbole.data import create_dataset
    from recbole.model.general_recommender import NCEPLRec as RecBoleNCEPLRec

    from recbole_beta.model import NCEPLRec

    config = Config(model="NCEPLRec", dataset="ml-100k", config_dict={"state": "WARNING", "rank": 50}, argv=[])
    dataset = create_dataset(config)
    ours, theirs = NCEPLRec(config, dataset), RecBoleNCEPLRec(config, dataset)
    assert torch.equal(ours.user_embeddings, theirs.user_embeddings)
    assert torch.equal(ours.item_embeddings, theirs.item_embeddings)
    projected = dataset.inter_matrix(form="csr").astype(np.float32) @ ours.item_projection
    np.testing.assert_allclose(projected, theirs.user_embeddings.numpy(), rtol=0, atol=1e-10)
