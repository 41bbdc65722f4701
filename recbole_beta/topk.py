"""Each user's k best-scored items from item-major scores on the CPU: a threshold, then one pass.

The threshold comes from torch's own reductions; the pass is a numba kernel over the scores as
they lie.

The plugin's sparse path writes its ranking scores item-major (items x users: the CPU computes the
product faster in that layout). The collector's blocked top-k then gathers its candidates one
cache line per score, and torch.topk reads a row across 20,108 cache lines: 12-16 ms of each
208-user batch at the ML-20M shape, a quarter of a float32 evaluation
(``benchmarks/topk_designs.py``). Here:

1. **Threshold** (torch, on its threads): the items are cut into ``m = 3 k`` strided blocks,
   ``j, j + m, j + 2 m, ...``, so that neighbouring item ids, which may score alike, fall into
   different blocks. Each block's maximum is taken, and so is each user's k-th highest maximum. At
   least k of the user's scores reach that threshold (those k maxima), so the top k are among the
   scores at or above it: about 1.2 k of them, k (-ln(1 - q)) / q for q = k / m, unless scores
   cluster in blocks.
2. **Scan** (numba, one thread): one pass over the items, users innermost, keeps each score at or
   above its user's threshold, packed with its item in one int64 (the float's bits mapped to an
   integer in the floats' order, then the item), and one integer sort per user lists its top k.

The scan runs in the calling thread on purpose. Right after torch's parallel work, its OpenMP
workers spin on the other cores for some milliseconds, and a second thread of ours would share a
core with one of them: measured, 2 threads took 9.6 ms a batch after the product where 1 took 6.8.

The values are ``torch.topk``'s, best first; among equal scores the lower item is listed first
(torch's own order among ties is unspecified). bfloat16 and float16 scores (numpy has neither) are
widened into a float32 buffer kept for the next batch. A batch with a NaN score, and a user with
fewer than k or more than ``CANDIDATES_PER_K * k`` scores at the threshold (ties at it), are left
to ``torch.topk``.
"""

import functools
import threading

import numpy as np
import torch

from recbole_beta.model.sparse import Workspace

#: blocks per listed item: more blocks cost more to rank, fewer let more scores past the threshold
BLOCKS_PER_K = 3
#: candidates kept per user per listed item; a user past it (many scores tied) is left to torch
CANDIDATES_PER_K = 8

_scan = None


class _PerThread(threading.local):
    def __init__(self):
        # the float32 copy of 16-bit scores, reused from batch to batch: a fresh 16 MB tensor per
        # batch would cost its page faults every time
        self.widened = Workspace()


_per_thread = _PerThread()


@functools.cache
def available():
    """Whether numba, the scan's one requirement, can be imported."""
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


def _compile():
    """The scan, built on first use; ``cache=True`` keeps its machine code for the next process."""
    from numba import njit

    @njit(cache=True)
    def scan(scores, bits, threshold, k, cap, out):
        """``scores``: float32 (items x users), C-contiguous; ``bits``: the same as int32. Fills
        ``out`` (users x k) for the users with k to ``cap`` scores at or above their
        ``threshold``; returns each user's count, or None if a score is NaN."""
        n, width = scores.shape
        at_least = threshold.copy()
        listed = np.empty(width + 1, dtype=np.int64)
        kept = np.empty((width, cap), dtype=np.int64)
        count = np.zeros(width, dtype=np.int64)
        nan = 0
        for i in range(n):
            row = scores[i]
            hits = 0
            for u in range(width):
                hits += row[u] >= at_least[u]
                nan += row[u] != row[u]
            if hits:  # list the users hit without a branch per user, then keep their items
                hits = 0
                for u in range(width):
                    listed[hits] = u
                    hits += row[u] >= at_least[u]
                for h in range(hits):
                    u = listed[h]
                    if count[u] < cap:
                        # a negative float's magnitude bits flipped: integer order is float order;
                        # the item complemented: among equal scores the lower item sorts last
                        b = np.int64(bits[i, u])
                        kept[u, count[u]] = ((b ^ ((b >> 31) & 0x7FFFFFFF)) << 32) | (0xFFFFFFFF - i)
                    count[u] += 1
                    if count[u] > cap:  # left to torch: stop listing this user
                        at_least[u] = np.inf
        if nan:
            return None
        for u in range(width):
            c = count[u]
            if k <= c <= cap:
                best = np.sort(kept[u, :c])
                for t in range(k):
                    out[u, t] = 0xFFFFFFFF - (best[c - 1 - t] & 0xFFFFFFFF)
        return count

    return scan


def _as_float32(by_item):
    """``by_item`` as float32: 16-bit scores widened into this thread's reused buffer."""
    if by_item.dtype == torch.float32:
        return by_item
    return _per_thread.widened.take(None, *by_item.shape, torch.float32, by_item.device).copy_(by_item)


def topk_indices(scores, k):
    """The indices of each row's ``k`` highest ``scores`` (users x items, on the CPU, item-major:
    ``scores.t()`` contiguous, with at least ``BLOCKS_PER_K * k`` items), best first, with
    ``torch.topk(scores, k, dim=-1)``'s values. Requires numba (see the module's docstring)."""
    global _scan
    n_rows, n = scores.shape
    if _scan is None:
        _scan = _compile()
    by_item = _as_float32(scores.detach().t())
    m = BLOCKS_PER_K * k
    block = n // m
    maxima = by_item[: block * m].view(block, m, n_rows).amax(0).t().contiguous()  # [user, j]
    threshold = torch.kthvalue(maxima, m - k + 1, dim=1)[0]
    values = by_item.numpy()
    out = np.empty((n_rows, k), dtype=np.int64)
    cap = min(n, CANDIDATES_PER_K * k)
    count = _scan(values, values.view(np.int32), threshold.numpy(), k, cap, out)
    if count is None:  # torch ranks NaN highest; the scan does not
        return torch.topk(scores, k, dim=-1)[1]
    indices = torch.from_numpy(out)
    left = torch.from_numpy(np.nonzero((count < k) | (count > cap))[0])
    if len(left):
        indices[left] = torch.topk(scores[left], k, dim=-1)[1]
    return indices
