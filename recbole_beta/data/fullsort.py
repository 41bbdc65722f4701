"""A lean full-ranking evaluation loader for the plugin's VAEs: RecBole's batches, built from CSR arrays.

RecBole prepares full-ranking evaluation in two costly steps (RecBole 1.2.1):

- ``recbole.data.utils.create_samplers`` builds samplers whose ``used_ids`` hold, per phase
  (train / valid / test), a numpy array of one Python set per user (~27M set entries at the
  ML-20M shape; the valid and the test sampler each build all three phases);
- ``FullSortEvalDataLoader.__init__`` walks every interaction in Python and keeps two small
  tensors per user (positives, history), which its ``collate_fn`` joins with one ``torch.full_like``
  and ``torch.cat`` per user.

:class:`CSRFullSortEvalDataLoader` gives the same batches from per-user CSR offsets and item
arrays built with ``np.unique`` and ``np.searchsorted``, with no sampler. :func:`fullsort_eval_loaders`
builds the valid and test loaders from the split; :func:`lean_eval_applies` says when a run uses
them (the plugin's VAEs with full ranking: ``recbole_beta.quick_start.data_preparation`` and
``recbole_beta.data.heldout.heldout_data_preparation``). RecBole's baselines keep RecBole's loaders.

RecBole's semantics, which the arrays hold: for a phase, a user's *positives* are the distinct
items of the user in that phase's split; the user's *history* (masked at ranking) is the items
of the user in every split up to and including this phase (train; train + valid; train + valid
+ test: the sampler's ``used_ids``) minus the positives.
"""

from logging import getLogger

import numpy as np
import torch
from recbole.data.dataloader import FullSortEvalDataLoader
from recbole.data.dataloader.abstract_dataloader import AbstractDataLoader
from recbole.data.interaction import Interaction
from recbole.data.utils import create_samplers, get_dataloader
from recbole.utils import ModelType

#: the lean loaders are used where :func:`lean_eval_applies` allows; False forces RecBole's samplers
#: and FullSortEvalDataLoader on every run (the tests compare the two paths with it)
LEAN_EVAL_LOADERS = True


def lean_eval_applies(config):
    """True when a run of the plugin's VAEs (the callers ask for those only) can have
    :class:`CSRFullSortEvalDataLoader` valid and test loaders and no RecBole sampler: full ranking
    in both phases, no training negatives, and RecBole's non-repeatable sampler semantics. Anything
    else (sampled or labeled evaluation, ``repeatable: True``, whose sampler masks no history, a
    training sampler) stays on RecBole's path.
    """
    if not LEAN_EVAL_LOADERS:
        return False
    if config["MODEL_TYPE"] == ModelType.SEQUENTIAL or config["repeatable"]:
        return False
    mode = (config["eval_args"] or {}).get("mode")
    modes = mode if isinstance(mode, dict) else {"valid": mode, "test": mode}
    if any(modes.get(phase) != "full" for phase in ("valid", "test")):
        return False
    train_neg = config["train_neg_sample_args"] or {}
    return train_neg.get("distribution", "none") == "none"


def pair_keys(dataset, item_num):
    """``uid * item_num + iid`` of each interaction (int64), the key the CSR arrays are built from."""
    users = dataset.inter_feat[dataset.uid_field].numpy().astype(np.int64, copy=False)
    items = dataset.inter_feat[dataset.iid_field].numpy().astype(np.int64, copy=False)
    return users * item_num + items


def _gather_ranges(starts, ends):
    """Positions ``starts[0]..ends[0]-1, starts[1]..ends[1]-1, ...`` and the row of each (vectorised)."""
    lengths = ends - starts
    rows = np.repeat(np.arange(len(starts), dtype=np.int64), lengths)
    # position = start of its row + its rank inside the row
    shift = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)
    return rows, np.arange(len(rows), dtype=np.int64) + shift


def _csr(keys, item_num, user_num):
    """Per-user offsets (user_num + 1) and items of sorted distinct ``keys``."""
    users = keys // item_num
    offsets = np.searchsorted(users, np.arange(user_num + 1, dtype=np.int64)).astype(np.int64)
    items = keys - users * item_num
    dtype = np.int32 if item_num <= np.iinfo(np.int32).max else np.int64
    return offsets, items.astype(dtype)


class _UserRows:
    """``uid2positive_item`` / ``uid2history_item`` as RecBole reads them, made on demand from the CSR
    arrays: ``rows[uid]`` is an int64 tensor (None for a user not in the split, as in RecBole), and
    ``rows[list_of_uids]`` a numpy object array of them (what ``recbole.utils.case_study`` indexes)."""

    def __init__(self, offsets, items, present):
        self._offsets, self._items, self._present = offsets, items, present

    def __len__(self):
        return len(self._offsets) - 1

    def _row(self, uid):
        uid = int(uid)
        if not self._present[uid]:
            return None
        return torch.from_numpy(self._items[self._offsets[uid] : self._offsets[uid + 1]].astype(np.int64))

    def __getitem__(self, uid):
        if isinstance(uid, (int, np.integer)) or (isinstance(uid, torch.Tensor) and uid.dim() == 0):
            return self._row(uid)
        rows = [self._row(u) for u in uid]
        out = np.empty(len(rows), dtype=object)
        out[:] = rows
        return out


class CSRFullSortEvalDataLoader(FullSortEvalDataLoader):
    """RecBole's ``FullSortEvalDataLoader`` with its per-user data in CSR arrays; no sampler needed.

    Yields what RecBole's loader yields for the same split: the same ``uid_list`` (the users of
    the split, ascending), ``user_df`` and batches (``eval_batch_size // item_num`` users each,
    RecBole's ``_init_batch_size_and_step``; DDP through the base class's sampler), each batch
    ``(user_df, (history_u, history_i), positive_u, positive_i)`` with the same SETS of (row, item)
    pairs. The order inside a user differs: ascending item ids here, set order in RecBole; the
    trainer's masking (``scores[history_u, history_i] = -inf``) and the collector's positive matrix
    do not depend on it.

    Args:
        config, dataset, sampler, shuffle: RecBole's arguments; ``sampler`` is not read (pass None).
        previous (list of Dataset): the splits of the phases before this one (train; or train and
            valid), whose items, with this split's, form the history RecBole's sampler would give.
        used_keys (numpy.ndarray): instead of ``previous``, the sorted distinct ``uid * item_num + iid``
            keys of every split up to and including this one (:func:`fullsort_eval_loaders` passes them).

    ``uid2items_num`` is RecBole's array; ``uid2positive_item`` and ``uid2history_item`` are views
    that make RecBole's per-user tensors on demand (see :class:`_UserRows`).
    """

    def __init__(self, config, dataset, sampler=None, shuffle=False, previous=(), used_keys=None):
        # mirrors FullSortEvalDataLoader.__init__ (RecBole 1.2.1) for a non-sequential model: its
        # Python loop over the interactions and per-user sets, with the sampler's used_ids, become
        # the CSR arrays below; the rest (sort, user_df, sample_size, shuffle warning) is the same
        self.logger = getLogger()
        self.uid_field = dataset.uid_field
        self.iid_field = dataset.iid_field
        self.is_sequential = config["MODEL_TYPE"] == ModelType.SEQUENTIAL
        if self.is_sequential:
            raise ValueError(
                "CSRFullSortEvalDataLoader is for non-sequential models: use RecBole's FullSortEvalDataLoader"
            )
        user_num, item_num = dataset.user_num, dataset.item_num

        dataset.sort(by=self.uid_field, ascending=True)  # as RecBole's loader leaves the split
        positive_keys = np.unique(pair_keys(dataset, item_num))  # sorted: by user, then item
        if used_keys is None:
            used_keys = np.unique(np.concatenate([pair_keys(d, item_num) for d in (*previous, dataset)]))
        uid_list = np.unique(positive_keys // item_num)

        # the history: the used keys of the split's users, minus their positives
        starts = np.searchsorted(used_keys, uid_list * item_num)
        ends = np.searchsorted(used_keys, (uid_list + 1) * item_num)
        candidates = used_keys[_gather_ranges(starts, ends)[1]]
        at = np.minimum(np.searchsorted(positive_keys, candidates), len(positive_keys) - 1)
        history_keys = candidates[positive_keys[at] != candidates]

        self._positive_offsets, self._positive_items = _csr(positive_keys, item_num, user_num)
        self._history_offsets, self._history_items = _csr(history_keys, item_num, user_num)
        self._present = np.zeros(user_num, dtype=bool)
        self._present[uid_list] = True
        self.uid2items_num = np.diff(self._positive_offsets)  # int64, 0 for users not in the split

        self.uid_list = torch.from_numpy(uid_list.astype(np.int64))
        self.user_df = dataset.join(Interaction({self.uid_field: self.uid_list}))
        self.sample_size = len(self.user_df)
        if shuffle:
            self.logger.warning("FullSortEvalDataLoader can't shuffle")
            shuffle = False
        # FullSortEvalDataLoader.__init__ ends with this call: batch size and step, DDP sampler
        AbstractDataLoader.__init__(self, config, dataset, sampler, shuffle=shuffle)

    @property
    def uid2positive_item(self):
        return _UserRows(self._positive_offsets, self._positive_items, self._present)

    @property
    def uid2history_item(self):
        return _UserRows(self._history_offsets, self._history_items, self._present)

    def _pairs(self, offsets, items, users):
        """(row, item) of every item of ``users`` (row: the user's place in the batch), int64 tensors."""
        rows, positions = _gather_ranges(offsets[users], offsets[users + 1])
        return torch.from_numpy(rows), torch.from_numpy(items[positions].astype(np.int64))

    def collate_fn(self, index):
        # mirrors FullSortEvalDataLoader.collate_fn (non-sequential branch): the per-user
        # torch.full_like / torch.cat become one slice of the CSR arrays per batch
        index = np.array(index)
        user_df = self.user_df[index]
        users = user_df[self.uid_field].numpy().astype(np.int64, copy=False)
        history_u, history_i = self._pairs(self._history_offsets, self._history_items, users)
        positive_u, positive_i = self._pairs(self._positive_offsets, self._positive_items, users)
        return user_df, (history_u, history_i), positive_u, positive_i


def fullsort_eval_loaders(config, built):
    """The valid and test :class:`CSRFullSortEvalDataLoader` of a split ``built = (train, valid, test)``.

    Mirrors, for full ranking, ``create_samplers`` + ``get_dataloader(config, phase)(config,
    built[i], samplers[i], shuffle=False)`` in ``recbole.data.utils.data_preparation``, with the
    check ``Sampler.get_used_ids`` makes (a user with every item fails, with RecBole's message).
    """
    train, valid, test = built
    item_num = train.item_num
    used_valid = np.union1d(pair_keys(train, item_num), pair_keys(valid, item_num))  # sorted, distinct
    used_test = np.union1d(used_valid, pair_keys(test, item_num))
    # Sampler.get_used_ids: checked on the used items of the last phase
    if np.any(np.bincount(used_test // item_num, minlength=train.user_num) + 1 == item_num):
        raise ValueError(
            "Some users have interacted with all items, "
            "which we can not sample negative items for them. "
            "Please set `user_inter_num_interval` to filter those users."
        )
    valid_data = CSRFullSortEvalDataLoader(config, valid, None, shuffle=False, used_keys=used_valid)
    del used_valid
    test_data = CSRFullSortEvalDataLoader(config, test, None, shuffle=False, used_keys=used_test)
    return valid_data, test_data


def eval_loaders(config, dataset, built, lean):
    """The training sampler, and the valid and test loaders, of a split ``built = (train, valid, test)``.

    ``lean``: the :class:`CSRFullSortEvalDataLoader` pair and no sampler (``lean_eval_applies``);
    else RecBole's samplers and loaders, as ``recbole.data.utils.data_preparation`` makes them.
    """
    if lean:
        return (None, *fullsort_eval_loaders(config, built))
    samplers = create_samplers(config, dataset, built)
    valid_data = get_dataloader(config, "valid")(config, built[1], samplers[1], shuffle=False)
    test_data = get_dataloader(config, "test")(config, built[2], samplers[2], shuffle=False)
    return samplers[0], valid_data, test_data
