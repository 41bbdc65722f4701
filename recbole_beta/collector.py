"""RecBole's evaluation collector, with the top-k hit lists computed without a users x items matrix.

RecBole's ``Collector.eval_batch_collect`` builds, for ``rec.topk``, a dense B x I int matrix of each
batch's positives, sums it per row and gathers the top-k columns from it; with ``rec.items`` also
needed it runs ``torch.topk`` a second time. :class:`FastCollector` gives the same tensors (bit for
bit, same dtype) from the positives' (row, item) keys alone, with one top-k (:func:`topk_indices`,
faster than torch's on the CPU for many items: among tied scores it may pick other items), and
joins the batches' tensors once instead of once per batch; everything else is RecBole's.
"""

import math

import torch
from recbole.evaluator import Collector

from recbole_beta import topk

#: what FastCollector collects itself; every other key is left to RecBole's eval_batch_collect
_OWN_KEYS = ("rec.items", "rec.topk")
#: the smallest block for which topk_indices cuts rows into blocks
MIN_BLOCK = 5


class _RegisterWithout:
    """A view of a RecBole ``Register`` whose ``need`` says no to ``keys``."""

    def __init__(self, register, keys):
        self._register = register
        self._keys = keys

    def need(self, key):
        return key not in self._keys and self._register.need(key)

    def __getattr__(self, name):
        return getattr(self._register, name)


def topk_indices(scores, k):
    """The indices of each row's ``k`` highest ``scores`` (B x n), best first: ``torch.topk(scores, k,
    dim=-1)``'s indices, found faster on the CPU for k << n.

    Item-major scores (``scores.t()`` contiguous: the plugin's ranking scores, which the CPU
    computes faster in that layout) go to :func:`recbole_beta.topk.topk_indices`: a threshold, then
    one pass over the scores as they lie (numba, a dependency; torch.topk if it cannot be imported).

    Row-major scores (RecBole's baselines): torch's CPU top-k copies every score of a row into a
    list of (value, index) pairs before it selects (about 3 ns a score: 9 s of a 40 s evaluation at
    the ML-20M shape). Here each row's columns are cut into ``b`` (about sqrt(n / k)) strided blocks
    of columns j, j + m, j + 2m, ...; each block's maximum is one vectorised pass, and only the
    ``k`` blocks with the highest maxima can hold the top k (a score in any other block has k block
    maxima, k distinct scores, at least as high), so torch's top-k runs on the n / b block maxima
    and on those k blocks' ``b * k`` scores, plus the columns left over.

    The values returned are torch.topk's; among equal scores the index chosen may differ, as
    torch.topk's own order among ties is unspecified.
    """
    n_rows, n = scores.shape
    block = math.isqrt(n // k) if k > 0 else 0
    item_major = scores.t().is_contiguous() and n_rows > 1
    # below 5 (n < 25 k: ml-100k's 1,683 items at k = 100) the two top-k calls cost as much as one
    if scores.device.type != "cpu" or block < MIN_BLOCK or not (scores.is_contiguous() or item_major):
        return torch.topk(scores, k, dim=-1)[1]
    if item_major:
        return topk.topk_indices(scores, k) if topk.available() else torch.topk(scores, k, dim=-1)[1]
    m = n // block
    blocks = scores.as_strided((n_rows, block, m), (n, m, 1))  # [row, r, j] = column r * m + j
    _, chosen = torch.topk(blocks.amax(1), k, dim=1, sorted=False)  # (B, k) block numbers j
    candidates = blocks.gather(2, chosen.unsqueeze(1).expand(n_rows, block, k)).view(n_rows, block * k)
    columns = (torch.arange(0, block * m, m).view(1, block, 1) + chosen.unsqueeze(1)).view(n_rows, block * k)
    if block * m < n:  # the columns past the blocks are candidates too
        candidates = torch.cat((candidates, scores[:, block * m:]), 1)
        columns = torch.cat((columns, torch.arange(block * m, n).expand(n_rows, -1)), 1)
    _, best = torch.topk(candidates, k, dim=1)
    return columns.gather(1, best)


def topk_hits(topk_idx, positive_u, positive_i, n_items):
    """RecBole's ``rec.topk`` rows for one batch whose top-k item indices are ``topk_idx`` (B x k).

    Mirrors the ``rec.topk`` branch of ``recbole.evaluator.collector.Collector.eval_batch_collect``
    (RecBole 1.2.1) without its B x I ``pos_matrix``: the row sums are a bincount of the distinct
    positives' rows, the gathered hits a binary search of the top-k (row, item) keys among them.

    Returns B x (k + 1): the 0/1 hit of each of the k top-scored items followed by the user's
    number of distinct positives, as RecBole's collector makes it (int64: its int32 hits are
    concatenated with the int64 row sums).
    """
    n_rows, device = topk_idx.shape[0], topk_idx.device
    pos_keys = positive_u.to(device=device, dtype=torch.long) * n_items + positive_i.to(device=device, dtype=torch.long)
    # RecBole sets pos_matrix[u, i] = 1: a (u, i) listed twice is one positive. The plugin's loaders
    # give the keys sorted and distinct already (checked in one pass); RecBole's need the sort.
    if len(pos_keys) > 1 and not bool((pos_keys[1:] > pos_keys[:-1]).all()):
        pos_keys = torch.unique(pos_keys)
    pos_len = torch.bincount(torch.div(pos_keys, n_items, rounding_mode="floor"), minlength=n_rows)
    rows = torch.arange(n_rows, device=device, dtype=torch.long).unsqueeze(1)
    topk_keys = rows * n_items + topk_idx
    if len(pos_keys) == 0:
        hits = torch.zeros_like(topk_keys, dtype=torch.bool)
    else:
        at = torch.searchsorted(pos_keys, topk_keys).clamp_(max=len(pos_keys) - 1)
        hits = pos_keys[at] == topk_keys
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

    def topk_items(self, scores_tensor):
        """The indices of each row's ``max(topk)`` highest scores, best first (:func:`topk_indices`)."""
        return topk_indices(scores_tensor, max(self.topk))

    def eval_batch_collect(self, scores_tensor, interaction, positive_u, positive_i):
        need_items = self.register.need("rec.items")
        need_topk = self.register.need("rec.topk")
        if need_items or need_topk:
            # once for both keys (RecBole calls torch.topk for each)
            topk_idx = self.topk_items(scores_tensor)
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
