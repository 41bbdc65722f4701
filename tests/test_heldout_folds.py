"""Cross-validated held-out users (``heldout_folds``, ``fold``): every user tested exactly once, on the
real ml-100k, through RecBole's Config and the plugin's HeldOutDataset; and the bad settings' one line."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import write_tiny_dataset
from recbole_beta.config import Config
from recbole_beta.data.heldout import (
    MIN_INTERACTIONS_FOR_TARGETS,
    TEST_IN,
    TEST_TARGET,
    TRAIN,
    VALID_IN,
    VALID_TARGET,
    HeldOutDataset,
    draw_roles,
)
from recbole_beta.data_cli import main as data_main
from recbole_beta.errors import ConfigError
from recbole_beta.quick_start import run_recbole_beta

K, H = 5, 69
FOLDS = {"eval_protocol": "strong", "heldout_folds": K, "heldout_users": H, "state": "WARNING", "show_progress": False}


@pytest.fixture(scope="module")
def raw():
    path = Path(__import__("recbole").__file__).parent / "dataset_example/ml-100k/ml-100k.inter"
    data = pd.read_csv(path, sep="\t")
    return data["user_id:token"].astype(str).to_numpy(), data["item_id:token"].astype(str).to_numpy()


@pytest.fixture(scope="module")
def folds(raw):
    users, items = raw
    return [draw_roles(users, items, H, 0.2, 98765, folds=K, fold=k) for k in range(K)]


def groups(users, roles):
    """(training, validation, test) users of one fold's roles."""
    return tuple(set(users[np.isin(roles, codes)]) for codes in ([TRAIN], [VALID_IN, VALID_TARGET],
                                                                  [TEST_IN, TEST_TARGET]))


def test_every_user_is_tested_in_exactly_one_fold(raw, folds):
    users, _ = raw
    everyone = set(users)
    tested = []
    for roles in folds:
        train, valid, test = groups(users, roles)
        assert not train & test and not valid & test and not train & valid
        assert len(valid) == H
        assert train | valid | test == everyone  # a user whose every item is dropped would be missing
        tested.append(test)
    assert sorted(len(t) for t in tested) == [188, 188, 189, 189, 189]  # 943 users, near-equal folds
    assert set().union(*tested) == everyone
    assert sum(len(t) for t in tested) == len(everyone)  # each once


def test_folds_depend_on_split_seed_not_on_the_run_seed(raw, folds):
    users, items = raw
    again = draw_roles(users, items, H, 0.2, 98765, folds=K, fold=2)
    np.testing.assert_array_equal(again, folds[2])
    other = draw_roles(users, items, H, 0.2, 1, folds=K, fold=2)
    assert groups(users, other)[2] != groups(users, folds[2])[2]
    # through the Config: the run's seed does not move the split
    split = [HeldOutDataset(Config(model="Pop", dataset="ml-100k", config_dict={**FOLDS, "fold": 2, "seed": s},
                                   argv=[])) for s in (2020, 7)]
    tokens = [set(d.id2token(d.uid_field, d.inter_feat[d.uid_field].to_numpy()[d._roles == TEST_IN])) for d in split]
    assert tokens[0] == tokens[1]
    assert tokens[0] <= groups(users, folds[2])[2] and len(tokens[0]) > 180


@pytest.mark.slow
def test_a_users_targets_do_not_depend_on_the_fold(raw, folds):
    users, items = raw
    n_of = pd.Series(users).value_counts()
    targets = {}  # (user, fold) -> target items
    item_sets = [set(items[roles == TRAIN]) for roles in folds]
    for k, roles in enumerate(folds):
        heldout = np.isin(roles, [VALID_IN, VALID_TARGET, TEST_IN, TEST_TARGET])
        for user in set(users[heldout]):
            mine = users == user
            chosen = set(items[mine & np.isin(roles, [VALID_TARGET, TEST_TARGET])])
            targets[user, k] = chosen
            # the draw: int(0.2 n) of the user's n interactions (all of them, in every fold), less items
            # no training user of this fold has
            n = n_of[user]
            drawn = int(0.2 * n) if n >= MIN_INTERACTIONS_FOR_TARGETS else 0
            assert len(chosen) <= drawn
    held_twice = 0
    for user in set(u for u, _ in targets):
        ks = [k for (u, k) in targets if u == user]
        for a in ks[1:]:
            both = item_sets[ks[0]] & item_sets[a]
            assert targets[user, ks[0]] & both == targets[user, a] & both, user
            held_twice += 1
    assert held_twice > 300  # validation users are test users of another fold: plenty to compare


def test_targets_are_the_lowest_keyed_interactions(raw, folds):
    """The draw by hand: one uniform key per interaction (file order), a user's int(0.2 n) lowest are targets."""
    users, items = raw
    keys = np.random.RandomState(98765).random_sample(len(users))
    roles = folds[0]
    item_set = set(items[roles == TRAIN])
    for user in sorted(groups(users, roles)[2])[:40]:
        rows = np.flatnonzero(users == user)
        n = len(rows)
        lowest = rows[np.argsort(keys[rows])][: int(0.2 * n) if n >= 5 else 0]
        expected = {i for i in items[lowest] if i in item_set}
        assert set(items[rows][roles[rows] == TEST_TARGET]) == expected


def test_no_folds_is_the_single_split_unchanged(raw):
    users, items = raw
    np.testing.assert_array_equal(draw_roles(users, items, 50, 0.2, 98765),
                                  draw_roles(users, items, 50, 0.2, 98765, folds=0, fold=0))


def test_a_fold_run_trains_on_its_training_users_and_records_its_counts():
    result = run_recbole_beta("Pop", "ml-100k", config_dict={**FOLDS, "fold": 3}, per_user=True)
    assert result["protocol_users"] == {"train": 943 - 188 - H, "valid": H, "test": 188}  # folds 0-2: 189
    tokens = set(result["per_user"]["user_token"])
    assert 150 < len(tokens) <= 188  # the fold's test users with targets


# ------------------------------------------------------------------------------------ bad input

@pytest.mark.parametrize("overrides, message", [
    ({"heldout_folds": 2}, "heldout_folds=2 is not allowed: must be 0 (one split) or an integer >= 3"),
    ({"heldout_folds": 2.5}, "heldout_folds=2.5 is not allowed"),
    ({"heldout_folds": 5.0}, "heldout_folds=5.0 is not allowed"),
    ({"heldout_folds": "five"}, "heldout_folds='five' is not allowed"),
    ({"heldout_folds": True}, "heldout_folds=True is not allowed"),
    ({"fold": 5}, "fold=5 is not allowed: must be an integer in [0, 5) (heldout_folds=5)"),
    ({"fold": -1}, "fold=-1 is not allowed"),
    ({"heldout_folds": 0, "fold": 1}, "fold=1 is not allowed: a test fold needs heldout_folds"),
    ({"eval_protocol": "weak"}, "heldout_folds=5 is not allowed: folds of held-out users need eval_protocol=strong"),
    ({"eval_protocol": "weak", "heldout_folds": 0, "fold": 0}, "fold=0 is not allowed: a test fold needs"),
    ({"activity_exponent": -0.5}, "activity_exponent=-0.5 is not allowed: must be a number >= 0"),
    ({"activity_exponent": float("nan")}, "activity_exponent=nan is not allowed"),
    ({"activity_exponent": float("inf")}, "activity_exponent=inf is not allowed: must be a finite number"),
])
def test_bad_fold_keys_fail_before_the_data_is_read(tmp_path, overrides, message):
    config = {**FOLDS, **overrides, "data_path": str(tmp_path / "nowhere")}  # no data: must not matter
    with pytest.raises(ConfigError) as error:
        run_recbole_beta("ScaledBetaMultVAE", "absent", config_dict=config)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_folds_too_small_for_any_test_user(tmp_path):
    tiny = write_tiny_dataset(tmp_path)  # 4 users
    with pytest.raises(ConfigError, match=r"heldout_folds=5 is not allowed: cuts 4 users into folds that hold no "
                                          r"test user: need at most 4 folds"):
        run_recbole_beta("Pop", tiny.pop("dataset"), config_dict={**FOLDS, **tiny, "heldout_users": 1})


def test_folds_refuse_a_presplit_dataset_before_reading_it(tmp_path):
    folder = tmp_path / "vae"
    folder.mkdir()
    (folder / "unique_sid.txt").write_text("10\n20\n30\n")
    for name, lines in {"train.csv": ["0,0", "0,1", "1,2"], "validation_tr.csv": ["2,0"],
                        "validation_te.csv": ["2,1"], "test_tr.csv": ["3,1"], "test_te.csv": ["3,2"]}.items():
        (folder / name).write_text("uid,sid\n" + "\n".join(lines) + "\n")
    assert data_main(["convert", str(folder), "--format", "vae_cf", "--name", "x", "--out", str(tmp_path / "data"),
                      "--quiet"]) == 0
    config = Config(model="Pop", dataset="x", config_dict={**FOLDS, "data_path": str(tmp_path / "data")}, argv=[])
    with pytest.raises(ConfigError, match=r"heldout_folds=5 is not allowed: the dataset's protocol_role column fixes "
                                          r"one split"):
        HeldOutDataset(config)
