"""The sparse input path a BetaMultVAE composes (:class:`SparseInput`), its keys, and when ``auto`` takes it.

RecBole's MultiVAE feeds its encoder dense (batch x items) rows and weighs every item in the
reconstruction term; on sparse data most of that work multiplies zeros. This path normalises and
drops out a batch's non-zeros alone, its first layer sums the weight's rows at them, and in
training the decoder's output layer and the likelihood are one kernel that reads the non-zeros'
log-probabilities only (:mod:`recbole_beta.model.sparse`). The same model and loss, with the same
parameters under the same names: a checkpoint of either path loads on the other.
"""

import torch
import torch.nn as nn

from recbole_beta.errors import check, check_number
from recbole_beta.model.sparse import (
    LowPrecisionCopy,
    TransposedLinear,
    Workspace,
    linear_into_workspace,
    linear_multinomial_nll,
)


def check_sparse_keys(config):
    """Check the keys of the input path: ``sparse_input``, ``sparse_input_density`` and
    ``sparse_cpu_column_block`` (raises ConfigError)."""
    sparse = config["sparse_input"]
    check("sparse_input", sparse, isinstance(sparse, bool) or sparse == "auto", "must be True, False or auto")
    check_number("sparse_input_density", config["sparse_input_density"], minimum=0, maximum=1)
    check_number("sparse_cpu_column_block", config["sparse_cpu_column_block"], minimum=1, integer=True)


def takes_sparse_path(setting, history, density):
    """Whether a model of the training split ``history`` (a
    :class:`~recbole_beta.data.user_items.UserItemCSR`) takes the sparse path: ``setting``
    (``sparse_input``) when True or False; under ``auto``, when less than the share ``density``
    (``sparse_input_density``) of its user-item cells is non-zero."""
    if setting != "auto":
        return setting
    return history.nnz < density * history.n_users * history.n_items


class SparseInput(nn.Module):
    """What ``MultiVAE.forward`` and the reconstruction term compute on a batch's dense rows,
    computed from the non-zeros of the users' history.

    Built from the model's history and its encoder and decoder: it takes over the encoder's first
    layer (``encoder[0]``, an ``nn.Linear``, becomes the same layer stored for sparse rows,
    :class:`~recbole_beta.model.sparse.TransposedLinear`) and holds the three by reference, not as
    submodules, so the model's state dict holds each once, under the model's names
    (``encoder.0.weight``, ...). Its own parts: the dropout on the non-zeros, which follows the
    model's train/eval mode, and the training logits' buffer (dropped on ``eval()``).
    """

    def __init__(self, history, encoder, decoder, drop_out, cpu_column_block):
        super().__init__()
        encoder[0] = TransposedLinear.from_linear(encoder[0])
        for name, module in (("history", history), ("encoder", encoder), ("decoder", decoder)):
            object.__setattr__(self, name, module)  # past nn.Module's registration: the model's own
        #: ``MultiVAE.forward``'s dropout of the normalised rows, on the non-zeros alone
        self.dropout = nn.Dropout(drop_out)
        #: output columns per matrix product of the training output layer on the CPU (key
        #: ``sparse_cpu_column_block``)
        self.cpu_column_block = int(cpu_column_block)
        self._logits = Workspace()  # the training logits (batch x items), reused from step to step
        self._scores = Workspace()  # full ranking's scores (batch x items), reused from batch to batch
        self._output_copies = (LowPrecisionCopy(), LowPrecisionCopy())  # its weight and bias under autocast

    def encode(self, user):
        """The encoder's (mu, logvar) of the rows ``user``."""
        return self._encode(self.history.batch(user))

    def scores(self, user, reparameterize, reuse=False):
        """``MultiVAE.forward``'s logits (len(user) x items) of the rows ``user``; ``reparameterize``:
        the model's, from (mu, logvar) to the code. ``reuse``: written into one buffer kept from call
        to call (the next call overwrites them), the output layer's weights cast once under autocast."""
        hidden = self.decoder[:-1](reparameterize(*self.encode(user)))
        if not reuse:
            return self.decoder[-1](hidden)
        return linear_into_workspace(self.decoder[-1], hidden, self._scores, self._output_copies)

    def loss_terms(self, user, reparameterize):
        """mu, logvar and the reconstruction term -sum_i x_ui log softmax(z_u)_i of each row ``user``,
        the decoder's output layer and the likelihood in one (the same products, one logits buffer)."""
        batch = self.history.batch(user)
        mu, logvar = self._encode(batch)
        hidden = self.decoder[:-1](reparameterize(mu, logvar))
        recon = linear_multinomial_nll(self.decoder[-1], hidden, batch, self._logits, self.cpu_column_block)
        return mu, logvar, recon

    def _encode(self, batch):
        # MultiVAE.forward's F.normalize and dropout, on the non-zeros; the first layer sums the
        # weight's columns at each row's non-zeros
        rows, values = batch.rows, batch.values
        norm = torch.zeros(len(batch.crow) - 1, device=values.device, dtype=values.dtype)
        norm = norm.index_add_(0, rows, values * values).sqrt().clamp_min(1e-12)  # as F.normalize
        h = self.encoder[0].sparse(batch.crow[:-1], batch.cols, self.dropout(values / norm[rows]))
        h = self.encoder[1:](h)
        half = h.shape[1] // 2
        return h[:, :half], h[:, half:]

    def train(self, mode=True):
        # each mode drops the other's buffer: evaluation does not need training's, nor training evaluation's
        (self._scores if mode else self._logits).clear()
        # and the output layer's low-precision copies live for one evaluation pass (RecBole's evaluate
        # calls eval() before each): torch's fused Adam, the sparse path's, updates the weights in
        # place without moving their version counter, so a copy kept across training would go stale
        self._output_copies = (LowPrecisionCopy(), LowPrecisionCopy())
        return super().train(mode)

    def extra_repr(self):
        return f"cpu_column_block={self.cpu_column_block}"
