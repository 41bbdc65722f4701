"""FastCollector collects what RecBole's Collector collects, without its users x items matrix.

The reference in every test is RecBole 1.2.1's own ``recbole.evaluator.Collector`` on the same scores.
"""

import math

import pytest
import torch
from recbole.evaluator import Collector, Evaluator

from recbole_beta.collector import MIN_BLOCK, FastCollector, topk_hits, topk_indices
from recbole_beta.config import Config
from recbole_beta.quick_start import prepare

TOPK_METRICS = ["Recall", "NDCG", "TruncatedRecall", "Hit", "MRR", "Precision", "MAP"]
#: (topk, metrics): rec.topk alone; rec.topk and rec.items together. ShannonEntropy is the rec.items
#: metric RecBole 1.2.1 can run: those that also need data.num_items or data.count_items (ItemCoverage,
#: AveragePopularity, ...) fail in its Collector.get_data_struct, which calls .cpu() on an int
CASES = [
    ([20, 50, 100], TOPK_METRICS),
    ([10], TOPK_METRICS + ["ShannonEntropy"]),
]
#: ~120 users a batch on ml-100k (1683 item ids): several batches per loader
SMALL_BATCHES = {"eval_batch_size": 120 * 1683}


def _prepare(model, fast, **overrides):
    config = Config(model=model, dataset="ml-100k", config_dict={**fast, **overrides}, argv=[])
    dataset, loaders, model, trainer = prepare(config)
    return config, dataset, loaders, model, trainer


def _assert_same_struct(ours, theirs):
    """Same keys, and every tensor equal with the same dtype and shape."""
    assert set(ours._data_dict) == set(theirs._data_dict)
    for key, expected in theirs._data_dict.items():
        got = ours[key]
        if isinstance(expected, torch.Tensor):
            assert got.dtype == expected.dtype, key
            assert got.shape == expected.shape, key
            assert torch.equal(got, expected), key
        else:
            assert got == expected, key


def _collected_batches(trainer, dataset, model, loaders, collectors):
    """Every batch of ``loaders``, scored by the trainer and collected by each collector; yields the scores."""
    model.eval()
    trainer.tot_item_num = dataset.item_num
    with torch.no_grad():
        for loader in loaders:
            for batch in loader:
                _, scores, positive_u, positive_i = trainer._full_sort_batch_eval(batch)
                for collector in collectors:
                    collector.eval_batch_collect(scores, None, positive_u, positive_i)
                yield scores


@pytest.mark.parametrize("model_name", ["ScaledBetaMultVAE", "Pop"])  # Pop: items of equal counts tie
@pytest.mark.parametrize("topk, metrics", CASES)
def test_every_batch_matches_recbole(fast, model_name, topk, metrics):
    config, dataset, (train_data, valid_data, test_data), model, trainer = _prepare(
        model_name, {**fast, "epochs": 1}, topk=topk, metrics=metrics, valid_metric=f"NDCG@{topk[-1]}",
        **SMALL_BATCHES
    )
    assert isinstance(trainer.eval_collector, FastCollector)  # the plugin's trainers use it
    if model_name == "Pop":
        trainer.fit(train_data, None, saved=False)  # the counts; the VAE scores as initialised
    ours, theirs = FastCollector(config), Collector(config)
    assert ours.register.need("rec.topk")
    assert ours.register.need("rec.items") == ("ShannonEntropy" in metrics)
    # Pop's equal counts tie; topk_indices in blocks (top 10 of 1,683 items) may list other items of
    # the same score than torch.topk, whose order among ties is unspecified: there, the same scores
    blocks = math.isqrt(dataset.item_num // max(topk)) >= MIN_BLOCK
    n_batches = reordered = 0
    for scores in _collected_batches(trainer, dataset, model, (valid_data, test_data), (ours, theirs)):
        ours_struct, theirs_struct = ours.get_data_struct(), theirs.get_data_struct()
        if model_name == "Pop" and blocks:
            expected = torch.topk(scores, max(topk), dim=-1)
            assert torch.equal(scores.gather(1, ours.topk_items(scores)), expected.values)
            reordered += not torch.equal(ours.topk_items(scores), expected.indices)
        else:
            _assert_same_struct(ours_struct, theirs_struct)
        assert ours_struct["rec.topk"].shape == (scores.shape[0], max(topk) + 1)
        n_batches += 1
    assert n_batches >= 10
    assert reordered == (n_batches if model_name == "Pop" and blocks else 0)  # the ties were there to test


def test_trained_model_metrics_equal_recbole_collector(fast):
    metrics = TOPK_METRICS + ["ShannonEntropy"]
    config, _, (train_data, valid_data, test_data), _, trainer = _prepare(
        "ScaledBetaMultVAE", {**fast, "epochs": 2}, metrics=metrics, **SMALL_BATCHES
    )
    assert isinstance(trainer.eval_collector, FastCollector)
    trainer.fit(train_data, valid_data, saved=False, show_progress=False)
    # the trainer's evaluator, keeping what its collector handed it
    structs = []
    evaluate = trainer.evaluator.evaluate
    trainer.evaluator.evaluate = lambda struct: structs.append(struct) or evaluate(struct)

    results = {}
    for name, collector in (("ours", trainer.eval_collector), ("theirs", Collector(config))):
        collector.data_collect(train_data)
        trainer.eval_collector = collector
        results[name] = [trainer.evaluate(data, load_best_model=False) for data in (valid_data, test_data)]
    assert results["ours"] == results["theirs"]  # every metric, to RecBole's 4 places
    assert results["ours"][1]["ndcg@100"] > 0.05 and results["ours"][1]["shannonentropy@100"] > 0
    assert set(results["ours"][1]) == {f"{m.lower()}@{k}" for m in metrics for k in (20, 50, 100)}
    # and before the rounding: the collected tensors themselves
    ours_valid, ours_test, theirs_valid, theirs_test = structs
    _assert_same_struct(ours_valid, theirs_valid)
    _assert_same_struct(ours_test, theirs_test)
    assert ours_test["rec.topk"].shape[0] == test_data._dataset.user_num - 1  # each user once


def _hand_config(metrics, topk):
    # a real Config (no data loaded), which also restores np.float for RecBole's NDCG, MRR and MAP
    config = Config(model="Pop", dataset="ml-100k", config_dict={"metrics": metrics, "topk": topk,
                                                                  "valid_metric": f"Recall@{topk[0]}"}, argv=[])
    config["device"] = torch.device("cpu")
    return config


def _hand_batch():
    """3 users x 6 items (id 0: padding), worked out by hand for top 3.

    user 0: top 3 = items 1, 2, 4; positives {2, 3}, (0, 2) listed twice: hits 0 1 0, 2 positives
    user 1: top 3 = items 3, 5, 4; positive {5}: hits 0 1 0, 1 positive
    user 2: top 3 = items 1, 2, 3; positive {5}: no hit, 1 positive
    """
    inf = float("inf")
    scores = torch.tensor([
        [-inf, 0.9, 0.8, 0.1, 0.7, 0.2],
        [-inf, 0.1, 0.2, 0.9, 0.3, 0.8],
        [-inf, 0.5, 0.4, 0.3, 0.2, 0.1],
    ])
    positive_u = torch.tensor([0, 1, 0, 2, 0])
    positive_i = torch.tensor([2, 5, 3, 5, 2])
    expected = torch.tensor([[0, 1, 0, 2], [0, 1, 0, 1], [0, 0, 0, 1]])
    return scores, positive_u, positive_i, expected


def test_duplicate_positives_count_once_as_in_recbole():
    scores, positive_u, positive_i, expected = _hand_batch()
    metrics = ["Recall", "Hit", "NDCG", "TruncatedRecall", "Precision", "MRR", "MAP", "ShannonEntropy"]
    config = _hand_config(metrics, [3])
    results, structs = {}, {}
    for name, cls in (("ours", FastCollector), ("theirs", Collector)):
        collector = cls(config)
        collector.eval_batch_collect(scores, None, positive_u, positive_i)
        structs[name] = collector.get_data_struct()
        results[name] = Evaluator(config).evaluate(structs[name])
    assert torch.equal(structs["theirs"]["rec.topk"], expected)  # the hand-worked rows are RecBole's
    _assert_same_struct(structs["ours"], structs["theirs"])
    assert results["ours"] == results["theirs"]
    # Recall@3: user 0 finds 1 of its 2 distinct positives (not 1 of 3), user 1 all, user 2 none
    assert results["ours"]["recall@3"] == pytest.approx((1 / 2 + 1 + 0) / 3, abs=1e-4)
    assert results["ours"]["hit@3"] == pytest.approx(2 / 3, abs=1e-4)


def test_batch_edge_cases_match_recbole():
    """A user without positives, a batch without any, one user, and k = every item."""
    scores, positive_u, positive_i, _ = _hand_batch()
    cases = [
        (scores, positive_u[positive_u != 1], positive_i[positive_u != 1], [2]),  # user 1: none
        (scores, positive_u[:0], positive_i[:0], [1, 3]),  # nobody has any
        (scores[:1], positive_u[positive_u == 0], positive_i[positive_u == 0], [6]),  # one user, k = I
    ]
    for scores, positive_u, positive_i, topk in cases:
        config = _hand_config(["Recall", "ShannonEntropy"], topk)  # rec.topk and rec.items
        ours, theirs = FastCollector(config), Collector(config)
        ours.eval_batch_collect(scores, None, positive_u, positive_i)
        theirs.eval_batch_collect(scores, None, positive_u, positive_i)
        _assert_same_struct(ours.get_data_struct(), theirs.get_data_struct())


def test_meanrank_metric_goes_through_recbole(fast):
    """GAUC needs rec.meanrank, which FastCollector leaves to RecBole's method: collected once, the same."""
    metrics = ["GAUC", "Recall", "ShannonEntropy"]
    config, dataset, (_, _, test_data), model, trainer = _prepare(
        "ScaledBetaMultVAE", fast, metrics=metrics, valid_metric="GAUC", **SMALL_BATCHES
    )
    ours, theirs = FastCollector(config), Collector(config)
    for _ in _collected_batches(trainer, dataset, model, (test_data,), (ours, theirs)):
        pass
    ours_struct, theirs_struct = ours.get_data_struct(), theirs.get_data_struct()
    _assert_same_struct(ours_struct, theirs_struct)
    n_users = test_data._dataset.user_num - 1
    assert ours_struct["rec.meanrank"].shape == (n_users, 3)  # each user once
    evaluator = Evaluator(config)
    ours_result = evaluator.evaluate(ours_struct)
    assert ours_result == evaluator.evaluate(theirs_struct)
    assert 0.5 < ours_result["gauc"] <= 1


def _random_batch(seed, n_positives, n_users=64, n_items=3000):
    """Scores of ``n_users`` x ``n_items`` and ``n_positives`` random (user, item) targets (item 0,
    the padding, never one), drawn from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    scores = torch.rand(n_users, n_items, generator=generator)
    positive_u = torch.randint(0, n_users, (n_positives,), generator=generator)
    positive_i = torch.randint(1, n_items, (n_positives,), generator=generator)
    return scores, positive_u, positive_i


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_tensors_match_recbole():
    scores, positive_u, positive_i = _random_batch(seed=0, n_positives=2000)
    config = _hand_config(["Recall", "NDCG", "ShannonEntropy", "GAUC"], [20, 50, 100])
    config["device"] = torch.device("cuda")
    ours, theirs = FastCollector(config), Collector(config)
    # the trainer's scores are on the device, its positives on the CPU
    ours.eval_batch_collect(scores.cuda(), None, positive_u, positive_i)
    theirs.eval_batch_collect(scores.cuda(), None, positive_u, positive_i)
    _assert_same_struct(ours.get_data_struct(), theirs.get_data_struct())


def test_topk_indices_are_torch_topks_in_blocks():
    """Many items (blocks of 5 to 14 columns, with columns left over), scores row-major or
    item-major: the indices torch.topk gives, best first, where no two scores tie; where they do
    (integer scores, masked rows), its values."""
    generator = torch.Generator().manual_seed(0)
    for n_items in (2_600, 7_001, 20_108):
        scores = torch.randn(40, n_items, generator=generator)
        assert math.isqrt(n_items // 100) >= MIN_BLOCK  # the block path, not torch.topk itself
        expected = torch.topk(scores, 100, dim=1)
        item_major = scores.t().contiguous().t()  # the plugin's ranking scores' layout
        assert torch.equal(topk_indices(scores, 100), expected.indices)
        assert torch.equal(topk_indices(item_major, 100), expected.indices)

        ties = torch.randint(0, 50, (40, n_items), generator=generator).float()
        ties[:, 0] = -float("inf")
        ties[3, : n_items - 40] = -float("inf")  # a user with 40 unmasked items: 60 of its top 100 are -inf
        for layout in (ties, ties.t().contiguous().t()):
            got = topk_indices(layout, 100)
            assert torch.equal(ties.gather(1, got), torch.topk(ties, 100, dim=1).values)
            assert all(len(set(row.tolist())) == 100 for row in got)  # each item once


def test_item_major_scores_are_ranked_by_a_threshold_and_one_pass(monkeypatch):
    """recbole_beta.topk on the plugin's item-major layout: torch.topk's values, equal scores
    listed lower item first (bfloat16 ties many, through one widening buffer batch after batch);
    a user tied past the candidate buffer, a NaN batch and a missing numba fall back to torch.topk."""
    from recbole_beta import topk

    assert topk.available()  # numba is a dependency
    n_items, users = 20_108, 50
    for seed in (3, 4):
        low = (torch.randn(n_items, users, generator=torch.Generator().manual_seed(seed)) * 3).bfloat16().t()
        got = topk_indices(low, 100)
        values = low.gather(1, got)
        assert torch.equal(values, torch.topk(low, 100, dim=1).values)
        tied = values[:, 1:] == values[:, :-1]
        assert tied.sum() > 100 and bool((got[:, 1:] > got[:, :-1])[tied].all())
    assert not torch.equal(got, torch.topk(low, 100, dim=1).indices)  # so the next check can fail
    monkeypatch.setattr(topk, "available", lambda: False)
    assert torch.equal(topk_indices(low, 100), torch.topk(low, 100, dim=1).indices)
    monkeypatch.undo()

    scores = torch.randn(n_items, users, generator=torch.Generator().manual_seed(5)).t()
    scores[:, 0] = -float("inf")
    scores[7] = 0.5  # every score tied: more candidates than the buffer holds
    got, expected = topk_indices(scores, 100), torch.topk(scores, 100, dim=1)
    assert torch.equal(scores.gather(1, got), expected.values)
    others = torch.arange(users) != 7
    assert torch.equal(got[others], expected.indices[others])
    scores[11, 123] = float("nan")  # torch ranks NaN highest
    assert torch.equal(topk_indices(scores, 100), torch.topk(scores, 100, dim=1).indices)


def test_many_items_match_recbole():
    """The block path inside FastCollector: RecBole's tensors and metrics on 3,000 items."""
    scores, positive_u, positive_i = _random_batch(seed=1, n_positives=4000)
    config = _hand_config(["Recall", "NDCG", "ShannonEntropy"], [20, 50, 100])
    ours, theirs = FastCollector(config), Collector(config)
    for collector in (ours, theirs):
        collector.eval_batch_collect(scores, None, positive_u, positive_i)
    ours_struct, theirs_struct = ours.get_data_struct(), theirs.get_data_struct()
    _assert_same_struct(ours_struct, theirs_struct)
    assert ours_struct["rec.topk"][:, :-1].sum() > 0  # some hits to compare
    assert Evaluator(config).evaluate(ours_struct) == Evaluator(config).evaluate(theirs_struct)


def test_sorted_positives_give_recbole_hits():
    """The plugin's loaders hand positives sorted and distinct (no sort); RecBole's in any order."""
    generator = torch.Generator().manual_seed(2)
    topk_idx = torch.topk(torch.rand(30, 500, generator=generator), 20, dim=1).indices
    keys = torch.unique(torch.randint(0, 30 * 500, (3000,), generator=generator))
    positive_u, positive_i = keys // 500, keys % 500
    shuffled = torch.randperm(len(keys), generator=generator)
    repeated = torch.cat((shuffled, shuffled[:100]))
    sorted_rows = topk_hits(topk_idx, positive_u, positive_i, 500)
    assert torch.equal(sorted_rows, topk_hits(topk_idx, positive_u[repeated], positive_i[repeated], 500))
    pos_matrix = torch.zeros(30, 500, dtype=torch.int)
    pos_matrix[positive_u, positive_i] = 1
    assert torch.equal(sorted_rows[:, :-1], torch.gather(pos_matrix, 1, topk_idx))
    assert torch.equal(sorted_rows[:, -1], pos_matrix.sum(1))
