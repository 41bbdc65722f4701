"""Liang et al.'s (WWW 2018) evaluation protocol: held-out users with fold-in ("strong generalization").

``eval_protocol: strong`` splits users, not interactions: H validation users, H test users, the
rest training users. The item set is what training users interacted with. Each held-out user
with at least 5 interactions gives ``int(heldout_ratio * n)`` of them, drawn at random, as
targets; the rest are the fold-in the model encodes at evaluation. Training sees training users
only. RecBole's loaders (or, for the plugin's VAEs, the same batches from
:mod:`recbole_beta.data.fullsort`) and full-ranking evaluation do the rest:

- the split returns RecBole's three datasets: (training users' rows + held-out users' fold-in
  rows, validation targets, test targets). The evaluation loader then masks exactly the fold-in
  items of a held-out user (its "history", as RecBole's sampler gives it), and RecBole's
  evaluator scores the targets;
- training iterates training users only (:class:`HeldOutUserDataLoader` for the autoencoders,
  a training-users-only dataset for the models that train on interactions); how each model then
  scores a held-out user from its fold-in is the model's affair (:mod:`recbole_beta.fold_in`).

The draws follow the reference preprocessing (dawenl/vae_cf): users in ascending id order are
permuted with ``RandomState(split_seed)``; then, for the validation users and again for the test
users, the generator is seeded afresh and each user (ascending id, rows in file order) draws
its targets with ``choice(n, int(ratio * n), replace=False)``. A dataset whose ``.inter`` file has
a ``protocol_role`` column (written by ``python -m recbole_beta data convert --format vae_cf``)
is not drawn at all: its rows keep the roles the file gives.

Cross-validated held-out users (``heldout_folds: K``, ``fold: k``): the permuted users are cut into
K folds of near-equal size; fold k holds the test users, the first ``heldout_users`` of the other
folds (in permuted order, from fold k+1 on) are the validation users, the rest train. Over
k = 0..K-1 every user is tested exactly once. A held-out user's targets are then drawn once for all
folds: every interaction gets a uniform key from ``RandomState(split_seed)`` (file order), and a user
with at least 5 interactions gives its ``int(heldout_ratio * n)`` lowest-keyed ones as targets, so the
draw does not depend on k (what changes with k is only the item set: a target no training user of
fold k has is dropped, as any held-out interaction with such an item is).
"""

import hashlib
import os
from typing import Protocol

import numpy as np
import pandas as pd
import torch
from recbole.data.dataloader import UserDataLoader
from recbole.data.dataloader.abstract_dataloader import AbstractDataLoader
from recbole.data.interaction import Interaction
from recbole.data.utils import get_dataloader

from recbole_beta.data.dataset import PluginDataset
from recbole_beta.data.fullsort import eval_loaders, lean_eval_applies
from recbole_beta.errors import ConfigError, DatasetError

#: the column of a pre-split dataset (e.g. one imported from the reference code's files)
ROLE_FIELD = "protocol_role"
TRAIN, VALID_IN, VALID_TARGET, TEST_IN, TEST_TARGET = range(5)
ROLES = ("train", "valid_in", "valid_target", "test_in", "test_target")
_DROPPED = -1  # a held-out user's interaction with an item no training user has

#: the reference code gives targets only to held-out users with at least this many interactions
MIN_INTERACTIONS_FOR_TARGETS = 5

#: fewer training users than this: the run warns (it still runs)
FEW_TRAINING_USERS = 10

_PRESPLIT_FOLDS = (f"the dataset's {ROLE_FIELD} column fixes one split (imported with `convert --format vae_cf`); "
                   "folds need a split drawn at run time: unset heldout_folds or use a dataset without that column")



def is_strong(config):
    return config["eval_protocol"] == "strong"


def split_keys(config):
    """The settings that decide which interactions a run trains on, as plain data: a checkpoint records
    them, and a resume under other ones is refused (it would have trained on this run's held-out data)."""
    if is_strong(config):
        folds = config["heldout_folds"] or 0
        keys = {"heldout_users": config["heldout_users"], "heldout_ratio": config["heldout_ratio"],
                "split_seed": config["split_seed"], "heldout_folds": folds}
        if folds:
            keys["fold"] = config["fold"] or 0
    else:
        args = config["eval_args"] or {}
        keys = {"split": args.get("split"), "order": args.get("order"), "group_by": args.get("group_by")}
        if args.get("order") == "RO":  # RecBole shuffles with the run's seed before a random-order split
            keys["seed"] = config["seed"]
    return {"eval_protocol": config["eval_protocol"] or "weak", **keys}


def describe_split(keys):
    """``eval_protocol=strong (heldout_users=69, ...)``: a split's keys in one line."""
    rest = ", ".join(f"{k}={v!r}" for k, v in keys.items() if k != "eval_protocol")
    return f"eval_protocol={keys.get('eval_protocol')} ({rest})"


def split_fingerprint(train_dataset, roles=None):
    """A short hash of which (user, item) interactions a run trains on and, under the strong protocol, of
    every interaction's role (``roles``: :attr:`HeldOutSplit.roles`; None under the weak protocol): equal for
    the same data, filters and split, different otherwise."""
    digest = hashlib.sha1()
    inter = train_dataset.inter_feat
    for field in (train_dataset.uid_field, train_dataset.iid_field):
        digest.update(np.ascontiguousarray(np.asarray(inter[field])).tobytes())
    if roles is not None:
        digest.update(np.ascontiguousarray(roles).tobytes())
    return digest.hexdigest()[:16]


def n_heldout(heldout_users, n_users):
    """Users in each of validation and test, from the key's integer or fraction."""
    h = int(heldout_users * n_users) if isinstance(heldout_users, float) else int(heldout_users)
    if h < 1 or 2 * h >= n_users:
        raise ConfigError(
            "heldout_users",
            heldout_users,
            f"gives {h} validation and {h} test users of {n_users}: need at least 1 each and "
            f"some training users (2 x heldout_users < {n_users})",
        )
    return h


def _ascending(tokens):
    """Unique user tokens in ascending order: numerically when every token is an integer."""
    unique = pd.unique(tokens)
    try:
        order = np.argsort(np.asarray(unique, dtype=np.int64), kind="stable")
    except (TypeError, ValueError, OverflowError):
        order = np.argsort(np.asarray(unique, dtype=str), kind="stable")
    return unique[order]


def fold_groups(permuted, heldout_users, folds, fold):
    """(training, validation, test) users of fold ``fold`` of ``folds``: see the module's docstring."""
    n = len(permuted)
    if n < folds:
        raise ConfigError("heldout_folds", folds, f"cuts {n} users into folds that hold no test user: "
                                                  f"need at most {n} folds")
    parts = np.array_split(permuted, folds)
    rest = np.concatenate(parts[fold + 1:] + parts[:fold])
    h = int(heldout_users * n) if isinstance(heldout_users, float) else int(heldout_users)
    if h < 1 or h >= len(rest):
        raise ConfigError(
            "heldout_users", heldout_users,
            f"gives {h} validation users of the {len(rest)} outside test fold {fold} of {folds}: need at least 1 and "
            f"some training users (heldout_users < {len(rest)})",
        )
    return rest[h:], rest[:h], parts[fold]


def draw_roles(users, items, heldout_users, heldout_ratio, split_seed, folds=0, fold=0):
    """The role (TRAIN, VALID_IN, ...; -1 dropped) of every interaction, drawn as the reference code draws
    (``folds`` = 0), or for fold ``fold`` of ``folds`` cross-validated ones (see the module's docstring).

    ``users`` and ``items`` hold one raw token per interaction, in file order.
    """
    users, items = np.asarray(users), np.asarray(items)
    ordered = _ascending(users)
    permuted = ordered[np.random.RandomState(split_seed).permutation(len(ordered))]
    if folds:
        groups = fold_groups(permuted, heldout_users, folds, fold)
    else:
        h = n_heldout(heldout_users, len(ordered))
        groups = (permuted[: len(permuted) - 2 * h], permuted[len(permuted) - 2 * h: len(permuted) - h],
                  permuted[len(permuted) - h:])
    group_of = pd.Series(np.repeat([TRAIN, VALID_IN, TEST_IN], [len(g) for g in groups]), index=np.concatenate(groups))
    user_group = group_of.reindex(users).to_numpy()

    roles = np.full(len(users), _DROPPED, dtype=np.int8)
    roles[user_group == TRAIN] = TRAIN
    # pandas' hash-based isin: numpy's on 10M string tokens sorts them (minutes at the ML-20M shape)
    kept = pd.Series(items).isin(pd.unique(items[user_group == TRAIN])).to_numpy()
    rank = pd.Series(np.arange(len(ordered)), index=ordered).reindex(users).to_numpy()
    if folds:
        return _fold_targets(roles, user_group, kept, rank, heldout_ratio, split_seed)
    for fold_in, target in ((VALID_IN, VALID_TARGET), (TEST_IN, TEST_TARGET)):
        rows = np.flatnonzero((user_group == fold_in) & kept)
        rows = rows[np.argsort(rank[rows], kind="stable")]  # by user id, file order within a user
        roles[rows] = fold_in
        rng = np.random.RandomState(split_seed)  # the reference seeds each split afresh
        starts = np.flatnonzero(np.r_[True, rank[rows][1:] != rank[rows][:-1]])
        for start, end in zip(starts, np.r_[starts[1:], len(rows)]):
            n = end - start
            if n >= MIN_INTERACTIONS_FOR_TARGETS:
                picked = rng.choice(n, size=int(heldout_ratio * n), replace=False)
                roles[rows[start + picked]] = target
    return roles


def _fold_targets(roles, user_group, kept, rank, heldout_ratio, split_seed):
    """Held-out users' roles under folds: targets drawn on each user's whole history, independent of the fold.

    Every interaction gets a key from one uniform draw in file order; a user's ``int(heldout_ratio * n)``
    lowest-keyed interactions (n: all of its interactions, so the same n in every fold) are targets.
    """
    keys = np.random.RandomState(split_seed).random_sample(len(roles))
    heldout = np.flatnonzero((user_group == VALID_IN) | (user_group == TEST_IN))
    order = heldout[np.lexsort((keys[heldout], rank[heldout]))]  # by user, then by key
    starts = np.flatnonzero(np.r_[True, rank[order][1:] != rank[order][:-1]])
    sizes = np.diff(np.r_[starts, len(order)])
    position = np.arange(len(order)) - np.repeat(starts, sizes)  # a row's place among its user's keys
    n = np.repeat(sizes, sizes)
    is_target = (n >= MIN_INTERACTIONS_FOR_TARGETS) & (position < (heldout_ratio * n).astype(np.int64))
    group = user_group[order]
    roles[order] = np.where(is_target, np.where(group == VALID_IN, VALID_TARGET, TEST_TARGET), group)
    roles[~kept & (roles != TRAIN)] = _DROPPED  # an item no training user of this fold has
    return roles


def _has_role_column(config):
    """True if the dataset's .inter file has a ``protocol_role`` column (its header says)."""
    path = os.path.join(config["data_path"], f"{config['dataset']}.inter")
    if not os.path.isfile(path):
        return False
    with open(path, encoding=config["encoding"] or "utf-8") as f:
        header = f.readline().rstrip("\n").split(config["field_separator"] or "\t")
    return any(column.split(":")[0] == ROLE_FIELD for column in header)


class HeldOutSplit(Protocol):
    """What the rest of the plugin reads of a dataset split into training and held-out users, once its
    ``build()`` has run: :class:`HeldOutDataset` (and the datasets its ``build()`` makes, copies of it).
    Runs ask ``eval_protocol`` (:func:`is_strong`) whether they have one; a model asks
    :func:`training_user_ids`."""

    #: "train", "valid" and "test": the internal ids of each group's users
    protocol_users: dict
    #: the training users' ids (``protocol_users["train"]``): the users a model learns from
    train_user_ids: np.ndarray
    #: the training users' rows and the held-out users' fold-in rows: what the model is given of each user
    seen_dataset: "HeldOutDataset"

    @property
    def roles(self) -> np.ndarray:
        """Each interaction's role (TRAIN, VALID_IN, VALID_TARGET, TEST_IN, TEST_TARGET), in row order."""

    def training_dataset(self):
        """The training users' rows alone (for the models that train on interactions)."""


class HeldOutDataset(PluginDataset):
    """RecBole's Dataset, split into training and held-out users (see the module's docstring); a
    :class:`HeldOutSplit` once ``build()`` has run.

    The roles are settled on the raw data, before RecBole maps tokens to ids, so the item ids
    cover the training users' items only, as the protocol's item set does.
    """

    # set by build(): until then the split is not made
    protocol_users = None
    train_user_ids = None
    seen_dataset = None

    def __init__(self, config):
        # RecBole loads only the columns load_col names (user_id and item_id by default): a
        # pre-split file's roles must be loaded too
        load_col = config["load_col"]
        inter_cols = load_col.get("inter") if isinstance(load_col, dict) else None
        has_roles = _has_role_column(config)
        if has_roles and config["heldout_folds"]:  # before any data is read
            raise ConfigError("heldout_folds", config["heldout_folds"], _PRESPLIT_FOLDS)
        if inter_cols is not None and ROLE_FIELD not in inter_cols and has_roles:
            config["load_col"] = {**load_col, "inter": [*inter_cols, ROLE_FIELD]}
        super().__init__(config)

    def _data_filtering(self):
        super()._data_filtering()
        inter = self.inter_feat
        if ROLE_FIELD in inter:
            if self.config["heldout_folds"]:  # checked before loading too; this catches a renamed column's data
                raise ConfigError("heldout_folds", self.config["heldout_folds"], _PRESPLIT_FOLDS)
            roles = self._given_roles(inter[ROLE_FIELD])
            self._del_col(inter, ROLE_FIELD)
            self._rest_fields = np.setdiff1d(self._rest_fields, [ROLE_FIELD])  # nothing left to remap
            self.logger.info(f"eval_protocol=strong: the split is the one in the {ROLE_FIELD} column")
        else:
            roles = draw_roles(
                inter[self.uid_field].to_numpy(),
                inter[self.iid_field].to_numpy(),
                self.config["heldout_users"],
                self.config["heldout_ratio"],
                self.config["split_seed"],
                self.config["heldout_folds"] or 0,
                self.config["fold"] or 0,
            )
        keep = roles != _DROPPED
        self.inter_feat = inter[keep]
        if self.item_feat is not None:  # items only held-out users had are not in the item set
            train_items = self.inter_feat[self.iid_field][roles[keep] == TRAIN]
            self.item_feat = self.item_feat[self.item_feat[self.iid_field].isin(train_items)]
        self._reset_index()
        self._roles = roles[keep]

    @property
    def roles(self):
        """Each interaction's role (TRAIN, VALID_IN, VALID_TARGET, TEST_IN, TEST_TARGET), in row order."""
        return self._roles

    def _given_roles(self, column):
        codes = pd.Series({name: code for code, name in enumerate(ROLES)})
        roles = codes.reindex(column.astype(str)).to_numpy()
        bad = np.isnan(roles)
        if bad.any():
            raise ConfigError(
                ROLE_FIELD,
                column[bad].iloc[0],
                f"the {self.dataset_name}.inter column must hold one of {', '.join(ROLES)}",
            )
        roles = roles.astype(np.int8)
        items = self.inter_feat[self.iid_field].to_numpy()
        in_train = pd.Series(items).isin(pd.unique(items[roles == TRAIN])).to_numpy()
        return np.where((roles == TRAIN) | in_train, roles, _DROPPED).astype(np.int8)

    def build(self):
        """RecBole's three datasets: (training rows + fold-in rows, validation targets, test targets)."""
        self._change_feat_format()
        roles = torch.as_tensor(self._roles)
        if len(roles) != len(self.inter_feat):
            raise RuntimeError(f"{len(roles)} roles for {len(self.inter_feat)} interactions")
        uid = self.inter_feat[self.uid_field]
        self.protocol_users = {
            name: torch.unique(uid[roles == role]).numpy()
            for name, role in (("train", TRAIN), ("valid", VALID_IN), ("test", TEST_IN))
        }
        self.train_user_ids = self.protocol_users["train"]  # read by the plugin's models: training_user_ids
        for name, role in (("validation", VALID_TARGET), ("test", TEST_TARGET)):
            if not bool((roles == role).any()):
                raise DatasetError(
                    f"dataset={self.dataset_name!r} under eval_protocol=strong has no {name} targets (held-out users "
                    f"need at least {MIN_INTERACTIONS_FOR_TARGETS} interactions with the training users' items to "
                    "have targets; a pre-split dataset needs *_target rows): there is nothing to evaluate"
                )
        n_train = len(self.protocol_users["train"])
        if n_train < FEW_TRAINING_USERS:
            self.logger.warning(f"eval_protocol=strong: only {n_train} training users; the model learns from them "
                                "alone (lower heldout_users, or use more folds)")
        seen = (roles == TRAIN) | (roles == VALID_IN) | (roles == TEST_IN)
        built = [self.copy(self.inter_feat[mask]) for mask in (seen, roles == VALID_TARGET, roles == TEST_TARGET)]
        self.seen_dataset = built[0]
        return built

    def training_dataset(self):
        """The training users' rows alone, for the models that train on interactions (EASE, ItemKNN, ...);
        made on demand: the autoencoders never need this copy (10M rows at the ML-20M shape)."""
        return self.copy(self.inter_feat[torch.as_tensor(self._roles) == TRAIN])

    def __str__(self):
        text = super().__str__()
        users = self.protocol_users
        if users is None:
            return text
        return text + (
            f"\nThe number of training / validation / test users (eval_protocol=strong): "
            f"{len(users['train'])} / {len(users['valid'])} / {len(users['test'])}"
        )


class HeldOutUserDataLoader(UserDataLoader):
    """RecBole's UserDataLoader over the training users only (held-out users never form a batch)."""

    def __init__(self, config, dataset, sampler, users, shuffle=True):
        # mirrors UserDataLoader.__init__, with the user list given instead of every user id
        self.logger = dataset.logger
        self.uid_field = dataset.uid_field
        self.user_list = Interaction({self.uid_field: torch.as_tensor(np.asarray(users), dtype=torch.long)})
        self.sample_size = len(self.user_list)
        AbstractDataLoader.__init__(self, config, dataset, sampler, shuffle=True)


def training_user_ids(dataset):
    """The ids of the users a model built on ``dataset`` learns from: a held-out split's training users (a
    built :class:`HeldOutDataset`, or a dataset its ``build()`` made), else None: every user."""
    return dataset.train_user_ids if isinstance(dataset, HeldOutDataset) else None


def heldout_data_preparation(config, dataset, user_rows):
    """Train, valid and test dataloaders under ``eval_protocol: strong``.

    ``user_rows``: the model trains on whole user rows (RecBole's autoencoders and the plugin's
    models); else it trains on interactions (EASE, ItemKNN, ...), from training users only.
    """
    built = dataset.build()
    # the plugin's VAEs with full ranking read no sampler (recbole_beta.data.fullsort)
    train_sampler, valid_data, test_data = eval_loaders(config, dataset, built, user_rows and lean_eval_applies(config))
    train_loader = get_dataloader(config, "train")
    if user_rows or issubclass(train_loader, UserDataLoader):
        train_data = HeldOutUserDataLoader(config, built[0], train_sampler, dataset.protocol_users["train"])
    else:
        train_data = train_loader(config, dataset.training_dataset(), train_sampler, shuffle=config["shuffle"])
    return train_data, valid_data, test_data
