"""The users' interaction histories as a CSR matrix (:class:`UserItemCSR`), and a batch of its rows.

RecBole's autoencoders keep every user's history as two padded (users x longest history) matrices,
ids and values, on the model's device: about 6 GB at the ML-20M shape for data a CSR matrix holds in
~120 MB. :class:`UserItemCSR` is that CSR matrix, with the two batch views a model needs: dense rows
as RecBole builds them, or the sparse batch. Torch and numpy only: nothing of any model.
"""

from typing import NamedTuple

import numpy as np
import torch
import torch.nn as nn


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
        """The matrix of a RecBole ``Dataset``'s interactions (its user and item id fields)."""
        inter = dataset.inter_feat
        return cls(inter[dataset.uid_field].numpy(), inter[dataset.iid_field].numpy(), dataset.user_num,
                   dataset.item_num)

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
