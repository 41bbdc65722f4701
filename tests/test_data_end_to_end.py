"""A MovieLens-format ratings.csv, converted with the Mult-VAE preprocessing, trains the plugin end to end."""

import random

import pandas as pd
from recbole.data import create_dataset

from recbole_beta.config import Config
from recbole_beta.data import MULTVAE_FILTERS
from recbole_beta.data.convert import convert
from recbole_beta.quick_start import run_recbole_beta

USERS, ITEMS = 60, 40
NAME = "ml-tiny"
METRICS = {f"{m}@{k}" for m in ("recall", "ndcg") for k in (5, 10, 20)}


def write_ratings_csv(path):
    """ML-20M's ratings.csv layout: header userId,movieId,rating,timestamp; half-star ratings."""
    rng = random.Random(20)
    lines = ["userId,movieId,rating,timestamp"]
    for user in range(1, USERS + 1):
        items = rng.sample(range(1, ITEMS + 1), rng.randint(8, 20))
        for item in sorted(items):
            rating = rng.choice([2.0, 3.0, 3.5, 4.0, 4.0, 4.5, 5.0, 5.0])
            lines.append(f"{user},{item * 7},{rating:g},{1_100_000_000 + rng.randrange(10**7)}")
    # two users with under 5 ratings >= 4: the Mult-VAE preprocessing drops them
    lines += [f"{USERS + 1},7,5,1100000000", f"{USERS + 1},14,4.5,1100000001", f"{USERS + 2},21,3.5,1100000002"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return pd.read_csv(path)


def test_converted_movielens_trains_end_to_end(tmp_path):
    raw = write_ratings_csv(tmp_path / "raw" / "ratings.csv")
    out = tmp_path / "dataset"
    summary = convert(tmp_path / "raw" / "ratings.csv", out, name=NAME, filters=MULTVAE_FILTERS)

    kept = raw[raw.rating >= 4]
    kept = kept[kept.groupby("userId").userId.transform("size") >= 5]
    assert (summary["users"], summary["items"], summary["interactions"]) == (
        kept.userId.nunique(), kept.movieId.nunique(), len(kept))
    assert USERS - 10 <= summary["users"] <= USERS and summary["items"] <= ITEMS

    # RecBole's defaults for a dataset it has no properties file for load the converted columns
    config_dict = {"data_path": str(out), "epochs": 2, "show_progress": False, "state": "WARNING",
                   "topk": [5, 10, 20], "valid_metric": "NDCG@20"}  # 40 items: no top 100
    dataset = create_dataset(Config(model="ScaledBetaMultVAE", dataset=NAME, config_dict=config_dict))
    assert dataset.inter_num == summary["interactions"]
    assert (dataset.user_num - 1, dataset.item_num - 1) == (summary["users"], summary["items"])  # 0 is padding

    result = run_recbole_beta("ScaledBetaMultVAE", NAME, config_dict=config_dict)
    assert set(result["test_result"]) == METRICS and set(result["best_valid_result"]) == METRICS
    assert all(0 <= v <= 1 for v in result["test_result"].values())
    assert sum(result["test_result"].values()) > 0
    assert [h["epoch"] for h in result["history"]] == [0, 1]
