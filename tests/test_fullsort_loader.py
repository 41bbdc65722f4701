"""The lean full-ranking loader (recbole_beta.data.fullsort) yields RecBole's batches: the same users,
history pairs and positive pairs as RecBole's FullSortEvalDataLoader built with RecBole's samplers on the
same split, and the same metrics end to end. Real ml-100k, real RecBole loaders."""

import pytest
from recbole.data import create_dataset
from recbole.data.dataloader import FullSortEvalDataLoader, NegSampleEvalDataLoader
from recbole.data.utils import create_samplers

from recbole_beta.config import Config
from recbole_beta.data import fullsort
from recbole_beta.data.fullsort import CSRFullSortEvalDataLoader, fullsort_eval_loaders
from recbole_beta.data.heldout import HeldOutDataset, heldout_data_preparation
from recbole_beta.quick_start import data_preparation, run_recbole_beta

ML100K_ITEMS = 1683  # item_num, the padding id 0 included
BATCH_SIZES = [7 * ML100K_ITEMS + 100, 4194304]  # 7 users a batch (a short last one); every user at once


def pairs(rows, items):
    """The (row, item) pairs of a batch, sorted: equal lists mean equal sets, and no pair twice."""
    return sorted(zip(rows.tolist(), items.tolist()))


def both_loaders(config, dataset, built):
    """((lean valid, lean test), (RecBole's valid, RecBole's test)) on one split."""
    samplers = create_samplers(config, dataset, built)
    recbole = tuple(FullSortEvalDataLoader(config, built[i], samplers[i], shuffle=False) for i in (1, 2))
    return fullsort_eval_loaders(config, built), recbole


def assert_same_batches(lean, recbole):
    assert type(lean) is CSRFullSortEvalDataLoader and type(recbole) is FullSortEvalDataLoader
    assert lean.uid_list.tolist() == recbole.uid_list.tolist()
    assert lean.uid_list.tolist() == sorted(set(lean.uid_list.tolist()))
    assert lean.step == recbole.step and len(lean) == len(recbole)
    assert lean.uid2items_num.tolist() == recbole.uid2items_num.tolist()
    for key in recbole.user_df.columns:
        assert lean.user_df[key].tolist() == recbole.user_df[key].tolist()
    n_batches = 0
    for (user_df, history, positive_u, positive_i), (r_user_df, r_history, r_positive_u, r_positive_i) in zip(
        lean, recbole, strict=True
    ):
        assert user_df["user_id"].tolist() == r_user_df["user_id"].tolist()
        assert pairs(*history) == pairs(*r_history)
        assert pairs(positive_u, positive_i) == pairs(r_positive_u, r_positive_i)
        n_batches += 1
    assert n_batches == len(recbole)
    # the indices a DDP rank collates (DistributedSampler: every world_size-th user), and any order
    n = len(recbole.uid_list)
    for index in (list(range(1, n, 3)), list(range(n - 1, -1, -2))):
        batch, r_batch = lean.collate_fn(index), recbole.collate_fn(index)
        assert batch[0]["user_id"].tolist() == r_batch[0]["user_id"].tolist()
        assert pairs(*batch[1]) == pairs(*r_batch[1]) and pairs(*batch[2:]) == pairs(*r_batch[2:])
    # the per-user views other code reads (recbole.utils.case_study indexes uid2history_item)
    users = recbole.uid_list.tolist()
    for uid in users[:5] + users[-5:]:
        assert sorted(lean.uid2history_item[uid].tolist()) == sorted(recbole.uid2history_item[uid].tolist())
        assert sorted(lean.uid2positive_item[uid].tolist()) == sorted(recbole.uid2positive_item[uid].tolist())
    both = lean.uid2history_item[users[:3]], recbole.uid2history_item[users[:3]]
    assert [sorted(row.tolist()) for row in both[0]] == [sorted(row.tolist()) for row in both[1]]
    return n_batches


@pytest.fixture(scope="module")
def ml100k():
    config = Config(model="AnnealedBetaMultVAE", dataset="ml-100k", config_dict={"state": "WARNING"}, argv=[])
    dataset = create_dataset(config)
    return config, dataset, dataset.build()


@pytest.mark.parametrize("eval_batch_size", BATCH_SIZES)
def test_batches_equal_recboles_on_ml100k(ml100k, eval_batch_size):
    config, dataset, built = ml100k
    config["eval_batch_size"] = eval_batch_size
    (valid, test), (r_valid, r_test) = both_loaders(config, dataset, built)
    expected = -(-943 // 7) if eval_batch_size < 4194304 else 1
    assert assert_same_batches(valid, r_valid) == expected
    assert assert_same_batches(test, r_test) == expected


def test_batches_equal_recboles_under_the_strong_protocol():
    config = Config(model="AnnealedBetaMultVAE", dataset="ml-100k", argv=[], config_dict={
        "state": "WARNING", "eval_protocol": "strong", "heldout_users": 0.1, "eval_batch_size": 5 * ML100K_ITEMS})
    dataset = HeldOutDataset(config)
    built = dataset.build()
    (valid, test), (r_valid, r_test) = both_loaders(config, dataset, built)
    assert set(valid.uid_list.tolist()) <= set(dataset.protocol_users["valid"])
    assert set(test.uid_list.tolist()) <= set(dataset.protocol_users["test"])
    assert assert_same_batches(valid, r_valid) > 1
    assert assert_same_batches(test, r_test) > 1


def test_the_strong_protocol_gives_the_plugin_vaes_the_lean_loader():
    config = Config(model="AnnealedBetaMultVAE", dataset="ml-100k", argv=[], config_dict={
        "state": "WARNING", "eval_protocol": "strong", "heldout_users": 0.1})
    _, valid, test = heldout_data_preparation(config, HeldOutDataset(config), True)
    assert type(valid) is CSRFullSortEvalDataLoader and type(test) is CSRFullSortEvalDataLoader
    config = Config(model="MultiVAE", dataset="ml-100k", argv=[], config_dict={
        "state": "WARNING", "eval_protocol": "strong", "heldout_users": 0.1})
    _, valid, test = heldout_data_preparation(config, HeldOutDataset(config), False)
    assert type(valid) is FullSortEvalDataLoader and type(test) is FullSortEvalDataLoader


def test_duplicate_rows_within_and_across_splits_give_recboles_sets(tmp_path):
    from conftest import write_tiny_dataset

    keys = write_tiny_dataset(tmp_path, "dups")
    inter = tmp_path / "dups" / "dups.inter"
    # i7 keeps u4 (every other item) from having all items, which RecBole's sampler refuses
    extra = ["u1\ti1"] * 4 + ["u1\ti2"] * 3 + ["u2\ti3"] * 3 + ["u3\ti4"] * 3 + ["u4\ti6"] * 3 + ["u1\ti7", "u2\ti7"]
    inter.write_text(inter.read_text() + "\n".join(extra) + "\n")
    config = Config(model="AnnealedBetaMultVAE", dataset="dups", argv=[], config_dict={
        **keys, "state": "WARNING", "eval_batch_size": 16, "seed": 3,
        "eval_args": {"split": {"RS": [0.5, 0.25, 0.25]}, "group_by": "user", "order": "RO", "mode": "full"}})
    dataset = create_dataset(config)
    built = dataset.build()
    split_pairs = [list(zip(d.inter_feat["user_id"].tolist(), d.inter_feat["item_id"].tolist())) for d in built]
    # what the test is about: a pair twice in one split, and a pair in two splits
    assert any(len(p) != len(set(p)) for p in split_pairs[1:])
    assert set(split_pairs[0]) & set(split_pairs[1]) and set(split_pairs[0] + split_pairs[1]) & set(split_pairs[2])
    (valid, test), (r_valid, r_test) = both_loaders(config, dataset, built)
    assert assert_same_batches(valid, r_valid) >= 2
    assert assert_same_batches(test, r_test) >= 2
    # the loader on its own, given the earlier splits instead of fullsort_eval_loaders' keys
    assert_same_batches(CSRFullSortEvalDataLoader(config, built[1], None, previous=[built[0]]), r_valid)
    assert_same_batches(CSRFullSortEvalDataLoader(config, built[2], None, previous=built[:2]), r_test)


def test_a_user_with_every_item_fails_as_in_recbole(tmp_path):
    from conftest import write_tiny_dataset

    keys = write_tiny_dataset(tmp_path, "tiny")  # u4 has all six items
    config = Config(model="AnnealedBetaMultVAE", dataset="tiny", argv=[], config_dict={
        **keys, "state": "WARNING",
        "eval_args": {"split": {"RS": [0.5, 0.25, 0.25]}, "group_by": "user", "order": "RO", "mode": "full"}})
    dataset = create_dataset(config)
    built = dataset.build()
    with pytest.raises(ValueError, match="Some users have interacted with all items") as recbole:
        create_samplers(config, dataset, built)
    with pytest.raises(ValueError) as lean:
        fullsort_eval_loaders(config, built)
    assert str(lean.value) == str(recbole.value)


def loader_types(model, **overrides):
    config = Config(model=model, dataset="ml-100k", config_dict={"state": "WARNING", **overrides}, argv=[])
    _, valid, test = data_preparation(config, create_dataset(config))
    return type(valid), type(test)


@pytest.mark.slow
def test_only_the_plugin_vaes_with_full_ranking_get_the_lean_loader(monkeypatch):
    lean = (CSRFullSortEvalDataLoader, CSRFullSortEvalDataLoader)
    recbole = (FullSortEvalDataLoader, FullSortEvalDataLoader)
    assert loader_types("AnnealedBetaMultVAE") == lean
    assert loader_types("MultiVAE") == recbole  # RecBole's baseline, RecBole's path
    assert loader_types("AnnealedBetaMultVAE", eval_args={"mode": {"valid": "full", "test": "uni100"}}) == (
        FullSortEvalDataLoader, NegSampleEvalDataLoader)
    assert loader_types("AnnealedBetaMultVAE", repeatable=True) == recbole  # RecBole masks no history then
    monkeypatch.setattr(fullsort, "LEAN_EVAL_LOADERS", False)
    assert loader_types("AnnealedBetaMultVAE") == recbole


def test_saved_dataloaders_load_back_with_the_same_batches(tmp_path):
    overrides = {"save_dataloaders": True, "eval_batch_size": 50 * ML100K_ITEMS}
    config = Config(model="AnnealedBetaMultVAE", dataset="ml-100k", config_dict={"state": "WARNING", **overrides},
                    argv=[])
    _, valid, test = data_preparation(config, create_dataset(config))
    assert (tmp_path / "saved" / "ml-100k-for-AnnealedBetaMultVAE-dataloader.pth").is_file()
    config = Config(model="AnnealedBetaMultVAE", dataset="ml-100k", config_dict={"state": "WARNING", **overrides},
                    argv=[])
    dataset = create_dataset(config)
    dataset.build = lambda: pytest.fail("the saved dataloaders were not loaded")
    _, loaded_valid, loaded_test = data_preparation(config, dataset)
    assert type(loaded_valid) is CSRFullSortEvalDataLoader and type(loaded_test) is CSRFullSortEvalDataLoader
    for a, b in ((valid, loaded_valid), (test, loaded_test)):
        for (user_df, history, pu, pi), (l_user_df, l_history, l_pu, l_pi) in zip(a, b, strict=True):
            assert user_df["user_id"].tolist() == l_user_df["user_id"].tolist()
            assert pairs(*history) == pairs(*l_history) and pairs(pu, pi) == pairs(l_pu, l_pi)


def metrics_of_both_paths(monkeypatch, config_dict):
    lean = run_recbole_beta("AnnealedBetaMultVAE", "ml-100k", config_dict=config_dict)
    monkeypatch.setattr(fullsort, "LEAN_EVAL_LOADERS", False)  # RecBole's samplers and FullSortEvalDataLoader
    recbole = run_recbole_beta("AnnealedBetaMultVAE", "ml-100k", config_dict=config_dict)
    return lean, recbole


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["weak", "strong"])
def test_end_to_end_metrics_equal_recboles_loaders(monkeypatch, fast, protocol):
    config_dict = {**fast, "epochs": 2, "eval_protocol": protocol, "results_dir": None,
                   "eval_batch_size": 100 * ML100K_ITEMS}
    lean, recbole = metrics_of_both_paths(monkeypatch, config_dict)
    assert lean["best_valid_result"] == recbole["best_valid_result"]
    assert lean["test_result"] == recbole["test_result"]
    per_epoch = [[epoch["valid"] for epoch in run["history"]] for run in (lean, recbole)]
    assert len(per_epoch[0]) == 2 and per_epoch[0] == per_epoch[1]
    assert lean["test_result"]["ndcg@100"] > 0
