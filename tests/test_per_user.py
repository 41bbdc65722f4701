"""Row i of the per-user table (significance tests and activity buckets rest on it) is the metrics and
activity of user eval_data.uid_list[i]: checked for named users against a recomputation from scratch."""

import math

import numpy as np
import pytest
import torch
from recbole.utils import init_seed

from recbole_beta.checkpoint import load_checkpoint
from recbole_beta.compat import init_logger
from recbole_beta.config import Config
from recbole_beta.quick_start import prepare, run_recbole_beta

#: ml-100k user tokens, light and heavy users
USERS = ["1", "13", "405", "655", "732", "943"]


def items_of(dataset, uid):
    """The item ids of one user's rows in a split."""
    inter = dataset.inter_feat
    return inter[dataset.iid_field][inter[dataset.uid_field] == uid].numpy()


@pytest.mark.slow
def test_per_user_rows_hold_their_users_metrics_and_activity(fast):
    config_dict = {**fast, "epochs": 2}
    result = run_recbole_beta("BetaMultVAE", "ml-100k", config_dict=dict(config_dict), per_user=True)
    table = result["per_user"]

    # the same split (same seed, same steps as run_recbole_beta), with the model the test was run on
    config = Config(model="BetaMultVAE", dataset="ml-100k", config_dict=dict(config_dict))
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    _, (train, valid, test), model, _ = prepare(config)
    model.load_state_dict(load_checkpoint(result["checkpoint"])["state_dict"])
    model.eval()

    dataset = train._dataset
    uids = [int(dataset.token2id(dataset.uid_field, token)) for token in USERS]
    uids += [int(table["user_id"][0]), int(table["user_id"][-1])]  # the first and the last row
    checked = []
    for uid in uids:
        (row,) = np.flatnonzero(table["user_id"] == uid)
        trained, validated = items_of(dataset, uid), items_of(valid._dataset, uid)
        targets = set(items_of(test._dataset, uid).tolist())
        assert targets
        with torch.no_grad():
            scores = model.full_sort_predict({dataset.uid_field: torch.tensor([uid])}).view(-1).clone()
        # RecBole's full ranking for the test: every item but the padding id 0 and the items the user
        # trained or validated on
        scores[0] = -math.inf
        scores[torch.as_tensor(np.concatenate([trained, validated]), dtype=torch.long)] = -math.inf
        ranked = torch.argsort(scores, descending=True).tolist()

        assert table["activity"][row] == len(trained)
        for k in config["topk"]:
            hits = [item in targets for item in ranked[:k]]
            dcg = sum(1 / math.log2(i + 2) for i, hit in enumerate(hits) if hit)
            idcg = sum(1 / math.log2(i + 2) for i in range(min(len(targets), k)))
            assert table[f"recall@{k}"][row] == pytest.approx(sum(hits) / len(targets), abs=1e-9), (uid, k)
            assert table[f"ndcg@{k}"][row] == pytest.approx(dcg / idcg, abs=1e-9), (uid, k)
        checked.append((table["activity"][row], table["ndcg@100"][row]))

    # the users differ, so a row of another user would not pass
    assert len(set(checked)) == len(checked)
