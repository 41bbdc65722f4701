"""The users' interactions as a CSR matrix, and the multinomial likelihood on sparse targets.

RecBole's autoencoders keep every user's history as two padded (users x longest history)
matrices, ids and values, on the model's device: about 6 GB at the ML-20M shape for data a CSR
matrix holds in ~120 MB. :class:`UserItemCSR` is that CSR matrix, with the two batch views the
model needs (dense rows as RecBole builds them, or the sparse batch).
"""

from typing import NamedTuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F



class UserItemCSR(nn.Module):
    """The binary user x item matrix of a RecBole dataset's interactions, row-compressed.

    A (user, item) pair present several times is one entry of value 1, as in the dense rows of
    RecBole's ``AutoEncoderMixin.get_rating_matrix`` (which writes 1 over 1). Column ids are sorted
    within each row. The arrays are non-persistent buffers: ``.to(device)`` moves them, checkpoints
    do not hold them (they are derived from the data).
    """

    def __init__(self, user_ids, item_ids, n_users, n_items):
        super().__init__()
        self.n_users, self.n_items = n_users, n_items
        users = np.asarray(user_ids, dtype=np.int64)
        items = np.asarray(item_ids, dtype=np.int64)
        #: interactions per user, duplicates included: RecBole's history length
        self.register_buffer("counts", torch.from_numpy(np.bincount(users, minlength=n_users)), persistent=False)
        pairs = np.unique(users * n_items + items)  # sorted by user, then item; duplicates once
        crow = np.zeros(n_users + 1, dtype=np.int64)
        np.cumsum(np.bincount(pairs // n_items, minlength=n_users), out=crow[1:])
        self.register_buffer("crow", torch.from_numpy(crow), persistent=False)
        self.register_buffer("col", torch.from_numpy(pairs % n_items), persistent=False)

    @classmethod
    def from_dataset(cls, dataset):
        inter = dataset.inter_feat
        return cls(inter[dataset.uid_field].numpy(), inter[dataset.iid_field].numpy(), dataset.user_num, dataset.item_num)

    @property
    def nnz(self):
        return len(self.col)

    def batch(self, user):
        """Rows ``user`` as a :class:`SparseBatch`, in row-major order with sorted items."""
        start = self.crow[user]
        length = self.crow[user + 1] - start
        crow = torch.zeros(len(user) + 1, dtype=torch.long, device=start.device)
        torch.cumsum(length, 0, out=crow[1:])
        total = int(crow[-1])
        rows = torch.repeat_interleave(torch.arange(len(user), device=start.device), length, output_size=total)
        # position of each entry in self.col: its row's start plus its offset inside the row
        position = torch.arange(total, device=start.device) - crow[:-1][rows] + start[rows]
        cols = self.col[position]
        return SparseBatch(crow, rows, cols, torch.ones(total, device=cols.device), self.n_items)

    def dense(self, user):
        """Rows ``user`` as a dense float tensor (len(user) x n_items), the values of RecBole's
        ``AutoEncoderMixin.get_rating_matrix``."""
        return self.batch(user).dense()


class SparseBatch(NamedTuple):
    """A batch of user rows: CSR offsets (batch + 1), each non-zero's batch row and item id, and its
    value (1: RecBole's implicit feedback, as its dense rows hold)."""

    crow: torch.Tensor
    rows: torch.Tensor
    cols: torch.Tensor
    values: torch.Tensor
    n_items: int

    def dense(self):
        matrix = torch.zeros(len(self.crow) - 1, self.n_items, device=self.values.device, dtype=self.values.dtype)
        return matrix.index_put_((self.rows, self.cols), self.values)

    def coo(self):
        # built from valid, sorted, distinct indices: skip the invariant check (and its warning)
        return torch.sparse_coo_tensor(torch.stack([self.rows, self.cols]), self.values,
                                       (len(self.crow) - 1, self.n_items), is_coalesced=True, check_invariants=False)


class _MultinomialNLL(torch.autograd.Function):
    """-sum_i x_ui log softmax(z_u)_i for every row u, with x sparse.

    The forward writes one batch x items tensor, the log-probabilities, and reads only the
    non-zeros' entries of it; the backward turns that same tensor, in place, into the gradient
    g_u * (softmax(z_u) * sum_i x_ui - x_u). So it runs once per forward (no ``retain_graph``).
    """

    @staticmethod
    def forward(ctx, logits, rows, cols, values):
        log_probs = torch.log_softmax(logits, dim=1)
        total = torch.zeros(logits.shape[0], dtype=logits.dtype, device=logits.device).index_add_(0, rows, values)
        nll = torch.zeros_like(total).index_add_(0, rows, log_probs[rows, cols] * values).neg_()
        ctx.save_for_backward(log_probs, rows, cols, values, total)
        ctx.spent = False
        return nll

    @staticmethod
    def backward(ctx, grad):
        if ctx.spent:
            raise RuntimeError("multinomial_nll's backward runs once per forward (it reuses its buffer): no retain_graph")
        ctx.spent = True
        log_probs, rows, cols, values, total = ctx.saved_tensors
        grad_logits = log_probs.exp_().mul_((grad * total).unsqueeze(1))  # softmax, scaled, in place
        grad_logits.index_put_((rows, cols), -(grad[rows] * values), accumulate=True)
        return grad_logits, None, None, None


def multinomial_nll(logits, rows, cols, values):
    """Per-row multinomial negative log-likelihood of the sparse counts (rows, cols, values) under
    ``softmax(logits)``: what ``-(F.log_softmax(logits, 1) * x).sum(1)`` gives for the dense x.

    Computed in float32 at least, whatever autocast gives the logits (``enable_amp``), as autocast
    computes ``log_softmax`` in float32."""
    dtype = torch.promote_types(logits.dtype, torch.float32)
    with torch.autocast(device_type=logits.device.type, enabled=False):
        return _MultinomialNLL.apply(logits.to(dtype), rows, cols, values.to(dtype))


class SparseFirstLayer:
    """x @ W^T + b of a ``nn.Linear`` for a sparse batch x given as CSR parts (offsets, cols, values).

    Computed as ``F.embedding_bag`` over W^T's rows: torch's CSR x dense product copies the strided
    W^T on every call, and is several times slower. Training makes W^T contiguous each step (its
    gradient flows back through that copy); without gradients, the copy is kept until the weight
    changes (``_version`` counts its in-place updates: optimizer steps, ``load_state_dict``), so an
    evaluation makes it once. A write through ``weight.data`` is not counted: it needs a new
    ``SparseFirstLayer``.
    """

    def __init__(self):
        self._key, self._weight_t = None, None

    def __call__(self, linear, offsets, cols, values):
        weight = linear.weight
        if torch.is_grad_enabled() and weight.requires_grad:
            self._key = self._weight_t = None  # training: free the evaluation's copy
            weight_t = weight.t().contiguous()
        else:
            key = (weight.data_ptr(), weight._version, weight.device)
            if key != self._key:
                self._key, self._weight_t = key, weight.detach().t().contiguous()
            weight_t = self._weight_t
        out = F.embedding_bag(cols, weight_t, offsets, per_sample_weights=values, mode="sum")
        return out + linear.bias if linear.bias is not None else out
