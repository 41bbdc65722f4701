"""eval_protocol: strong (Liang et al. 2018): the split, training on training users only, fold-in
evaluation checked against numpy computed from the definitions, TruncatedRecall, and the
reference code's vae_cf files in both directions. Real ml-100k, real RecBole loaders and evaluator."""

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from recbole.evaluator.metrics import NDCG

from conftest import ease_weights
from recbole_beta.config import Config
from recbole_beta.data.heldout import (
    TEST_IN,
    TEST_TARGET,
    TRAIN,
    VALID_IN,
    VALID_TARGET,
    HeldOutDataset,
    HeldOutUserDataLoader,
    draw_roles,
)
from recbole_beta.data_cli import main as data_main
from recbole_beta.errors import ConfigError
from recbole_beta.metrics import TruncatedRecall
from recbole_beta.quick_start import prepare, run_recbole_beta

STRONG = {"eval_protocol": "strong", "heldout_users": 0.1, "state": "WARNING", "show_progress": False}
TOPK = [10, 20, 50, 100]


def strong_dataset(**overrides):
    config = Config(model="Pop", dataset="ml-100k", config_dict={**STRONG, **overrides}, argv=[])
    dataset = HeldOutDataset(config)
    built = dataset.build()
    return config, dataset, built


@pytest.fixture(scope="module")
def split():
    return strong_dataset()


def raw_roles(dataset):
    """(user token, item token) -> role, for comparing splits across datasets with other ids."""
    users = dataset.field2id_token["user_id"][dataset.inter_feat["user_id"].numpy()]
    items = dataset.field2id_token["item_id"][dataset.inter_feat["item_id"].numpy()]
    frame = pd.DataFrame({"user": users, "item": items, "role": dataset._roles})
    return frame.sort_values(["user", "item"]).reset_index(drop=True)


# ---------------------------------------------------------------------------------------- the split

def test_split_counts_users_and_targets(split):
    config, dataset, built = split
    groups = dataset.protocol_users
    h = int(0.1 * 943)
    assert (len(groups["train"]), len(groups["valid"]), len(groups["test"])) == (943 - 2 * h, h, h)
    assert not set(groups["train"]) & set(groups["valid"])
    assert not set(groups["train"]) & set(groups["test"])
    assert not set(groups["valid"]) & set(groups["test"])

    roles = dataset._roles
    users = dataset.inter_feat["user_id"].numpy()
    for group, fold_in, target in (("valid", VALID_IN, VALID_TARGET), ("test", TEST_IN, TEST_TARGET)):
        for user in groups[group]:
            mine = roles[users == user]
            n = len(mine)
            assert set(mine) <= {fold_in, target}
            expected = int(0.2 * n) if n >= 5 else 0
            assert (mine == target).sum() == expected, (group, user, n)
    # every training user's interaction is a training row
    assert set(roles[np.isin(users, groups["train"])]) == {TRAIN}
    # the loaders' datasets: training + fold-in rows, validation targets, test targets
    assert len(built[0].inter_feat) == int(np.isin(roles, [TRAIN, VALID_IN, TEST_IN]).sum())
    assert len(built[1].inter_feat) == int((roles == VALID_TARGET).sum())
    assert len(built[2].inter_feat) == int((roles == TEST_TARGET).sum())


def test_item_set_is_the_training_users_items(split):
    _, dataset, _ = split
    train_items = set(dataset.inter_feat["item_id"].numpy()[dataset._roles == TRAIN])
    assert train_items == set(range(1, dataset.item_num))  # every item id (0 is padding)
    # ml-100k has items only held-out users rated: they are gone, with those users' rows of them
    raw = pd.read_csv(Path(__import__("recbole").__file__).parent / "dataset_example/ml-100k/ml-100k.inter", sep="\t")
    assert dataset.item_num - 1 < raw["item_id:token"].nunique()
    assert len(dataset.inter_feat) < len(raw)


@pytest.mark.slow
def test_split_depends_on_split_seed_not_seed(split):
    _, dataset, _ = split
    reference = raw_roles(dataset)
    _, other_seed, _ = strong_dataset(seed=7)
    pd.testing.assert_frame_equal(raw_roles(other_seed), reference)
    _, same_split_seed, _ = strong_dataset(split_seed=98765)
    pd.testing.assert_frame_equal(raw_roles(same_split_seed), reference)
    _, other_split, _ = strong_dataset(split_seed=1)
    assert set(other_split.protocol_users["test"]) != set(dataset.protocol_users["test"])


def test_roles_follow_the_reference_preprocessing():
    """draw_roles equals the reference notebook's steps, re-done here with pandas on ml-100k."""
    raw = pd.read_csv(Path(__import__("recbole").__file__).parent / "dataset_example/ml-100k/ml-100k.inter", sep="\t")
    raw.columns = ["userId", "movieId", "rating", "timestamp"]
    h = 50
    # the reference: user ids ascending (groupby), permuted with the seed, last 2H held out
    unique_uid = raw.groupby("userId").size().index
    np.random.seed(98765)
    unique_uid = unique_uid[np.random.permutation(unique_uid.size)]
    n = unique_uid.size
    tr_users, vd_users, te_users = unique_uid[: n - 2 * h], unique_uid[n - 2 * h: n - h], unique_uid[n - h:]
    train_plays = raw[raw["userId"].isin(tr_users)]
    unique_sid = pd.unique(train_plays["movieId"])

    def split_proportion(data, prop=0.2):
        tr, te = [], []
        np.random.seed(98765)
        for _, group in data.groupby("userId"):
            k = len(group)
            if k >= 5:
                idx = np.zeros(k, dtype=bool)
                idx[np.random.choice(k, size=int(prop * k), replace=False).astype("int64")] = True
                tr.append(group[~idx])
                te.append(group[idx])
            else:
                tr.append(group)
        return pd.concat(tr), pd.concat(te)

    expected = pd.Series(-1, index=raw.index)
    expected[train_plays.index] = TRAIN
    for users, fold_in, target in ((vd_users, VALID_IN, VALID_TARGET), (te_users, TEST_IN, TEST_TARGET)):
        plays = raw[raw["userId"].isin(users) & raw["movieId"].isin(unique_sid)]
        tr, te = split_proportion(plays)
        expected[tr.index] = fold_in
        expected[te.index] = target

    roles = draw_roles(raw["userId"].astype(str).to_numpy(), raw["movieId"].astype(str).to_numpy(), h, 0.2, 98765)
    assert (roles == expected.to_numpy()).all()


# ------------------------------------------------------------------------------------ training

def test_training_sees_training_users_only():
    config = Config(model="ScaledBetaMultVAE", dataset="ml-100k",
                    config_dict={**STRONG, "normalize_activity": True, "train_batch_size": 100}, argv=[])
    dataset, (train_data, valid_data, test_data), model, trainer = prepare(config)
    train_users = set(dataset.protocol_users["train"])
    assert isinstance(train_data, HeldOutUserDataLoader)
    seen = [set(batch["user_id"].tolist()) for _ in range(2) for batch in train_data]
    assert set().union(*seen) == train_users  # every training user, and nobody else, each epoch
    # the strategy's inputs come from training users: batches per epoch and mean activity
    n_train = len(train_users)
    assert len(seen) == 2 * math.ceil(n_train / 100)
    activity = np.bincount(built_users(dataset), minlength=dataset.user_num)
    assert model.beta_strategy.mean_activity == pytest.approx(activity[sorted(train_users)].mean())
    # a held-out user's row for the model is its fold-in, nothing more
    user = int(dataset.protocol_users["test"][0])
    fold_in = set(dataset.inter_feat["item_id"].numpy()[(dataset.inter_feat["user_id"].numpy() == user)
                                                       & (dataset._roles == TEST_IN)])
    row = model.get_rating_matrix(torch.tensor([user]))[0]
    assert set(torch.nonzero(row).flatten().tolist()) == fold_in


def test_cyclical_length_counts_training_users_only():
    config = Config(model="CyclicalBetaMultVAE", dataset="ml-100k",
                    config_dict={**STRONG, "train_batch_size": 100, "epochs": 12, "n_cycles": 4}, argv=[])
    dataset, _, model, _ = prepare(config)
    steps = math.ceil(len(dataset.protocol_users["train"]) / 100)  # 755 training users: 8, not ceil(944 / 100) = 10
    assert steps == 8
    assert model.beta_strategy.cycle_length == 12 * steps / 4


def built_users(dataset):
    seen = np.isin(dataset._roles, [TRAIN, VALID_IN, TEST_IN])
    return dataset.inter_feat["user_id"].numpy()[seen]


@pytest.mark.slow
def test_pop_and_ease_train_on_training_users():
    for model_name in ("Pop", "EASE"):
        config = Config(model=model_name, dataset="ml-100k", config_dict=dict(STRONG), argv=[])
        dataset, (train_data, _, _), model, _ = prepare(config)
        users = set(train_data._dataset.inter_feat["user_id"].tolist())
        assert users == set(dataset.protocol_users["train"])


# ----------------------------------------------------------------- fold-in evaluation, by numpy

def numpy_metrics(scores, fold_in, targets, topk=TOPK):
    """NDCG, Recall (RecBole's) and the paper's Recall at each k, from the definitions."""
    scores = scores.copy()
    scores[fold_in] = -np.inf
    out = {f"{m}@{k}": [] for m in ("ndcg", "recall", "truncatedrecall") for k in topk}
    for u in range(scores.shape[0]):
        # torch.topk ranks as RecBole's evaluator does, ties (Pop has many) included
        ranked = torch.topk(torch.from_numpy(scores[u]), max(topk)).indices.numpy()
        relevant = targets[u]
        hits = np.isin(ranked, relevant)
        for k in topk:
            dcg = (hits[:k] / np.log2(np.arange(2, k + 2))).sum()
            idcg = (1 / np.log2(np.arange(2, min(k, len(relevant)) + 2))).sum()
            out[f"ndcg@{k}"].append(dcg / idcg)
            out[f"recall@{k}"].append(hits[:k].sum() / len(relevant))
            out[f"truncatedrecall@{k}"].append(hits[:k].sum() / min(k, len(relevant)))
    return {name: float(np.mean(values)) for name, values in out.items()}


def heldout_test_users(dataset):
    """Test users with targets: (ids, fold-in matrix rows, target lists)."""
    users = dataset.inter_feat["user_id"].numpy()
    items = dataset.inter_feat["item_id"].numpy()
    roles = dataset._roles
    ids = np.unique(users[roles == TEST_TARGET])
    fold_in = np.zeros((len(ids), dataset.item_num), dtype=bool)
    targets = []
    for row, user in enumerate(ids):
        fold_in[row, items[(users == user) & (roles == TEST_IN)]] = True
        targets.append(items[(users == user) & (roles == TEST_TARGET)])
    fold_in[:, 0] = True  # the padding id is never ranked
    return ids, fold_in, targets


def training_matrix(dataset):
    users = dataset.inter_feat["user_id"].numpy()[dataset._roles == TRAIN]
    items = dataset.inter_feat["item_id"].numpy()[dataset._roles == TRAIN]
    X = np.zeros((dataset.user_num, dataset.item_num))
    X[users, items] = 1
    return X


METRICS = {"metrics": ["Recall", "NDCG", "TruncatedRecall"], "topk": TOPK}


def test_ease_matches_numpy_from_the_definitions(split):
    _, dataset, _ = split
    result = run_recbole_beta("EASE", "ml-100k", config_dict={**STRONG, **METRICS, "reg_weight": 250.0})
    X = training_matrix(dataset)  # training users only: held-out rows are zero
    B = ease_weights(X, 250.0)
    ids, fold_in, targets = heldout_test_users(dataset)
    expected = numpy_metrics(fold_in.astype(float) @ B, fold_in, targets)
    for name, value in expected.items():
        assert result["test_result"][name] == pytest.approx(value, abs=5e-5), name


def test_pop_matches_numpy_from_the_definitions(split):
    _, dataset, _ = split
    result = run_recbole_beta("Pop", "ml-100k", config_dict={**STRONG, **METRICS})
    counts = training_matrix(dataset).sum(axis=0)  # training users' interactions only
    ids, fold_in, targets = heldout_test_users(dataset)
    expected = numpy_metrics(np.tile(counts / counts.max(), (len(ids), 1)), fold_in, targets)
    for name, value in expected.items():
        assert result["test_result"][name] == pytest.approx(value, abs=5e-5), name


def test_pop_counts_every_training_interaction(split):
    """RecBole 1.2.1's Pop counts an item once per batch and counts negative samples: not ours."""
    _, dataset, _ = split
    config = Config(model="Pop", dataset="ml-100k", config_dict=dict(STRONG), argv=[])
    _, (train_data, valid_data, _), model, trainer = prepare(config)
    trainer.fit(train_data, valid_data, saved=False)
    np.testing.assert_array_equal(model.item_cnt.flatten().numpy(), training_matrix(dataset).sum(axis=0))


def test_per_user_activity_is_the_fold_in_size(split):
    _, dataset, _ = split
    result = run_recbole_beta("Pop", "ml-100k", config_dict=dict(STRONG), per_user=True)
    table = result["per_user"]
    users = dataset.inter_feat["user_id"].numpy()
    for user, activity in zip(table["user_id"], table["activity"]):
        assert activity == ((users == user) & (dataset._roles == TEST_IN)).sum()
    assert set(table["user_id"]) <= set(dataset.protocol_users["test"])


# ------------------------------------------------------------------------------ metrics by hand

def test_truncated_recall_and_ndcg_by_hand():
    config = {"topk": [1, 2, 3, 5], "metric_decimal_place": 4}
    # user 0: 3 targets, hits at ranks 1 and 3; user 1: 1 target, hit at rank 2
    pos_index = np.array([[1, 0, 1, 0, 0], [0, 1, 0, 0, 0]], dtype=bool)
    pos_len = np.array([3, 1])
    recall = TruncatedRecall(config).metric_info(pos_index, pos_len)
    np.testing.assert_allclose(recall[0], [1 / 1, 1 / 2, 2 / 3, 2 / 3, 2 / 3])  # / min(k, 3)
    np.testing.assert_allclose(recall[1], [0, 1, 1, 1, 1])  # / min(k, 1)
    # RecBole's NDCG is the paper's: binary gains, ideal DCG over min(k, |targets|) positions
    Config(model="Pop", dataset="ml-100k", argv=[])  # RecBole's Config restores np.float for NDCG
    ndcg = NDCG(config).metric_info(pos_index, pos_len)
    g = [1 / math.log2(i + 2) for i in range(5)]
    np.testing.assert_allclose(ndcg[0, 2], (g[0] + g[2]) / (g[0] + g[1] + g[2]))
    np.testing.assert_allclose(ndcg[0, 4], (g[0] + g[2]) / (g[0] + g[1] + g[2]))
    np.testing.assert_allclose(ndcg[1, 1], g[1] / g[0])


def test_truncated_recall_differs_from_recbole_recall_when_targets_exceed_k(split):
    result = run_recbole_beta("Pop", "ml-100k", config_dict={**STRONG, **METRICS})
    test = result["test_result"]
    assert test["truncatedrecall@10"] > test["recall@10"]  # users with > 10 targets
    assert test["truncatedrecall@100"] == test["recall@100"]  # nobody has 100 targets here


# ------------------------------------------------------------------------ the reference's files

@pytest.mark.slow
def test_vae_cf_export_then_import_is_the_same_split_and_metrics(tmp_path, split):
    _, dataset, _ = split
    assert data_main(["export", "--dataset", "ml-100k", "--heldout_users=0.1", "--out", str(tmp_path / "vae")]) == 0
    files = sorted(p.name for p in (tmp_path / "vae").iterdir())
    assert files == ["test_te.csv", "test_tr.csv", "train.csv", "unique_sid.txt", "validation_te.csv",
                     "validation_tr.csv"]
    assert (tmp_path / "vae" / "train.csv").read_text().startswith("uid,sid\n")
    assert data_main(["convert", str(tmp_path / "vae"), "--format", "vae_cf", "--name", "imported",
                      "--out", str(tmp_path / "data"), "--quiet"]) == 0

    imported = HeldOutDataset(Config(model="Pop", dataset="imported",
                                     config_dict={**STRONG, "data_path": str(tmp_path / "data"),
                                                  "heldout_users": 3, "split_seed": 1}, argv=[]))
    imported.build()  # heldout_users and split_seed are ignored: the file carries the split
    # the same users (uid = position in train, valid, test order), fold-in items and targets
    order = np.concatenate([dataset.protocol_users[g] for g in ("train", "valid", "test")])
    uid_token = {int(u): str(i) for i, u in enumerate(order)}
    ours = raw_roles(dataset)
    ours["user"] = [uid_token[int(dataset.field2token_id["user_id"][u])] for u in ours["user"]]
    ours = ours.sort_values(["user", "item"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(raw_roles(imported), ours)

    config = {**STRONG, **METRICS}
    original = run_recbole_beta("EASE", "ml-100k", config_dict=config)
    again = run_recbole_beta("EASE", "imported", config_dict={**config, "data_path": str(tmp_path / "data")})
    assert again["test_result"] == original["test_result"]
    assert again["best_valid_result"] == original["best_valid_result"]


def write_vae_cf(folder, sids=("10", "20", "30")):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "unique_sid.txt").write_text("\n".join(sids) + "\n")
    rows = {"train.csv": ["0,0", "0,1", "1,2"], "validation_tr.csv": ["2,0"], "validation_te.csv": ["2,1"],
            "test_tr.csv": ["3,1"], "test_te.csv": ["3,2"]}
    for name, lines in rows.items():
        (folder / name).write_text("uid,sid\n" + "\n".join(lines) + "\n")
    return folder


# ------------------------------------------------------------------------------------ bad input

@pytest.mark.parametrize("key, value, message", [
    ("heldout_users", 0, "heldout_users=0 is not allowed"),
    ("heldout_users", -3, "heldout_users=-3 is not allowed"),
    ("heldout_users", 0.5, "heldout_users=0.5 is not allowed"),
    ("heldout_users", True, "heldout_users=True is not allowed"),
    ("heldout_ratio", 0, "heldout_ratio=0 is not allowed: must be a number > 0 and < 1"),
    ("heldout_ratio", 1.0, "heldout_ratio=1.0 is not allowed"),
    ("split_seed", -1, "split_seed=-1 is not allowed"),
    ("eval_protocol", "strnog",
     "eval_protocol='strnog' is not allowed: must be one of weak, strong (did you mean 'strong'?)"),
])
def test_bad_protocol_keys_fail_before_the_data_is_read(tmp_path, key, value, message):
    config = {**STRONG, key: value, "data_path": str(tmp_path / "nowhere")}  # no data: must not matter
    with pytest.raises(ConfigError) as error:
        run_recbole_beta("BetaMultVAE", "absent", config_dict=config)
    assert message in str(error.value)


def test_unsupported_model_fails_in_one_line(tmp_path):
    with pytest.raises(ConfigError) as error:
        run_recbole_beta("BPR", "absent", config_dict={**STRONG, "data_path": str(tmp_path)})
    text = str(error.value)
    assert "\n" not in text
    assert "BPR holds a parameter per user, which cannot be folded in; it runs the plugin's models and RecBole's " \
        "MultiVAE, MultiDAE, RecVAE" in text


def test_too_many_heldout_users_fails_in_one_line():
    with pytest.raises(ConfigError,
                       match=r"heldout_users=472 is not allowed: gives 472 validation and 472 test users of 943"):
        run_recbole_beta("Pop", "ml-100k", config_dict={**STRONG, "heldout_users": 472})


def test_bad_vae_cf_folders(tmp_path, capsys):
    def convert(folder):
        code = data_main(["convert", str(folder), "--format", "vae_cf", "--name", "x", "--out", str(tmp_path / "out")])
        return code, capsys.readouterr().err.strip()

    missing = write_vae_cf(tmp_path / "missing")
    (missing / "test_te.csv").unlink()
    code, err = convert(missing)
    assert code == 2 and "no test_te.csv" in err and err.count("\n") == 0

    stray = write_vae_cf(tmp_path / "stray")
    (stray / "test_te.csv").write_text("uid,sid\n3,2\n3,7\n")
    code, err = convert(stray)
    assert code == 2 and "test_te.csv:3: sid '7' is not a line of unique_sid.txt (0 to 2)" in err

    header = write_vae_cf(tmp_path / "header")
    (header / "train.csv").write_text("user,item\n0,0\n")
    code, err = convert(header)
    assert code == 2 and "train.csv:1: the header must be 'uid,sid'" in err

    code, err = convert(write_vae_cf(tmp_path / "good"))
    assert code == 0
    inter = (tmp_path / "out" / "x" / "x.inter").read_text().splitlines()
    assert inter[0] == "user_id:token\titem_id:token\tprotocol_role:token"
    assert inter[1:] == ["0\t10\ttrain", "0\t20\ttrain", "1\t30\ttrain", "2\t10\tvalid_in", "2\t20\tvalid_target",
                         "3\t20\ttest_in", "3\t30\ttest_target"]
