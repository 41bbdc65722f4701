"""Synthetic atomic data: shape, no duplicates, power-law skew, determinism (real files in tmp_path)."""

import json

import numpy as np
import pandas as pd
import pytest

from recbole_beta.data import PRESETS, Shape, SyntheticDataError, generate
from recbole_beta.data.synthetic import allocate_activity, iter_blocks
from recbole_beta.data_cli import main


def load(out, name):
    """The generated .inter as a DataFrame with integer columns."""
    return pd.read_csv(out / name / f"{name}.inter", sep="\t")


def test_shape_counts_and_no_duplicates(tmp_path):
    shape = Shape(n_users=500, n_items=300, n_interactions=20_000, min_user_inter=5)
    summary = generate(tmp_path, "syn", shape, seed=1, block_interactions=3000)
    df = load(tmp_path, "syn")
    assert list(df.columns) == ["user_id:token", "item_id:token", "timestamp:float"]
    users, items = df["user_id:token"], df["item_id:token"]
    assert len(df) == 20_000
    assert users.nunique() == 500 and users.min() == 1 and users.max() == 500
    assert items.min() >= 1 and items.max() <= 300
    assert not df.duplicated(["user_id:token", "item_id:token"]).any()
    assert users.value_counts().min() >= 5
    assert (summary["users"], summary["items"], summary["interactions"]) == \
        (500, items.nunique(), 20_000)
    assert summary["density"] == pytest.approx(20_000 / (500 * items.nunique()))
    # Rows are grouped by user and time-ordered within each user.
    assert users.is_monotonic_increasing
    assert (df.groupby("user_id:token")["timestamp:float"].diff().dropna() >= 0).all()


def test_power_law_skew(tmp_path):
    shape = Shape(n_users=2000, n_items=1000, n_interactions=60_000)
    summary = generate(tmp_path, "skew", shape, seed=0)
    df = load(tmp_path, "skew")
    pop = df["item_id:token"].value_counts().to_numpy()  # descending
    top_share = pop[:100].sum() / len(df)
    # Uniform popularity would give the top 10% of items about 10% of interactions.
    assert top_share > 0.4
    assert summary["top10pct_items_share"] == pytest.approx(top_share, abs=1e-4)
    activity = df["user_id:token"].value_counts().to_numpy()
    assert activity[0] > 10 * np.median(activity)


def test_uniform_exponents_are_flat(tmp_path):
    shape = Shape(n_users=200, n_items=100, n_interactions=4000, item_exponent=0,
                  user_exponent=0, min_user_inter=1)
    generate(tmp_path, "flat", shape, seed=0)
    df = load(tmp_path, "flat")
    assert df["user_id:token"].value_counts().nunique() == 1  # 20 each
    assert df["item_id:token"].value_counts().max() < 3 * 40


def test_same_seed_same_bytes_different_seed_different(tmp_path):
    shape = Shape(n_users=300, n_items=200, n_interactions=9000)
    files = []
    for out, seed in (("a", 7), ("b", 7), ("c", 8)):
        generate(tmp_path / out, "d", shape, seed=seed, block_interactions=2000)
        files.append((tmp_path / out / "d" / "d.inter").read_bytes())
    assert files[0] == files[1]
    assert files[0] != files[2]
    summaries = [json.loads((tmp_path / out / "d" / "d.summary.json").read_text())
                 for out in ("a", "b")]
    assert [s.pop("inter_file") for s in summaries] != [None, None]
    assert summaries[0] == summaries[1]


def test_block_size_does_not_change_the_pairs_count(tmp_path):
    shape = Shape(n_users=100, n_items=80, n_interactions=3000, timestamps=False)
    for block in (50, 100_000):
        blocks = list(iter_blocks(shape, seed=3, block_interactions=block))
        user = np.concatenate([b[0] for b in blocks])
        item = np.concatenate([b[1] for b in blocks])
        assert len(user) == 3000
        assert len(np.unique(user * 1000 + item)) == 3000
        assert all(b[2] is None for b in blocks)


def test_heavy_users_and_full_catalogue(tmp_path):
    # 20 users x 30 items: most users sample a large share of the catalogue (exact path).
    shape = Shape(n_users=20, n_items=30, n_interactions=500, min_user_inter=1)
    generate(tmp_path, "heavy", shape, seed=2)
    df = load(tmp_path, "heavy")
    assert len(df) == 500 and not df.duplicated(["user_id:token", "item_id:token"]).any()
    assert df["user_id:token"].value_counts().max() == 30  # capped at the catalogue
    full = Shape(n_users=10, n_items=12, n_interactions=120, min_user_inter=1)
    generate(tmp_path, "full", full, seed=0)
    df = load(tmp_path, "full")
    assert len(df.drop_duplicates(["user_id:token", "item_id:token"])) == 120


def test_allocate_activity_is_exact_and_capped():
    counts = allocate_activity(1000, 200_000, 500, exponent=1.0, minimum=5)
    assert counts.sum() == 200_000
    assert counts.min() >= 5 and counts.max() == 500
    assert (np.diff(counts) <= 0).all()  # descending with rank


def test_density_instead_of_count(tmp_path):
    summary = generate(tmp_path, "dens", Shape(n_users=100, n_items=50, density=0.2), seed=0)
    assert summary["interactions"] == 1000


@pytest.mark.parametrize("shape,match", [
    (Shape(n_users=10, n_items=5, n_interactions=51), "do not fit 10 users x 5 items"),
    (Shape(n_users=10, n_items=5, n_interactions=20, min_user_inter=3), "need 30 to 50"),
    (Shape(n_users=10, n_items=5), "either the number of interactions or the density"),
    (Shape(n_users=10, n_items=5, n_interactions=20, density=0.1), "not both"),
    (Shape(n_users=10, n_items=5, n_interactions=20, min_user_inter=6), "min_user_inter=6"),
    (Shape(n_users=0, n_items=5, n_interactions=20), "at least one user"),
])
def test_impossible_shapes(tmp_path, shape, match):
    with pytest.raises(SyntheticDataError, match=match):
        generate(tmp_path, "bad", shape)
    assert not (tmp_path / "bad").exists()


def test_ml1m_preset(tmp_path):
    assert PRESETS["ml-20m"].n_users == 136_677 and PRESETS["ml-20m"].n_items == 20_108
    assert PRESETS["ml-20m"].n_interactions == 10_000_000
    summary = generate(tmp_path, "ml1m", PRESETS["ml-1m"], seed=0)
    assert (summary["users"], summary["interactions"]) == (6040, 1_000_209)
    assert 3600 <= summary["items"] <= 3706
    assert summary["user_interactions"]["min"] >= 20
    written = json.loads((tmp_path / "ml1m" / "ml1m.summary.json").read_text())
    assert written == summary


def test_recbole_loads_synthetic(tmp_path):
    from recbole.config import Config
    from recbole.data import create_dataset

    summary = generate(tmp_path, "syn-small", Shape(n_users=80, n_items=60, n_interactions=1500))
    config = Config(model="Pop", dataset="syn-small", config_dict={
        "data_path": str(tmp_path), "checkpoint_dir": str(tmp_path / "saved"),
        "show_progress": False})
    dataset = create_dataset(config)
    assert dataset.user_num - 1 == summary["users"] == 80
    assert dataset.item_num - 1 == summary["items"]
    assert dataset.inter_num == 1500


def test_cli_synthetic(tmp_path, capsys):
    code = main(["synthetic", "--users", "50", "--items", "40", "--interactions", "600",
                 "--seed", "4", "--out", str(tmp_path), "--name", "cli", "--no-timestamp"])
    assert code == 0
    assert capsys.readouterr().out.startswith("cli: 50 users, ")
    assert list(load(tmp_path, "cli").columns) == ["user_id:token", "item_id:token"]


def test_cli_synthetic_errors_exit_2(tmp_path, capsys):
    assert main(["synthetic", "--users", "5", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err == \
        "recbole-beta: without --preset, give --items, --interactions or --density\n"
    assert main(["synthetic", "--users", "5", "--items", "5", "--interactions", "26",
                 "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("recbole-beta: 26 interactions do not fit 5 users x 5 items")
    assert err.count("\n") == 1
