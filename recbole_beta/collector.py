"""RecBole's evaluation collector, with the top-k hit lists computed without a users x items matrix.

RecBole's ``Collector.eval_batch_collect`` builds, for ``rec.topk``, a dense B x I int matrix of each
batch's positives, sums it per row and gathers the top-k columns from it; with ``rec.items`` also
needed it runs ``torch.topk`` a second time. :class:`FastCollector` gives the same tensors (bit for
bit, same dtype) from the positives' (row, item) keys alone, and joins the batches' tensors once
instead of once per batch; everything else is RecBole's.
"""

import torch
from recbole.evaluator import Collector

#: what FastCollector collects itself; every other key is left to RecBole's eval_batch_collect
_OWN_KEYS = ("rec.items", "rec.topk")


class _RegisterWithout:
    """A view of a RecBole ``Register`` whose ``need`` says no to ``keys``."""

    def __init__(self, register, keys):
        self._register = register
        self._keys = keys

    def need(self, key):
        return key not in self._keys and self._register.need(key)

    def __getattr__(self, name):
        return getattr(self._register, name)


def topk_hits(topk_idx, positive_u, positive_i, n_items):
    """RecBole's ``rec.topk`` rows for one batch whose top-k item indices are ``topk_idx`` (B x k).

    Mirrors the ``rec.topk`` branch of ``recbole.evaluator.collector.Collector.eval_batch_collect``
    (RecBole 1.2.1) without its B x I ``pos_matrix``: the row sums are a bincount of the distinct
    positives' rows, the gathered hits a membership test of the top-k (row, item) keys.

    Returns B x (k + 1): the 0/1 hit of each of the k top-scored items followed by the user's
    number of distinct positives, as RecBole's collector makes it (int64: its int32 hits are
    concatenated with the int64 row sums).
    """
    n_rows, device = topk_idx.shape[0], topk_idx.device
    # RecBole sets pos_matrix[u, i] = 1: a (u, i) listed twice is one positive, so dedupe the keys
    pos_keys = positive_u.to(device=device, dtype=torch.long) * n_items + positive_i.to(device=device, dtype=torch.long)
    pos_keys = torch.unique(pos_keys)
    pos_len = torch.bincount(torch.div(pos_keys, n_items, rounding_mode="floor"), minlength=n_rows)
    rows = torch.arange(n_rows, device=device, dtype=torch.long).unsqueeze(1)
    topk_keys = rows * n_items + topk_idx
    # both sides hold distinct keys (topk's indices in a row are distinct): isin's one-sort path
    hits = torch.isin(topk_keys, pos_keys, assume_unique=True)
    return torch.cat((hits.to(torch.int), pos_len.unsqueeze(1)), dim=1)


class FastCollector(Collector):
    """RecBole's ``Collector`` whose ``rec.topk`` and ``rec.items`` need no B x I matrix, and one topk.

    Mirrors ``recbole.evaluator.collector.Collector.eval_batch_collect`` (RecBole 1.2.1): the same
    ``rec.topk`` and ``rec.items`` tensors, equal element for element and of the same dtype; the
    other keys (``rec.meanrank``, ``rec.score``, ``data.label``) are collected by RecBole's method.
    """

    def __init__(self, config):
        super().__init__(config)
        # RecBole's DataStruct.update_tensor concatenates each batch onto everything collected so
        # far: quadratic in the batches (at the ML-20M shape, 657 batches onto up to 110 MB of
        # rec.topk, about 36 GB copied per evaluation). Kept per batch here, joined once.
        self._batches = {key: [] for key in _OWN_KEYS}

    def get_data_struct(self):
        for key, parts in self._batches.items():
            if parts:
                self.data_struct.update_tensor(key, torch.cat(parts))
                parts.clear()
        return super().get_data_struct()

    def eval_batch_collect(self, scores_tensor, interaction, positive_u, positive_i):
        need_items = self.register.need("rec.items")
        need_topk = self.register.need("rec.topk")
        if need_items or need_topk:
            # once for both keys (RecBole calls torch.topk for each), the same call as RecBole's
            _, topk_idx = torch.topk(scores_tensor, max(self.topk), dim=-1)
            if need_items:
                self._batches["rec.items"].append(topk_idx)
            if need_topk:
                hits = topk_hits(topk_idx, positive_u, positive_i, scores_tensor.shape[1])
                self._batches["rec.topk"].append(hits)
        # the rest is RecBole's, told that the two keys above are collected already
        register = self.register
        self.register = _RegisterWithout(register, _OWN_KEYS)
        try:
            super().eval_batch_collect(scores_tensor, interaction, positive_u, positive_i)
        finally:
            self.register = register
